package zitadeloidc

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/oauthstore/oauthstore/repository"
)

// An authorization request lives in three stages, each used once:
//
//  1. pending, while the user signs in: a state binding (CreateState) whose value is the request's
//     id in op's login and callback URLs; read with PeekState as often as needed.
//  2. signed in: CompleteAuthRequest consumes the pending binding and stores one that names the
//     user, under a new id for op's callback.
//  3. answered: SaveAuthCode consumes that binding and stores op's code (SaveCode), which the
//     token request exchanges in the statement that creates the grant.

// authData is what an authorization request carries from op's authorize endpoint to the token
// response; the code keeps it as its session.
type authData struct {
	Scopes              []string                 `json:"scopes"`
	ResponseType        oidc.ResponseType        `json:"response_type"`
	ResponseMode        oidc.ResponseMode        `json:"response_mode,omitempty"`
	State               string                   `json:"state,omitempty"`
	Nonce               string                   `json:"nonce,omitempty"`
	CodeChallenge       string                   `json:"code_challenge,omitempty"`
	CodeChallengeMethod oidc.CodeChallengeMethod `json:"code_challenge_method,omitempty"`
	Prompt              []string                 `json:"prompt,omitempty"`
	MaxAge              *uint                    `json:"max_age,omitempty"`
	LoginHint           string                   `json:"login_hint,omitempty"`
	// UserHint is the user op named when it created the request (from an id_token_hint).
	UserHint string `json:"user_hint,omitempty"`

	// Set once the user signed in.
	UserID    string     `json:"user_id,omitempty"`
	AuthTime  *time.Time `json:"auth_time,omitempty"`
	AMR       []string   `json:"amr,omitempty"`
	ACR       string     `json:"acr,omitempty"`
	SessionID string     `json:"sid,omitempty"`
}

// authRequest is op's view of a stored authorization request.
type authRequest struct {
	id          string // the binding's value while pending or signed in; empty once it is a code
	code        string // the code it was read by (AuthRequestByCode), exchanged with the tokens
	clientID    string
	redirectURI string
	data        authData
}

var _ op.AuthRequest = (*authRequest)(nil)

func (a *authRequest) GetID() string         { return a.id }
func (a *authRequest) GetACR() string        { return a.data.ACR }
func (a *authRequest) GetAMR() []string      { return a.data.AMR }
func (a *authRequest) GetAudience() []string { return []string{a.clientID} }
func (a *authRequest) GetAuthTime() time.Time {
	if a.data.AuthTime == nil {
		return time.Time{}
	}
	return *a.data.AuthTime
}
func (a *authRequest) GetClientID() string { return a.clientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge {
	if a.data.CodeChallenge == "" {
		return nil
	}
	return &oidc.CodeChallenge{Challenge: a.data.CodeChallenge, Method: a.data.CodeChallengeMethod}
}
func (a *authRequest) GetNonce() string                   { return a.data.Nonce }
func (a *authRequest) GetRedirectURI() string             { return a.redirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType { return a.data.ResponseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode { return a.data.ResponseMode }
func (a *authRequest) GetScopes() []string                { return a.data.Scopes }
func (a *authRequest) GetState() string                   { return a.data.State }
func (a *authRequest) GetSubject() string                 { return a.data.UserID }
func (a *authRequest) Done() bool                         { return a.data.UserID != "" }

// CreateAuthRequest stores a pending authorization request; its id goes to the login page.
func (s *Storage) CreateAuthRequest(ctx context.Context, req *oidc.AuthRequest, userID string) (op.AuthRequest, error) {
	if len(req.Prompt) == 1 && req.Prompt[0] == oidc.PromptNone {
		return nil, oidc.ErrLoginRequired() // no sign-in session to answer from
	}
	// The authorization code flow only: its code is used once, in the statement that creates the
	// grant. The implicit and hybrid flows hand tokens out in the redirect (RFC 9700 §2.1.2).
	if req.ResponseType != oidc.ResponseTypeCode {
		return nil, &oidc.Error{ErrorType: "unsupported_response_type", Description: "only response_type=code is supported"}
	}
	if err := s.checkPKCE(req.CodeChallenge, req.CodeChallengeMethod); err != nil {
		return nil, err
	}
	a := &authRequest{clientID: req.ClientID, redirectURI: req.RedirectURI, data: authData{
		Scopes: req.Scopes, ResponseType: req.ResponseType, ResponseMode: req.ResponseMode, State: req.State,
		Nonce: req.Nonce, CodeChallenge: req.CodeChallenge, CodeChallengeMethod: req.CodeChallengeMethod,
		Prompt: req.Prompt, MaxAge: req.MaxAge, LoginHint: req.LoginHint, UserHint: userID,
	}}
	if err := s.bind(ctx, a); err != nil {
		return nil, err
	}
	return a, nil
}

// checkPKCE applies the store's PKCE policy to an authorization request, whose challenge op
// verifies at the token endpoint: an S256 challenge (43 base64url characters, RFC 7636 §4.2) unless
// Config.PKCEOptional allows none or Config.AllowPlainPKCE the plain method.
func (s *Storage) checkPKCE(challenge string, method oidc.CodeChallengeMethod) error {
	switch {
	case challenge == "" && method == "":
		if s.cfg.PKCEOptional {
			return nil
		}
		return oidc.ErrInvalidRequest().WithDescription("code_challenge required (PKCE, S256)")
	case method == oidc.CodeChallengeMethodS256:
		if len(challenge) != 43 || strings.Trim(challenge, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return oidc.ErrInvalidRequest().WithDescription("code_challenge is not an S256 challenge")
		}
		return nil
	case method == oidc.CodeChallengeMethodPlain && s.cfg.AllowPlainPKCE:
		if len(challenge) < 43 || len(challenge) > 128 ||
			strings.Trim(challenge, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") != "" {
			return oidc.ErrInvalidRequest().WithDescription("code_challenge is not a PKCE verifier")
		}
		return nil
	}
	return oidc.ErrInvalidRequest().WithDescription("code_challenge_method must be S256")
}

// bind stores a as a new state binding and sets its id.
func (s *Storage) bind(ctx context.Context, a *authRequest) error {
	data, err := json.Marshal(a.data)
	if err != nil {
		return oidc.ErrServerError().WithParent(err)
	}
	st, err := s.store.CreateState(ctx, repository.StateRequest{
		ClientID: a.clientID, RedirectURI: a.redirectURI, Data: data, TTL: s.cfg.AuthRequestTTL,
	})
	if err != nil {
		return oidcError(err)
	}
	a.id = st.State.Reveal()
	return nil
}

func requestOf(id string, b *repository.StateBinding) (*authRequest, error) {
	a := &authRequest{id: id, clientID: b.ClientID, redirectURI: b.RedirectURI}
	if err := json.Unmarshal(b.Data, &a.data); err != nil {
		return nil, oidc.ErrServerError().WithParent(err)
	}
	return a, nil
}

// AuthRequestByID reads a pending or signed-in request without using it up.
func (s *Storage) AuthRequestByID(ctx context.Context, id string) (op.AuthRequest, error) {
	b, err := s.store.PeekState(ctx, id)
	if err != nil {
		return nil, oidcError(err)
	}
	return requestOf(id, b)
}

// Login is the user's sign-in, as the application's login page established it.
type Login struct {
	UserID string
	// AuthTime is when the user authenticated; zero means now.
	AuthTime  time.Time
	AMR       []string
	ACR       string
	SessionID string
}

// CompleteAuthRequest records that the user signed in for the pending request id, and returns the
// id to send to op's callback (op.AuthCallbackURL): a new one, for id is used up. Of concurrent
// calls with one id, one succeeds.
func (s *Storage) CompleteAuthRequest(ctx context.Context, id string, login Login) (string, error) {
	if login.UserID == "" {
		return "", errors.New("zitadeloidc: a login needs a user")
	}
	b, err := s.store.ConsumeState(ctx, id)
	if err != nil {
		return "", oidcError(err)
	}
	a, err := requestOf("", b)
	if err != nil {
		return "", err
	}
	if login.AuthTime.IsZero() {
		login.AuthTime = time.Now()
	}
	t := login.AuthTime.UTC().Truncate(time.Microsecond)
	a.data.UserID, a.data.AuthTime, a.data.AMR, a.data.ACR, a.data.SessionID = login.UserID, &t, login.AMR, login.ACR, login.SessionID
	if err := s.bind(ctx, a); err != nil {
		return "", err
	}
	return a.id, nil
}

// SaveAuthCode answers a signed-in request with op's code: the request is used up and the code
// stored as its digest, to be exchanged once.
func (s *Storage) SaveAuthCode(ctx context.Context, id string, code string) error {
	b, err := s.store.ConsumeState(ctx, id)
	if err != nil {
		return oidcError(err)
	}
	a, err := requestOf(id, b)
	if err != nil {
		return err
	}
	if !a.Done() {
		return oidc.ErrInteractionRequired()
	}
	session, err := json.Marshal(a.data)
	if err != nil {
		return oidc.ErrServerError().WithParent(err)
	}
	_, err = s.store.SaveCode(ctx, code, repository.CodeRequest{
		ClientID: a.clientID, UserID: a.data.UserID, RedirectURI: a.redirectURI, Scope: a.data.Scopes,
		Nonce: a.data.Nonce, Session: session,
		Claims: repository.Claims{AuthTime: a.data.AuthTime, AMR: a.data.AMR, ACR: a.data.ACR, SessionID: a.data.SessionID},
	})
	if err != nil {
		return oidcError(err)
	}
	return nil
}

// AuthRequestByCode reads the request a code answers, whatever the code's state: op checks the
// client and PKCE against it, and the token creation exchanges the code, which decides (an
// exchanged code presented again revokes the grant it produced).
func (s *Storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	info, err := s.store.LookupCode(ctx, code)
	if err != nil {
		return nil, oidcError(err)
	}
	a := &authRequest{code: code, clientID: info.ClientID, redirectURI: info.RedirectURI}
	if err := json.Unmarshal(info.Session, &a.data); err != nil {
		return nil, oidc.ErrServerError().WithParent(err)
	}
	a.data.UserID, a.data.Scopes = info.UserID, info.Scope
	return a, nil
}

// DeleteAuthRequest ends a request that is still pending or signed in. A request answered with a
// code is used up already, and its code by the token creation.
func (s *Storage) DeleteAuthRequest(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	_, err := s.store.ConsumeState(ctx, id)
	if err != nil && !errors.Is(err, repository.ErrStateNotFound) {
		return oidcError(err)
	}
	return nil
}
