// Package zitadeloidc keeps the tokens, codes and authorization requests of a zitadel/oidc v3
// OpenID Provider (op) in PostgreSQL through oauthstore: its Storage implements op.Storage, with
// the application's keys, clients and users behind an Application the application implements.
//
// What it keeps, and how (see the README): authorization requests as one-time state bindings,
// codes as keyed digests consumed in the statement that creates the grant, refresh tokens as
// rotating families whose replay revokes the family, access tokens (a JWT's jti, or an opaque
// token inside op's encrypted bearer token) that introspection reports inactive once their family
// is revoked.
package zitadeloidc

import (
	"context"
	"errors"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/oauthstore/oauthstore/repository"
)

// Application is what the authorization server keeps itself: signing keys, the client registry
// and client authentication, and its users' claims. The methods named as op.Storage's mean what
// they mean there (zitadel's example storage implements them all).
type Application interface {
	SigningKey(context.Context) (op.SigningKey, error)
	SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error)
	KeySet(context.Context) ([]op.Key, error)

	GetClientByClientID(ctx context.Context, clientID string) (op.Client, error)
	AuthorizeClientIDSecret(ctx context.Context, clientID, clientSecret string) error
	GetKeyByIDAndClientID(ctx context.Context, keyID, clientID string) (*jose.JSONWebKey, error)
	ValidateJWTProfileScopes(ctx context.Context, userID string, scopes []string) ([]string, error)
	GetPrivateClaimsFromScopes(ctx context.Context, userID, clientID string, scopes []string) (map[string]any, error)

	// SetUserinfo fills in the claims of userID that scopes grant clientID: for ID tokens, the
	// userinfo endpoint and introspection.
	SetUserinfo(ctx context.Context, userinfo *oidc.UserInfo, userID, clientID string, scopes []string) error

	Health(context.Context) error
}

// Config tunes a Storage. Zero values mean the defaults.
type Config struct {
	// AccessTokenTTL is the lifetime of access tokens; zero means repository.DefaultAccessTokenTTL.
	AccessTokenTTL time.Duration
	// AuthRequestTTL is how long a user has to sign in; zero means 30 minutes, at most
	// repository.MaxStateTTL.
	AuthRequestTTL time.Duration
	// IntrospectionAllowed says whether the authenticated client caller may learn about an active
	// token (RFC 7662 §2.1). Nil allows the token's own client and the clients among its audience.
	IntrospectionAllowed func(ctx context.Context, caller string, token *repository.Introspection) bool
	// PKCEOptional accepts an authorization request without a PKCE challenge, and AllowPlainPKCE
	// one with the "plain" method, as repository.Config's fields of the same names do for the
	// store's own codes. op verifies PKCE itself, against what CreateAuthRequest accepted: by
	// default every request must carry an S256 challenge (OAuth 2.1, the MCP authorization
	// specification).
	PKCEOptional   bool
	AllowPlainPKCE bool
}

// Storage implements op.Storage on an oauthstore Store and the application's Application.
type Storage struct {
	Application
	store *repository.Store
	cfg   Config
}

var (
	_ op.Storage                   = (*Storage)(nil)
	_ op.CanSetUserinfoFromRequest = (*Storage)(nil)
)

// New returns a Storage that keeps credentials in store and asks app for keys, clients and users.
func New(store *repository.Store, app Application, cfg Config) (*Storage, error) {
	if store == nil || app == nil {
		return nil, errors.New("zitadeloidc: a store and an application are required")
	}
	if cfg.AccessTokenTTL == 0 {
		cfg.AccessTokenTTL = repository.DefaultAccessTokenTTL
	}
	if cfg.AccessTokenTTL < time.Second || cfg.AccessTokenTTL > repository.MaxAccessTokenTTL {
		return nil, errors.New("zitadeloidc: AccessTokenTTL outside 1s..24h")
	}
	if cfg.AuthRequestTTL == 0 {
		cfg.AuthRequestTTL = 30 * time.Minute
	}
	if cfg.AuthRequestTTL < time.Second || cfg.AuthRequestTTL > repository.MaxStateTTL {
		return nil, errors.New("zitadeloidc: AuthRequestTTL outside 1s..1h")
	}
	if cfg.IntrospectionAllowed == nil {
		cfg.IntrospectionAllowed = ownClientOrAudience
	}
	return &Storage{Application: app, store: store, cfg: cfg}, nil
}

func ownClientOrAudience(_ context.Context, caller string, in *repository.Introspection) bool {
	if caller == in.ClientID {
		return true
	}
	for _, aud := range in.Audience {
		if aud == caller {
			return true
		}
	}
	return false
}

// oidcError maps an error of the store to the OAuth error op sends: the class only (ErrorCode),
// never the cause, which stays in the parent for the server's own logs; anything that is not a
// verdict on the request is a server_error.
func oidcError(err error) *oidc.Error {
	var e *oidc.Error
	switch repository.ErrorCode(err) {
	case "":
		return nil
	case "invalid_grant":
		e = oidc.ErrInvalidGrant()
	case "invalid_scope":
		e = oidc.ErrInvalidScope()
	case "invalid_target":
		e = oidc.ErrInvalidTarget()
	case "invalid_request":
		e = oidc.ErrInvalidRequest()
	default:
		e = oidc.ErrServerError()
	}
	return e.WithParent(err)
}

// SetUserinfoFromScopes is deprecated in op and empty here: ID tokens take their claims from
// SetUserinfoFromRequest.
func (s *Storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

// SetUserinfoFromRequest fills an ID token's claims from the application.
func (s *Storage) SetUserinfoFromRequest(ctx context.Context, userinfo *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return s.SetUserinfo(ctx, userinfo, req.GetSubject(), req.GetClientID(), scopes)
}
