package tests

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

// go test -run '^$' -bench . -benchmem ./  (from tests/): one worker, real PostgreSQL.

func BenchmarkIssue(b *testing.B) {
	d := setupBench(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRotate rotates one family's token, with the default grace window (the successor is
// sealed for its parent's holder and stored with it) and with strict rotation (nothing sealed):
// the difference is the cost of the sealed copy.
func BenchmarkRotate(b *testing.B) {
	d := setupBench(b)
	strict, err := repository.New(d.pool, repository.Config{Pepper: repository.NewKey(d.pepper), GraceWindow: repository.StrictRotation,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	for name, store := range map[string]*repository.Store{"default_grace": d.store, "strict": strict} {
		b.Run(name, func(b *testing.B) {
			tok, err := store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}})
			if err != nil {
				b.Fatal(err)
			}
			current := tok.Token.Reveal()
			b.ReportAllocs()
			for b.Loop() {
				next, err := store.Rotate(d.ctx, repository.RotateRequest{Token: current, ClientID: "c"})
				if err != nil {
					b.Fatal(err)
				}
				current = next.Token.Reveal()
			}
		})
	}
}

// BenchmarkRotateGraceCost alternates, rotation by rotation, a store with the default grace window
// (sealing each successor) and a strict one on the same cluster, and reports each one's mean
// time: the ratio is the cost of the sealed copy, measured under the same conditions.
func BenchmarkRotateGraceCost(b *testing.B) {
	d := setupBench(b)
	strict, err := repository.New(d.pool, repository.Config{Pepper: repository.NewKey(d.pepper), GraceWindow: repository.StrictRotation,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	stores := []*repository.Store{d.store, strict}
	current := make([]string, 2)
	for i, s := range stores {
		tok, err := s.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}})
		if err != nil {
			b.Fatal(err)
		}
		current[i] = tok.Token.Reveal()
	}
	var spent [2]time.Duration
	n := 0
	for b.Loop() {
		for i, s := range stores {
			start := time.Now()
			next, err := s.Rotate(d.ctx, repository.RotateRequest{Token: current[i], ClientID: "c"})
			spent[i] += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			current[i] = next.Token.Reveal()
		}
		n++
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(n), "ns/grace-rotation")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(n), "ns/strict-rotation")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "grace/strict")
}

// BenchmarkIntrospect alternates, call by call on the same cluster, among 100,000 access tokens of
// 10,000 families: a raw primary-key lookup of an access token's row (the floor: one round trip,
// one index probe, no family), Introspect of the opaque access token issued with a family's live
// refresh token (answered by the family row), IntrospectJTI of a JWT issued likewise, and
// Introspect of an earlier access token of the family (the family row, then its own row with the
// family's: two round trips), and Introspect of a client_credentials token (its own row). It reports
// each one's mean time and the ratios pk/introspect (1.0: introspection is as fast as the bare
// lookup).
func BenchmarkIntrospect(b *testing.B) {
	d := setupBench(b)
	if _, err := d.pool.Exec(d.ctx, `
		WITH f AS (
			INSERT INTO oauth_family (client_id, user_id, idle_expires_at, token_digest, token_pepper_id, token_scope)
			SELECT 'c', 'u' || g, now() + interval '1 day', sha256(g::text::bytea), 'default', '{}'
			FROM generate_series(1, 10000) g
			RETURNING id
		)
		INSERT INTO oauth_access_token (family_id, key, jwt, standalone, pepper_id, client_id, subject, scope, audience,
			token_type, issued_at, expires_at)
		SELECT f.id, sha256(f.id::text::bytea || g::text::bytea), false, false, 'default', 'c', 'u', '{openid}', '{}',
			'Bearer', now(), now() + interval '1 hour'
		FROM f CROSS JOIN generate_series(1, 10) g`); err != nil {
		b.Fatal(err)
	}
	if _, err := d.pool.Exec(d.ctx, "ANALYZE"); err != nil {
		b.Fatal(err)
	}
	hour := repository.AccessRequest{Kind: repository.AccessOpaque, TTL: time.Hour}
	earlier, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}, Access: hour})
	if err != nil {
		b.Fatal(err)
	}
	current, err := d.store.Rotate(d.ctx, repository.RotateRequest{Token: earlier.Token.Reveal(), ClientID: "c", Access: hour})
	if err != nil {
		b.Fatal(err)
	}
	jwt, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"},
		Access: repository.AccessRequest{Kind: repository.AccessJWT, TTL: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	standalone, err := d.store.IssueAccessToken(d.ctx, repository.StandaloneAccessRequest{ClientID: "c", Scope: []string{"openid"}, AccessRequest: hour})
	if err != nil {
		b.Fatal(err)
	}
	var key []byte
	if err := d.pool.QueryRow(d.ctx, "SELECT current_access_key FROM oauth_family WHERE id = $1", current.FamilyID).Scan(&key); err != nil {
		b.Fatal(err)
	}
	active := func(info *repository.Introspection, err error) error {
		if err == nil && !info.Active {
			err = errors.New("inactive")
		}
		return err
	}
	calls := []func() error{
		func() error {
			var (
				client, subject, tokenType string
				scope, audience            []string
				issued, expires            time.Time
				revoked                    *time.Time
			)
			return d.pool.QueryRow(d.ctx, `SELECT client_id, subject, scope, audience, token_type, issued_at, expires_at, revoked_at
				FROM oauth_access_token WHERE family_id = $1 AND key = $2`, current.FamilyID, key).
				Scan(&client, &subject, &scope, &audience, &tokenType, &issued, &expires, &revoked)
		},
		func() error { return active(d.store.Introspect(d.ctx, current.Access.Token.Reveal())) },
		func() error { return active(d.store.IntrospectJTI(d.ctx, jwt.Access.JTI)) },
		func() error { return active(d.store.Introspect(d.ctx, earlier.Access.Token.Reveal())) },
		func() error { return active(d.store.Introspect(d.ctx, standalone.Token.Reveal())) },
	}
	var spent [5]time.Duration
	n := 0
	for b.Loop() {
		for i, call := range calls {
			start := time.Now()
			err := call()
			spent[i] += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
	for i, name := range []string{"pk-lookup", "introspect", "introspect-jti", "introspect-earlier", "introspect-standalone"} {
		b.ReportMetric(float64(spent[i].Nanoseconds())/float64(n), "ns/"+name)
		if i > 0 {
			b.ReportMetric(float64(spent[0])/float64(spent[i]), "pk/"+name)
		}
	}
}

// BenchmarkAccessTokenCost alternates, on the same cluster, Issue, Rotate and Exchange without an
// access token, with an opaque one and with a JWT's jti, and reports each one's mean time and the
// ratio with/without: the cost of issuing the access token in the same statement.
func BenchmarkAccessTokenCost(b *testing.B) {
	d := setupBench(b)
	kinds := []repository.AccessKind{repository.AccessNone, repository.AccessOpaque, repository.AccessJWT}
	names := []string{"none", "opaque", "jwt"}
	current := make([]string, len(kinds))
	for i := range kinds {
		tok, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}})
		if err != nil {
			b.Fatal(err)
		}
		current[i] = tok.Token.Reveal()
	}
	verifier := strings.Repeat("v", 43)
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	var issue, rotate, exchange [3]time.Duration
	n := 0
	for b.Loop() {
		for i, kind := range kinds {
			access := repository.AccessRequest{Kind: kind}
			start := time.Now()
			_, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}, Access: access})
			issue[i] += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			start = time.Now()
			next, err := d.store.Rotate(d.ctx, repository.RotateRequest{Token: current[i], ClientID: "c", Access: access})
			rotate[i] += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			current[i] = next.Token.Reveal()
			code, err := d.store.CreateCode(d.ctx, repository.CodeRequest{ClientID: "c", UserID: "u", RedirectURI: "https://app.example/cb",
				Scope: []string{"openid"}, CodeChallenge: challenge, CodeChallengeMethod: "S256"})
			if err != nil {
				b.Fatal(err)
			}
			start = time.Now()
			_, err = d.store.Exchange(d.ctx, repository.ExchangeRequest{Code: code.Code.Reveal(), ClientID: "c",
				RedirectURI: "https://app.example/cb", CodeVerifier: verifier, Access: access})
			exchange[i] += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
	for i, name := range names {
		b.ReportMetric(float64(issue[i].Nanoseconds())/float64(n), "ns/issue-"+name)
		b.ReportMetric(float64(rotate[i].Nanoseconds())/float64(n), "ns/rotate-"+name)
		b.ReportMetric(float64(exchange[i].Nanoseconds())/float64(n), "ns/exchange-"+name)
		if i > 0 {
			b.ReportMetric(float64(issue[i])/float64(issue[0]), "issue-"+name+"/none")
			b.ReportMetric(float64(rotate[i])/float64(rotate[0]), "rotate-"+name+"/none")
			b.ReportMetric(float64(exchange[i])/float64(exchange[0]), "exchange-"+name+"/none")
		}
	}
}
