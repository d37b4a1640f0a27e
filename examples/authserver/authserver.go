// Package authserver is a minimal OAuth 2 authorization server on net/http, built on the
// repository package: how to wire the store into a server's endpoints.
//
//   - /authorize: the authorization code grant with PKCE S256 required (RFC 6749 §4.1, RFC 7636).
//     Every request is approved for one fixed user: a real server authenticates the user and asks
//     for consent there, which is not the point here.
//   - /token: grant_type authorization_code, refresh_token and client_credentials (RFC 6749 §4.1.3,
//     §6, §4.4), each answered with an opaque access token issued in the same statement as the
//     refresh token it comes with.
//   - /revoke: RFC 7009 token revocation; a refresh token revokes its whole grant.
//   - /introspect: RFC 7662 token introspection.
//
// Clients authenticate with client_secret_basic or client_secret_post (RFC 6749 §2.3.1); a public
// client has no secret, identifies itself with client_id and must use PKCE. Errors are the codes
// of RFC 6749 §5.2 with their HTTP statuses; the causes the store reports go to the log only.
package authserver

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

// Client is a registered client.
type Client struct {
	ID string
	// Secret authenticates a confidential client. Empty makes the client public: it identifies
	// itself with client_id alone, and its codes are bound to its PKCE verifier.
	Secret string
	// RedirectURIs are the redirect URIs the client registered, compared byte for byte.
	RedirectURIs []string
	// Scopes are the scope values the client may ask for; a request that names none gets them all
	// (RFC 6749 §3.3).
	Scopes []string
	// ResourceServer lets the client introspect every token; any other client gets an answer
	// about its own tokens only.
	ResourceServer bool
}

// Options configure a Server.
type Options struct {
	Clients []Client
	// UserID is the user every authorization request is approved for. Default "demo-user".
	UserID string
	// AccessTokenTTL is the lifetime of the access tokens issued; zero means the store's default.
	AccessTokenTTL time.Duration
	// Issuer, when set, is sent as "iss" with every authorization response (RFC 9207).
	Issuer string
	// Realm names the protection space in the WWW-Authenticate header of a 401. Default
	// "authserver".
	Realm string
	// Logger receives the refusals and failures, with their causes. Nil means slog.Default().
	Logger *slog.Logger
}

// Server answers the endpoints of an authorization server. It is an http.Handler.
type Server struct {
	store     *repository.Store
	clients   map[string]*client
	userID    string
	accessTTL time.Duration
	issuer    string
	realm     string
	log       *slog.Logger
	mux       *http.ServeMux
}

// client is a registered client with its secret kept as a SHA-256 sum, compared in constant time.
type client struct {
	Client
	secretSum [sha256.Size]byte
}

func (c *client) public() bool { return c.Secret == "" }

// New returns a server on store for the given clients.
func New(store *repository.Store, opts Options) (*Server, error) {
	if store == nil {
		return nil, errors.New("authserver: no store")
	}
	s := &Server{
		store: store, clients: make(map[string]*client, len(opts.Clients)), userID: opts.UserID,
		accessTTL: opts.AccessTokenTTL, issuer: opts.Issuer, realm: opts.Realm, log: opts.Logger,
	}
	if s.userID == "" {
		s.userID = "demo-user"
	}
	if s.realm == "" {
		s.realm = "authserver"
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	for _, c := range opts.Clients {
		if c.ID == "" {
			return nil, errors.New("authserver: a client without an ID")
		}
		if _, dup := s.clients[c.ID]; dup {
			return nil, fmt.Errorf("authserver: client %q registered twice", c.ID)
		}
		for _, u := range c.RedirectURIs {
			if p, err := url.Parse(u); err != nil || !p.IsAbs() || p.Fragment != "" {
				return nil, fmt.Errorf("authserver: client %q: redirect URI %q is not an absolute URI without a fragment", c.ID, u)
			}
		}
		s.clients[c.ID] = &client{Client: c, secretSum: sha256.Sum256([]byte(c.Secret))}
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /authorize", s.authorize)
	s.mux.HandleFunc("POST /token", s.token)
	s.mux.HandleFunc("POST /revoke", s.revoke)
	s.mux.HandleFunc("POST /introspect", s.introspect)
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// oauthError is an error response of RFC 6749 §5.2. Description is the server's own text, never
// an error's message.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

func errRequest(format string, args ...any) *oauthError {
	return &oauthError{Code: "invalid_request", Description: fmt.Sprintf(format, args...)}
}

// status is the HTTP status of an error code (RFC 6749 §5.2): 401 for a client that failed to
// authenticate, 500 for the server's own failure, 400 for the rest.
func (e *oauthError) status() int {
	switch e.Code {
	case "invalid_client":
		return http.StatusUnauthorized
	case "server_error":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// maxFormBytes bounds a request body: every parameter of these endpoints fits many times over.
const maxFormBytes = 64 << 10

// form is a request's parameters, each present at most once.
type form url.Values

func (f form) get(name string) string {
	if v := f[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// readForm reads the body of a POST request: application/x-www-form-urlencoded only (RFC 6749
// §3.2, RFC 7009 §2.1, RFC 7662 §2.1), no parameter more than once (§3.1). Parameters of the URL's
// query are not read: credentials must not travel there (§2.3.1).
func readForm(w http.ResponseWriter, r *http.Request) (form, *oauthError) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, errRequest("the body must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFormBytes))
	if err != nil {
		return nil, errRequest("the body could not be read or is too large")
	}
	values, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errRequest("the body is not form-encoded")
	}
	return single(values)
}

// single refuses a parameter given more than once (RFC 6749 §3.1) and drops those without a
// value, which count as omitted.
func single(values url.Values) (form, *oauthError) {
	for name, v := range values {
		if len(v) > 1 {
			// The name is the client's: echoed only when it is one a request may carry, since an
			// error_description holds printable ASCII without '"' or '\' (RFC 6749 §5.2).
			if !plainName(name) {
				return nil, errRequest("a parameter is repeated")
			}
			return nil, errRequest("parameter %s repeated", name)
		}
		if v[0] == "" {
			delete(values, name)
		}
	}
	return form(values), nil
}

// plainName reports whether a parameter name is lowercase letters and '_', as every OAuth
// parameter's is, and short.
func plainName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if (name[i] < 'a' || name[i] > 'z') && name[i] != '_' {
			return false
		}
	}
	return true
}

// require returns an invalid_request error naming the first parameter f lacks.
func (f form) require(names ...string) *oauthError {
	for _, n := range names {
		if f.get(n) == "" {
			return errRequest("missing parameter: %s", n)
		}
	}
	return nil
}
