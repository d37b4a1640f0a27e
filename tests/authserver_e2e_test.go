package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/oauthstore/oauthstore/examples/authserver"
	"github.com/oauthstore/oauthstore/repository"
)

// The example authorization server (examples/authserver) end to end: golang.org/x/oauth2 as the
// client, over HTTP, on a real PostgreSQL, with the library's default grace window.

const (
	asApp       = "app"              // confidential
	asAppSecret = "app secret/+:%&=" // characters Basic carries form-encoded (RFC 6749 §2.3.1)
	asCLI       = "cli"              // public: PKCE, no secret
	asRS        = "rs"               // a resource server that introspects
	asRSSecret  = "rs-secret-0123456789"
	asRedirect  = "https://app.example/callback"
	asIssuer    = "https://as.example"
	asUser      = "demo-user"
)

var asScope = []string{"openid", "offline_access", "api"}

// authServerFixture is the example server on a test's database, behind a wrapper that can lose
// the next successful token response after the store committed it, as a broken connection does.
type authServerFixture struct {
	*bundle
	handler  http.Handler
	srv      *httptest.Server
	dropNext atomic.Bool
	granted  atomic.Int64 // token responses with status 200, delivered or lost
	dropped  atomic.Int64
	lastLost atomic.Pointer[tokenJSON] // the tokens of the last lost response
}

type tokenJSON struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

func authServerSetup(t *testing.T, accessTTL time.Duration) *authServerFixture {
	t.Helper()
	b := setup(t, setupOptions{realClock: true, configure: func(c *repository.Config) {
		c.GraceWindow = repository.DefaultGraceWindow // what x/oauth2's resend needs
	}})
	h, err := authserver.New(b.store, authserver.Options{
		Clients: []authserver.Client{
			{ID: asApp, Secret: asAppSecret, RedirectURIs: []string{asRedirect}, Scopes: asScope},
			{ID: asCLI, RedirectURIs: []string{asRedirect}, Scopes: asScope},
			{ID: asRS, Secret: asRSSecret, ResourceServer: true},
		},
		AccessTokenTTL: accessTTL,
		Issuer:         asIssuer,
		UserID:         asUser,
		// The server's log joins the store's: the secret sweep reads both when the test ends.
		Logger: slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &authServerFixture{bundle: b, handler: h}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *authServerFixture) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" {
		f.handler.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, r)
	if rec.Code == http.StatusOK {
		f.granted.Add(1)
		var tok tokenJSON
		_ = json.Unmarshal(rec.Body.Bytes(), &tok)
		for _, raw := range []string{tok.AccessToken, tok.RefreshToken} {
			if raw != "" {
				f.rememberRaw(raw)
			}
		}
		if f.dropNext.CompareAndSwap(true, false) {
			// Committed; the client never hears of it.
			f.dropped.Add(1)
			f.lastLost.Store(&tok)
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
			return
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// config is a fresh client configuration: its client-authentication style is not known yet
// unless style names one.
func (f *authServerFixture) config(clientID, secret string, style oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID: clientID, ClientSecret: secret, RedirectURL: asRedirect, Scopes: asScope,
		Endpoint: oauth2.Endpoint{AuthURL: f.srv.URL + "/authorize", TokenURL: f.srv.URL + "/token", AuthStyle: style},
	}
}

// authorize follows an authorization request to the redirect the server answers with, and
// returns the redirect's parameters.
func (f *authServerFixture) authorize(t *testing.T, authURL string) url.Values {
	t.Helper()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: status %d (%s), want 302", resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), asRedirect+"?") {
		t.Fatalf("authorize: redirected to %q, want %s", resp.Header.Get("Location"), asRedirect)
	}
	return loc.Query()
}

// code runs an authorization request with PKCE S256 and returns the code and its verifier.
func (f *authServerFixture) code(t *testing.T, conf *oauth2.Config) (code, verifier string) {
	t.Helper()
	verifier, state := oauth2.GenerateVerifier(), rand.Text()
	got := f.authorize(t, conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)))
	code = got.Get("code")
	f.rememberRaw(code)
	if code == "" || got.Get("state") != state || got.Get("iss") != asIssuer {
		t.Fatalf("authorization response %v: want a code, state %q and iss %q", got, state, asIssuer)
	}
	return code, verifier
}

// exchange runs the authorization code flow and returns the client's token.
func (f *authServerFixture) exchange(t *testing.T, conf *oauth2.Config) *oauth2.Token {
	t.Helper()
	code, verifier := f.code(t, conf)
	tok, err := conf.Exchange(f.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatal("exchange: an access token and a refresh token are both expected")
	}
	return tok
}

type asResponse struct {
	status int
	header http.Header
	body   map[string]any
}

// post sends a form to the server, with Basic credentials when user is not empty.
func (f *authServerFixture) post(t *testing.T, path, contentType, body, user, pass string) asResponse {
	t.Helper()
	req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if user != "" {
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := asResponse{status: resp.StatusCode, header: resp.Header}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s: status %d, body not JSON: %q", path, resp.StatusCode, raw)
		}
	}
	return r
}

const formType = "application/x-www-form-urlencoded"

// introspect asks the server about a token as the resource server.
func (f *authServerFixture) introspect(t *testing.T, token string) map[string]any {
	t.Helper()
	r := f.post(t, "/introspect", formType, url.Values{"token": {token}}.Encode(), asRS, asRSSecret)
	if r.status != http.StatusOK {
		t.Fatalf("introspect: status %d %v", r.status, r.body)
	}
	return r.body
}

func (f *authServerFixture) assertInactive(t *testing.T, what, token string) {
	t.Helper()
	if got := f.introspect(t, token); len(got) != 1 || got["active"] != false {
		t.Fatalf("%s introspects as %v, want exactly {\"active\": false}", what, got)
	}
}

func (f *authServerFixture) assertActive(t *testing.T, what, token, clientID, use string) map[string]any {
	t.Helper()
	got := f.introspect(t, token)
	if got["active"] != true || got["client_id"] != clientID || got["sub"] != asUser || got["token_use"] != use {
		t.Fatalf("%s introspects as %v, want active, client %s, sub %s, %s", what, got, clientID, asUser, use)
	}
	return got
}

func (f *authServerFixture) familyOf(t *testing.T, refreshToken string) string {
	t.Helper()
	info, err := f.store.Lookup(f.ctx, refreshToken)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	return info.FamilyID
}

func (f *authServerFixture) tombstones(t *testing.T, family string) int {
	t.Helper()
	return f.count(t, `SELECT count(*) FROM oauth_refresh_tombstone WHERE family_id = $1`, family)
}

func (f *authServerFixture) accessTokens(t *testing.T, family string) int {
	t.Helper()
	return f.count(t, `SELECT count(*) FROM oauth_access_token WHERE family_id = $1`, family)
}

// assertOAuthError checks that err is the token endpoint's answer code with status.
func assertOAuthError(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != code || re.Response.StatusCode != status {
		t.Fatalf("%s: %v, want %d %s", what, err, status, code)
	}
}

// shortAccessTTL is expired for x/oauth2, which refreshes a token 10 s before its expiry, so every
// Token call refreshes; and long enough that an access token checked a few statements after it was
// issued is still active on a loaded machine.
const shortAccessTTL = 5 * time.Second

func TestAuthServer_PublicClientCodeFlowWithPKCEThenEveryRefreshRotates(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, shortAccessTTL)
	// A public client: client_id in the body, no secret; the code is bound to its verifier.
	conf := f.config(asCLI, "", oauth2.AuthStyleInParams)
	tok := f.exchange(t, conf)
	if tok.Extra("scope") != "openid offline_access api" || time.Until(tok.Expiry) > shortAccessTTL+time.Second {
		t.Fatalf("token response: scope %q, expiry in %s; want the client's scope and %s", tok.Extra("scope"), time.Until(tok.Expiry), shortAccessTTL)
	}
	family := f.familyOf(t, tok.RefreshToken)
	f.assertActive(t, "the first access token", tok.AccessToken, asCLI, repository.TokenUseAccess)

	// Every Token call refreshes (shortAccessTTL), and each refresh must rotate.
	const refreshes = 12
	ts := conf.TokenSource(f.ctx, tok)
	prev := tok
	for i := 1; i <= refreshes; i++ {
		next, err := ts.Token()
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if next.RefreshToken == prev.RefreshToken || next.AccessToken == prev.AccessToken {
			t.Fatalf("refresh %d: the refresh or access token did not change", i)
		}
		if got := f.familyOf(t, next.RefreshToken); got != family {
			t.Fatalf("refresh %d: token of family %s, want %s", i, got, family)
		}
		if n := f.liveTokens(t, family); n != 1 {
			t.Fatalf("refresh %d: %d live tokens, want 1", i, n)
		}
		if n := f.tombstones(t, family); n != i {
			t.Fatalf("refresh %d: %d consumed tokens, want %d", i, n, i)
		}
		if n := f.accessTokens(t, family); n != i+1 {
			t.Fatalf("refresh %d: %d access tokens in the family, want %d", i, n, i+1)
		}
		got := f.assertActive(t, "the new access token", next.AccessToken, asCLI, repository.TokenUseAccess)
		if exp, iat := got["exp"].(float64), got["iat"].(float64); exp-iat != shortAccessTTL.Seconds() {
			t.Fatalf("refresh %d: access token lives %v s, want %s", i, exp-iat, shortAccessTTL)
		}
		f.assertInactive(t, "the consumed refresh token", prev.RefreshToken)
		prev = next
	}
	if got := f.granted.Load(); got != refreshes+1 {
		t.Fatalf("%d token responses, want %d: a Token call did not refresh", got, refreshes+1)
	}
	fam := f.family(t, family)
	if fam.RevokedAt != nil || fam.RotationCount != refreshes || fam.ClientID != asCLI || fam.UserID != asUser {
		t.Fatalf("family after %d refreshes: %+v", refreshes, fam)
	}
	f.checkInvariants(t, "after the refreshes")
}

func TestAuthServer_ALostRefreshResponseIsResentByTheClientAndTheSessionSurvives(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, shortAccessTTL)
	tok := f.exchange(t, f.config(asApp, asAppSecret, oauth2.AuthStyleAutoDetect))
	family := f.familyOf(t, tok.RefreshToken)
	// A fresh configuration does not know the authentication style yet: x/oauth2 sends the refresh
	// with Basic and, when that fails, resends it at once with the credentials in the body.
	conf := f.config(asApp, asAppSecret, oauth2.AuthStyleAutoDetect)
	ts := conf.TokenSource(f.ctx, tok)
	f.dropNext.Store(true)
	next, err := ts.Token()
	if err != nil {
		t.Fatalf("refresh with a lost response: %v", err)
	}
	if f.dropped.Load() != 1 || f.granted.Load() != 3 {
		t.Fatalf("%d responses lost, %d granted (the exchange included), want 1 and 3: the client did not resend",
			f.dropped.Load(), f.granted.Load())
	}
	if lost := f.lastLost.Load(); lost == nil || next.RefreshToken != lost.RefreshToken {
		t.Fatal("the resend got another refresh token than the lost response carried: the family forked")
	}
	fam := f.family(t, family)
	if fam.RevokedAt != nil || fam.RotationCount != 1 {
		t.Fatalf("family after the resend: revoked %v (%s), %d rotations; want alive and 1", fam.RevokedAt, fam.RevokedReason, fam.RotationCount)
	}
	if f.liveTokens(t, family) != 1 || f.tombstones(t, family) != 1 {
		t.Fatalf("%d live and %d consumed tokens, want 1 and 1", f.liveTokens(t, family), f.tombstones(t, family))
	}
	f.assertActive(t, "the resend's access token", next.AccessToken, asApp, repository.TokenUseAccess)

	last := refreshes(t, f.bundle, ts, 3)
	if fam := f.family(t, family); fam.RevokedAt != nil || fam.RotationCount != 4 {
		t.Fatalf("family after 3 more refreshes: revoked %v, %d rotations; want alive and 4", fam.RevokedAt, fam.RotationCount)
	}
	f.assertActive(t, "the last refresh token", last.RefreshToken, asApp, repository.TokenUseRefresh)
	f.assertAliveWithOneLiveToken(t, family)
	f.checkInvariants(t, "after the resend")
}

func TestAuthServer_RevokingARefreshTokenRevokesItsFamilyAndIntrospectionTurnsInactive(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	conf := f.config(asApp, asAppSecret, oauth2.AuthStyleInHeader)
	tok := f.exchange(t, conf)
	family := f.familyOf(t, tok.RefreshToken)
	at := f.assertActive(t, "the access token", tok.AccessToken, asApp, repository.TokenUseAccess)
	if at["scope"] != "openid offline_access api" || at["token_type"] != "Bearer" {
		t.Fatalf("access token introspection: %v", at)
	}
	f.assertActive(t, "the refresh token", tok.RefreshToken, asApp, repository.TokenUseRefresh)

	for i := range 2 { // revoking again succeeds as well
		r := f.post(t, "/revoke", formType, url.Values{"token": {tok.RefreshToken}, "token_type_hint": {"refresh_token"}}.Encode(), asApp, asAppSecret)
		if r.status != http.StatusOK {
			t.Fatalf("revocation %d: status %d %v, want 200", i+1, r.status, r.body)
		}
	}
	f.assertInactive(t, "the access token of the revoked family", tok.AccessToken)
	f.assertInactive(t, "the revoked refresh token", tok.RefreshToken)
	_, err := conf.TokenSource(f.ctx, expired(tok.RefreshToken)).Token()
	assertOAuthError(t, "refresh after revocation", err, http.StatusBadRequest, "invalid_grant")

	fam := f.family(t, family)
	if fam.RevokedAt == nil || fam.RevokedReason != repository.ReasonTokenRevoked || fam.RotationCount != 0 {
		t.Fatalf("family after revocation: %+v", fam)
	}
	f.checkInvariants(t, "after the revocation")
}

func TestAuthServer_RevokingAnAccessTokenRevokesItAlone(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	conf := f.config(asApp, asAppSecret, oauth2.AuthStyleInParams)
	tok := f.exchange(t, conf)
	family := f.familyOf(t, tok.RefreshToken)
	// client_secret_post this time.
	r := f.post(t, "/revoke", formType, url.Values{"token": {tok.AccessToken}, "client_id": {asApp}, "client_secret": {asAppSecret}}.Encode(), "", "")
	if r.status != http.StatusOK {
		t.Fatalf("revocation: status %d %v, want 200", r.status, r.body)
	}
	f.assertInactive(t, "the revoked access token", tok.AccessToken)
	f.assertActive(t, "the refresh token", tok.RefreshToken, asApp, repository.TokenUseRefresh)
	next, err := conf.TokenSource(f.ctx, expired(tok.RefreshToken)).Token()
	if err != nil {
		t.Fatalf("refresh after the access token's revocation: %v", err)
	}
	f.assertActive(t, "the new access token", next.AccessToken, asApp, repository.TokenUseAccess)
	if n := f.count(t, `SELECT count(*) FROM oauth_access_token WHERE family_id = $1 AND revoked_at IS NOT NULL`, family); n != 1 {
		t.Fatalf("%d revoked access tokens, want 1", n)
	}
	f.assertAliveWithOneLiveToken(t, family)
	f.checkInvariants(t, "after the revocation")
}

func TestAuthServer_RevokingAnUnknownTokenIs200AndAnotherClientsTokenIsRefused(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	tok := f.exchange(t, f.config(asCLI, "", oauth2.AuthStyleInParams))
	before := f.tableChecksum(t)
	for _, token := range []string{"not-a-token", rand.Text() + rand.Text()} {
		r := f.post(t, "/revoke", formType, url.Values{"token": {token}}.Encode(), asApp, asAppSecret)
		if r.status != http.StatusOK {
			t.Fatalf("unknown token: status %d %v, want 200 (RFC 7009 §2.2)", r.status, r.body)
		}
	}
	for _, token := range []string{tok.RefreshToken, tok.AccessToken} {
		r := f.post(t, "/revoke", formType, url.Values{"token": {token}}.Encode(), asApp, asAppSecret)
		if r.status != http.StatusBadRequest || r.body["error"] != "invalid_grant" {
			t.Fatalf("another client's token: status %d %v, want 400 invalid_grant", r.status, r.body)
		}
	}
	r := f.post(t, "/revoke", formType, "", asApp, asAppSecret)
	if r.status != http.StatusBadRequest || r.body["error"] != "invalid_request" {
		t.Fatalf("no token: status %d %v, want 400 invalid_request", r.status, r.body)
	}
	if f.tableChecksum(t) != before {
		t.Fatal("a refused or unknown revocation changed the database")
	}
	f.assertActive(t, "the other client's refresh token", tok.RefreshToken, asCLI, repository.TokenUseRefresh)
	f.assertActive(t, "the other client's access token", tok.AccessToken, asCLI, repository.TokenUseAccess)
}

func TestAuthServer_AReplayedRefreshTokenRevokesTheFamilyAndItsAccessTokens(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, shortAccessTTL)
	conf := f.config(asApp, asAppSecret, oauth2.AuthStyleInHeader)
	first := f.exchange(t, conf)
	family := f.familyOf(t, first.RefreshToken)
	ts := conf.TokenSource(f.ctx, first)
	second := refreshes(t, f.bundle, ts, 1)
	third := refreshes(t, f.bundle, ts, 1)
	for _, at := range []string{first.AccessToken, second.AccessToken, third.AccessToken} {
		f.assertActive(t, "an access token before the replay", at, asApp, repository.TokenUseAccess)
	}
	// The first token again, after its successor was used: outside any grace, a theft.
	_, err := conf.TokenSource(f.ctx, expired(first.RefreshToken)).Token()
	assertOAuthError(t, "the replayed token", err, http.StatusBadRequest, "invalid_grant")

	fam := f.family(t, family)
	if fam.RevokedAt == nil || fam.RevokedReason != repository.ReasonReplayDetected {
		t.Fatalf("family after the replay: %+v", fam)
	}
	for i, at := range []string{first.AccessToken, second.AccessToken, third.AccessToken} {
		f.assertInactive(t, fmt.Sprintf("access token %d of the revoked family", i+1), at)
	}
	f.assertInactive(t, "the current refresh token", third.RefreshToken)
	_, err = conf.TokenSource(f.ctx, expired(third.RefreshToken)).Token()
	assertOAuthError(t, "the current token after the replay", err, http.StatusBadRequest, "invalid_grant")
	// The family's revocation covers its access tokens: none was written (I8).
	if n, revoked := f.accessTokens(t, family), f.count(t, `SELECT count(*) FROM oauth_access_token WHERE family_id = $1 AND revoked_at IS NOT NULL`, family); n != 3 || revoked != 0 {
		t.Fatalf("%d access tokens, %d revoked one by one; want 3 and 0", n, revoked)
	}
	f.checkInvariants(t, "after the replay")
}

func TestAuthServer_ACodeExchangedTwiceRevokesItsGrant(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	// The public client as x/oauth2 sends it first: Basic with an empty password.
	conf := f.config(asCLI, "", oauth2.AuthStyleInHeader)
	code, verifier := f.code(t, conf)
	tok, err := conf.Exchange(f.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	f.rememberRaw(tok.AccessToken, tok.RefreshToken)
	family := f.familyOf(t, tok.RefreshToken)
	_, err = conf.Exchange(f.ctx, code, oauth2.VerifierOption(verifier))
	assertOAuthError(t, "the code again", err, http.StatusBadRequest, "invalid_grant")
	if fam := f.family(t, family); fam.RevokedAt == nil || fam.RevokedReason != repository.ReasonCodeReplayDetected {
		t.Fatalf("family after the code's replay: %+v", fam)
	}
	f.assertInactive(t, "the access token of the first exchange", tok.AccessToken)
	f.assertInactive(t, "the refresh token of the first exchange", tok.RefreshToken)
	if n := f.count(t, `SELECT count(*) FROM oauth_family`); n != 1 {
		t.Fatalf("%d families, want the one of the first exchange", n)
	}
	f.checkInvariants(t, "after the code's replay")
}

func TestAuthServer_ClientCredentialsIssuesAnAccessTokenWithoutARefreshToken(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	cc := &clientcredentials.Config{ClientID: asApp, ClientSecret: asAppSecret, TokenURL: f.srv.URL + "/token", Scopes: []string{"api"}}
	tok, err := cc.Token(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.rememberRaw(tok.AccessToken)
	if tok.RefreshToken != "" {
		t.Fatal("client_credentials returned a refresh token (RFC 6749 §4.4.3)")
	}
	got := f.introspect(t, tok.AccessToken)
	if got["active"] != true || got["client_id"] != asApp || got["sub"] != asApp || got["scope"] != "api" {
		t.Fatalf("introspection: %v", got)
	}
	if n, fams := f.count(t, `SELECT count(*) FROM oauth_access_token WHERE standalone AND client_id = $1`, asApp),
		f.count(t, `SELECT count(*) FROM oauth_family`); n != 1 || fams != 0 {
		t.Fatalf("%d standalone access tokens and %d families, want 1 and 0", n, fams)
	}
}

func TestAuthServer_IntrospectionAnswersOnlyAuthenticatedCallersAboutTheirTokens(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	tok := f.exchange(t, f.config(asCLI, "", oauth2.AuthStyleInParams))
	body := url.Values{"token": {tok.AccessToken}}.Encode()
	for _, c := range []struct{ name, user, pass string }{
		{"wrong secret", asRS, "wrong"},
		{"no credentials", "", ""},
		{"a public client", asCLI, ""},
	} {
		r := f.post(t, "/introspect", formType, body, c.user, c.pass)
		if r.status != http.StatusUnauthorized || r.body["error"] != "invalid_client" || r.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%s: status %d %v, want 401 invalid_client with a challenge", c.name, r.status, r.body)
		}
	}
	// A confidential client that is not a resource server learns nothing of another's token.
	r := f.post(t, "/introspect", formType, body, asApp, asAppSecret)
	if r.status != http.StatusOK || len(r.body) != 1 || r.body["active"] != false {
		t.Fatalf("another client's token: status %d %v, want {\"active\": false}", r.status, r.body)
	}
	if r := f.post(t, "/introspect", formType, "", asRS, asRSSecret); r.status != http.StatusBadRequest || r.body["error"] != "invalid_request" {
		t.Fatalf("no token: status %d %v, want 400 invalid_request", r.status, r.body)
	}
	f.assertActive(t, "the token, for the resource server", tok.AccessToken, asCLI, repository.TokenUseAccess)
	if n := f.count(t, `SELECT count(*) FROM oauth_access_token WHERE revoked_at IS NULL`); n != 1 {
		t.Fatalf("%d unrevoked access tokens, want 1: introspection changes nothing", n)
	}
}

func TestAuthServer_TokenEndpointErrorsHaveTheirStatusAndHeaders(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	conf := f.config(asApp, asAppSecret, oauth2.AuthStyleInHeader)
	tok := f.exchange(t, conf)
	family := f.familyOf(t, tok.RefreshToken)
	code, verifier := f.code(t, conf) // a pending code, for the refused exchanges
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}}
	with := func(v url.Values, kv ...string) string {
		out := url.Values{}
		for k, vs := range v {
			out[k] = append([]string(nil), vs...)
		}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out.Encode()
	}
	cases := []struct {
		name, contentType, body, user, pass string
		authorization                       string // replaces Basic when set
		status                              int
		code                                string
	}{
		{name: "wrong Basic secret", body: refresh.Encode(), user: asApp, pass: "wrong", status: 401, code: "invalid_client"},
		{name: "Basic of an unknown client", body: refresh.Encode(), user: "nobody", pass: asAppSecret, status: 401, code: "invalid_client"},
		{name: "not Basic", body: refresh.Encode(), authorization: "Bearer " + tok.AccessToken, status: 401, code: "invalid_client"},
		{name: "wrong client_secret_post", body: with(refresh, "client_id", asApp, "client_secret", "wrong"), status: 401, code: "invalid_client"},
		{name: "confidential client without its secret", body: with(refresh, "client_id", asApp), status: 401, code: "invalid_client"},
		{name: "no client at all", body: refresh.Encode(), status: 401, code: "invalid_client"},
		{name: "public client with a secret", body: with(refresh, "client_id", asCLI, "client_secret", "x"), status: 401, code: "invalid_client"},
		{name: "two authentication methods", body: with(refresh, "client_secret", asAppSecret), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "missing grant_type", body: with(url.Values{"refresh_token": {tok.RefreshToken}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "empty grant_type", body: with(url.Values{"refresh_token": {tok.RefreshToken}}, "grant_type", ""), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "unknown grant_type", body: with(url.Values{"username": {"u"}, "password": {"p"}}, "grant_type", "password"), user: asApp, pass: asAppSecret, status: 400, code: "unsupported_grant_type"},
		{name: "repeated parameter", body: with(refresh, "grant_type", "refresh_token"), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "repeated parameter with a hostile name", body: with(refresh, "é\"\\", "1", "é\"\\", "2"), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "JSON body", contentType: "application/json", body: `{"grant_type":"refresh_token","refresh_token":"` + tok.RefreshToken + `"}`, user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "missing refresh_token", body: with(url.Values{"grant_type": {"refresh_token"}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "unknown refresh token", body: with(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rand.Text()}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_grant"},
		{name: "scope beyond the grant", body: with(refresh, "scope", "openid admin"), user: asApp, pass: asAppSecret, status: 400, code: "invalid_scope"},
		{name: "missing code", body: with(url.Values{"grant_type": {"authorization_code"}, "redirect_uri": {asRedirect}, "code_verifier": {verifier}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "missing code_verifier", body: with(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {asRedirect}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "missing redirect_uri", body: with(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "code_verifier": {verifier}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_request"},
		{name: "wrong code_verifier", body: with(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {asRedirect}, "code_verifier": {oauth2.GenerateVerifier()}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_grant"},
		{name: "client_credentials of a public client", body: with(url.Values{"grant_type": {"client_credentials"}}, "client_id", asCLI), status: 400, code: "unauthorized_client"},
		{name: "client_credentials beyond the client's scope", body: with(url.Values{"grant_type": {"client_credentials"}, "scope": {"admin"}}), user: asApp, pass: asAppSecret, status: 400, code: "invalid_scope"},
	}
	before := f.tableChecksum(t)
	for _, c := range cases {
		ct := c.contentType
		if ct == "" {
			ct = formType
		}
		req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, f.srv.URL+"/token", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", ct)
		switch {
		case c.authorization != "":
			req.Header.Set("Authorization", c.authorization)
		case c.user != "":
			req.SetBasicAuth(url.QueryEscape(c.user), url.QueryEscape(c.pass))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != c.status || body["error"] != c.code {
			t.Errorf("%s: status %d %v (%v), want %d %s", c.name, resp.StatusCode, body, err, c.status, c.code)
			continue
		}
		h := resp.Header
		if h.Get("Cache-Control") != "no-store" || h.Get("Pragma") != "no-cache" || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Errorf("%s: headers %v, want no-store, no-cache and JSON", c.name, h)
		}
		if challenge := h.Get("WWW-Authenticate"); (c.status == 401) != strings.HasPrefix(challenge, `Basic realm="`) {
			t.Errorf("%s: status %d with WWW-Authenticate %q, want a Basic challenge exactly with 401", c.name, c.status, challenge)
		}
		if d, _ := body["error_description"].(string); strings.Contains(d, "oauthstore") || strings.Contains(d, "invalid_grant:") {
			t.Errorf("%s: the description %q carries the store's error", c.name, d)
		}
		// RFC 6749 §5.2: an error_description is printable ASCII without '"' or '\'.
		if d, _ := body["error_description"].(string); strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r > 0x7e || r == '"' || r == '\\' }) {
			t.Errorf("%s: the description %q holds characters RFC 6749 §5.2 excludes", c.name, d)
		}
	}
	// Through x/oauth2 as well: a wrong secret is an invalid_client 401, whichever style it tries.
	_, err := f.config(asApp, "wrong", oauth2.AuthStyleAutoDetect).TokenSource(f.ctx, expired(tok.RefreshToken)).Token()
	assertOAuthError(t, "x/oauth2 with a wrong secret", err, http.StatusUnauthorized, "invalid_client")
	resp, err := http.Get(f.srv.URL + "/token")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET /token: status %d, Allow %q; want 405 and POST", resp.StatusCode, resp.Header.Get("Allow"))
	}

	if f.tableChecksum(t) != before {
		t.Fatal("a refused token request changed the database")
	}
	// Nothing refused was consumed: the code and the refresh token still work.
	if _, err := conf.Exchange(f.ctx, code, oauth2.VerifierOption(verifier)); err != nil {
		t.Fatalf("the code after the refused exchanges: %v", err)
	}
	if _, err := conf.TokenSource(f.ctx, expired(tok.RefreshToken)).Token(); err != nil {
		t.Fatalf("the refresh token after the refused refreshes: %v", err)
	}
	f.assertAliveWithOneLiveToken(t, family)
	f.checkInvariants(t, "after the refused requests")
}

func TestAuthServer_AFailingDatabaseIs500ServerErrorAndTellsTheClientNothing(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	conf := f.config(asApp, asAppSecret, oauth2.AuthStyleInHeader)
	tok := f.exchange(t, conf)
	family := f.familyOf(t, tok.RefreshToken)
	// Every write to the family table fails, as it would on a full disk or a read-only server.
	if _, err := f.pool.Exec(f.ctx, `
		CREATE FUNCTION authserver_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$;
		CREATE TRIGGER authserver_test_fail BEFORE UPDATE ON oauth_family FOR EACH ROW EXECUTE FUNCTION authserver_test_fail();`); err != nil {
		t.Fatal(err)
	}
	r := f.post(t, "/token", formType, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}}.Encode(), asApp, asAppSecret)
	if r.status != http.StatusInternalServerError || len(r.body) != 1 || r.body["error"] != "server_error" {
		t.Fatalf("refresh on a failing database: status %d %v, want 500 and {\"error\": \"server_error\"} alone", r.status, r.body)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Fatal("server_error without Cache-Control: no-store")
	}
	if !strings.Contains(f.logs.String(), "disk on fire") {
		t.Fatal("the cause of the server_error is not in the log")
	}
	if _, err := f.pool.Exec(f.ctx, `DROP TRIGGER authserver_test_fail ON oauth_family; DROP FUNCTION authserver_test_fail()`); err != nil {
		t.Fatal(err)
	}
	// The failed rotation committed nothing: the same token rotates now.
	if fam := f.family(t, family); fam.RotationCount != 0 || f.tombstones(t, family) != 0 {
		t.Fatalf("after the failure: %d rotations, %d consumed tokens; want none", fam.RotationCount, f.tombstones(t, family))
	}
	if _, err := conf.TokenSource(f.ctx, expired(tok.RefreshToken)).Token(); err != nil {
		t.Fatalf("refresh after the failure: %v", err)
	}
	f.assertAliveWithOneLiveToken(t, family)
	f.checkInvariants(t, "after the failure")
}

func TestAuthServer_AuthorizationErrorsAreShownOrRedirected(t *testing.T) {
	t.Parallel()
	f := authServerSetup(t, time.Minute)
	_, challenge := pkce(t)
	good := url.Values{
		"response_type": {"code"}, "client_id": {asApp}, "redirect_uri": {asRedirect}, "state": {"st-1"},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "scope": {"openid api"},
	}
	query := func(edit func(url.Values)) string {
		v := url.Values{}
		for k, vs := range good {
			v[k] = append([]string(nil), vs...)
		}
		edit(v)
		return f.srv.URL + "/authorize?" + v.Encode()
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// Without a valid client and redirect URI, the error is shown, never redirected (§4.1.2.1).
	for _, c := range []struct {
		name string
		edit func(url.Values)
	}{
		{"unknown client", func(v url.Values) { v.Set("client_id", "nobody") }},
		{"missing client_id", func(v url.Values) { v.Del("client_id") }},
		{"unregistered redirect_uri", func(v url.Values) { v.Set("redirect_uri", "https://evil.example/callback") }},
		{"missing redirect_uri", func(v url.Values) { v.Del("redirect_uri") }},
		{"repeated redirect_uri", func(v url.Values) { v.Add("redirect_uri", "https://evil.example/callback") }},
	} {
		resp, err := noFollow.Get(query(c.edit))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
			t.Errorf("%s: status %d, Location %q; want 400 and no redirect", c.name, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	// With them, the error goes back to the client, with its state.
	for _, c := range []struct {
		name, code string
		edit       func(url.Values)
	}{
		{"missing response_type", "invalid_request", func(v url.Values) { v.Del("response_type") }},
		{"implicit grant", "unsupported_response_type", func(v url.Values) { v.Set("response_type", "token") }},
		{"no PKCE", "invalid_request", func(v url.Values) { v.Del("code_challenge"); v.Del("code_challenge_method") }},
		{"plain PKCE", "invalid_request", func(v url.Values) { v.Set("code_challenge_method", "plain") }},
		{"malformed challenge", "invalid_request", func(v url.Values) { v.Set("code_challenge", "short") }},
		{"scope beyond the client's", "invalid_scope", func(v url.Values) { v.Set("scope", "openid admin") }},
		{"repeated scope", "invalid_request", func(v url.Values) { v.Add("scope", "api") }},
	} {
		got := f.authorize(t, query(c.edit))
		if got.Get("error") != c.code || got.Get("state") != "st-1" || got.Get("code") != "" || got.Get("iss") != asIssuer {
			t.Errorf("%s: redirected with %v, want error %s, the state and the issuer", c.name, got, c.code)
		}
	}
	if n := f.count(t, `SELECT count(*) FROM oauth_authorization_code`); n != 0 {
		t.Fatalf("%d codes stored by refused authorization requests, want 0", n)
	}
	got := f.authorize(t, query(func(url.Values) {}))
	f.rememberRaw(got.Get("code"))
	if got.Get("code") == "" || got.Get("state") != "st-1" {
		t.Fatalf("the valid request: %v", got)
	}
	if n := f.count(t, `SELECT count(*) FROM oauth_authorization_code WHERE client_id = $1 AND redirect_uri = $2 AND consumed_at IS NULL`, asApp, asRedirect); n != 1 {
		t.Fatalf("%d pending codes after the valid request, want 1", n)
	}
}
