package zitadeloidc_test

// The harness of the end-to-end tests: a zitadel/oidc OpenID Provider on the adapter, on a real
// migrated PostgreSQL database of the test's own (oauthstoretest), served by httptest, with an
// application of two clients, one user and an RSA signing key, and a login page that signs the
// user in at once.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/oauthstore/oauthstore/adapters/zitadeloidc"
	"github.com/oauthstore/oauthstore/oauthstoretest"
	"github.com/oauthstore/oauthstore/repository"
)

func TestMain(m *testing.M) { oauthstoretest.Main(m) }

const (
	redirectURI   = "https://client.example/cb"
	logoutURI     = "https://client.example/bye"
	webClient     = "web" // confidential, client_secret_basic, opaque access tokens
	webSecret     = "web-secret"
	spaClient     = "spa" // public (PKCE only), JWT access tokens
	userID        = "user-1"
	userSessionID = "sid-1"
)

// testKey is the provider's RSA signing key.
type testKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k *testKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *testKey) Key() any                                    { return k.key }
func (k *testKey) ID() string                                  { return k.id }

type publicKey struct{ *testKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

type testClient struct {
	id         string
	authMethod oidc.AuthMethod
	tokenType  op.AccessTokenType
	loginURL   string
}

func (c *testClient) GetID() string                       { return c.id }
func (c *testClient) RedirectURIs() []string              { return []string{redirectURI} }
func (c *testClient) PostLogoutRedirectURIs() []string    { return []string{logoutURI} }
func (c *testClient) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *testClient) AuthMethod() oidc.AuthMethod         { return c.authMethod }
func (c *testClient) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *testClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
}
func (c *testClient) LoginURL(id string) string {
	return c.loginURL + "?authRequestID=" + url.QueryEscape(id)
}
func (c *testClient) AccessTokenType() op.AccessTokenType  { return c.tokenType }
func (c *testClient) IDTokenLifetime() time.Duration       { return 5 * time.Minute }
func (c *testClient) DevMode() bool                        { return false }
func (c *testClient) IsScopeAllowed(string) bool           { return false }
func (c *testClient) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c *testClient) ClockSkew() time.Duration             { return 0 }
func (c *testClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *testClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

// testApp is the application: keys, clients and the user, as zitadel's example storage keeps them.
type testApp struct {
	key     *testKey
	clients map[string]*testClient
	// service is the key of serviceUser, a service account that signs JWT profile assertions
	// (RFC 7523) with it.
	service *rsa.PrivateKey
}

const (
	serviceUser  = "svc-reporting"
	serviceKeyID = "svc-key-1"
)

func (a *testApp) SigningKey(context.Context) (op.SigningKey, error) { return a.key, nil }
func (a *testApp) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}
func (a *testApp) KeySet(context.Context) ([]op.Key, error) { return []op.Key{publicKey{a.key}}, nil }
func (a *testApp) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	if c, ok := a.clients[id]; ok {
		return c, nil
	}
	return nil, errors.New("unknown client")
}
func (a *testApp) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	if id == webClient && secret == webSecret {
		return nil
	}
	return errors.New("wrong client credentials")
}
func (a *testApp) GetKeyByIDAndClientID(_ context.Context, keyID, clientID string) (*jose.JSONWebKey, error) {
	if keyID != serviceKeyID || clientID != serviceUser {
		return nil, errors.New("no such key")
	}
	return &jose.JSONWebKey{Key: &a.service.PublicKey, KeyID: serviceKeyID, Algorithm: string(jose.RS256), Use: "sig"}, nil
}
func (a *testApp) ValidateJWTProfileScopes(_ context.Context, _ string, scopes []string) ([]string, error) {
	return scopes, nil
}
func (a *testApp) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}
func (a *testApp) SetUserinfo(_ context.Context, info *oidc.UserInfo, user, _ string, scopes []string) error {
	info.Subject = user
	for _, s := range scopes {
		if s == oidc.ScopeProfile {
			info.PreferredUsername = "ada"
		}
	}
	return nil
}
func (a *testApp) Health(context.Context) error { return nil }

// env is one provider on one database.
type env struct {
	t       *testing.T
	ctx     context.Context
	pool    *pgxpool.Pool
	store   *repository.Store
	storage *zitadeloidc.Storage
	issuer  string
	http    *http.Client
	browser *http.Client // a user agent: keeps cookies, follows the provider's redirects, stops at the client's
	// serviceKey is serviceUser's private key.
	serviceKey *rsa.PrivateKey
	// dropNext makes the provider commit the next refresh and lose its response (the connection
	// closes before a byte of it is sent), as a network failure does; lost holds that response.
	dropNext atomic.Bool
	dropped  atomic.Int64
	lost     atomic.Pointer[string] // the refresh token the lost response carried
}

func newEnv(t *testing.T, cfg repository.Config) *env {
	t.Helper()
	e := &env{t: t, ctx: context.Background(), pool: oauthstoretest.NewDB(t)}
	if cfg.Pepper.IsZero() && cfg.Peppers == nil {
		cfg.Pepper = repository.NewKey([]byte(rand.Text() + rand.Text()))
	}
	store, err := repository.New(e.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.store = store
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var handler http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	e.issuer, e.http = srv.URL, srv.Client()
	service, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	e.serviceKey = service
	app := &testApp{key: &testKey{id: "key-1", key: key}, service: service, clients: map[string]*testClient{
		webClient: {id: webClient, authMethod: oidc.AuthMethodBasic, tokenType: op.AccessTokenTypeBearer, loginURL: srv.URL + "/login"},
		spaClient: {id: spaClient, authMethod: oidc.AuthMethodNone, tokenType: op.AccessTokenTypeJWT, loginURL: srv.URL + "/login"},
	}}
	e.storage, err = zitadeloidc.New(e.store, app, zitadeloidc.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var cryptoKey [32]byte
	_, _ = rand.Read(cryptoKey[:])
	provider, err := op.NewProvider(&op.Config{
		CryptoKey: cryptoKey, CodeMethodS256: true, GrantTypeRefreshToken: true, DefaultLogoutRedirectURI: logoutURI,
	}, e.storage, op.StaticIssuer(srv.URL), op.WithAllowInsecure())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/login", e.login)
	mux.Handle("/", e.losing(provider))
	handler = mux
	jar, _ := cookiejar.New(nil)
	host := strings.TrimPrefix(srv.URL, "http://")
	e.browser = &http.Client{Jar: jar, Transport: srv.Client().Transport, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if r.URL.Host != host {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	return e
}

// losing wraps the provider so that, when dropNext is set, the next successful refresh commits
// and its response is lost.
func (e *env) losing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oauth/token" || !e.dropNext.Load() {
			next.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		var tok struct {
			RefreshToken string `json:"refresh_token"`
		}
		if form.Get("grant_type") == "refresh_token" && rec.Code == http.StatusOK &&
			json.Unmarshal(rec.Body.Bytes(), &tok) == nil && e.dropNext.CompareAndSwap(true, false) {
			e.dropped.Add(1)
			e.lost.Store(&tok.RefreshToken)
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
			return
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

// login is the application's login page: it signs the user in at once and sends the browser to
// op's callback with the id CompleteAuthRequest returned.
func (e *env) login(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("authRequestID")
	if _, err := e.storage.AuthRequestByID(r.Context(), id); err != nil {
		http.Error(w, "unknown request", http.StatusBadRequest)
		return
	}
	next, err := e.storage.CompleteAuthRequest(r.Context(), id, zitadeloidc.Login{UserID: userID, AMR: []string{"pwd"}, SessionID: userSessionID})
	if err != nil {
		http.Error(w, "login failed", http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, e.issuer+"/authorize/callback?id="+url.QueryEscape(next), http.StatusFound)
}

// authorize drives the browser from an authorization URL to the client's redirect URI, and
// returns the code and state it carries.
func (e *env) authorize(authURL string) (code, state string) {
	e.t.Helper()
	resp, err := e.browser.Get(authURL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	loc, err := resp.Location()
	if resp.StatusCode != http.StatusFound || err != nil || !strings.HasPrefix(loc.String(), redirectURI) {
		e.t.Fatalf("authorization ended with %d at %v, want a redirect to the client", resp.StatusCode, loc)
	}
	q := loc.Query()
	if q.Get("code") == "" {
		e.t.Fatalf("no code in the redirect: error %q", q.Get("error"))
	}
	return q.Get("code"), q.Get("state")
}

// pkce returns a verifier and its S256 challenge.
func pkce() (verifier, challenge string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// tokenError posts a token request with the web client's credentials and returns the HTTP status
// and OAuth error code of the answer, or "" for a success.
func (e *env) tokenError(form url.Values) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(webClient, webSecret)
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Error
}

// jtiOf reads the jti of a JWT (the provider signed it; the test reads the claim only).
func jtiOf(t *testing.T, jwt string) string {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		JTI string `json:"jti"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims.JTI
}

// liveTokens counts the live refresh tokens of a family among tokens, through the store: those
// Introspect reports active.
func (e *env) liveTokens(familyID string, tokens ...string) int {
	e.t.Helper()
	n := 0
	for _, tok := range tokens {
		info, err := e.store.Lookup(e.ctx, tok)
		if err != nil {
			e.t.Fatalf("lookup: %v", err)
		}
		if info.FamilyID != familyID {
			e.t.Fatalf("a token of family %s, want %s", info.FamilyID, familyID)
		}
		in, err := e.store.Introspect(e.ctx, tok)
		if err != nil {
			e.t.Fatal(err)
		}
		if in.Active {
			n++
		}
	}
	return n
}

// notStored fails the test when any of the raw credentials is in a row of any table: the store
// keeps digests only.
func (e *env) notStored(secrets ...string) {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
		FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`)
	if err != nil {
		e.t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		e.t.Fatal(err)
	}
	var dump strings.Builder
	for _, table := range tables {
		var text string
		if err := e.pool.QueryRow(e.ctx, "SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM "+table+" x").Scan(&text); err != nil {
			e.t.Fatal(err)
		}
		dump.WriteString(text)
	}
	if dump.Len() == 0 {
		e.t.Fatal("the tables are empty: nothing was stored")
	}
	for i, s := range secrets {
		if s == "" || strings.Contains(dump.String(), s) {
			e.t.Errorf("credential %d (%d characters) is empty or stored in a table", i, len(s))
		}
	}
}
