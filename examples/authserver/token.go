package authserver

import (
	"math"
	"net/http"
	"strings"

	"github.com/oauthstore/oauthstore/repository"
)

// token answers a token request (RFC 6749 §3.2): the client authenticates, then its grant is
// exchanged for tokens. Every refresh token comes with an access token issued in the same
// statement.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
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
	switch f.get("grant_type") {
	case "authorization_code":
		s.exchangeCode(w, r, c, f)
	case "refresh_token":
		s.refresh(w, r, c, f)
	case "client_credentials":
		s.clientCredentials(w, r, c, f)
	case "":
		s.writeError(w, errRequest("missing parameter: grant_type"))
	default:
		s.writeError(w, &oauthError{Code: "unsupported_grant_type"})
	}
}

// access is what every token request asks for: an opaque access token, issued with the refresh
// token in one statement.
func (s *Server) access() repository.AccessRequest {
	return repository.AccessRequest{Kind: repository.AccessOpaque, TTL: s.accessTTL}
}

// exchangeCode: grant_type=authorization_code (RFC 6749 §4.1.3). The codes of this server all
// carry a PKCE challenge, so code_verifier is required (RFC 7636 §4.5).
func (s *Server) exchangeCode(w http.ResponseWriter, r *http.Request, c *client, f form) {
	if e := f.require("code", "redirect_uri", "code_verifier"); e != nil {
		s.writeError(w, e)
		return
	}
	grant, err := s.store.Exchange(r.Context(), repository.ExchangeRequest{
		Code: f.get("code"), ClientID: c.ID, RedirectURI: f.get("redirect_uri"),
		CodeVerifier: f.get("code_verifier"), Access: s.access(),
	})
	if err != nil {
		s.refused(w, r, "code exchange", c, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponseOf(grant.Access, grant.RefreshToken))
}

// refresh: grant_type=refresh_token (RFC 6749 §6). The presented token is consumed and its
// successor returned; a scope narrows the successor's.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request, c *client, f form) {
	if e := f.require("refresh_token"); e != nil {
		s.writeError(w, e)
		return
	}
	next, err := s.store.Rotate(r.Context(), repository.RotateRequest{
		Token: f.get("refresh_token"), ClientID: c.ID, Scope: strings.Fields(f.get("scope")), Access: s.access(),
	})
	if err != nil {
		s.refused(w, r, "refresh", c, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponseOf(next.Access, next))
}

// clientCredentials: grant_type=client_credentials (RFC 6749 §4.4), for confidential clients
// only; an access token without a refresh token (§4.4.3).
func (s *Server) clientCredentials(w http.ResponseWriter, r *http.Request, c *client, f form) {
	if c.public() {
		s.writeError(w, &oauthError{Code: "unauthorized_client", Description: "a public client cannot use client_credentials"})
		return
	}
	scope, ok := c.scopeFor(f.get("scope"))
	if !ok {
		s.writeError(w, &oauthError{Code: "invalid_scope"})
		return
	}
	at, err := s.store.IssueAccessToken(r.Context(), repository.StandaloneAccessRequest{
		ClientID: c.ID, Scope: scope, AccessRequest: s.access(),
	})
	if err != nil {
		s.refused(w, r, "client credentials", c, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponseOf(at, nil))
}

// tokenResponse is a successful token response (RFC 6749 §5.1).
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// tokenResponseOf is the response carrying an access token and, but for client_credentials, the
// refresh token issued with it. expires_in is the access token's lifetime by the database clock,
// rounded up: a client reads 0 as "no expiry".
func tokenResponseOf(at *repository.AccessToken, rt *repository.RefreshToken) tokenResponse {
	resp := tokenResponse{
		AccessToken: at.Token.Reveal(), TokenType: at.TokenType,
		ExpiresIn: max(1, int64(math.Ceil(at.ExpiresAt.Sub(at.IssuedAt).Seconds()))),
		Scope:     strings.Join(at.Scope, " "),
	}
	if rt != nil {
		resp.RefreshToken = rt.Token.Reveal()
	}
	return resp
}
