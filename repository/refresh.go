package repository

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// Grant is what a refresh token stands for.
type Grant struct {
	FamilyID string
	ClientID string
	UserID   string
	// Scope is the scope of this token: the granted scope, or a narrower one a rotation asked for.
	Scope []string
	// Audience is the grant's audiences (RFC 8707 resources): those its access tokens may be
	// issued for; empty for any.
	Audience []string
	Claims   Claims
	// CreatedAt is when the grant started; LastUsedAt when its last rotation was, if any.
	CreatedAt  time.Time
	LastUsedAt *time.Time
}

// RefreshToken is a newly minted refresh token. Token is shown to the client once; the database
// keeps only its digest.
type RefreshToken struct {
	Token     Secret
	ExpiresAt time.Time
	// FamilyExpiresAt is the family's absolute end, if it has one.
	FamilyExpiresAt *time.Time
	// Access is the access token issued with it, when the request asked for one.
	Access *AccessToken
	Grant
}

// IssueRequest starts a new grant.
type IssueRequest struct {
	ClientID string
	UserID   string
	Scope    []string
	// TTL is the token's idle lifetime; zero means Config.RefreshTokenTTL.
	TTL time.Duration
	// Lifetime is the family's absolute lifetime; zero means Config.FamilyLifetime.
	Lifetime time.Duration
	// SenderThumbprint binds the family to a key: the RFC 9449 DPoP "jkt" or the RFC 8705
	// "x5t#S256" of the client's key. Every rotation must then present the same one.
	SenderThumbprint string
	// Audience is the grant's audiences (RFC 8707 resources); empty for any.
	Audience []string
	Claims   Claims
	// Access asks for an access token issued in the same statement.
	Access AccessRequest
}

// Issue starts a family with its first refresh token, and an access token when req.Access asks
// for one, in one statement.
func (s *Store) Issue(ctx context.Context, req IssueRequest) (*RefreshToken, error) {
	if err := validateID("client_id", req.ClientID); err != nil {
		return nil, err
	}
	if err := validateID("user_id", req.UserID); err != nil {
		return nil, err
	}
	scope, err := normalizeScope(req.Scope)
	if err != nil {
		return nil, err
	}
	ttl, lifetime, err := s.familyLifetimes(req.TTL, req.Lifetime)
	if err != nil {
		return nil, err
	}
	if err := firstError(validateThumbprint(req.SenderThumbprint), req.Claims.validate()); err != nil {
		return nil, err
	}
	audience, err := validateAudience("audience", req.Audience)
	if err != nil {
		return nil, err
	}
	areq, err := s.checkAccess(req.Access)
	if err != nil {
		return nil, err
	}
	if err := accessWithin(areq, audience, req.SenderThumbprint); err != nil {
		return nil, err
	}
	id := newFamilyID()
	token, digest, pepperID := s.refresh.mintFor(id)
	access := s.planAccess(areq, id)
	c := req.Claims.params()
	p := db.FamilyCreateParams{
		ID:               pgtype.UUID{Bytes: id, Valid: true},
		ClientID:         req.ClientID,
		UserID:           req.UserID,
		Scope:            scope,
		Now:              s.now(),
		Lifetime:         optionalDuration(lifetime),
		SenderThumbprint: optionalText(req.SenderThumbprint),
		TTL:              ttl,
		Digest:           digest,
		PepperID:         pepperID,
		Audience:         audience,
		AuthTime:         c.authTime, ACR: c.acr, AMR: c.amr, SessionID: c.sid, UserAgent: c.userAgent, IP: c.ip, Label: c.label,
	}
	p.AccessKey, p.AccessJWT, p.AccessPepperID, p.AccessTTL, p.AccessAudience, p.AccessTokenType = access.params()
	row, err := s.q.FamilyCreate(ctx, s.dbtx, p)
	if err != nil {
		return nil, dbError("issue", err)
	}
	g := Grant{
		FamilyID: row.ID.String(), ClientID: req.ClientID, UserID: req.UserID, Scope: scope,
		Audience: audience, Claims: claimsOf(c.authTime, c.acr, c.amr, c.sid, c.userAgent, c.ip, c.label),
		CreatedAt: row.CreatedAt.UTC(),
	}
	rt := newRefreshToken(token, row.ExpiresAt, row.FamilyExpiresAt, g)
	rt.Access = access.issued(g.FamilyID, row.CreatedAt, row.AccessExpiresAt, scope, audience)
	return rt, nil
}

// accessWithin checks an access request against the grant it comes with: its audience among the
// grant's, when the grant has any, and a DPoP token only for a family bound to a key.
func accessWithin(req AccessRequest, grantAudience []string, senderThumbprint string) error {
	if req.Kind == AccessNone {
		return nil
	}
	if req.TokenType == TokenTypeDPoP && senderThumbprint == "" {
		return inputError("access.token_type", "DPoP for a grant bound to no key")
	}
	if req.Audience != nil && len(grantAudience) > 0 && !isSubset(req.Audience, grantAudience) {
		return ErrInvalidTarget
	}
	return nil
}

// RotateRequest presents a refresh token for rotation (RFC 6749 §6).
type RotateRequest struct {
	Token string
	// ClientID is the authenticated client presenting the token.
	ClientID string
	// Scope, when not empty, narrows the successor's scope; it must be within the granted scope.
	// Empty means the granted scope (RFC 6749 §6).
	Scope []string
	// SenderThumbprint is the thumbprint of the key the request proved possession of (DPoP proof
	// or client certificate), if any. It must match when the family is sender-constrained.
	SenderThumbprint string
	// TTL is the successor's idle lifetime; zero means Config.RefreshTokenTTL. It never reaches past
	// the family's absolute lifetime.
	TTL time.Duration
	// UserAgent and IP, when set, replace the session's (Claims) as where it is used from now.
	UserAgent string
	IP        string
	// Access asks for an access token issued in the same statement, with the successor's scope.
	Access AccessRequest
}

// Rotate consumes the presented token and returns its successor in the same family. Consume and
// successor commit together in one statement and one round trip (I2).
//
// A token that was already consumed is a replay: its family is revoked and ErrReplayDetected
// returned — unless it is the parent of the family's unused current token, presented again within
// Config.GraceWindow (a lost response, two tabs refreshing at once): then that same current token
// is returned again, with the scope and expiry it was issued with (a narrower scope asked for by
// the resend is not applied), and only the parent's reuse count changes. A wrong client, a wrong
// sender key, an expired token or a scope beyond the grant consumes nothing (I5).
func (s *Store) Rotate(ctx context.Context, req RotateRequest) (*RefreshToken, error) {
	if err := validateID("client_id", req.ClientID); err != nil {
		return nil, err
	}
	ttl, err := s.ttlOr("ttl", req.TTL)
	if err != nil {
		return nil, err
	}
	scope, err := normalizeScope(req.Scope)
	if err != nil {
		return nil, err
	}
	if len(scope) == 0 {
		scope = nil // the granted scope
	}
	if err := firstError(validateThumbprint(req.SenderThumbprint),
		Claims{UserAgent: req.UserAgent, IP: req.IP}.validate()); err != nil {
		return nil, err
	}
	areq, err := s.checkAccess(req.Access)
	if err != nil {
		return nil, err
	}
	if areq.TokenType == TokenTypeDPoP && req.SenderThumbprint == "" {
		return nil, inputError("access.token_type", "DPoP without a sender thumbprint")
	}
	pt, err := s.presentedRefresh(ctx, req.Token)
	if err != nil {
		return nil, err
	}
	token, successor, pepperID := s.refresh.mintFor(pt.family.Bytes)
	r := rotation{successor: token, presented: req.Token, access: s.planAccess(areq, pt.family.Bytes)}
	// The happy path presents the digest under the current pepper; a token made under an older
	// pepper of the ring is found on the refused path and rotated there.
	params := db.RefreshTokenRotateParams{
		FamilyID:         pt.family,
		Digest:           pt.digests[0],
		ClientID:         req.ClientID,
		SenderThumbprint: optionalText(req.SenderThumbprint),
		Now:              s.now(),
		Scope:            scope,
		TTL:              ttl,
		SuccessorDigest:  successor,
		PepperID:         pepperID,
		UserAgent:        optionalText(req.UserAgent),
		IP:               optionalText(req.IP),
	}
	params.AccessKey, params.AccessJWT, params.AccessPepperID, params.AccessTTL, params.AccessAudience,
		params.AccessTokenType = r.access.params()
	params.SuccessorSealed = s.sealFor(r, params.Digest, s.refresh.currentPepperID(), successor)
	row, err := s.q.RefreshTokenRotate(ctx, s.dbtx, params)
	// Under a stricter default isolation level than READ COMMITTED, a rotation that waited for a
	// concurrent one of the same family fails to serialize: it lost the race, as a READ COMMITTED
	// one that found the token consumed, and is settled the same way.
	if errors.Is(err, pgx.ErrNoRows) || isSerializationFailure(err) {
		return s.rotateRefused(ctx, pt, params, r)
	}
	if err != nil {
		return nil, dbError("rotate", err)
	}
	return rotatedToken(token, row, r.access), nil
}

// presentedToken is a refresh token a client presented: the family it names, and its digests
// under each pepper of the ring.
type presentedToken struct {
	family  pgtype.UUID
	digests [][]byte
}

// presentedRefresh decodes a presented refresh token. Its family is the one it carries, or for a
// token minted before migration 5, the one its digest is recorded with (a read of its own).
func (s *Store) presentedRefresh(ctx context.Context, token string) (presentedToken, error) {
	digests, ok := s.refresh.digestPresented(token)
	if !ok {
		return presentedToken{}, ErrTokenNotFound
	}
	if id, ok := familyOf(token); ok {
		return presentedToken{family: pgtype.UUID{Bytes: id, Valid: true}, digests: digests}, nil
	}
	id, err := s.q.RefreshTokenLegacyFamily(ctx, s.dbtx, digests)
	if err := interpretError("read token", err, ErrTokenNotFound); err != nil {
		return presentedToken{}, err
	}
	return presentedToken{family: id, digests: digests}, nil
}

// getToken reads a presented token with its family.
func (s *Store) getToken(ctx context.Context, q db.DBTX, pt presentedToken, now *time.Time) (db.RefreshTokenGetRow, error) {
	return s.q.RefreshTokenGet(ctx, q, db.RefreshTokenGetParams{FamilyID: pt.family, Digests: pt.digests, Now: now})
}

// rotation is what a Rotate call carries beyond the statement's parameters: the successor it
// minted, and the token presented, for which the successor is sealed.
type rotation struct {
	successor Secret
	presented string
	access    *accessPlan // the access token to issue with the successor, if any
}

// sealFor returns the successor with the given digest sealed for the holder of the presented
// parent with the given digest, made under the given pepper; none when the grace window is off.
func (s *Store) sealFor(r rotation, parentDigest []byte, parentPepperID string, successorDigest []byte) []byte {
	if s.graceWindow <= 0 {
		return nil
	}
	return sealSuccessor(r.presented, s.refresh.graceSalt(parentPepperID), parentDigest, successorDigest, r.successor)
}

// refusedRotation is what a refused rotation comes to: a successor after all (grace reuse, or a
// rotation that rolled back under the first attempt), or a refusal; whether the transaction
// commits; the event to report; and, inside a caller's transaction, a family whose revocation for
// replay must outlive that transaction.
type refusedRotation struct {
	successor     *RefreshToken
	refusal       error
	event         *Event
	commit        bool
	revokeOutside pgtype.UUID
}

// rotateRefused runs when the rotating statement changed nothing, and finds out why. A token that
// is unknown, of another client or bound to another key is refused on a plain read: those never
// change. Anything else is decided holding the family lock, so that what it reads is the latest
// committed state and cannot change underneath, and acted on: a grace reuse, a replay's
// revocation, or a refusal that changes nothing.
func (s *Store) rotateRefused(ctx context.Context, pt presentedToken, p db.RefreshTokenRotateParams, r rotation) (*RefreshToken, error) {
	t, err := s.getToken(ctx, s.dbtx, pt, p.Now)
	if err := interpretError("rotate: read token", err, ErrTokenNotFound); err != nil {
		return nil, err
	}
	if refusal := refuseForeign(t, p); refusal != nil {
		return nil, refusal
	}
	var out refusedRotation
	err = s.inTx(ctx, "rotate", func(tx pgx.Tx) (bool, error) {
		var err error
		out, err = s.settleRefused(ctx, tx, pt, p, r)
		return out.commit, err
	})
	if err != nil {
		return nil, err
	}
	if out.revokeOutside.Valid {
		// The savepoint has let go of the family: the revocation is committed on a connection of
		// the store's own, unless only the caller's transaction can make it.
		return nil, s.revokeReplayed(ctx, out.revokeOutside, out.event, ErrReplayDetected)
	}
	if out.event != nil {
		s.emit(ctx, *out.event)
	}
	if out.refusal != nil {
		return nil, out.refusal
	}
	return out.successor, nil
}

// refuseAccess refuses an access token the grant does not allow: an audience outside the grant's
// (RFC 8707), or a DPoP-bound token of a family bound to no key. Checked after replay detection:
// a replay revokes its family whatever it asks for.
func refuseAccess(t db.RefreshTokenGetRow, p db.RefreshTokenRotateParams) error {
	switch {
	case p.AccessKey == nil:
		return nil
	case p.AccessAudience != nil && len(t.Audience) > 0 && !isSubset(p.AccessAudience, t.Audience):
		return ErrInvalidTarget
	case p.AccessTokenType == TokenTypeDPoP && t.SenderThumbprint == nil:
		return inputError("access.token_type", "DPoP for a family bound to no key")
	}
	return nil
}

// refuseForeign refuses a token presented by a client it was not issued to, or without the key
// its family is bound to (I5). Neither fact ever changes, so no lock is needed to decide.
func refuseForeign(t db.RefreshTokenGetRow, p db.RefreshTokenRotateParams) error {
	switch {
	case t.ClientID != p.ClientID:
		return ErrWrongClient
	case t.SenderThumbprint != nil && *t.SenderThumbprint != deref(p.SenderThumbprint):
		return ErrSenderMismatch
	}
	return nil
}

func (s *Store) settleRefused(ctx context.Context, tx pgx.Tx, pt presentedToken, p db.RefreshTokenRotateParams, r rotation) (refusedRotation, error) {
	if _, err := s.q.FamilyLock(ctx, tx, pt.family); errors.Is(err, pgx.ErrNoRows) {
		return refusedRotation{refusal: ErrTokenNotFound}, nil // deleted meanwhile
	} else if err != nil {
		return refusedRotation{}, dbError("rotate: lock family", err)
	}
	// Read after the lock was granted: the state it shows is the latest, and its clock is later
	// than anything committed while this transaction waited. Every time written or compared from
	// here on is that one.
	t, err := s.getToken(ctx, tx, pt, p.Now)
	if err := interpretError("rotate: read token", err, ErrTokenNotFound); err != nil {
		return refusedRotation{}, err
	}
	p.Now = &t.Now
	switch {
	case t.ConsumedAt != nil:
		return s.settleConsumed(ctx, tx, p, t, r)
	case t.RevokedAt != nil:
		return refusedRotation{refusal: ErrFamilyRevoked}, nil
	case s.refresh.retired(t.PepperID):
		return refusedRotation{refusal: ErrTokenNotFound}, nil // recognise-only: never rotates
	case t.Expired:
		return refusedRotation{refusal: ErrTokenExpired}, nil
	case p.Scope != nil && !isSubset(p.Scope, t.GrantedScope):
		return refusedRotation{refusal: ErrInvalidScope}, nil
	case refuseAccess(t, p) != nil:
		return refusedRotation{refusal: refuseAccess(t, p)}, nil
	}
	// Nothing stands in the way: the token was made under an older pepper of the ring, or the first
	// attempt met a rotation that rolled back. Rotate it under the digest it was found by.
	p.Digest = t.Digest
	p.SuccessorSealed = s.sealFor(r, p.Digest, t.PepperID, p.SuccessorDigest)
	row, err := s.q.RefreshTokenRotate(ctx, tx, p)
	if err != nil {
		return refusedRotation{}, dbError("rotate", err)
	}
	return refusedRotation{
		successor: rotatedToken(r.successor, row, r.access),
		commit:    true,
	}, nil
}

// graceReuse hands the holder of t, the consumed parent of the family's unused live token, that
// live token again, opened from the copy sealed for it, and counts the reuse. A live token made
// before such copies were kept, or under a pepper retired since, is replaced by a new one under
// the same parent instead.
func (s *Store) graceReuse(ctx context.Context, tx pgx.Tx, p db.RefreshTokenRotateParams, t db.RefreshTokenGetRow, r rotation) (*RefreshToken, error) {
	if same, ok := s.refresh.openSuccessor(r.presented, s.refresh.graceSalt(t.PepperID), t.Digest, t.LiveDigest, t.SuccessorSealed, t.FamilyID.Bytes); ok &&
		!s.refresh.retired(t.LivePepperID) {
		if _, err := s.q.RefreshTokenGraceReuse(ctx, tx, db.RefreshTokenGraceReuseParams{FamilyID: t.FamilyID, ParentDigest: t.Digest}); err != nil {
			return nil, err
		}
		g := grantOf(t)
		g.Scope = t.LiveScope
		rt := newRefreshToken(same, t.LiveExpiresAt, t.FamilyExpiresAt, g)
		var err error
		rt.Access, err = s.issueWithFamily(ctx, tx, t.FamilyID, p.Now, r.access)
		return rt, err
	}
	row, err := s.q.RefreshTokenGraceReplace(ctx, tx, db.RefreshTokenGraceReplaceParams{
		FamilyID:        t.FamilyID,
		ParentDigest:    t.Digest,
		SuccessorDigest: p.SuccessorDigest,
		PepperID:        p.PepperID,
		Scope:           p.Scope,
		TTL:             p.TTL,
		Now:             p.Now,
		SuccessorSealed: s.sealFor(r, t.Digest, t.PepperID, p.SuccessorDigest),
	})
	if err != nil {
		return nil, err
	}
	rt := rotatedToken(r.successor, db.RefreshTokenRotateRow(row), nil)
	rt.Access, err = s.issueWithFamily(ctx, tx, t.FamilyID, p.Now, r.access)
	return rt, err
}

// issueWithFamily issues the planned access token of a family whose live refresh token a grace
// reuse hands out, in the caller's transaction, which holds the family lock.
func (s *Store) issueWithFamily(ctx context.Context, tx pgx.Tx, family pgtype.UUID, now *time.Time, a *accessPlan) (*AccessToken, error) {
	if a == nil {
		return nil, nil
	}
	key, jwt, pepperID, ttl, audience, tokenType := a.params()
	row, err := s.q.AccessTokenCreateForFamily(ctx, tx, db.AccessTokenCreateForFamilyParams{
		FamilyID: family, Key: key, JWT: jwt, PepperID: pepperID, TTL: *ttl, Audience: audience,
		TokenType: tokenType, Now: now,
	})
	if err != nil {
		return nil, err
	}
	return a.issued(family.String(), row.IssuedAt, &row.ExpiresAt, row.Scope, row.Audience), nil
}

// settleConsumed handles a consumed token presented by its own client: a grace reuse when the
// window allows it, and otherwise a replay that revokes the family (RFC 6819 §5.2.2.3).
func (s *Store) settleConsumed(ctx context.Context, tx pgx.Tx, p db.RefreshTokenRotateParams, t db.RefreshTokenGetRow, r rotation) (refusedRotation, error) {
	now := *p.Now
	e := Event{FamilyID: t.FamilyID.String(), ClientID: t.ClientID, UserID: t.UserID, SessionID: deref(t.SessionID)}
	// A grace reuse needs a parent that is still within its own lifetime and the window, was made
	// under a pepper that is not retired, and has reuses left.
	// The presented token is the parent of the unused current token: a lost response, or another
	// tab. It gets that same token back, if the parent is still within its own lifetime and the
	// window, was made under a pepper that is not retired, and has reuses left.
	if t.RevokedAt == nil && s.graceWindow > 0 && bytes.Equal(t.LiveParentDigest, t.Digest) &&
		int(t.ParentReuses) < s.graceReuses && !t.Expired && now.Before(t.ConsumedAt.Add(s.graceWindow)) &&
		now.Before(t.LiveExpiresAt) && !s.refresh.retired(t.PepperID) {
		if p.Scope != nil && !isSubset(p.Scope, t.GrantedScope) {
			return refusedRotation{refusal: ErrInvalidScope}, nil
		}
		if refusal := refuseAccess(t, p); refusal != nil {
			return refusedRotation{refusal: refusal}, nil
		}
		e.Kind = EventGraceReuse
		successor, err := s.graceReuse(ctx, tx, p, t, r)
		if err != nil {
			return refusedRotation{}, dbError("rotate: grace reuse", err)
		}
		return refusedRotation{successor: successor, event: &e, commit: true}, nil
	}
	e.Kind = EventReplayDetected
	if t.RevokedAt != nil {
		// Revoked before: still a replay, recognised, with nothing left to change; reported once
		// a minute per family, however often the token comes back.
		e.Reason = deref(t.RevokedReason)
		return refusedRotation{refusal: ErrReplayDetected, event: s.replays.firstSince(&e)}, nil
	}
	e.Reason = ReasonReplayDetected
	if s.callerTx {
		// The caller may roll its transaction back on this error, and the revocation must not go
		// with it: it is made on a connection of its own once this savepoint has let go.
		return refusedRotation{refusal: ErrReplayDetected, event: &e, revokeOutside: t.FamilyID}, nil
	}
	row, err := s.q.FamilyRevoke(ctx, tx, db.FamilyRevokeParams{ID: t.FamilyID, Now: p.Now, Reason: ReasonReplayDetected})
	if err != nil {
		return refusedRotation{}, dbError("rotate: revoke family on replay", err)
	}
	e.FamilyRevoked = row.RevokedNow
	return refusedRotation{refusal: ErrReplayDetected, event: &e, commit: true}, nil
}
