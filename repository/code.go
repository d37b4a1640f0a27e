package repository

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// Authorization code lifetimes (RFC 6749 §4.1.2 recommends at most ten minutes).
const (
	DefaultCodeTTL = 60 * time.Second
	MaxCodeTTL     = 10 * time.Minute
)

// PKCE methods (RFC 7636 §4.2).
const (
	PKCEMethodS256  = "S256"
	PKCEMethodPlain = "plain"
)

// CodeRequest is an approved authorization request (RFC 6749 §4.1.1) to be answered with a code.
type CodeRequest struct {
	ClientID    string
	UserID      string
	RedirectURI string
	Scope       []string
	// CodeChallenge and CodeChallengeMethod are the PKCE parameters (RFC 7636 §4.3). Required
	// unless Config.PKCEOptional; method "plain" only with Config.AllowPlainPKCE.
	CodeChallenge       string
	CodeChallengeMethod string
	// Nonce is the OpenID Connect nonce, returned by Exchange for the ID token.
	Nonce string
	// Resources are the RFC 8707 resource indicators: absolute URIs without a fragment.
	Resources []string
	// DPoPJKT binds the code to a DPoP key (RFC 9449 §10): the exchange must prove the same key.
	DPoPJKT string
	// Session is returned by Exchange as it was given: whatever the token endpoint needs (auth_time,
	// acr, amr, claims). JSON, at most 16 KiB; nil means {}.
	Session json.RawMessage
	// TTL is the code's lifetime; zero means Config.CodeTTL.
	TTL time.Duration
	// Claims are the grant's claims (auth_time, acr, amr, sid, session metadata): the family the
	// code produces takes them, and its Resources as its audience.
	Claims Claims
}

// AuthorizationCode is a newly minted code: Code goes to the client in the redirect, once.
type AuthorizationCode struct {
	Code      Secret
	ExpiresAt time.Time
}

// CreateCode stores an authorization code for an approved request and returns it.
func (s *Store) CreateCode(ctx context.Context, req CodeRequest) (*AuthorizationCode, error) {
	p, err := s.codeParams(req)
	if err != nil {
		return nil, err
	}
	code, digest, pepperID := s.code.mint()
	p.Digest, p.PepperID, p.Now = digest, pepperID, s.now()
	expires, err := s.q.AuthorizationCodeCreate(ctx, s.dbtx, p)
	if err != nil {
		return nil, dbError("create code", err)
	}
	return &AuthorizationCode{Code: code, ExpiresAt: expires.UTC()}, nil
}

// codeParams checks a code request and returns it as the parameters of the statement that stores
// it, but for the code itself.
func (s *Store) codeParams(req CodeRequest) (db.AuthorizationCodeCreateParams, error) {
	p := db.AuthorizationCodeCreateParams{
		ClientID: req.ClientID, UserID: req.UserID, RedirectURI: req.RedirectURI,
		CodeChallenge: optionalText(req.CodeChallenge), CodeChallengeMethod: optionalText(req.CodeChallengeMethod),
		Nonce: optionalText(req.Nonce), DPoPJKT: optionalText(req.DPoPJKT), TTL: req.TTL,
	}
	if err := firstError(validateID("client_id", req.ClientID), validateID("user_id", req.UserID),
		validateRedirectURI(req.RedirectURI)); err != nil {
		return p, err
	}
	var err error
	if p.Scope, err = normalizeScope(req.Scope); err != nil {
		return p, err
	}
	if err := s.validateChallenge(req.CodeChallenge, req.CodeChallengeMethod); err != nil {
		return p, err
	}
	if len(req.Nonce) > 512 {
		return p, inputError("nonce", "longer than 512 bytes")
	}
	if err := validateText("nonce", req.Nonce); err != nil {
		return p, err
	}
	if p.Resources, err = validateResources(req.Resources); err != nil {
		return p, err
	}
	if err := firstError(validateThumbprint(req.DPoPJKT), req.Claims.validate()); err != nil {
		return p, err
	}
	c := req.Claims.params()
	p.AuthTime, p.ACR, p.AMR, p.SessionID, p.UserAgent, p.IP, p.Label = c.authTime, c.acr, c.amr, c.sid, c.userAgent, c.ip, c.label
	if p.Session, err = validateJSON("session", req.Session); err != nil {
		return p, err
	}
	switch {
	case p.TTL == 0:
		p.TTL = s.codeTTL
	case p.TTL < time.Second || p.TTL > MaxCodeTTL:
		return p, inputError("ttl", "outside 1s..10m")
	}
	return p, nil
}

// ExchangeRequest is a token request with grant_type=authorization_code (RFC 6749 §4.1.3).
type ExchangeRequest struct {
	Code string
	// ClientID is the authenticated client.
	ClientID     string
	RedirectURI  string
	CodeVerifier string
	// SenderThumbprint is the key the request proved (DPoP proof or client certificate). It must
	// match a code bound with DPoPJKT, and when set it binds the new family (RFC 9449 §5).
	SenderThumbprint string
	// RefreshTokenTTL and Lifetime are the first refresh token's idle lifetime and the family's
	// absolute lifetime; zero means the Config defaults.
	RefreshTokenTTL time.Duration
	Lifetime        time.Duration
	// Access asks for an access token issued in the same statement; its audience must be among
	// the code's resources, when it has any.
	Access AccessRequest
}

// CodeExchange is the grant an exchanged code produced: a new family with its first refresh token,
// and what the authorization request carried for the token response.
type CodeExchange struct {
	*RefreshToken
	Nonce       string
	Resources   []string
	Session     json.RawMessage
	RedirectURI string
}

// Exchange redeems an authorization code. It verifies the client, the redirect URI, PKCE (in
// constant time) and the DPoP binding, then — in one statement — consumes the code, creates the
// family with its first refresh token, and records the family on the code: all of it or none.
//
// A refused exchange changes nothing and does not burn the code. A code that was already
// exchanged, presented again with everything its use proved (client, redirect URI, verifier, key),
// is a replay: the family it produced is revoked and ErrCodeReplayDetected returned. Of
// concurrent exchanges of one code exactly one succeeds and the others are replays.
func (s *Store) Exchange(ctx context.Context, req ExchangeRequest) (*CodeExchange, error) {
	if err := validateID("client_id", req.ClientID); err != nil {
		return nil, err
	}
	if err := validateRedirectURI(req.RedirectURI); err != nil {
		return nil, err
	}
	if err := validateThumbprint(req.SenderThumbprint); err != nil {
		return nil, err
	}
	ttl, lifetime, err := s.familyLifetimes(req.RefreshTokenTTL, req.Lifetime)
	if err != nil {
		return nil, err
	}
	areq, err := s.checkAccess(req.Access)
	if err != nil {
		return nil, err
	}
	digests, ok := s.codeDigests(req.Code)
	if !ok {
		return nil, ErrCodeNotFound
	}
	c, err := s.verifyCode(ctx, digests, req)
	if err != nil {
		return nil, err
	}
	if err := accessWithin(areq, c.Resources, req.SenderThumbprint); err != nil {
		return nil, err
	}
	family := newFamilyID()
	token, refreshDigest, pepperID := s.refresh.mintFor(family)
	access := s.planAccess(areq, family)
	// Under a stricter default isolation level a concurrent exchange makes the statement fail to
	// serialize; run again READ COMMITTED, it waits for that exchange and sees its outcome.
	var row db.AuthorizationCodeExchangeRow
	err = s.readCommitted(ctx, "exchange code", func(q DBTX) (err error) {
		p := db.AuthorizationCodeExchangeParams{
			Digest:           c.Digest,
			FamilyID:         pgtype.UUID{Bytes: family, Valid: true},
			Now:              s.now(),
			ClientID:         req.ClientID,
			RedirectURI:      req.RedirectURI,
			Lifetime:         optionalDuration(lifetime),
			SenderThumbprint: optionalText(req.SenderThumbprint),
			TTL:              ttl,
			RefreshDigest:    refreshDigest,
			RefreshPepperID:  pepperID,
		}
		p.AccessKey, p.AccessJWT, p.AccessPepperID, p.AccessTTL, p.AccessAudience, p.AccessTokenType = access.params()
		row, err = s.q.AuthorizationCodeExchange(ctx, q, p)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		// Another exchange consumed it meanwhile, or it expired: read again and say which.
		if _, err := s.verifyCode(ctx, digests, req); err != nil {
			return nil, err
		}
		return nil, ErrCodeNotFound
	}
	if err != nil {
		return nil, dbError("exchange code", err)
	}
	return codeExchange(token, c, row, access), nil
}

// verifyCode reads a code and checks the request against it. It returns the code when it can be
// exchanged now; a consumed code is handled as a replay.
func (s *Store) verifyCode(ctx context.Context, digests [][]byte, req ExchangeRequest) (db.AuthorizationCodeGetRow, error) {
	c, err := s.q.AuthorizationCodeGet(ctx, s.dbtx, db.AuthorizationCodeGetParams{Digests: digests, Now: s.now()})
	if err := interpretError("exchange code: read", err, ErrCodeNotFound); err != nil {
		return c, err
	}
	switch {
	case c.ConsumedAt == nil && s.code.retired(c.PepperID):
		return c, ErrCodeNotFound // recognise-only: a pending code under a retired pepper is unknown
	case c.ClientID != req.ClientID:
		return c, ErrWrongClient
	case c.RedirectURI != req.RedirectURI:
		return c, ErrRedirectMismatch
	case !s.verifyPKCE(c.CodeChallenge, c.CodeChallengeMethod, req.CodeVerifier):
		return c, ErrPKCEMismatch
	case c.DPoPJKT != nil && *c.DPoPJKT != req.SenderThumbprint:
		return c, ErrSenderMismatch
	case c.ConsumedAt != nil:
		return c, s.codeReplayed(ctx, c)
	case c.Expired:
		return c, ErrCodeExpired
	}
	return c, nil
}

// codeReplayed revokes the family a replayed code produced (RFC 6749 §4.1.2, RFC 9700 §4.2.4).
func (s *Store) codeReplayed(ctx context.Context, c db.AuthorizationCodeGetRow) error {
	e := Event{Kind: EventCodeReplayDetected, ClientID: c.ClientID, UserID: c.UserID, Reason: ReasonCodeReplayDetected}
	switch {
	case !c.FamilyID.Valid:
		s.emit(ctx, e)
		return ErrCodeReplayDetected
	case c.FamilyRevokedAt != nil:
		e.FamilyID = c.FamilyID.String()
		// Revoked before: reported once a minute per family, however often the code comes back.
		if first := s.replays.firstSince(&e); first != nil {
			s.emit(ctx, *first)
		}
		return ErrCodeReplayDetected
	}
	e.FamilyID = c.FamilyID.String()
	if s.callerTx {
		return s.revokeReplayed(ctx, c.FamilyID, &e, ErrCodeReplayDetected)
	}
	err := s.readCommitted(ctx, "exchange code: revoke on replay", func(q DBTX) error {
		row, err := s.q.FamilyRevoke(ctx, q, db.FamilyRevokeParams{ID: c.FamilyID, Now: s.now(), Reason: ReasonCodeReplayDetected})
		e.FamilyRevoked, e.SessionID = row.RevokedNow, deref(row.SessionID)
		return err
	})
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return dbError("exchange code: revoke on replay", err)
	}
	s.emit(ctx, e)
	return ErrCodeReplayDetected
}

// verifyPKCE checks a code verifier against the stored challenge in constant time (RFC 7636
// §4.6). A code issued without a challenge accepts no verifier: a verifier there is a downgrade
// attempt (RFC 9700 §2.1.1).
func (s *Store) verifyPKCE(challenge, method *string, verifier string) bool {
	if challenge == nil {
		return verifier == ""
	}
	if !validVerifier(verifier) {
		return false
	}
	var want string
	switch *method {
	case PKCEMethodS256:
		sum := sha256.Sum256([]byte(verifier))
		want = base64.RawURLEncoding.EncodeToString(sum[:])
	case PKCEMethodPlain:
		if !s.allowPlainPKCE {
			return false
		}
		want = verifier
	default:
		return false
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(*challenge)) == 1
}

// validVerifier: 43 to 128 characters of [A-Za-z0-9-._~] (RFC 7636 §4.1).
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

func (s *Store) validateChallenge(challenge, method string) error {
	switch {
	case challenge == "" && method == "":
		if !s.pkceOptional {
			return inputError("code_challenge", "required (PKCE)")
		}
		return nil
	case challenge == "":
		return inputError("code_challenge", "missing")
	case method == PKCEMethodS256:
		// base64url of exactly 32 bytes: 43 characters of the alphabet (the decoder alone would
		// skip line breaks) with no stray bits in the last one.
		if raw, err := base64.RawURLEncoding.Strict().DecodeString(challenge); len(challenge) != 43 ||
			validateThumbprint(challenge) != nil || err != nil || len(raw) != sha256.Size {
			return inputError("code_challenge", "not a base64url SHA-256 (43 characters)")
		}
		return nil
	case method == PKCEMethodPlain:
		if !s.allowPlainPKCE {
			return inputError("code_challenge_method", "plain is not allowed")
		}
		if !validVerifier(challenge) {
			return inputError("code_challenge", "not 43-128 unreserved characters")
		}
		return nil
	}
	return inputError("code_challenge_method", "must be S256 or plain")
}

// Bounds of a code whose value the caller's framework chose (SaveCode): at least 32 characters,
// so that a value of 32 random bytes in any common encoding fits and a short counter does not,
// and at most 2048, what a redirect URI's query carries comfortably.
const (
	MinChosenCodeLen = 32
	MaxChosenCodeLen = 2048
)

// chosenCodeLabel separates the digest of a chosen code's text from that of a minted code's 32
// bytes.
const chosenCodeLabel = "chosen:"

// SaveCode stores an authorization code whose value the caller chose, for frameworks that mint
// codes themselves (zitadel/oidc's op, fosite): the code is kept as its keyed digest, like one
// CreateCode mints, and Exchange, LookupCode, replay detection and cleanup treat it the same way.
// The value must come from a CSPRNG with at least 128 bits of entropy; the package cannot check
// that, only that it is 32 to 2048 visible ASCII characters (an *InputError otherwise). A value
// stored already is an *InputError too, and changes nothing.
//
// PKCE: with CodeChallenge set, the challenge is checked as CreateCode checks it and Exchange
// verifies it. Without one the code is stored without a challenge whatever Config.PKCEOptional
// says, and Exchange takes no verifier: that is for a framework that verifies PKCE itself against
// the challenge it keeps (in Session, say) before it calls Exchange.
func (s *Store) SaveCode(ctx context.Context, code string, req CodeRequest) (time.Time, error) {
	if err := validateChosenCode(code); err != nil {
		return time.Time{}, err
	}
	checker := *s
	if req.CodeChallenge == "" && req.CodeChallengeMethod == "" {
		checker.pkceOptional = true
	}
	p, err := checker.codeParams(req)
	if err != nil {
		return time.Time{}, err
	}
	digests, _ := s.codeDigests(code)
	p.Digest, p.PepperID, p.Now = digests[0], s.code.currentPepperID(), s.now()
	expires, err := s.q.AuthorizationCodeCreate(ctx, s.dbtx, p)
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UniqueViolation {
		return time.Time{}, inputError("code", "already stored")
	}
	if err != nil {
		return time.Time{}, dbError("save code", err)
	}
	return expires.UTC(), nil
}

// validateChosenCode: 32 to 2048 characters from '!' to '~'.
func validateChosenCode(code string) error {
	if len(code) < MinChosenCodeLen || len(code) > MaxChosenCodeLen {
		return inputError("code", "not 32-2048 characters")
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '!' || code[i] > '~' {
			return inputError("code", "not visible ASCII")
		}
	}
	return nil
}

// codeDigests returns a presented code's digests, one per pepper of the ring, the current one
// first: a code this package minted is digested as its 32 bytes, any other (SaveCode) as its text
// under a label of its own. False for what can be neither.
func (s *Store) codeDigests(code string) ([][]byte, bool) {
	if digests, ok := s.code.digestPresented(code); ok {
		return digests, true
	}
	if validateChosenCode(code) != nil {
		return nil, false
	}
	out := make([][]byte, len(s.code.keys))
	for i := range s.code.keys {
		out[i] = s.code.keys[i].sum([]byte(chosenCodeLabel + code))
	}
	return out, true
}

// CodeInfo is what is stored about an authorization code, whatever its state.
type CodeInfo struct {
	ClientID    string
	UserID      string
	RedirectURI string
	Scope       []string
	Nonce       string
	Resources   []string
	DPoPJKT     string
	// Session is the JSON the code was created with, byte for byte.
	Session json.RawMessage
	Claims  Claims
	// PKCE reports whether the code carries a challenge, which Exchange verifies.
	PKCE      bool
	CreatedAt time.Time
	ExpiresAt time.Time
	// ConsumedAt is when the code was exchanged, and FamilyID the family that produced; an
	// exchanged code presented again is a replay (Exchange revokes that family).
	ConsumedAt      *time.Time
	FamilyID        string
	FamilyRevokedAt *time.Time
	// PepperID names the pepper of the ring the code's digest was made with.
	PepperID string
	// Expired reports whether ExpiresAt has passed by the database clock (or Config.Clock).
	Expired bool
}

// LookupCode returns what is stored about a code, whatever its state, without changing anything:
// for a framework that reads the authorization request behind a code before it authenticates
// the client and verifies PKCE, and then calls Exchange, which decides. An unknown or malformed
// code is ErrCodeNotFound. A consumed code is returned (with ConsumedAt), so that its second
// presentation reaches Exchange, which revokes the family it produced.
func (s *Store) LookupCode(ctx context.Context, code string) (*CodeInfo, error) {
	digests, ok := s.codeDigests(code)
	if !ok {
		return nil, ErrCodeNotFound
	}
	c, err := s.q.AuthorizationCodeGet(ctx, s.dbtx, db.AuthorizationCodeGetParams{Digests: digests, Now: s.now()})
	if err := interpretError("lookup code", err, ErrCodeNotFound); err != nil {
		return nil, err
	}
	info := &CodeInfo{
		ClientID: c.ClientID, UserID: c.UserID, RedirectURI: c.RedirectURI, Scope: c.Scope,
		Nonce: deref(c.Nonce), Resources: c.Resources, DPoPJKT: deref(c.DPoPJKT), Session: json.RawMessage(c.Session),
		Claims: claimsOf(c.AuthTime, c.ACR, c.AMR, c.SessionID, c.UserAgent, c.IP, c.Label),
		PKCE:   c.CodeChallenge != nil, CreatedAt: c.CreatedAt.UTC(), ExpiresAt: c.ExpiresAt.UTC(),
		ConsumedAt: utcPtr(c.ConsumedAt), FamilyRevokedAt: utcPtr(c.FamilyRevokedAt), PepperID: c.PepperID,
		Expired: c.Expired,
	}
	if c.FamilyID.Valid {
		info.FamilyID = c.FamilyID.String()
	}
	return info, nil
}
