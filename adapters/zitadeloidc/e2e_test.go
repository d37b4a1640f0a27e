package zitadeloidc_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/client/profile"
	"github.com/zitadel/oidc/v3/pkg/client/rp"
	"github.com/zitadel/oidc/v3/pkg/client/rs"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/oauthstore/oauthstore/repository"
)

var scopes = []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeOfflineAccess}

func (e *env) relyingParty() rp.RelyingParty {
	e.t.Helper()
	relying, err := rp.NewRelyingPartyOIDC(e.ctx, e.issuer, webClient, webSecret, redirectURI, scopes, rp.WithHTTPClient(e.http))
	if err != nil {
		e.t.Fatal(err)
	}
	return relying
}

func (e *env) resourceServer() rs.ResourceServer {
	e.t.Helper()
	r, err := rs.NewResourceServerClientCredentials(e.ctx, e.issuer, webClient, webSecret, rs.WithClient(e.http))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// codeFlow signs the user in through relying's code flow with PKCE and returns the tokens and the
// code they were exchanged for.
func (e *env) codeFlow(relying rp.RelyingParty) (*oidc.Tokens[*oidc.IDTokenClaims], string, string) {
	e.t.Helper()
	verifier, challenge := pkce()
	code, state := e.authorize(rp.AuthURL("state-1", relying, rp.WithCodeChallenge(challenge)))
	if state != "state-1" {
		e.t.Fatalf("state %q came back, want state-1", state)
	}
	tokens, err := rp.CodeExchange[*oidc.IDTokenClaims](e.ctx, code, relying, rp.WithCodeVerifier(verifier))
	if err != nil {
		e.t.Fatalf("code exchange: %v", err)
	}
	if tokens.AccessToken == "" || tokens.RefreshToken == "" || tokens.IDTokenClaims == nil {
		e.t.Fatal("the code exchange did not return an access, a refresh and an ID token")
	}
	return tokens, code, verifier
}

func (e *env) active(r rs.ResourceServer, accessToken string) bool {
	e.t.Helper()
	resp, err := rs.Introspect[*oidc.IntrospectionResponse](e.ctx, r, accessToken)
	if err != nil {
		e.t.Fatalf("introspection: %v", err)
	}
	return resp.Active
}

func TestRP_CodeFlowWithPKCERefreshIntrospectionAndRevocation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	relying, resource := e.relyingParty(), e.resourceServer()
	tokens, code, _ := e.codeFlow(relying)
	if claims := tokens.IDTokenClaims; claims.Subject != userID || !slices.Contains(claims.AuthenticationMethodsReferences, "pwd") {
		t.Fatalf("ID token: sub %q amr %v", claims.Subject, claims.AuthenticationMethodsReferences)
	}
	first, err := e.store.Lookup(e.ctx, tokens.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if first.ClientID != webClient || first.UserID != userID || first.Claims.SessionID != userSessionID || !slices.Contains(first.Scope, oidc.ScopeOfflineAccess) {
		t.Fatalf("the grant in the store: %+v", first.Grant)
	}
	if info, err := e.store.LookupCode(e.ctx, code); err != nil || info.ConsumedAt == nil || info.FamilyID != first.FamilyID {
		t.Fatalf("the code after the exchange: %+v, %v (want consumed, producing family %s)", info, err, first.FamilyID)
	}

	// Introspection (rs) and userinfo (rp) answer from the store.
	resp, err := rs.Introspect[*oidc.IntrospectionResponse](e.ctx, resource, tokens.AccessToken)
	if err != nil || !resp.Active || resp.Subject != userID || resp.ClientID != webClient || !slices.Contains(resp.Scope, oidc.ScopeOpenID) {
		t.Fatalf("introspection of the first access token: %+v, %v", resp, err)
	}
	info, err := rp.Userinfo[*oidc.UserInfo](e.ctx, tokens.AccessToken, oidc.BearerToken, userID, relying)
	if err != nil || info.PreferredUsername != "ada" {
		t.Fatalf("userinfo: %+v, %v", info, err)
	}

	// Three refreshes: a new refresh token each time, one live token in the family.
	refreshTokens, accessTokens := []string{tokens.RefreshToken}, []string{tokens.AccessToken}
	for i := range 3 {
		next, err := rp.RefreshTokens[*oidc.IDTokenClaims](e.ctx, relying, refreshTokens[len(refreshTokens)-1], "", "")
		if err != nil {
			t.Fatalf("refresh %d: %v", i+1, err)
		}
		if next.RefreshToken == "" || slices.Contains(refreshTokens, next.RefreshToken) || slices.Contains(accessTokens, next.AccessToken) {
			t.Fatalf("refresh %d did not rotate", i+1)
		}
		refreshTokens, accessTokens = append(refreshTokens, next.RefreshToken), append(accessTokens, next.AccessToken)
	}
	if n := e.liveTokens(first.FamilyID, refreshTokens...); n != 1 {
		t.Fatalf("%d live refresh tokens in the family after 3 refreshes, want 1", n)
	}
	if fam, err := e.store.Family(e.ctx, first.FamilyID); err != nil || fam.RotationCount != 3 {
		t.Fatalf("family: %+v, %v (want 3 rotations)", fam, err)
	}

	// Revoking an access token ends it alone; revoking the refresh token ends the family.
	if err := rp.RevokeToken(e.ctx, relying, accessTokens[0], "access_token"); err != nil {
		t.Fatalf("revoke the first access token: %v", err)
	}
	if e.active(resource, accessTokens[0]) || !e.active(resource, accessTokens[3]) {
		t.Fatal("revoking one access token did not end it alone")
	}
	if err := rp.RevokeToken(e.ctx, relying, refreshTokens[3], "refresh_token"); err != nil {
		t.Fatalf("revoke the refresh token: %v", err)
	}
	if got, err := e.store.Lookup(e.ctx, refreshTokens[3]); err != nil || got.FamilyRevokedAt == nil {
		t.Fatalf("family after revoking its refresh token: %+v, %v", got, err)
	}
	for i, at := range accessTokens {
		if e.active(resource, at) {
			t.Fatalf("access token %d still active after the family was revoked", i)
		}
	}
	if _, err := rp.RefreshTokens[*oidc.IDTokenClaims](e.ctx, relying, refreshTokens[3], "", ""); err == nil {
		t.Fatal("a revoked refresh token was refreshed")
	}
	e.notStored(append(append([]string{code, tokens.IDToken}, refreshTokens...), accessTokens...)...)
	// An unknown token is revoked successfully (RFC 7009 §2.2).
	if err := rp.RevokeToken(e.ctx, relying, "not-a-token-of-this-server", ""); err != nil {
		t.Fatalf("revoke an unknown token: %v", err)
	}
}

func TestRP_ReplayedRefreshTokenIsInvalidGrantAndRevokesTheFamily(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{GraceWindow: repository.StrictRotation})
	relying, resource := e.relyingParty(), e.resourceServer()
	tokens, _, _ := e.codeFlow(relying)
	next, err := rp.RefreshTokens[*oidc.IDTokenClaims](e.ctx, relying, tokens.RefreshToken, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if !e.active(resource, next.AccessToken) {
		t.Fatal("the rotated access token is not active")
	}
	status, code := e.tokenError(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tokens.RefreshToken}})
	if status != 400 || code != "invalid_grant" {
		t.Fatalf("replay answered %d %q, want 400 invalid_grant", status, code)
	}
	got, err := e.store.Lookup(e.ctx, next.RefreshToken)
	if err != nil || got.FamilyRevokedAt == nil || got.RevokedReason != repository.ReasonReplayDetected {
		t.Fatalf("family after the replay: %+v, %v (want revoked for replay)", got, err)
	}
	if e.active(resource, next.AccessToken) || e.active(resource, tokens.AccessToken) {
		t.Fatal("an access token of the replayed family is still active")
	}
	if n := e.liveTokens(got.FamilyID, tokens.RefreshToken, next.RefreshToken); n != 0 {
		t.Fatalf("%d live refresh tokens after the replay, want 0", n)
	}
	// The thief's successor is refused the same way, and so is a token the server never issued:
	// never a server_error.
	for name, form := range map[string]url.Values{
		"successor": {"grant_type": {"refresh_token"}, "refresh_token": {next.RefreshToken}},
		"unknown":   {"grant_type": {"refresh_token"}, "refresh_token": {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}},
	} {
		if status, code := e.tokenError(form); status != 400 || code != "invalid_grant" {
			t.Errorf("%s: %d %q, want 400 invalid_grant", name, status, code)
		}
	}
}

func TestRP_ResendWithinTheGraceWindowGetsTheSameSuccessorAndAGrandparentRevokes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{}) // the default grace window, 30 s
	relying := e.relyingParty()
	tokens, _, _ := e.codeFlow(relying)
	next, err := rp.RefreshTokens[*oidc.IDTokenClaims](e.ctx, relying, tokens.RefreshToken, "", "")
	if err != nil {
		t.Fatal(err)
	}
	again, err := rp.RefreshTokens[*oidc.IDTokenClaims](e.ctx, relying, tokens.RefreshToken, "", "")
	if err != nil {
		t.Fatalf("a resend within the grace window: %v", err)
	}
	if again.RefreshToken != next.RefreshToken {
		t.Fatal("a resend within the grace window got another refresh token than the first answer")
	}
	third, err := rp.RefreshTokens[*oidc.IDTokenClaims](e.ctx, relying, next.RefreshToken, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if status, code := e.tokenError(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tokens.RefreshToken}}); status != 400 || code != "invalid_grant" {
		t.Fatalf("grandparent replay: %d %q, want 400 invalid_grant", status, code)
	}
	if got, err := e.store.Lookup(e.ctx, third.RefreshToken); err != nil || got.FamilyRevokedAt == nil {
		t.Fatalf("family after the grandparent's replay: %+v, %v", got, err)
	}
}

func TestRP_ReplayedCodeIsInvalidGrantAndRevokesItsGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	relying, resource := e.relyingParty(), e.resourceServer()
	verifier, challenge := pkce()
	code, _ := e.authorize(rp.AuthURL("state-1", relying, rp.WithCodeChallenge(challenge)))
	exchange := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}, "code_verifier": {verifier}}
	wrong := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}, "code_verifier": {verifier[:42] + "x"}}
	if status, c := e.tokenError(wrong); status != 400 || c != "invalid_grant" {
		t.Fatalf("wrong verifier: %d %q, want 400 invalid_grant", status, c)
	}
	if info, err := e.store.LookupCode(e.ctx, code); err != nil || info.ConsumedAt != nil {
		t.Fatalf("a wrong verifier burnt the code: %+v, %v", info, err)
	}
	tokens, err := rp.CodeExchange[*oidc.IDTokenClaims](e.ctx, code, relying, rp.WithCodeVerifier(verifier))
	if err != nil {
		t.Fatalf("exchange after a refused one: %v", err)
	}
	if status, c := e.tokenError(exchange); status != 400 || c != "invalid_grant" {
		t.Fatalf("code replay: %d %q, want 400 invalid_grant", status, c)
	}
	got, err := e.store.Lookup(e.ctx, tokens.RefreshToken)
	if err != nil || got.FamilyRevokedAt == nil || got.RevokedReason != repository.ReasonCodeReplayDetected {
		t.Fatalf("grant after the code replay: %+v, %v", got, err)
	}
	if e.active(resource, tokens.AccessToken) {
		t.Fatal("the access token of a replayed code is still active")
	}
}

func TestRP_EndSessionRevokesTheUsersGrantsAtThatClientOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	relying := e.relyingParty()
	tokens, _, _ := e.codeFlow(relying)
	spa := e.oauth2Config()
	spaToken := e.oauth2CodeFlow(spa)
	u, err := rp.EndSession(e.ctx, relying, tokens.IDToken, logoutURI, "bye", "", nil)
	if err != nil {
		t.Fatalf("end session: %v", err)
	}
	if u == nil || u.Host != "client.example" {
		t.Fatalf("end session redirected to %v, want the post-logout redirect", u)
	}
	web, err := e.store.Lookup(e.ctx, tokens.RefreshToken)
	if err != nil || web.FamilyRevokedAt == nil {
		t.Fatalf("the web client's grant after end session: %+v, %v", web, err)
	}
	if e.active(e.resourceServer(), tokens.AccessToken) {
		t.Fatal("the web client's access token is active after end session")
	}
	other, err := e.store.Lookup(e.ctx, spaToken.RefreshToken)
	if err != nil || other.FamilyRevokedAt != nil {
		t.Fatalf("the other client's grant after end session: %+v, %v (want live)", other, err)
	}
}

func (e *env) oauth2Config() *oauth2.Config {
	return &oauth2.Config{
		ClientID: spaClient, RedirectURL: redirectURI, Scopes: scopes,
		Endpoint: oauth2.Endpoint{AuthURL: e.issuer + "/authorize", TokenURL: e.issuer + "/oauth/token", AuthStyle: oauth2.AuthStyleInParams},
	}
}

func (e *env) oauth2Context() context.Context {
	return context.WithValue(e.ctx, oauth2.HTTPClient, e.http)
}

func (e *env) oauth2CodeFlow(conf *oauth2.Config) *oauth2.Token {
	e.t.Helper()
	verifier := oauth2.GenerateVerifier()
	code, _ := e.authorize(conf.AuthCodeURL("state-2", oauth2.S256ChallengeOption(verifier)))
	tok, err := conf.Exchange(e.oauth2Context(), code, oauth2.VerifierOption(verifier))
	if err != nil {
		e.t.Fatalf("oauth2 exchange: %v", err)
	}
	if tok.RefreshToken == "" {
		e.t.Fatal("no refresh token")
	}
	return tok
}

func TestOAuth2_PublicClientCodeFlowS256AndTokenSourceRefreshingWithJWTAccessTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{GraceWindow: repository.StrictRotation})
	conf := e.oauth2Config()
	tok := e.oauth2CodeFlow(conf)
	first, err := e.store.Lookup(e.ctx, tok.RefreshToken)
	if err != nil || first.ClientID != spaClient {
		t.Fatalf("the grant: %+v, %v", first, err)
	}
	// Without the verifier, the code is refused.
	code, _ := e.authorize(conf.AuthCodeURL("state-3", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	var re *oauth2.RetrieveError
	if _, err := conf.Exchange(e.oauth2Context(), code, oauth2.VerifierOption(oauth2.GenerateVerifier())); !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("exchange with another verifier: %v, want invalid_grant", err)
	}

	refreshTokens, jtis := []string{tok.RefreshToken}, []string{jtiOf(t, tok.AccessToken)}
	for i := range 4 {
		tok.Expiry = time.Now().Add(-time.Minute) // due: the token source refreshes it
		next, err := conf.TokenSource(e.oauth2Context(), tok).Token()
		if err != nil {
			t.Fatalf("refresh %d: %v", i+1, err)
		}
		if next.RefreshToken == "" || slices.Contains(refreshTokens, next.RefreshToken) {
			t.Fatalf("refresh %d did not rotate the refresh token", i+1)
		}
		refreshTokens, jtis = append(refreshTokens, next.RefreshToken), append(jtis, jtiOf(t, next.AccessToken))
		tok = next
	}
	for i, jti := range jtis {
		family, ok := repository.FamilyOfJTI(jti)
		if !ok || family != first.FamilyID {
			t.Fatalf("JWT %d: jti of family %q, want %s", i, family, first.FamilyID)
		}
		in, err := e.store.IntrospectJTI(e.ctx, jti)
		if err != nil || !in.Active || in.ClientID != spaClient || in.Subject != userID {
			t.Fatalf("JWT %d introspected: %+v, %v", i, in, err)
		}
	}
	if n := e.liveTokens(first.FamilyID, refreshTokens...); n != 1 {
		t.Fatalf("%d live refresh tokens after 4 refreshes, want 1", n)
	}
	if fam, err := e.store.Family(e.ctx, first.FamilyID); err != nil || fam.RotationCount != 4 {
		t.Fatalf("family: %+v, %v (want 4 rotations)", fam, err)
	}

	// The first refresh token again: invalid_grant, and every JWT of the family is inactive.
	stale := &oauth2.Token{RefreshToken: refreshTokens[0], Expiry: time.Now().Add(-time.Minute)}
	if _, err := conf.TokenSource(e.oauth2Context(), stale).Token(); !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("replay through the token source: %v, want invalid_grant", err)
	}
	for i, jti := range jtis {
		if in, err := e.store.IntrospectJTI(e.ctx, jti); err != nil || in.Active {
			t.Fatalf("JWT %d after the replay: %+v, %v (want inactive)", i, in, err)
		}
	}
	if n := e.liveTokens(first.FamilyID, refreshTokens...); n != 0 {
		t.Fatalf("%d live refresh tokens after the replay, want 0", n)
	}
	e.notStored(refreshTokens...)
}

func TestRP_CodeFlowWithoutOfflineAccessGivesNoRefreshTokenAndItsCodeReplayStillRevokes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	relying, err := rp.NewRelyingPartyOIDC(e.ctx, e.issuer, webClient, webSecret, redirectURI, []string{oidc.ScopeOpenID}, rp.WithHTTPClient(e.http))
	if err != nil {
		t.Fatal(err)
	}
	resource := e.resourceServer()
	verifier, challenge := pkce()
	code, _ := e.authorize(rp.AuthURL("state-1", relying, rp.WithCodeChallenge(challenge)))
	tokens, err := rp.CodeExchange[*oidc.IDTokenClaims](e.ctx, code, relying, rp.WithCodeVerifier(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tokens.RefreshToken != "" || tokens.AccessToken == "" {
		t.Fatalf("without offline_access: refresh token %t, access token %t; want only an access token", tokens.RefreshToken != "", tokens.AccessToken != "")
	}
	info, err := e.store.LookupCode(e.ctx, code)
	if err != nil || info.ConsumedAt == nil || info.FamilyID == "" {
		t.Fatalf("the code after the exchange: %+v, %v (want consumed into a grant)", info, err)
	}
	fam, err := e.store.Family(e.ctx, info.FamilyID)
	if err != nil || fam.ExpiresAt == nil || fam.ExpiresAt.After(time.Now().Add(repository.DefaultAccessTokenTTL+time.Minute)) {
		t.Fatalf("the grant of a code flow without offline_access: %+v, %v (want it to end with its access token)", fam, err)
	}
	if !e.active(resource, tokens.AccessToken) {
		t.Fatal("the access token is not active")
	}
	exchange := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}, "code_verifier": {verifier}}
	if status, c := e.tokenError(exchange); status != 400 || c != "invalid_grant" {
		t.Fatalf("code replay: %d %q, want 400 invalid_grant", status, c)
	}
	if e.active(resource, tokens.AccessToken) {
		t.Fatal("the access token of a replayed code is still active")
	}
}

// An authorization request without an S256 challenge is refused before anything is stored,
// whatever op itself would accept (plain, or none for a confidential client).
func TestRP_AuthorizationWithoutAnS256ChallengeIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	relying := e.relyingParty()
	_, challenge := pkce()
	for name, opts := range map[string][]rp.AuthURLOpt{
		"no challenge":         nil,
		"plain":                {rp.AuthURLOpt(rp.WithURLParam("code_challenge", strings.Repeat("p", 43))), rp.AuthURLOpt(rp.WithURLParam("code_challenge_method", "plain"))},
		"S256 of another form": {rp.AuthURLOpt(rp.WithURLParam("code_challenge", challenge+"==")), rp.AuthURLOpt(rp.WithURLParam("code_challenge_method", "S256"))},
	} {
		resp, err := e.browser.Get(rp.AuthURL("state-1", relying, opts...))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil || loc.Query().Get("error") != "invalid_request" || loc.Query().Get("code") != "" {
			t.Fatalf("%s: redirected to %v (%v), want invalid_request and no code", name, loc, err)
		}
	}
	var states int
	if err := e.pool.QueryRow(e.ctx, "SELECT count(*) FROM oauth_state").Scan(&states); err != nil || states != 0 {
		t.Fatalf("%d authorization requests stored (%v), want none", states, err)
	}
	// With S256 it goes through.
	if code, _ := e.authorize(rp.AuthURL("state-1", relying, rp.WithCodeChallenge(challenge))); code == "" {
		t.Fatal("no code with an S256 challenge")
	}
}

// Of concurrent token requests with one code exactly one gets tokens; a refused one (wrong
// redirect URI) burns nothing.
func TestRP_ConcurrentExchangesOfOneCodeHaveOneWinner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	relying := e.relyingParty()
	verifier, challenge := pkce()
	code, _ := e.authorize(rp.AuthURL("state-1", relying, rp.WithCodeChallenge(challenge)))
	wrongRedirect := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"https://client.example/other"}, "code_verifier": {verifier}}
	if status, c := e.tokenError(wrongRedirect); status != 400 || c == "" {
		t.Fatalf("wrong redirect URI: %d %q, want 400", status, c)
	}
	if info, err := e.store.LookupCode(e.ctx, code); err != nil || info.ConsumedAt != nil {
		t.Fatalf("a wrong redirect URI burnt the code: %+v, %v", info, err)
	}
	exchange := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}, "code_verifier": {verifier}}
	const racers = 8
	statuses := make([]int, racers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			statuses[i], _ = e.tokenError(exchange)
		})
	}
	close(start)
	wg.Wait()
	won := 0
	for _, s := range statuses {
		switch s {
		case 200:
			won++
		case 400:
		default:
			t.Fatalf("statuses %v: want 200 once and 400 for the rest", statuses)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent exchanges got tokens, want exactly 1 (statuses %v)", won, racers, statuses)
	}
	var families int
	if err := e.pool.QueryRow(e.ctx, "SELECT count(*) FROM oauth_family").Scan(&families); err != nil || families != 1 {
		t.Fatalf("%d families (%v), want the one the winner made", families, err)
	}
}

// The JWT profile grant (RFC 7523), which op always offers: a service account's assertion gets a
// standalone access token of that account, never a server_error.
func TestJWTProfile_AServiceAccountsAssertionGetsAStandaloneAccessToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{})
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(e.serviceKey)})
	source, err := profile.NewJWTProfileTokenSource(e.ctx, e.issuer, serviceUser, serviceKeyID, pemKey,
		[]string{oidc.ScopeOpenID}, profile.WithHTTPClient(e.http))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := source.Token()
	if err != nil {
		t.Fatalf("JWT profile grant: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken != "" {
		t.Fatalf("JWT profile grant: %+v, want an access token alone", tok)
	}
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM oauth_access_token WHERE standalone AND client_id = $1 AND subject = $1`,
		serviceUser).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d standalone access tokens of the service account (%v), want 1", n, err)
	}
	e.notStored(tok.AccessToken)
}

// golang.org/x/oauth2 resends a refresh whose response was lost, at once, with the other
// client-authentication style; within the grace window the resend gets the refresh token the lost
// response carried, and the session goes on with one live token.
func TestOAuth2_ALostRefreshResponseIsResentByTheClientAndTheSessionSurvives(t *testing.T) {
	t.Parallel()
	e := newEnv(t, repository.Config{}) // the default grace window
	conf := e.oauth2Config()
	tok := e.oauth2CodeFlow(conf)
	// A configuration that does not know the client's authentication style yet: x/oauth2 tries
	// Basic first and, when that fails, sends the request again with client_id in the body.
	fresh := *conf
	fresh.Endpoint.AuthStyle = oauth2.AuthStyleAutoDetect
	tok.Expiry = time.Now().Add(-time.Minute)
	e.dropNext.Store(true)
	next, err := fresh.TokenSource(e.oauth2Context(), tok).Token()
	if err != nil {
		t.Fatalf("refresh with a lost response: %v", err)
	}
	if e.dropped.Load() != 1 {
		t.Fatalf("%d responses lost, want 1: the test lost nothing", e.dropped.Load())
	}
	if lost := e.lost.Load(); lost == nil || next.RefreshToken != *lost {
		t.Fatal("the resend got another refresh token than the lost response carried: the family forked")
	}
	info, err := e.store.Lookup(e.ctx, next.RefreshToken)
	if err != nil || info.FamilyRevokedAt != nil || info.ConsumedAt != nil {
		t.Fatalf("the refresh token after the resend: %+v, %v", info, err)
	}
	fam, err := e.store.Family(e.ctx, info.FamilyID)
	if err != nil || fam.RotationCount != 1 {
		t.Fatalf("the family after the resend: %+v, %v (want 1 rotation)", fam, err)
	}
	if n := e.liveTokens(info.FamilyID, tok.RefreshToken, next.RefreshToken); n != 1 {
		t.Fatalf("%d live refresh tokens, want 1", n)
	}
	// The session goes on.
	next.Expiry = time.Now().Add(-time.Minute)
	if _, err := conf.TokenSource(e.oauth2Context(), next).Token(); err != nil {
		t.Fatalf("the next refresh: %v", err)
	}
	e.notStored(tok.RefreshToken, next.RefreshToken)
}
