package authserver

import (
	"net/http"
	"net/url"
	"slices"

	"github.com/oauthstore/oauthstore/repository"
)

// authorize answers an authorization request (RFC 6749 §4.1.1) with a code, bound to the client,
// its redirect URI and its PKCE S256 challenge (RFC 7636), and approved for the fixed user.
//
// Until the client and its redirect URI are known to be valid, errors are shown to the user and
// never redirected (§4.1.2.1): redirecting would make the server an open redirector. From then on
// every error goes to the client's redirect URI, with the state.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	for _, name := range []string{"client_id", "redirect_uri"} {
		if len(query[name]) > 1 {
			http.Error(w, "invalid_request: parameter "+name+" repeated", http.StatusBadRequest)
			return
		}
	}
	c := s.clients[query.Get("client_id")]
	if c == nil {
		http.Error(w, "invalid_request: unknown or missing client_id", http.StatusBadRequest)
		return
	}
	// redirect_uri is required, also for a client that registered one only: the token request must
	// repeat it (§4.1.3), and it is the one the code is bound to.
	redirectURI := query.Get("redirect_uri")
	if !slices.Contains(c.RedirectURIs, redirectURI) {
		http.Error(w, "invalid_request: redirect_uri missing or not registered for this client", http.StatusBadRequest)
		return
	}
	state := ""
	if len(query["state"]) == 1 {
		state = query.Get("state")
	}
	fail := func(code, description string) {
		s.redirect(w, r, redirectURI, state, url.Values{"error": {code}, "error_description": {description}})
	}
	f, e := single(query)
	if e != nil {
		fail(e.Code, e.Description)
		return
	}
	switch f.get("response_type") {
	case "code":
	case "":
		fail("invalid_request", "missing parameter: response_type")
		return
	default:
		fail("unsupported_response_type", "only response_type=code is supported")
		return
	}
	if f.get("code_challenge") == "" {
		fail("invalid_request", "PKCE is required: missing parameter: code_challenge")
		return
	}
	if f.get("code_challenge_method") != repository.PKCEMethodS256 {
		fail("invalid_request", "code_challenge_method must be S256") // RFC 7636 §4.4.1
		return
	}
	scope, ok := c.scopeFor(f.get("scope"))
	if !ok {
		fail("invalid_scope", "scope beyond what the client may ask for")
		return
	}
	// Here a real server authenticates the user and asks for consent; this one approves every
	// request for its fixed user.
	code, err := s.store.CreateCode(r.Context(), repository.CodeRequest{
		ClientID: c.ID, UserID: s.userID, RedirectURI: redirectURI, Scope: scope,
		CodeChallenge: f.get("code_challenge"), CodeChallengeMethod: repository.PKCEMethodS256,
		Nonce: f.get("nonce"),
	})
	if err != nil {
		code := repository.ErrorCode(err) // invalid_request (a malformed challenge) or server_error
		if code == "server_error" {
			s.log.ErrorContext(r.Context(), "authorize failed", "client_id", c.ID, "err", err)
		} else {
			s.log.InfoContext(r.Context(), "authorize refused", "client_id", c.ID, "error", code, "err", err)
		}
		fail(code, "")
		return
	}
	s.redirect(w, r, redirectURI, state, url.Values{"code": {code.Code.Reveal()}})
}

// redirect sends the user agent to the client's redirect URI with params, the state and the
// issuer added to its query (RFC 6749 §4.1.2, RFC 9207), keeping the query it already has.
func (s *Server) redirect(w http.ResponseWriter, r *http.Request, redirectURI, state string, params url.Values) {
	if params.Get("error_description") == "" {
		params.Del("error_description")
	}
	if state != "" {
		params.Set("state", state)
	}
	if s.issuer != "" {
		params.Set("iss", s.issuer)
	}
	u, _ := url.Parse(redirectURI) // checked by New
	if u.RawQuery != "" {
		u.RawQuery += "&" + params.Encode()
	} else {
		u.RawQuery = params.Encode()
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusFound)
}
