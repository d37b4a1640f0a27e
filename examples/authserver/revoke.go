package authserver

import (
	"errors"
	"net/http"

	"github.com/oauthstore/oauthstore/repository"
)

// revoke answers an RFC 7009 revocation request: a refresh token revokes its whole grant, the
// access tokens issued with it included; an access token revokes itself alone. An unknown token
// is answered 200 as well (§2.2): the client's goal, that it no longer works, is met.
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	f, e := readForm(w, r)
	if e != nil {
		s.writeError(w, e)
		return
	}
	c, e := s.authenticate(r, f)
	if e != nil {
		s.writeError(w, e)
		return
	}
	if e := f.require("token"); e != nil {
		s.writeError(w, e)
		return
	}
	// token_type_hint is optional and only a hint (§2.1): the store tells the kinds apart itself.
	switch err := s.store.RevokeToken(r.Context(), f.get("token"), c.ID); {
	case err == nil, errors.Is(err, repository.ErrTokenNotFound):
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
	default:
		// Another client's token (ErrWrongClient: invalid_grant) revokes nothing.
		s.refused(w, r, "revocation", c, err)
	}
}

// introspect answers an RFC 7662 introspection request. The caller authenticates as a client
// (§2.1). A resource server learns about every token; any other client about its own tokens
// only, and "active": false about the rest (§4: no probing of other clients' tokens).
func (s *Server) introspect(w http.ResponseWriter, r *http.Request) {
	f, e := readForm(w, r)
	if e != nil {
		s.writeError(w, e)
		return
	}
	c, e := s.authenticate(r, f)
	if e != nil {
		s.writeError(w, e)
		return
	}
	if c.public() {
		s.writeError(w, &oauthError{Code: "invalid_client", Description: "introspection needs an authenticated client"})
		return
	}
	if e := f.require("token"); e != nil {
		s.writeError(w, e)
		return
	}
	info, err := s.store.Introspect(r.Context(), f.get("token"))
	if err != nil {
		s.refused(w, r, "introspection", c, err)
		return
	}
	if info.Active && !c.ResourceServer && info.ClientID != c.ID {
		info = &repository.Introspection{}
	}
	writeJSON(w, http.StatusOK, info.Response())
}
