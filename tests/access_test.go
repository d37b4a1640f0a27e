package tests

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

var (
	opaqueAccess = repository.AccessRequest{Kind: repository.AccessOpaque}
	jwtAccess    = repository.AccessRequest{Kind: repository.AccessJWT}
)

// grantWithAccess issues a family for client-a/user-1 with an opaque access token, then rotates it
// twice, once with a JWT and once with an opaque token: four access tokens of one family.
type grantWithAccess struct {
	live    *repository.RefreshToken   // the family's live refresh token
	spent   []*repository.RefreshToken // its consumed predecessors
	opaque  []string
	jtis    []string
	family  string
	session string
}

func (b *bundle) grantWithAccess(t *testing.T, user string) grantWithAccess {
	t.Helper()
	sid := "sid-" + user + "-" + fmt.Sprint(time.Now().UnixNano())
	first, err := b.store.Issue(b.ctx, repository.IssueRequest{
		ClientID: "client-a", UserID: user, Scope: []string{"openid", "offline_access", "mcp"},
		Claims: repository.Claims{SessionID: sid}, Access: opaqueAccess,
	})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(first.Token, first.Access.Token)
	g := grantWithAccess{family: first.FamilyID, session: sid, opaque: []string{first.Access.Token.Reveal()}}
	cur := first
	for _, a := range []repository.AccessRequest{jwtAccess, jwtAccess, opaqueAccess} {
		next, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: cur.Token.Reveal(), ClientID: "client-a", Access: a})
		if err != nil {
			t.Fatal(err)
		}
		b.remember(next.Token)
		if a.Kind == repository.AccessJWT {
			g.jtis = append(g.jtis, next.Access.JTI)
		} else {
			b.remember(next.Access.Token)
			g.opaque = append(g.opaque, next.Access.Token.Reveal())
		}
		g.spent = append(g.spent, cur)
		cur = next
	}
	g.live = cur
	return g
}

// activeAccess counts the grant's access tokens that introspect as active.
func (b *bundle) activeAccess(t *testing.T, g grantWithAccess) int {
	t.Helper()
	n := 0
	for _, tok := range g.opaque {
		info, err := b.store.Introspect(b.ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		if info.Active {
			n++
		}
	}
	for _, jti := range g.jtis {
		info, err := b.store.IntrospectJTI(b.ctx, jti)
		if err != nil {
			t.Fatal(err)
		}
		if info.Active {
			n++
		}
	}
	return n
}

func TestAccess_IssueRotateAndExchangeReturnAccessTokensInOneStatement(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool, counter := b.countingPool(t, 1)
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper), Clock: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	now := b.clock.Now()
	tok, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"read"},
		Audience: []string{"https://api.example", "https://mcp.example"}, Access: repository.AccessRequest{Kind: repository.AccessOpaque, TTL: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	if n := counter.queries.Load(); n != 1 {
		t.Fatalf("Issue with an access token sent %d statements, want 1", n)
	}
	a := tok.Access
	if a == nil || len(a.Token.Reveal()) != 66 || a.JTI != "" || !a.IssuedAt.Equal(now) || !a.ExpiresAt.Equal(now.Add(time.Minute)) ||
		a.TokenType != "Bearer" || a.FamilyID != tok.FamilyID || !slices.Equal(a.Audience, []string{"https://api.example", "https://mcp.example"}) {
		t.Fatalf("issued access token: %+v", a)
	}
	for i, kind := range []repository.AccessKind{repository.AccessJWT, repository.AccessOpaque, repository.AccessNone} {
		counter.queries.Store(0)
		b.clock.Advance(time.Second)
		req := repository.AccessRequest{Kind: kind, Audience: []string{"https://mcp.example"}}
		if kind == repository.AccessNone {
			req.Audience = nil
		}
		next, err := store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "c", Access: req})
		if err != nil {
			t.Fatal(err)
		}
		if n := counter.queries.Load(); n != 1 {
			t.Fatalf("rotation %d with access kind %d sent %d statements, want 1", i, kind, n)
		}
		switch kind {
		case repository.AccessNone:
			if next.Access != nil {
				t.Fatalf("an access token nobody asked for: %+v", next.Access)
			}
		case repository.AccessJWT:
			fam, ok := repository.FamilyOfJTI(next.Access.JTI)
			if len(next.Access.JTI) != 38 || !next.Access.Token.IsZero() || !ok || fam != tok.FamilyID {
				t.Fatalf("JWT access token: %+v (family %q)", next.Access, fam)
			}
		default:
			if !slices.Equal(next.Access.Audience, []string{"https://mcp.example"}) || !next.Access.IssuedAt.Equal(b.clock.Now()) {
				t.Fatalf("narrowed access token: %+v", next.Access)
			}
		}
		tok = next
	}
	// Every issued access token is there, one row each, under the family.
	if n := b.count(t, "SELECT count(*) FROM oauth_access_token WHERE family_id = $1 AND NOT standalone", tok.FamilyID); n != 3 {
		t.Fatalf("%d access token rows, want 3", n)
	}

	// An exchange with an access token is one statement too (after the code's read).
	f := b.createCode(t)
	counter.queries.Store(0)
	ex, err := store.Exchange(b.ctx, repository.ExchangeRequest{Code: f.code.Code.Reveal(), ClientID: "client-a",
		RedirectURI: redirectURI, CodeVerifier: f.verifier, Access: jwtAccess})
	if err != nil {
		t.Fatal(err)
	}
	if n := counter.queries.Load(); n != 2 {
		t.Fatalf("exchange with an access token sent %d statements, want 2 (read the code, exchange it)", n)
	}
	if ex.Access == nil || ex.Access.JTI == "" || !slices.Equal(ex.Access.Audience, []string{"https://mcp.example/api"}) {
		t.Fatalf("exchanged access token: %+v", ex.Access)
	}
	info, err := store.IntrospectJTI(b.ctx, ex.Access.JTI)
	if err != nil || !info.Active || info.Subject != "user-1" || info.ClientID != "client-a" || info.FamilyID != ex.FamilyID {
		t.Fatalf("introspected exchanged JWT: %+v, %v", info, err)
	}
}

func TestIntrospect_AnswersRFC7662InOneStatementWithoutConsuming(t *testing.T) {
	t.Parallel()
	b := setup(t)
	authTime := time.Date(2029, 12, 31, 23, 59, 1, 0, time.UTC)
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{
		ClientID: "client-a", UserID: "user-1", Scope: []string{"openid", "mcp"}, SenderThumbprint: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
		Audience: []string{"https://mcp.example"},
		Claims:   repository.Claims{AuthTime: &authTime, ACR: "urn:acr:mfa", AMR: []string{"pwd", "otp"}, SessionID: "sid-1"},
		Access:   repository.AccessRequest{Kind: repository.AccessOpaque, TokenType: repository.TokenTypeDPoP},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token, tok.Access.Token)
	info, err := b.store.Introspect(b.ctx, tok.Access.Token.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"active": true, "scope": "openid mcp", "client_id": "client-a", "sub": "user-1", "exp": tok.Access.ExpiresAt.Unix(),
		"iat": tok.Access.IssuedAt.Unix(), "aud": "https://mcp.example", "token_type": "DPoP", "token_use": "access_token",
		"cnf": map[string]string{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, "auth_time": authTime.Unix(),
		"acr": "urn:acr:mfa", "amr": []string{"pwd", "otp"}, "sid": "sid-1",
	}
	if got := info.Response(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("introspection:\n got %v\nwant %v", got, want)
	}
	// A Bearer token of a family bound to a key is bound by a client certificate (RFC 8705).
	mtls, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a",
		SenderThumbprint: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(mtls.Token, mtls.Access.Token)
	if info, err := b.store.Introspect(b.ctx, mtls.Access.Token.Reveal()); err != nil ||
		fmt.Sprint(info.Response()["cnf"]) != "map[x5t#S256:0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I]" {
		t.Fatalf("a certificate-bound token's cnf: %v, %v", info.Response()["cnf"], err)
	}
	tok = mtls
	// A refresh token introspects as active without being consumed.
	rinfo, err := b.store.Introspect(b.ctx, tok.Token.Reveal())
	if err != nil || !rinfo.Active || rinfo.TokenUse != "refresh_token" || rinfo.FamilyID != tok.FamilyID || rinfo.SessionID != "sid-1" {
		t.Fatalf("refresh token introspection: %+v, %v", rinfo, err)
	}
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a",
		SenderThumbprint: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}); err != nil {
		t.Fatalf("introspection consumed the refresh token: %v", err)
	}
	// The consumed refresh token is inactive; the access token is still active.
	if rinfo, _ := b.store.Introspect(b.ctx, tok.Token.Reveal()); rinfo.Active {
		t.Fatal("a consumed refresh token introspects as active")
	}
	if info, _ := b.store.Introspect(b.ctx, tok.Access.Token.Reveal()); !info.Active {
		t.Fatal("a rotation ended the access tokens issued before it")
	}
	// Expired: inactive, and answers nothing else.
	b.clock.Advance(repository.DefaultAccessTokenTTL)
	info, err = b.store.Introspect(b.ctx, tok.Access.Token.Reveal())
	if err != nil || info.Active || len(info.Response()) != 1 {
		t.Fatalf("expired access token: %+v, %v", info.Response(), err)
	}
	// Unknown or malformed tokens are inactive, not errors.
	for _, junk := range []string{"", "x", strings.Repeat("A", 66), strings.Repeat("A", 64), tok.Access.Token.Reveal()[:65] + "!"} {
		if info, err := b.store.Introspect(b.ctx, junk); err != nil || info.Active {
			t.Fatalf("introspect %q: %+v, %v", junk, info, err)
		}
	}
	// One statement per introspection.
	pool, counter := b.countingPool(t, 0)
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper)})
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc", Scope: []string{"jobs"}, AccessRequest: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(fresh.Token)
	counter.queries.Store(0)
	info, err = store.Introspect(b.ctx, fresh.Token.Reveal())
	if err != nil || !info.Active || info.Subject != "svc" || info.ClientID != "svc" {
		t.Fatalf("client_credentials token: %+v, %v", info, err)
	}
	if n := counter.queries.Load(); n != 1 {
		t.Fatalf("introspection sent %d statements, want 1", n)
	}
}

// Every way a family is revoked ends all of its access tokens at once, opaque and JWT alike,
// without a write per token.
func TestAccess_EveryFamilyRevocationEndsAllItsAccessTokensAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var events eventLog
	store, err := repository.New(b.pool, repository.Config{Pepper: repository.NewKey(b.pepper), Clock: b.clock.Now,
		GraceWindow: repository.StrictRotation, OnEvent: events.add})
	if err != nil {
		t.Fatal(err)
	}
	b.store = store
	paths := map[string]func(g grantWithAccess) error{
		"replay of a consumed refresh token": func(g grantWithAccess) error {
			_, err := b.rotate(g.spent[0].Token, "client-a")
			if !errors.Is(err, repository.ErrReplayDetected) {
				return fmt.Errorf("replay: %v", err)
			}
			return nil
		},
		"RevokeToken of the refresh token": func(g grantWithAccess) error {
			return b.store.RevokeToken(b.ctx, g.live.Token.Reveal(), "client-a")
		},
		"RevokeFamily": func(g grantWithAccess) error { return b.store.RevokeFamily(b.ctx, g.family, "admin") },
		"RevokeFamilies of the user": func(g grantWithAccess) error {
			r, err := b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{UserID: g.live.UserID}, "logout")
			if err == nil && (r.Families != 1 || !slices.Equal(r.SessionIDs, []string{g.session})) {
				return fmt.Errorf("revoked %+v, want 1 family and session %s", r, g.session)
			}
			return err
		},
		"RevokeFamilies of the user at the client": func(g grantWithAccess) error {
			_, err := b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{UserID: g.live.UserID, ClientID: "client-a"}, "logout")
			return err
		},
		"DeleteFamily": func(g grantWithAccess) error { return b.store.DeleteFamily(b.ctx, g.family) },
	}
	i := 0
	var revoked []string
	for name, revoke := range paths {
		i++
		g := b.grantWithAccess(t, fmt.Sprintf("user-%d", i))
		other := b.grantWithAccess(t, fmt.Sprintf("bystander-%d", i))
		if n := b.activeAccess(t, g); n != 4 {
			t.Fatalf("%s: %d of 4 access tokens active before", name, n)
		}
		before := b.accessRowVersions(t, g.family)
		if err := revoke(g); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n := b.activeAccess(t, g); n != 0 {
			t.Fatalf("%s: %d of 4 access tokens still active", name, n)
		}
		if n := b.activeAccess(t, other); n != 4 {
			t.Fatalf("%s: %d of another family's 4 access tokens still active", name, n)
		}
		if name != "DeleteFamily" {
			if after := b.accessRowVersions(t, g.family); after != before {
				t.Fatalf("%s wrote the access token rows", name)
			}
		}
		revoked = append(revoked, g.family)
	}
	// Every path announced its family in the feed, DeleteFamily too: resource servers that
	// validate JWTs themselves learn of it.
	feed := b.feed(t, len(revoked))
	for _, family := range revoked {
		if !slices.ContainsFunc(feed, func(r repository.Revocation) bool { return r.FamilyID == family && r.JTI == "" }) {
			t.Fatalf("family %s is not in the feed: %+v", family, feed)
		}
	}
	// The replay's event names the session.
	for _, e := range events.all() {
		if e.Kind == repository.EventReplayDetected && e.SessionID == "" {
			t.Fatalf("replay event without the session id: %+v", e)
		}
	}
	// A code replay, too.
	f := b.createCode(t)
	ex, err := b.store.Exchange(b.ctx, repository.ExchangeRequest{Code: f.code.Code.Reveal(), ClientID: "client-a",
		RedirectURI: redirectURI, CodeVerifier: f.verifier, Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(ex.Token, ex.Access.Token)
	if _, err := b.exchange(f); !errors.Is(err, repository.ErrCodeReplayDetected) {
		t.Fatalf("code replay: %v", err)
	}
	if info, err := b.store.Introspect(b.ctx, ex.Access.Token.Reveal()); err != nil || info.Active {
		t.Fatalf("access token of a replayed code's family: %+v, %v", info, err)
	}
	b.checkSecretHygiene(t)
}

// accessRowVersions identifies the current version of every access token row of a family: a
// write to any of them changes it.
func (b *bundle) accessRowVersions(t *testing.T, family string) string {
	t.Helper()
	var v string
	if err := b.pool.QueryRow(b.ctx, `SELECT coalesce(string_agg(ctid::text || xmin::text, ',' ORDER BY key), '')
		FROM oauth_access_token WHERE family_id = $1`, family).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAccess_RevokingAFamilyOfAThousandAccessTokensIsOneStatementThatWritesNoneOfThem(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Access: jwtAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token)
	// 999 more, as the rotations of a long session leave them (inserted directly, for speed).
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_access_token (family_id, key, jwt, standalone, client_id, subject,
			scope, audience, token_type, issued_at, expires_at)
		SELECT $1, substring(sha256(g::text::bytea || random()::text::bytea) from 1 for 12), true, false, 'client-a', 'user-1', '{}', '{}', 'Bearer', $2, $3
		FROM generate_series(1, 999) g`, tok.FamilyID, b.clock.Now(), b.clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_access_token WHERE family_id = $1", tok.FamilyID); n != 1000 {
		t.Fatalf("%d access tokens, want 1000", n)
	}
	before := b.accessRowVersions(t, tok.FamilyID)
	pool, counter := b.countingPool(t, 0)
	admin, err := repository.NewAdmin(pool, repository.Config{Clock: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.RevokeFamily(b.ctx, tok.FamilyID, "compromised"); err != nil {
		t.Fatal(err)
	}
	if n := counter.queries.Load(); n != 1 {
		t.Fatalf("revoking the family sent %d statements, want 1", n)
	}
	if after := b.accessRowVersions(t, tok.FamilyID); after != before {
		t.Fatal("revoking the family wrote access token rows")
	}
	if info, err := b.store.IntrospectJTI(b.ctx, tok.Access.JTI); err != nil || info.Active {
		t.Fatalf("JWT of the revoked family: %+v, %v", info, err)
	}
	// The feed announces the family once, until its newest access token expires.
	if feed := b.feed(t, 1); len(feed) != 1 || feed[0].FamilyID != tok.FamilyID || feed[0].JTI != "" {
		t.Fatalf("feed: %+v", feed)
	}
}

// A replay racing introspections: once the replay has been answered, no introspection that starts
// after it finds the family's access tokens active.
func TestAccess_ReplayRacingIntrospectionNeverLeavesAnActiveTokenAfterItsAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	var before, after atomic.Int64
	for trial := range 20 {
		g := b.grantWithAccess(t, fmt.Sprintf("user-%d", trial))
		var replayed atomic.Bool
		var afterThisTrial atomic.Int64
		var wg sync.WaitGroup
		stop := make(chan struct{})
		errs := make(chan error, 4)
		for w := range 3 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					answered := replayed.Load()
					var info *repository.Introspection
					var err error
					if w%2 == 0 {
						info, err = b.store.Introspect(b.ctx, g.opaque[len(g.opaque)-1])
					} else {
						info, err = b.store.IntrospectJTI(b.ctx, g.jtis[0])
					}
					if err != nil {
						errs <- err
						return
					}
					switch {
					case answered && info.Active:
						errs <- fmt.Errorf("trial %d: an introspection begun after the replay was answered found the token active", trial)
						return
					case answered:
						after.Add(1)
						afterThisTrial.Add(1)
					case info.Active:
						before.Add(1)
					}
				}
			})
		}
		time.Sleep(time.Duration(trial%5) * time.Millisecond)
		_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: g.spent[1].Token.Reveal(), ClientID: "client-a"})
		if !errors.Is(err, repository.ErrReplayDetected) {
			t.Fatalf("replay: %v", err)
		}
		replayed.Store(true)
		// Until three introspections begun after the replay's answer have been answered.
		for deadline := time.Now().Add(10 * time.Second); afterThisTrial.Load() < 3 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	if before.Load() < 20 || after.Load() < 20 {
		t.Fatalf("the race did not run: %d introspections before the replay, %d after", before.Load(), after.Load())
	}
	t.Logf("%d introspections active before the replay, %d inactive after", before.Load(), after.Load())
}

func TestRevokeToken_AnAccessTokenRevokesItselfAloneAndOnlyForItsClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	g := b.grantWithAccess(t, "user-1")
	sum := b.tableChecksum(t)
	if err := b.store.RevokeToken(b.ctx, g.opaque[0], "client-b"); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("another client's access token: %v", err)
	}
	if err := b.store.RevokeJTI(b.ctx, g.jtis[0], "client-b"); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("another client's jti: %v", err)
	}
	if b.tableChecksum(t) != sum {
		t.Fatal("a refused revocation changed something")
	}
	if err := b.store.RevokeToken(b.ctx, g.opaque[0], "client-a"); err != nil {
		t.Fatal(err)
	}
	if err := b.store.RevokeToken(b.ctx, g.opaque[0], "client-a"); err != nil {
		t.Fatalf("revoking again: %v", err)
	}
	if err := b.store.RevokeJTI(b.ctx, g.jtis[0], "client-a"); err != nil {
		t.Fatal(err)
	}
	if n := b.activeAccess(t, g); n != 2 {
		t.Fatalf("%d of 4 active, want the 2 not revoked", n)
	}
	if _, err := b.rotate(g.live.Token, "client-a"); err != nil {
		t.Fatalf("revoking an access token ended the refresh token: %v", err)
	}
	// The feed has the JWT, not the opaque token (resource servers introspect those).
	if feed := b.feed(t, 1); len(feed) != 1 || feed[0].JTI != g.jtis[0] || feed[0].FamilyID != g.family {
		t.Fatalf("feed: %+v", feed)
	}
	if err := b.store.RevokeToken(b.ctx, strings.Repeat("A", 66), "client-a"); !errors.Is(err, repository.ErrTokenNotFound) {
		t.Fatalf("unknown access token: %v", err)
	}
}

func TestAccess_StandaloneTokensFollowBulkRevocation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	svc, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc", AccessRequest: jwtAccess})
	if err != nil {
		t.Fatal(err)
	}
	user, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "app", Subject: "alice", AccessRequest: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(user.Token)
	other, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "app", Subject: "bob", AccessRequest: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(other.Token)
	r, err := b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{UserID: "alice"}, "logout")
	if err != nil || r.StandaloneAccessTokens != 1 {
		t.Fatalf("revoke alice: %+v, %v", r, err)
	}
	if info, _ := b.store.Introspect(b.ctx, user.Token.Reveal()); info.Active {
		t.Fatal("alice's token survived her logout")
	}
	if info, _ := b.store.Introspect(b.ctx, other.Token.Reveal()); !info.Active {
		t.Fatal("bob's token went with alice's logout")
	}
	r, err = b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{ClientID: "svc"}, "client deleted")
	if err != nil || r.StandaloneAccessTokens != 1 {
		t.Fatalf("revoke svc: %+v, %v", r, err)
	}
	if info, _ := b.store.IntrospectJTI(b.ctx, svc.JTI); info.Active {
		t.Fatal("the deleted client's JWT survived")
	}
	if feed := b.feed(t, 2); len(feed) != 2 || feed[1].JTI != svc.JTI {
		t.Fatalf("feed: %+v", feed)
	}
}

// The revocation feed, read by several resource servers while a thousand revocations commit
// concurrently, gives each reader every revoked family and jti exactly once.
func TestRevokedSince_EveryRevocationExactlyOnceAcrossConcurrentRevocationsAndCursors(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	const grants = 1000
	type grant struct {
		tok *repository.RefreshToken
		jti string
	}
	gs := make([]grant, grants)
	for i := range gs {
		tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: fmt.Sprintf("u%d", i%50), Access: jwtAccess})
		if err != nil {
			t.Fatal(err)
		}
		b.remember(tok.Token)
		gs[i] = grant{tok: tok, jti: tok.Access.JTI}
	}
	want := map[string]bool{}
	// Half the families are revoked whole, by four paths; the other half lose their JWT alone.
	var work sync.WaitGroup
	next := atomic.Int64{}
	for range 8 {
		work.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= grants {
					return
				}
				g := gs[i]
				var err error
				switch i % 4 {
				case 0:
					err = b.store.RevokeFamily(b.ctx, g.tok.FamilyID, "admin")
				case 1:
					err = b.store.RevokeToken(b.ctx, g.tok.Token.Reveal(), "client-a")
				case 2, 3:
					err = b.store.RevokeJTI(b.ctx, g.jti, "client-a")
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i, g := range gs {
		if i%4 < 2 {
			want["family "+g.tok.FamilyID] = true
		} else {
			want["jti "+g.jti] = true
		}
	}
	type reader struct {
		seen  map[string]int
		pages int
	}
	readers := make([]*reader, 4)
	var read sync.WaitGroup
	done := make(chan struct{})
	for r := range readers {
		rd := &reader{seen: map[string]int{}}
		readers[r] = rd
		read.Go(func() {
			cursor := ""
			deadline := time.Now().Add(feedWait)
			for {
				finished := false
				select {
				case <-done:
					// Every revocation has committed: read on until all of them show (or, at the
					// deadline, to fail on what is missing).
					finished = len(rd.seen) >= len(want) || time.Now().After(deadline)
				default:
				}
				page, err := b.store.RevokedSince(b.ctx, cursor, 1+r*37)
				if err != nil {
					t.Error(err)
					return
				}
				rd.pages++
				for _, e := range page.Revocations {
					if e.JTI == "" {
						rd.seen["family "+e.FamilyID]++
					} else {
						rd.seen["jti "+e.JTI]++
					}
				}
				cursor = page.Cursor
				if finished && !page.More {
					return
				}
			}
		})
	}
	work.Wait()
	close(done)
	read.Wait()
	if t.Failed() {
		return
	}
	for r, rd := range readers {
		if rd.pages < 10 {
			t.Fatalf("reader %d read only %d pages: it did not read while revocations committed", r, rd.pages)
		}
		for k := range want {
			if rd.seen[k] != 1 {
				t.Fatalf("reader %d saw %s %d times", r, k, rd.seen[k])
			}
		}
		if len(rd.seen) != len(want) {
			t.Fatalf("reader %d saw %d entries, want %d", r, len(rd.seen), len(want))
		}
	}
	t.Logf("%d revocations, each seen exactly once by %d readers (pages read: %d %d %d %d)", len(want), len(readers),
		readers[0].pages, readers[1].pages, readers[2].pages, readers[3].pages)
}

func TestClaims_RoundTripByteForByte(t *testing.T) {
	t.Parallel()
	b := setup(t)
	authTime := time.Date(2029, 12, 31, 23, 59, 58, 123456000, time.UTC)
	claims := repository.Claims{
		AuthTime: &authTime, ACR: "urn:mace:incommon:iap:silver", AMR: []string{"pwd", "hwk", "mfa"},
		SessionID: "08a5019c-17e1-4977-8f42-65a12843ea02", UserAgent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0 «ünïcödé» 🚀",
		IP: "2001:db8::ff00:42:8329", Label: "Anna's laptop — \"work\" \\ 'quoted'",
	}
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Claims: claims,
		Audience: []string{"https://mcp.example/a", "urn:api"}, Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token, tok.Access.Token)
	same := func(where string, got repository.Claims) {
		t.Helper()
		if fmt.Sprintf("%#v|%v", got, *got.AuthTime) != fmt.Sprintf("%#v|%v", claims, *claims.AuthTime) ||
			!got.AuthTime.Equal(authTime) {
			t.Fatalf("%s: claims\n got %#v\nwant %#v", where, got, claims)
		}
	}
	same("Issue", tok.Claims)
	next, err := b.rotate(tok.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	same("Rotate", next.Claims)
	info, err := b.store.Lookup(b.ctx, next.Token.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	same("Lookup", info.Claims)
	if !slices.Equal(info.Audience, []string{"https://mcp.example/a", "urn:api"}) {
		t.Fatalf("audience: %v", info.Audience)
	}
	fams, err := b.store.ActiveFamilies(b.ctx, "user-1")
	if err != nil || len(fams) != 1 {
		t.Fatal(fams, err)
	}
	same("ActiveFamilies", fams[0].Claims)
	in, err := b.store.Introspect(b.ctx, tok.Access.Token.Reveal())
	if err != nil || !in.Active || in.ACR != claims.ACR || !slices.Equal(in.AMR, claims.AMR) || in.SessionID != claims.SessionID || !in.AuthTime.Equal(authTime) {
		t.Fatalf("Introspect: %+v, %v", in, err)
	}
	// A rotation that says where it comes from updates the user agent and IP, nothing else.
	moved, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: next.Token.Reveal(), ClientID: "client-a", UserAgent: "curl/8.11", IP: "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(moved.Token)
	if moved.Claims.UserAgent != "curl/8.11" || moved.Claims.IP != "192.0.2.7" || moved.Claims.Label != claims.Label || moved.LastUsedAt == nil {
		t.Fatalf("after a move: %+v", moved.Grant)
	}
	// Through a code: the authorization request's claims reach the family.
	f := b.createCode(t, func(r *repository.CodeRequest) { r.Claims = claims })
	ex, err := b.exchange(f)
	if err != nil {
		t.Fatal(err)
	}
	same("Exchange", ex.Claims)
	same("Family", b.family(t, ex.FamilyID).Claims)
}

func TestAccess_HostileInputsAreTypedErrorsThatChangeNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	spent, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Audience: []string{"https://mcp.example"}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(spent.Token)
	tok, err := b.rotate(spent.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	sum := b.tableChecksum(t)
	long := strings.Repeat("x", 256)
	badClaims := []repository.Claims{
		{ACR: long}, {SessionID: long}, {Label: long}, {UserAgent: strings.Repeat("u", 513)}, {Label: "tab\there"},
		{AMR: make([]string, 17)}, {AMR: []string{""}}, {AMR: []string{"p w d"}}, {AMR: []string{strings.Repeat("m", 65)}},
		{IP: "999.1.1.1"}, {IP: "localhost"}, {IP: "fe80::1%\x00"}, {IP: "fe80::1%\xff"}, {IP: "fe80::1%eth0"},
		{ACR: "\xff\xfe"}, {AuthTime: &time.Time{}},
	}
	badAudiences := [][]string{{""}, {"has space"}, {"naïve"}, {strings.Repeat("a", 513)}, make([]string, 33)}
	for i := range badAudiences[4] {
		badAudiences[4][i] = fmt.Sprintf("aud-%d", i)
	}
	badAccess := []repository.AccessRequest{
		{Kind: 9}, {Kind: repository.AccessOpaque, TTL: time.Millisecond}, {Kind: repository.AccessOpaque, TTL: 25 * time.Hour},
		{Kind: repository.AccessJWT, TokenType: "MAC"}, {Kind: repository.AccessJWT, Audience: []string{}},
		{Kind: repository.AccessJWT, TokenType: repository.TokenTypeDPoP}, // no key to bind
	}
	for _, a := range badAudiences {
		badAccess = append(badAccess, repository.AccessRequest{Kind: repository.AccessJWT, Audience: a})
	}
	var calls []func() error
	for _, c := range badClaims {
		calls = append(calls, func() error {
			_, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "u", Claims: c})
			return err
		}, func() error {
			_, err := b.store.CreateCode(b.ctx, repository.CodeRequest{ClientID: "client-a", UserID: "u", RedirectURI: redirectURI,
				CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWPmCqeq0xP2I", CodeChallengeMethod: "S256", Claims: c})
			return err
		})
	}
	for _, a := range badAudiences {
		calls = append(calls, func() error {
			_, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "u", Audience: a})
			return err
		})
	}
	// Where a rotation says it comes from (client-controlled, as X-Forwarded-For is), on the live
	// token and on a consumed one alike.
	for _, ip := range []string{"fe80::1%\x00", "fe80::1%\t", "not-an-ip"} {
		for _, presented := range []repository.Secret{tok.Token, spent.Token} {
			calls = append(calls, func() error {
				_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: presented.Reveal(), ClientID: "client-a", IP: ip})
				return err
			})
		}
		calls = append(calls, func() error {
			_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a", UserAgent: "ua\x00"})
			return err
		})
	}
	for _, a := range badAccess {
		calls = append(calls, func() error {
			_, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "u", Access: a})
			return err
		}, func() error {
			_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a", Access: a})
			return err
		}, func() error {
			_, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc", AccessRequest: a})
			return err
		})
	}
	for _, jti := range []string{"", "x", strings.Repeat("A", 37), strings.Repeat("A", 39), strings.Repeat("!", 38), tok.Token.Reveal()} {
		calls = append(calls, func() error { return b.store.RevokeJTI(b.ctx, jti, "client-a") }, func() error {
			_, err := b.store.IntrospectJTI(b.ctx, jti)
			return err
		})
	}
	calls = append(calls, func() error {
		_, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc"})
		return err
	}, func() error {
		_, err := b.store.RevokedSince(b.ctx, "12", 0)
		return err
	}, func() error {
		_, err := b.store.RevokedSince(b.ctx, "1.-2", 0)
		return err
	}, func() error {
		_, err := b.store.RevokedSince(b.ctx, "", 10001)
		return err
	})
	if _, err := b.store.RevokedSince(b.ctx, "999999999999.1", 0); !errors.Is(err, repository.ErrFeedCursorAhead) {
		t.Fatalf("a cursor of another cluster: %v", err)
	}
	for i, call := range calls {
		if err := call(); !errors.Is(err, repository.ErrInvalidInput) {
			t.Fatalf("hostile call %d: %v, want an InputError", i, err)
		}
	}
	// An audience the grant does not allow is invalid_target, and consumes nothing.
	_, err = b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a",
		Access: repository.AccessRequest{Kind: repository.AccessOpaque, Audience: []string{"https://evil.example"}}})
	if !errors.Is(err, repository.ErrInvalidTarget) || repository.ErrorCode(err) != "invalid_target" {
		t.Fatalf("audience outside the grant: %v", err)
	}
	if b.tableChecksum(t) != sum {
		t.Fatal("a refused call changed something")
	}
	if _, err := b.rotate(tok.Token, "client-a"); err != nil {
		t.Fatalf("the token after the refused calls: %v", err)
	}
	t.Logf("%d hostile calls refused", len(calls))
}

func TestCleanup_DeletesExpiredAccessTokensAndFeedEntries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	g := b.grantWithAccess(t, "user-1")
	if err := b.store.RevokeJTI(b.ctx, g.jtis[0], "client-a"); err != nil {
		t.Fatal(err)
	}
	live, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc", AccessRequest: repository.AccessRequest{Kind: repository.AccessJWT, TTL: 2 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.store.Stats(b.ctx)
	if err != nil || st.AccessTokens.Active != 4 || st.AccessTokens.Revoked != 1 || st.Revocations != 1 {
		t.Fatalf("stats: %+v, %v", st.AccessTokens, err)
	}
	b.clock.Advance(time.Hour)
	backlog, err := b.store.CleanupBacklog(b.ctx, repository.CleanupOptions{})
	if err != nil || backlog.AccessTokens != 4 || backlog.Revocations != 1 {
		t.Fatalf("backlog: %+v, %v", backlog, err)
	}
	res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{BatchSize: 2})
	if err != nil || res.AccessTokens != 4 || res.Revocations != 1 {
		t.Fatalf("cleanup: %+v, %v", res, err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_access_token"); n != 1 {
		t.Fatalf("%d access tokens left, want the live one", n)
	}
	if info, err := b.store.IntrospectJTI(b.ctx, live.JTI); err != nil || !info.Active {
		t.Fatalf("the live token after cleanup: %+v, %v", info, err)
	}
}

// feedWait bounds how long a test waits for a revocation to show in the feed: it shows once every
// transaction that was running on the cluster when it committed has ended, and the test cluster is
// shared with tests that hold transactions open for seconds.
const feedWait = 2 * time.Minute

// feed reads the revocation feed from its start until it holds at least n entries, and returns
// them; it fails the test after feedWait.
func (b *bundle) feed(t *testing.T, n int) []repository.Revocation {
	t.Helper()
	var all []repository.Revocation
	cursor := ""
	for deadline := time.Now().Add(feedWait); ; time.Sleep(20 * time.Millisecond) {
		page, err := b.store.RevokedSince(b.ctx, cursor, 0)
		if err != nil {
			t.Fatal(err)
		}
		all, cursor = append(all, page.Revocations...), page.Cursor
		if len(all) >= n && !page.More {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("the feed shows %d entries after %s, want %d", len(all), feedWait, n)
		}
	}
}

// A resend within the grace window gets the same refresh token and a new access token; a replay
// asking for an access token the grant does not allow is still a replay that revokes the family.
func TestAccess_GraceResendGetsANewAccessTokenAndAReplayRevokesWhateverItAsksFor(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 3))
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Audience: []string{"https://mcp.example"}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token)
	next, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a", Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(next.Token, next.Access.Token)
	resent, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a", Access: jwtAccess})
	if err != nil || resent.Token.Reveal() != next.Token.Reveal() || resent.Access == nil || resent.Access.JTI == "" {
		t.Fatalf("grace resend: %+v, %v", resent, err)
	}
	for _, probe := range []func() (*repository.Introspection, error){
		func() (*repository.Introspection, error) {
			return b.store.Introspect(b.ctx, next.Access.Token.Reveal())
		},
		func() (*repository.Introspection, error) { return b.store.IntrospectJTI(b.ctx, resent.Access.JTI) },
	} {
		if info, err := probe(); err != nil || !info.Active || !slices.Equal(info.Audience, []string{"https://mcp.example"}) {
			t.Fatalf("after the resend: %+v, %v", info, err)
		}
	}
	// Within the window, a resend asking for a foreign audience or an unbound DPoP token is
	// refused and changes nothing.
	sum := b.tableChecksum(t)
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a",
		Access: repository.AccessRequest{Kind: repository.AccessOpaque, Audience: []string{"https://evil.example"}}}); !errors.Is(err, repository.ErrInvalidTarget) {
		t.Fatalf("resend for a foreign audience: %v", err)
	}
	for _, presented := range []repository.Secret{tok.Token, next.Token} { // the grace path, the live token's
		if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: presented.Reveal(), ClientID: "client-a", SenderThumbprint: "abc",
			Access: repository.AccessRequest{Kind: repository.AccessOpaque, TokenType: repository.TokenTypeDPoP}}); !errors.Is(err, repository.ErrInvalidInput) {
			t.Fatalf("a DPoP token for a family bound to no key: %v", err)
		}
	}
	if b.tableChecksum(t) != sum {
		t.Fatal("a refused resend changed something")
	}
	// Rotated on, the first token is a replay, whatever access token it asks for.
	if _, err := b.rotate(next.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	_, err = b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a",
		Access: repository.AccessRequest{Kind: repository.AccessOpaque, Audience: []string{"https://evil.example"}}})
	if !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay asking for a foreign audience: %v, want a replay", err)
	}
	if f := b.family(t, tok.FamilyID); f.RevokedAt == nil {
		t.Fatal("the replay did not revoke the family")
	}
	if info, _ := b.store.IntrospectJTI(b.ctx, resent.Access.JTI); info.Active {
		t.Fatal("an access token of the revoked family is active")
	}
}

// A family whose refresh tokens expired stays while one of its access tokens can still be used:
// its access tokens are active through it.
func TestCleanup_KeepsAFamilyUntilItsAccessTokensHaveExpired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", TTL: 5 * time.Minute,
		Access: repository.AccessRequest{Kind: repository.AccessOpaque, TTL: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token, tok.Access.Token)
	b.clock.Advance(6 * time.Minute)
	if res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{}); err != nil || res.Families != 0 {
		t.Fatalf("cleanup while the access token lives: %+v, %v", res, err)
	}
	if info, err := b.store.Introspect(b.ctx, tok.Access.Token.Reveal()); err != nil || !info.Active {
		t.Fatalf("the access token after cleanup: %+v, %v", info, err)
	}
	// The pepper it was made under cannot be retired yet.
	uses, err := b.store.PepperUsage(b.ctx)
	if err != nil || len(uses) != 1 || uses[0].AccessTokens != 1 || uses[0].Retirable() {
		t.Fatalf("pepper usage: %+v, %v", uses, err)
	}
	b.clock.Advance(time.Hour)
	if res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{}); err != nil || res.Families != 1 || res.AccessTokens != 1 {
		t.Fatalf("cleanup once the access token expired: %+v, %v", res, err)
	}
}

// The access token issued with the live refresh token is named by the family row; revoking it
// alone must end it there too.
func TestRevokeToken_TheCurrentAccessTokenRevokedAloneIsInactive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, kind := range []repository.AccessKind{repository.AccessOpaque, repository.AccessJWT} {
		tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Access: repository.AccessRequest{Kind: kind}})
		if err != nil {
			t.Fatal(err)
		}
		b.remember(tok.Token)
		if kind == repository.AccessOpaque {
			b.remember(tok.Access.Token)
		}
		introspect := func() *repository.Introspection {
			t.Helper()
			var info *repository.Introspection
			if kind == repository.AccessJWT {
				info, err = b.store.IntrospectJTI(b.ctx, tok.Access.JTI)
			} else {
				info, err = b.store.Introspect(b.ctx, tok.Access.Token.Reveal())
			}
			if err != nil {
				t.Fatal(err)
			}
			return info
		}
		if n := b.count(t, "SELECT count(*) FROM oauth_family WHERE id = $1 AND current_access_key IS NOT NULL", tok.FamilyID); n != 1 || !introspect().Active {
			t.Fatalf("kind %d: the family row does not name its current access token, or it is inactive", kind)
		}
		if kind == repository.AccessJWT {
			err = b.store.RevokeJTI(b.ctx, tok.Access.JTI, "client-a")
		} else {
			err = b.store.RevokeToken(b.ctx, tok.Access.Token.Reveal(), "client-a")
		}
		if err != nil {
			t.Fatal(err)
		}
		if introspect().Active {
			t.Fatalf("kind %d: the current access token is active after its revocation", kind)
		}
		if n := b.count(t, "SELECT count(*) FROM oauth_family WHERE id = $1 AND current_access_key IS NULL AND revoked_at IS NULL", tok.FamilyID); n != 1 {
			t.Fatalf("kind %d: the family row still names the revoked token, or the family was revoked", kind)
		}
		if _, err := b.rotate(tok.Token, "client-a"); err != nil {
			t.Fatalf("kind %d: the refresh token after its access token's revocation: %v", kind, err)
		}
	}
}
