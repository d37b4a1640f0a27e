package repository

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// Access-token lifetimes.
const (
	DefaultAccessTokenTTL = 10 * time.Minute
	MaxAccessTokenTTL     = 24 * time.Hour
)

// AccessKind is the kind of access token to issue.
type AccessKind uint8

const (
	// AccessNone issues no access token.
	AccessNone AccessKind = iota
	// AccessOpaque: the package mints the token (the grant's id and 264 random bits, 66
	// characters) and keeps its keyed digest; resource servers ask Introspect about it.
	AccessOpaque
	// AccessJWT: the service mints and signs a JWT (RFC 9068) whose "jti" is the one the package
	// returns (the grant's id and 96 random bits, 38 characters) and whose "exp" is ExpiresAt;
	// the package records the jti with the grant, and IntrospectJTI, RevokeJTI and the revocation
	// feed know it. The package holds no signing key.
	AccessJWT
)

// Token types of an access token (RFC 6749 §7.1).
const (
	TokenTypeBearer = "Bearer"
	TokenTypeDPoP   = "DPoP"
)

// AccessRequest asks for an access token with a refresh token (IssueRequest, RotateRequest,
// ExchangeRequest) or on its own (IssueAccessToken).
type AccessRequest struct {
	Kind AccessKind
	// TTL is the token's lifetime; zero means Config.AccessTokenTTL. It never reaches past the
	// family's absolute lifetime.
	TTL time.Duration
	// Audience narrows the token to these audiences (RFC 8707 resources, or any "aud" value): each
	// one must be among the grant's audiences when the grant has any. Nil means the grant's.
	Audience []string
	// TokenType is TokenTypeBearer (the default) or TokenTypeDPoP for a DPoP-bound token
	// (RFC 9449), whose key is the family's SenderThumbprint.
	TokenType string
}

// AccessToken is a newly issued access token.
type AccessToken struct {
	// Token is an opaque token, shown to the client once; empty for a JWT.
	Token Secret
	// JTI is the "jti" the service puts in the JWT it signs; empty for an opaque token.
	JTI string
	// FamilyID is the family the token belongs to, or for a standalone token its grant id.
	FamilyID  string
	TokenType string
	Scope     []string
	Audience  []string
	IssuedAt  time.Time
	// ExpiresAt is the token's end: the JWT's "exp", the token response's expires_in.
	ExpiresAt time.Time
}

// accessPlan is an access token prepared for the statement that issues it.
type accessPlan struct {
	token     Secret
	jti       string
	key       []byte
	pepperID  *string
	ttl       time.Duration
	audience  []string // nil: the grant's
	tokenType string
}

// checkAccess validates an access request and fills in its defaults.
func (s *Store) checkAccess(req AccessRequest) (AccessRequest, error) {
	switch req.Kind {
	case AccessNone:
		return req, nil
	case AccessOpaque, AccessJWT:
	default:
		return req, inputError("access.kind", "unknown")
	}
	switch {
	case req.TTL == 0:
		req.TTL = s.accessTTL
	case req.TTL < time.Second || req.TTL > MaxAccessTokenTTL:
		return req, inputError("access.ttl", "outside 1s..24h")
	}
	switch req.TokenType {
	case "":
		req.TokenType = TokenTypeBearer
	case TokenTypeBearer, TokenTypeDPoP:
	default:
		return req, inputError("access.token_type", "neither Bearer nor DPoP")
	}
	if req.Audience != nil {
		aud, err := validateAudience("access.audience", req.Audience)
		if err != nil {
			return req, err
		}
		if len(aud) == 0 {
			return req, inputError("access.audience", "empty: leave it nil for the grant's")
		}
		req.Audience = aud
	}
	return req, nil
}

// planAccess mints the access token a checked request asks for, of the family id names; nil for
// none.
func (s *Store) planAccess(req AccessRequest, id [familyIDBytes]byte) *accessPlan {
	if req.Kind == AccessNone {
		return nil
	}
	p := &accessPlan{ttl: req.TTL, audience: req.Audience, tokenType: req.TokenType}
	if req.Kind == AccessJWT {
		p.jti, p.key = newJTI(id)
		return p
	}
	var pepperID string
	p.token, p.key, pepperID = s.access.mintAccess(id)
	p.pepperID = &pepperID
	return p
}

// statement parameters: key, jwt, pepper, ttl, audience, token type (zero values for none).
func (p *accessPlan) params() (key []byte, jwt bool, pepperID *string, ttl *time.Duration, audience []string, tokenType string) {
	if p == nil {
		return nil, false, nil, nil, nil, ""
	}
	return p.key, p.jti != "", p.pepperID, &p.ttl, p.audience, p.tokenType
}

// issued is the token the plan became: issued and expiring when the statement that stored it
// says (its lifetime or the family's end, whichever is first), with the grant's scope and audience.
func (p *accessPlan) issued(familyID string, issuedAt time.Time, expires *time.Time, scope, grantAudience []string) *AccessToken {
	if p == nil || expires == nil {
		return nil
	}
	aud := p.audience
	if aud == nil {
		aud = grantAudience
	}
	return &AccessToken{
		Token: p.token, JTI: p.jti, FamilyID: familyID, TokenType: p.tokenType, Scope: scope,
		Audience: aud, IssuedAt: issuedAt.UTC(), ExpiresAt: expires.UTC(),
	}
}

// StandaloneAccessRequest asks for an access token without a refresh token: the client
// credentials grant (RFC 6749 §4.4), or an authorization that granted no offline access.
type StandaloneAccessRequest struct {
	ClientID string
	// Subject is the token's "sub": the user, or empty for the client itself (client_credentials).
	Subject string
	Scope   []string
	// SenderThumbprint binds the token to a key (cnf.jkt); set TokenType DPoP for a DPoP proof.
	SenderThumbprint string
	AccessRequest
}

// IssueAccessToken issues a standalone access token, under a grant id of its own: bulk revocation
// of its client or subject covers it, and RevokeToken or RevokeJTI revokes it.
func (s *Store) IssueAccessToken(ctx context.Context, req StandaloneAccessRequest) (*AccessToken, error) {
	if req.Subject == "" {
		req.Subject = req.ClientID
	}
	if err := firstError(validateID("client_id", req.ClientID), validateID("subject", req.Subject),
		validateThumbprint(req.SenderThumbprint)); err != nil {
		return nil, err
	}
	scope, err := normalizeScope(req.Scope)
	if err != nil {
		return nil, err
	}
	if req.Kind == AccessNone {
		return nil, inputError("access.kind", "none")
	}
	areq, err := s.checkAccess(req.AccessRequest)
	if err != nil {
		return nil, err
	}
	if areq.TokenType == TokenTypeDPoP && req.SenderThumbprint == "" {
		return nil, inputError("access.token_type", "DPoP without a sender thumbprint")
	}
	id := newStandaloneID()
	p := s.planAccess(areq, id)
	audience := p.audience
	if audience == nil {
		audience = []string{}
	}
	row, err := s.q.AccessTokenCreateStandalone(ctx, s.dbtx, db.AccessTokenCreateStandaloneParams{
		GrantID: pgtype.UUID{Bytes: id, Valid: true}, Key: p.key, JWT: p.jti != "", PepperID: p.pepperID,
		ClientID: req.ClientID, Subject: req.Subject, Scope: scope, Audience: audience,
		TokenType: p.tokenType, SenderThumbprint: optionalText(req.SenderThumbprint), Now: s.now(), TTL: p.ttl,
	})
	if err != nil {
		return nil, dbError("issue access token", err)
	}
	return p.issued(pgtype.UUID{Bytes: id, Valid: true}.String(), row.IssuedAt, &row.ExpiresAt, scope, audience), nil
}

// Token uses an introspection reports.
const (
	TokenUseAccess  = "access_token"
	TokenUseRefresh = "refresh_token"
)

// Introspection is what RFC 7662 token introspection answers about a token. An inactive token
// carries nothing but Active false.
type Introspection struct {
	Active bool
	// TokenUse says what the token is: TokenUseAccess or TokenUseRefresh.
	TokenUse string
	// TokenType is the access token's type (Bearer or DPoP); empty for a refresh token.
	TokenType string
	Scope     []string
	ClientID  string
	// Subject is the user, or for a client_credentials token the client.
	Subject   string
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	// JTI is a JWT's jti.
	JTI string
	// FamilyID is the family (grant) the token belongs to.
	FamilyID string
	// SenderThumbprint is the key the token's family is bound to, if any: cnf.jkt of a DPoP
	// token, cnf.x5t#S256 of a certificate-bound one.
	SenderThumbprint string
	// The grant's claims that a resource server may need: auth_time, acr, amr, sid.
	AuthTime  *time.Time
	ACR       string
	AMR       []string
	SessionID string
}

// Response returns the introspection as the members of an RFC 7662 response: "active", and for
// an active token "scope", "client_id", "sub", "exp", "iat", "aud", "jti", "token_type", "cnf",
// "auth_time", "acr", "amr" and "sid" where they have a value. An access token bound to a key has
// "cnf": {"jkt": …} when it is a DPoP token and {"x5t#S256": …} when it is a Bearer token (bound
// by a client certificate, RFC 8705). Encode it as JSON.
func (i *Introspection) Response() map[string]any {
	if !i.Active {
		return map[string]any{"active": false}
	}
	r := map[string]any{
		"active": true, "client_id": i.ClientID, "sub": i.Subject,
		"exp": i.ExpiresAt.Unix(), "iat": i.IssuedAt.Unix(), "token_use": i.TokenUse,
	}
	if len(i.Scope) > 0 {
		r["scope"] = strings.Join(i.Scope, " ")
	}
	switch len(i.Audience) {
	case 0:
	case 1:
		r["aud"] = i.Audience[0]
	default:
		r["aud"] = i.Audience
	}
	set := func(k, v string) {
		if v != "" {
			r[k] = v
		}
	}
	set("jti", i.JTI)
	set("token_type", i.TokenType)
	set("acr", i.ACR)
	set("sid", i.SessionID)
	// The key an access token is bound to: a DPoP token's (RFC 9449 §6.2, jkt), or for a Bearer
	// token of a family bound to a key, the client certificate's (RFC 8705 §3.2, x5t#S256).
	switch {
	case i.SenderThumbprint == "" || i.TokenUse != TokenUseAccess:
	case i.TokenType == TokenTypeDPoP:
		r["cnf"] = map[string]string{"jkt": i.SenderThumbprint}
	default:
		r["cnf"] = map[string]string{"x5t#S256": i.SenderThumbprint}
	}
	if i.AuthTime != nil {
		r["auth_time"] = i.AuthTime.Unix()
	}
	if len(i.AMR) > 0 {
		r["amr"] = i.AMR
	}
	return r
}

// Introspect answers RFC 7662 introspection of an opaque access token or a refresh token, in one
// statement, changing nothing (a refresh token is not consumed). An access token is inactive once
// it expired, was revoked, or its family was revoked (replay, RevokeToken, RevokeFamily,
// RevokeFamilies) or deleted; a refresh token once it was consumed, expired, or its family was
// revoked. A token the package did not mint, or does not know, is inactive: no error. A JWT is
// checked by its jti with IntrospectJTI, after the service verified its signature.
//
// It does not check who asks: the introspection endpoint authenticates its callers (RFC 7662 §2.1)
// and may refuse to answer about tokens not meant for them (compare Audience).
func (s *Store) Introspect(ctx context.Context, token string) (*Introspection, error) {
	if len(token) == accessTokenLen {
		id, digests, ok := s.access.decodeAccess(token)
		if !ok {
			return &Introspection{}, nil
		}
		return s.introspectAccess(ctx, id, digests, "")
	}
	info, err := s.Lookup(ctx, token)
	if errors.Is(err, ErrTokenNotFound) {
		return &Introspection{}, nil
	}
	if err != nil {
		return nil, err
	}
	if info.FamilyRevokedAt != nil || info.ConsumedAt != nil || info.Expired || s.refresh.retired(info.PepperID) {
		return &Introspection{}, nil
	}
	return &Introspection{
		Active: true, TokenUse: TokenUseRefresh, Scope: info.Scope, ClientID: info.ClientID,
		Subject: info.UserID, Audience: info.Audience, IssuedAt: info.CreatedAt, ExpiresAt: info.ExpiresAt,
		FamilyID: info.FamilyID, SenderThumbprint: info.SenderThumbprint, AuthTime: info.Claims.AuthTime,
		ACR: info.Claims.ACR, AMR: info.Claims.AMR, SessionID: info.Claims.SessionID,
	}, nil
}

// IntrospectJTI answers introspection of a JWT access token by its jti, which the service read
// from a JWT whose signature it verified: a jti is no secret, so the signature is what proves the
// token. Inactive once the JWT expired, its jti was revoked (RevokeJTI), or its family was revoked.
// A jti the package did not mint is an InputError.
func (s *Store) IntrospectJTI(ctx context.Context, jti string) (*Introspection, error) {
	id, key, ok := parseJTI(jti)
	if !ok {
		return nil, inputError("jti", "not a jti this package minted")
	}
	return s.introspectAccess(ctx, id, [][]byte{key}, jti)
}

// introspectAccess reads an access token by its keys (one per pepper of the ring, the current one
// first; a JWT has one) until one is found: a token made under an older pepper costs a round trip
// more per pepper before its own.
func (s *Store) introspectAccess(ctx context.Context, id [familyIDBytes]byte, keys [][]byte, jti string) (*Introspection, error) {
	row, found, err := s.getAccess(ctx, s.dbtx, id, keys)
	if err != nil {
		return nil, err
	}
	// An opaque token found under a retired pepper is recognised, never accepted.
	if found < 0 || !row.Active || (jti == "" && s.access.keys[found].retired) {
		return &Introspection{}, nil
	}
	return &Introspection{
		Active: true, TokenUse: TokenUseAccess, TokenType: row.TokenType, Scope: fields(row.Scope),
		ClientID: row.ClientID, Subject: row.Subject, Audience: fields(row.Audience), IssuedAt: row.IssuedAt.UTC(),
		ExpiresAt: row.ExpiresAt.UTC(), JTI: jti, FamilyID: pgtype.UUID{Bytes: id, Valid: true}.String(),
		SenderThumbprint: deref(row.SenderThumbprint), AuthTime: utcPtr(row.AuthTime), ACR: deref(row.ACR),
		AMR: fieldsOrNil(row.AMR), SessionID: deref(row.SessionID),
	}, nil
}

// fields splits a space-separated list the database joined (scope tokens and audiences hold no
// space); empty for none.
func fields(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, " ")
}

func fieldsOrNil(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, " ")
}

// getAccess reads an access token by the first of its keys that finds it, and returns the index
// of that key (for an opaque token, of the pepper its digest was made with), or -1 when none does.
// A standalone token is read from its own row; a token of a family first from the family row,
// which names the one issued with its live refresh token (one probe, the common case), then from
// its own row with the family's.
func (s *Store) getAccess(ctx context.Context, q DBTX, id [familyIDBytes]byte, keys [][]byte) (db.AccessTokenGetRow, int, error) {
	family := pgtype.UUID{Bytes: id, Valid: true}
	reads := []func(key []byte) (db.AccessTokenGetRow, error){
		func(key []byte) (db.AccessTokenGetRow, error) {
			row, err := s.q.AccessTokenGetCurrent(ctx, q, db.AccessTokenGetCurrentParams{FamilyID: family, Key: key, Now: s.now()})
			return db.AccessTokenGetRow(row), err
		},
		func(key []byte) (db.AccessTokenGetRow, error) {
			return s.q.AccessTokenGet(ctx, q, db.AccessTokenGetParams{FamilyID: family, Key: key, Now: s.now()})
		},
	}
	if isStandalone(id) {
		reads = reads[:1]
		reads[0] = func(key []byte) (db.AccessTokenGetRow, error) {
			row, err := s.q.AccessTokenGetStandalone(ctx, q, db.AccessTokenGetStandaloneParams{FamilyID: family, Key: key, Now: s.now()})
			return db.AccessTokenGetRow(row), err
		}
	}
	for _, read := range reads {
		for i, key := range keys {
			row, err := read(key)
			switch err := interpretError("introspect", err, ErrTokenNotFound); {
			case err == nil:
				return row, i, nil
			case !errors.Is(err, ErrTokenNotFound):
				return row, -1, err
			}
		}
	}
	return db.AccessTokenGetRow{}, -1, nil
}

// revokeAccess revokes one access token of clientID: an opaque one by its digests, a JWT by its
// jti's key. A token of another client is ErrWrongClient and revokes nothing.
func (s *Store) revokeAccess(ctx context.Context, id [familyIDBytes]byte, keys [][]byte, jwt bool, clientID string) error {
	family := pgtype.UUID{Bytes: id, Valid: true}
	err := s.readCommitted(ctx, "revoke access token", func(q DBTX) (err error) {
		_, err = s.q.AccessTokenRevoke(ctx, q, db.AccessTokenRevokeParams{
			FamilyID: family, Keys: keys, JWT: jwt, ClientID: clientID, Now: s.now(),
		})
		return err
	})
	if err := interpretError("revoke access token", err, ErrTokenNotFound); !errors.Is(err, ErrTokenNotFound) {
		return err
	}
	// Nothing of this client: say whether the token is another client's.
	if _, found, err := s.getAccess(ctx, s.dbtx, id, keys); err != nil || found < 0 {
		return firstError(err, ErrTokenNotFound)
	}
	return ErrWrongClient
}

// RevokeJTI revokes one JWT access token of clientID by its jti (RFC 7009 for a JWT whose
// signature the service verified): IntrospectJTI answers inactive from then on, and the
// revocation feed announces the jti until the JWT expires. A jti of another client is
// ErrWrongClient and revokes nothing; revoking it again succeeds.
func (s *Store) RevokeJTI(ctx context.Context, jti, clientID string) error {
	if err := validateID("client_id", clientID); err != nil {
		return err
	}
	id, key, ok := parseJTI(jti)
	if !ok {
		return inputError("jti", "not a jti this package minted")
	}
	return s.revokeAccess(ctx, id, [][]byte{key}, true, clientID)
}

// FamilyOfJTI returns the family (or standalone grant) a jti of this package belongs to, for a
// resource server that checks a JWT against the family revocations of the feed.
func FamilyOfJTI(jti string) (string, bool) {
	id, _, ok := parseJTI(jti)
	if !ok {
		return "", false
	}
	return pgtype.UUID{Bytes: id, Valid: true}.String(), true
}

// Revocation is one entry of the revocation feed: a family (or standalone grant) whose every token
// is revoked (JTI empty), or one revoked JWT.
type Revocation struct {
	FamilyID  string
	JTI       string
	RevokedAt time.Time
	// ExpiresAt is when the last token the entry covers expires; after it the entry goes.
	ExpiresAt time.Time
}

// RevocationPage is one read of the revocation feed.
type RevocationPage struct {
	Revocations []Revocation
	// Cursor is what to pass to the next call: it follows the last entry returned, or is the
	// cursor given when none was.
	Cursor string
	// More reports that the page was full: call again at once.
	More bool
}

// ErrFeedCursorAhead is returned by RevokedSince for a cursor made on another PostgreSQL cluster:
// the database was restored from a dump or replicated logically since, and the feed counts the
// transactions of the cluster it is on. Read the feed again from its start (""). After such a
// move, also renumber the entries the move copied (UPDATE oauth_revocation SET xid = 0), which
// otherwise wait until the new cluster's transactions catch up with their old numbers.
var ErrFeedCursorAhead = errors.New("oauthstore: the revocation feed cursor is of another cluster: read the feed again from the start")

// MaxRevocationPage bounds the entries RevokedSince returns at once.
const MaxRevocationPage = 10000

// RevokedSince returns the revocations after cursor ("" for the start of the feed), oldest first,
// at most limit of them (at most MaxRevocationPage; zero means 1,000), with the cursor to continue
// from. A resource server that validates JWTs itself keeps a denylist of families and jtis with
// it: calling it every few seconds, it sees every revocation exactly once, in the order their
// transactions ended, and never needs a full reload.
//
// A revocation shows once every transaction that was running when it committed has ended: a
// long transaction on the database delays the feed (never loses an entry). Entries leave the feed
// when the tokens they cover have expired, so a cursor of any age is valid.
func (a *Admin) RevokedSince(ctx context.Context, cursor string, limit int) (*RevocationPage, error) {
	switch {
	case limit == 0:
		limit = 1000
	case limit < 0 || limit > MaxRevocationPage:
		return nil, inputError("limit", "outside 1..10000")
	}
	xid, seq, err := parseCursor(cursor)
	if err != nil {
		return nil, err
	}
	rows, err := a.q.RevocationFeed(ctx, a.dbtx, db.RevocationFeedParams{
		AfterXID: xid, AfterSeq: seq, Now: a.now(), MaxRows: int32(limit),
	})
	if err != nil {
		return nil, dbError("revocation feed", err)
	}
	if len(rows) == 0 && xid > 0 {
		// Nothing after the cursor: say so only if the cursor is of this cluster, whose xids it
		// counts; one of another cluster would wait for ever.
		next, err := a.q.RevocationFeedNextXID(ctx, a.dbtx)
		if err != nil {
			return nil, dbError("revocation feed", err)
		}
		if xid >= next {
			return nil, ErrFeedCursorAhead
		}
	}
	page := &RevocationPage{Revocations: make([]Revocation, len(rows)), Cursor: cursor, More: len(rows) == limit}
	for i, r := range rows {
		page.Revocations[i] = Revocation{
			FamilyID: r.FamilyID.String(), JTI: deref(r.JTI), RevokedAt: r.RevokedAt.UTC(), ExpiresAt: r.ExpiresAt.UTC(),
		}
		page.Cursor = strconv.FormatInt(r.XID, 10) + "." + strconv.FormatInt(r.Seq, 10)
	}
	return page, nil
}

func parseCursor(c string) (xid, seq int64, err error) {
	if c == "" {
		return 0, 0, nil
	}
	x, s, ok := strings.Cut(c, ".")
	xid, err1 := strconv.ParseInt(x, 10, 64)
	seq, err2 := strconv.ParseInt(s, 10, 64)
	if !ok || err1 != nil || err2 != nil || xid < 0 || seq < 0 {
		return 0, 0, inputError("cursor", "not a cursor of the revocation feed")
	}
	return xid, seq, nil
}
