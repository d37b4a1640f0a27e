package authserver

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/oauthstore/oauthstore/repository"
)

// authenticate returns the client a request to /token, /revoke or /introspect comes from (RFC
// 6749 §2.3): a confidential client by client_secret_basic or client_secret_post, a public client
// by its client_id (in the body, or as the user name of Basic with an empty password, as
// golang.org/x/oauth2 sends it first).
func (s *Server) authenticate(r *http.Request, f form) (*client, *oauthError) {
	invalid := &oauthError{Code: "invalid_client"}
	var id, secret string
	if r.Header.Get("Authorization") != "" {
		user, pass, ok := r.BasicAuth()
		if !ok {
			return nil, invalid
		}
		if _, dup := f["client_secret"]; dup {
			return nil, errRequest("more than one client authentication method") // §2.3
		}
		// The client ID and secret are form-encoded before Basic encodes them (§2.3.1).
		var err1, err2 error
		id, err1 = url.QueryUnescape(user)
		secret, err2 = url.QueryUnescape(pass)
		if err1 != nil || err2 != nil {
			return nil, invalid
		}
		if body := f.get("client_id"); body != "" && body != id {
			return nil, errRequest("client_id differs from the authenticated client")
		}
	} else {
		id, secret = f.get("client_id"), f.get("client_secret")
	}
	c := s.clients[id]
	switch {
	case c == nil:
		return nil, invalid
	case c.public():
		if secret != "" {
			return nil, invalid // a public client has no secret to present
		}
		return c, nil
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], c.secretSum[:]) != 1 {
		return nil, invalid
	}
	return c, nil
}

// scopeFor returns the scope a client is granted for a request's scope parameter: every scope it
// may ask for when the request names none, else the request's, each of which it must be allowed.
func (c *client) scopeFor(requested string) ([]string, bool) {
	if requested == "" {
		return c.Scopes, true
	}
	scope := strings.Fields(requested)
	for _, v := range scope {
		if !slices.Contains(c.Scopes, v) {
			return nil, false
		}
	}
	return scope, true
}

// writeJSON sends a JSON response that no cache may keep (RFC 6749 §5.1).
func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json;charset=UTF-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError sends an error response of RFC 6749 §5.2, with the WWW-Authenticate challenge a 401
// must carry.
func (s *Server) writeError(w http.ResponseWriter, e *oauthError) {
	if e.status() == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="`+s.realm+`"`)
	}
	writeJSON(w, e.status(), e)
}

// refused answers a request the store refused or failed. The client gets the error code alone
// (repository.ErrorCode); the cause, which names what was wrong, goes to the log. The store's
// errors never carry a credential.
func (s *Server) refused(w http.ResponseWriter, r *http.Request, what string, c *client, err error) {
	code := repository.ErrorCode(err)
	if code == "server_error" {
		s.log.ErrorContext(r.Context(), what+" failed", "client_id", c.ID, "err", err)
	} else {
		s.log.InfoContext(r.Context(), what+" refused", "client_id", c.ID, "error", code, "err", err)
	}
	s.writeError(w, &oauthError{Code: code})
}
