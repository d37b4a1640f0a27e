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

// BenchmarkIntrospect alternates, call by call on the same cluster, Introspect of an opaque access
// token and of a JWT's jti with a raw primary-key lookup of the same row (the floor: one round
// trip, one index probe, no family), among 100,000 access tokens of 10,000 families, and reports
// each one's mean time and the ratios raw/introspect (1.0: introspection is as fast as the bare
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
	opaque, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"},
		Access: repository.AccessRequest{Kind: repository.AccessOpaque, TTL: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	jwt, err := d.store.Rotate(d.ctx, repository.RotateRequest{Token: opaque.Token.Reveal(), ClientID: "c",
		Access: repository.AccessRequest{Kind: repository.AccessJWT, TTL: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	var key []byte
	if err := d.pool.QueryRow(d.ctx, "SELECT key FROM oauth_access_token WHERE family_id = $1 AND NOT jwt", opaque.FamilyID).Scan(&key); err != nil {
		b.Fatal(err)
	}
	raw := func() error {
		var (
			client, subject, tokenType string
			scope, audience            []string
			issued, expires            time.Time
			revoked                    *time.Time
		)
		return d.pool.QueryRow(d.ctx, `SELECT client_id, subject, scope, audience, token_type, issued_at, expires_at, revoked_at
			FROM oauth_access_token WHERE family_id = $1 AND key = $2`, opaque.FamilyID, key).
			Scan(&client, &subject, &scope, &audience, &tokenType, &issued, &expires, &revoked)
	}
	calls := []func() error{
		raw,
		func() error {
			info, err := d.store.Introspect(d.ctx, opaque.Access.Token.Reveal())
			if err == nil && !info.Active {
				err = errors.New("inactive")
			}
			return err
		},
		func() error {
			info, err := d.store.IntrospectJTI(d.ctx, jwt.Access.JTI)
			if err == nil && !info.Active {
				err = errors.New("inactive")
			}
			return err
		},
	}
	var spent [3]time.Duration
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
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(n), "ns/pk-lookup")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(n), "ns/introspect")
	b.ReportMetric(float64(spent[2].Nanoseconds())/float64(n), "ns/introspect-jti")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "pk/introspect")
	b.ReportMetric(float64(spent[0])/float64(spent[2]), "pk/introspect-jti")
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
