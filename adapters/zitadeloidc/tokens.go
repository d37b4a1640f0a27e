package zitadeloidc

import (
	"context"
	"errors"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/oauthstore/oauthstore/repository"
)

// Token ids. op puts the id CreateAccessToken returns in the access token: as the jti of a JWT,
// or encrypted with the subject into an opaque bearer token (op.CreateBearerToken). So a JWT's id
// is the jti the store records (repository.AccessJWT), and an opaque token's id is an opaque token
// the store minted and keeps as its digest (repository.AccessOpaque): a copy of the database and
// op's crypto key together still make no valid token. Introspection, userinfo and revocation get
// the id back from op and ask the store, which answers for the family as it is now.

// refreshRequest is op's view of a presented refresh token.
type refreshRequest struct {
	token  string
	info   *repository.TokenInfo
	scopes []string // narrowed by the request (SetCurrentScopes); nil for the granted scope
}

var _ op.RefreshTokenRequest = (*refreshRequest)(nil)

func (r *refreshRequest) GetAMR() []string      { return r.info.Claims.AMR }
func (r *refreshRequest) GetAudience() []string { return []string{r.info.ClientID} }
func (r *refreshRequest) GetAuthTime() time.Time {
	if r.info.Claims.AuthTime == nil {
		return time.Time{}
	}
	return *r.info.Claims.AuthTime
}
func (r *refreshRequest) GetClientID() string { return r.info.ClientID }
func (r *refreshRequest) GetScopes() []string {
	if r.scopes != nil {
		return r.scopes
	}
	return r.info.GrantedScope
}
func (r *refreshRequest) GetSubject() string               { return r.info.UserID }
func (r *refreshRequest) SetCurrentScopes(scopes []string) { r.scopes = scopes }

// TokenRequestByRefreshToken reads what a refresh token stands for, whatever its state: a consumed
// token or a revoked family must reach the rotation, which detects the replay and revokes the
// family; reading it refuses only a token the store does not know.
func (s *Storage) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	info, err := s.store.Lookup(ctx, token)
	if err != nil {
		return nil, oidcError(err)
	}
	return &refreshRequest{token: token, info: info}, nil
}

// accessFor is the access token to ask the store for, for a client: a JWT's jti when op signs
// the client's access tokens as JWTs, an opaque token otherwise.
func (s *Storage) accessFor(ctx context.Context, clientID string, audience []string) (repository.AccessRequest, error) {
	client, err := s.GetClientByClientID(ctx, clientID)
	if err != nil {
		return repository.AccessRequest{}, oidc.ErrInvalidClient().WithParent(err)
	}
	kind := repository.AccessOpaque
	if client.AccessTokenType() == op.AccessTokenTypeJWT {
		kind = repository.AccessJWT
	}
	return repository.AccessRequest{Kind: kind, TTL: s.cfg.AccessTokenTTL, Audience: audience}, nil
}

// tokenID is the id op builds the access token from.
func tokenID(a *repository.AccessToken) string {
	if a.JTI != "" {
		return a.JTI
	}
	return a.Token.Reveal()
}

// CreateAccessAndRefreshTokens issues an access token with a refresh token, each in one statement
// of the store: a rotation of currentRefreshToken (a consumed one is a replay, which revokes its
// family: invalid_grant), an exchange of the code the request was read by (used once, in the
// statement that creates the family), or a new family.
func (s *Storage) CreateAccessAndRefreshTokens(ctx context.Context, request op.TokenRequest, currentRefreshToken string) (string, string, time.Time, error) {
	switch req := request.(type) {
	case *refreshRequest:
		if currentRefreshToken == "" {
			currentRefreshToken = req.token
		}
		access, err := s.accessFor(ctx, req.GetClientID(), req.GetAudience())
		if err != nil {
			return "", "", time.Time{}, err
		}
		next, err := s.store.Rotate(ctx, repository.RotateRequest{
			Token: currentRefreshToken, ClientID: req.GetClientID(), Scope: req.scopes, Access: access,
		})
		if err != nil {
			return "", "", time.Time{}, oidcError(err)
		}
		return tokenID(next.Access), next.Token.Reveal(), next.Access.ExpiresAt, nil
	case *authRequest:
		if currentRefreshToken != "" || req.code == "" {
			return "", "", time.Time{}, oidc.ErrInvalidGrant()
		}
		grant, err := s.exchange(ctx, req, 0)
		if err != nil {
			return "", "", time.Time{}, err
		}
		return tokenID(grant.Access), grant.Token.Reveal(), grant.Access.ExpiresAt, nil
	}
	if currentRefreshToken != "" {
		return "", "", time.Time{}, oidc.ErrInvalidGrant()
	}
	clientID, ok := clientOf(request)
	if !ok {
		return "", "", time.Time{}, oidc.ErrUnauthorizedClient().WithDescription("token request without a client")
	}
	access, err := s.accessFor(ctx, clientID, request.GetAudience())
	if err != nil {
		return "", "", time.Time{}, err
	}
	rt, err := s.store.Issue(ctx, repository.IssueRequest{
		ClientID: clientID, UserID: request.GetSubject(), Scope: request.GetScopes(), Access: access,
	})
	if err != nil {
		return "", "", time.Time{}, oidcError(err)
	}
	return tokenID(rt.Access), rt.Token.Reveal(), rt.Access.ExpiresAt, nil
}

// exchange exchanges the code a request was read by, with an access token, in one statement.
// lifetime, when set, is the grant's whole life: a code flow without a refresh token makes a
// family that ends with its access token.
func (s *Storage) exchange(ctx context.Context, req *authRequest, lifetime time.Duration) (*repository.CodeExchange, error) {
	access, err := s.accessFor(ctx, req.clientID, req.GetAudience())
	if err != nil {
		return nil, err
	}
	grant, err := s.store.Exchange(ctx, repository.ExchangeRequest{
		Code: req.code, ClientID: req.clientID, RedirectURI: req.redirectURI,
		RefreshTokenTTL: lifetime, Lifetime: lifetime, Access: access,
	})
	if err != nil {
		return nil, oidcError(err)
	}
	return grant, nil
}

// clientOf is the client a token request is for: its client_id, or for a JWT profile grant
// (RFC 7523), which has none, the service account that signed the assertion, as zitadel's example
// storage takes it.
func clientOf(request op.TokenRequest) (string, bool) {
	if r, ok := request.(*oidc.JWTTokenRequest); ok {
		return r.GetSubject(), r.GetSubject() != ""
	}
	c, ok := request.(interface{ GetClientID() string })
	if !ok || c.GetClientID() == "" {
		return "", false
	}
	return c.GetClientID(), true
}

// CreateAccessToken issues an access token without a refresh token: for a code flow, by
// exchanging the code in the statement that creates a grant ending with the token (so that a
// replay of the code revokes it); for an implicit flow, after using up its request; otherwise as
// a standalone token of the request's client.
func (s *Storage) CreateAccessToken(ctx context.Context, request op.TokenRequest) (string, time.Time, error) {
	if req, ok := request.(*authRequest); ok {
		if req.code != "" {
			grant, err := s.exchange(ctx, req, s.cfg.AccessTokenTTL)
			if err != nil {
				return "", time.Time{}, err
			}
			return tokenID(grant.Access), grant.Access.ExpiresAt, nil
		}
		if _, err := s.store.ConsumeState(ctx, req.id); err != nil {
			return "", time.Time{}, oidcError(err)
		}
	}
	clientID, ok := clientOf(request)
	if !ok {
		return "", time.Time{}, oidc.ErrUnauthorizedClient().WithDescription("token request without a client")
	}
	var (
		access repository.AccessRequest
		err    error
	)
	if _, jwtProfile := request.(*oidc.JWTTokenRequest); jwtProfile {
		// A service account is no client of the application's: op makes its token a bearer token
		// (JWTProfileTokenStorage would choose otherwise).
		access = repository.AccessRequest{Kind: repository.AccessOpaque, TTL: s.cfg.AccessTokenTTL}
	} else if access, err = s.accessFor(ctx, clientID, request.GetAudience()); err != nil {
		return "", time.Time{}, err
	}
	at, err := s.store.IssueAccessToken(ctx, repository.StandaloneAccessRequest{
		ClientID: clientID, Subject: request.GetSubject(), Scope: request.GetScopes(), AccessRequest: access,
	})
	if err != nil {
		return "", time.Time{}, oidcError(err)
	}
	return tokenID(at), at.ExpiresAt, nil
}

// GetRefreshTokenInfo tells op's revocation endpoint whether token is a refresh token the store
// knows; the token itself is its id, for RevokeToken.
func (s *Storage) GetRefreshTokenInfo(ctx context.Context, clientID string, token string) (string, string, error) {
	info, err := s.store.Lookup(ctx, token)
	switch {
	case errors.Is(err, repository.ErrTokenNotFound):
		return "", "", op.ErrInvalidRefreshToken
	case err != nil:
		return "", "", err
	}
	return info.UserID, token, nil
}

// RevokeToken answers RFC 7009 revocation: a refresh token revokes its family (access tokens
// included), an access token itself; unknown tokens succeed (RFC 7009 §2.2), another client's are
// refused and revoke nothing.
func (s *Storage) RevokeToken(ctx context.Context, tokenOrTokenID string, _ string, clientID string) *oidc.Error {
	var err error
	if _, ok := repository.FamilyOfJTI(tokenOrTokenID); ok {
		err = s.store.RevokeJTI(ctx, tokenOrTokenID, clientID)
	} else {
		err = s.store.RevokeToken(ctx, tokenOrTokenID, clientID)
	}
	if err == nil || errors.Is(err, repository.ErrTokenNotFound) {
		return nil
	}
	return oidcError(err)
}

// TerminateSession ends the user's grants at the client (end_session): every family, with its
// access tokens, and the codes not exchanged yet.
func (s *Storage) TerminateSession(ctx context.Context, userID string, clientID string) error {
	_, err := s.store.RevokeFamilies(ctx, repository.FamilyFilter{UserID: userID, ClientID: clientID}, reasonEndSession)
	if err != nil {
		return oidcError(err)
	}
	return nil
}

var errInactive = errors.New("zitadeloidc: token inactive")

// activeAccess asks the store about the access token an id names: a jti or an opaque token. It
// is inactive once expired or revoked, or once its family is; and when op's subject differs.
func (s *Storage) activeAccess(ctx context.Context, id, subject string) (*repository.Introspection, error) {
	var (
		in  *repository.Introspection
		err error
	)
	if _, ok := repository.FamilyOfJTI(id); ok {
		in, err = s.store.IntrospectJTI(ctx, id)
	} else {
		in, err = s.store.Introspect(ctx, id)
	}
	switch {
	case err != nil:
		return nil, err
	case !in.Active || in.TokenUse != repository.TokenUseAccess || in.Subject != subject:
		return nil, errInactive
	}
	return in, nil
}

// SetIntrospectionFromToken answers RFC 7662 introspection from the store: an access token is
// active as long as it, and its family, are. caller is the authenticated client asking.
func (s *Storage) SetIntrospectionFromToken(ctx context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, caller string) error {
	in, err := s.activeAccess(ctx, tokenID, subject)
	if err != nil {
		return err
	}
	if !s.cfg.IntrospectionAllowed(ctx, caller, in) {
		return errInactive
	}
	userinfo := new(oidc.UserInfo)
	if err := s.SetUserinfo(ctx, userinfo, in.Subject, in.ClientID, in.Scope); err != nil {
		return err
	}
	resp.SetUserInfo(userinfo)
	resp.Subject, resp.ClientID, resp.Scope, resp.Audience = in.Subject, in.ClientID, in.Scope, in.Audience
	resp.TokenType, resp.JWTID = in.TokenType, in.JTI
	resp.Expiration, resp.IssuedAt = oidc.FromTime(in.ExpiresAt), oidc.FromTime(in.IssuedAt)
	if in.AuthTime != nil {
		resp.AuthTime = oidc.FromTime(*in.AuthTime)
	}
	resp.AuthenticationMethodsReferences = in.AMR
	return nil
}

// SetUserinfoFromToken answers the userinfo endpoint for an access token the store reports active.
func (s *Storage) SetUserinfoFromToken(ctx context.Context, userinfo *oidc.UserInfo, tokenID, subject, _ string) error {
	in, err := s.activeAccess(ctx, tokenID, subject)
	if err != nil {
		return err
	}
	return s.SetUserinfo(ctx, userinfo, in.Subject, in.ClientID, in.Scope)
}

// reasonEndSession is the revocation reason of TerminateSession.
const reasonEndSession = "end_session"
