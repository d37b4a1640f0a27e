package repository

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oauthstore/oauthstore/db"
)

// Grant is what a refresh token stands for.
type Grant struct {
	FamilyID string
	ClientID string
	UserID   string
	// Scope is the scope of this token.
	Scope []string
}

// RefreshToken is a newly minted refresh token. Token is shown to the client once; the database
// keeps only its digest.
type RefreshToken struct {
	Token     Secret
	ExpiresAt time.Time
	Grant
}

// IssueRequest starts a new grant.
type IssueRequest struct {
	ClientID string
	UserID   string
	Scope    []string
	// TTL is the token's idle lifetime; zero means Config.RefreshTokenTTL.
	TTL time.Duration
}

// Issue starts a family with its first refresh token, in one statement.
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
	ttl, err := s.ttlOr("ttl", req.TTL)
	if err != nil {
		return nil, err
	}
	token, digest := s.refresh.mint()
	row, err := s.q.FamilyCreate(ctx, s.db, db.FamilyCreateParams{
		ClientID: req.ClientID,
		UserID:   req.UserID,
		Scope:    scope,
		Now:      s.now(),
		TTL:      interval(ttl),
		Digest:   digest,
	})
	if err != nil {
		return nil, dbError("issue", err)
	}
	return &RefreshToken{
		Token:     token,
		ExpiresAt: utc(row.ExpiresAt),
		Grant: Grant{
			FamilyID: familyIDString(row.ID),
			ClientID: req.ClientID,
			UserID:   req.UserID,
			Scope:    scope,
		},
	}, nil
}

// RotateRequest presents a refresh token for rotation (RFC 6749 §6).
type RotateRequest struct {
	Token string
	// ClientID is the authenticated client presenting the token.
	ClientID string
	// TTL is the successor's idle lifetime; zero means Config.RefreshTokenTTL.
	TTL time.Duration
}

// Rotate consumes the presented token and returns its successor in the same family. Consume and
// successor commit together in one statement and one round trip (I2). A token that was already
// consumed is a replay: its family is revoked and ErrReplayDetected returned. A wrong client or
// an expired token gets an invalid grant and consumes nothing (I5).
func (s *Store) Rotate(ctx context.Context, req RotateRequest) (*RefreshToken, error) {
	if err := validateID("client_id", req.ClientID); err != nil {
		return nil, err
	}
	ttl, err := s.ttlOr("ttl", req.TTL)
	if err != nil {
		return nil, err
	}
	digest, ok := s.refresh.digestPresented(req.Token)
	if !ok {
		return nil, ErrTokenNotFound
	}
	token, successor := s.refresh.mint()
	row, err := s.q.RefreshTokenRotate(ctx, s.db, db.RefreshTokenRotateParams{
		Digest:          digest,
		ClientID:        req.ClientID,
		Now:             s.now(),
		TTL:             interval(ttl),
		SuccessorDigest: successor,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, s.refusedRotation(ctx, digest, req.ClientID)
	}
	if err != nil {
		return nil, dbError("rotate", err)
	}
	return &RefreshToken{
		Token:     token,
		ExpiresAt: utc(row.ExpiresAt),
		Grant: Grant{
			FamilyID: familyIDString(row.FamilyID),
			ClientID: row.ClientID,
			UserID:   row.UserID,
			Scope:    row.Scope,
		},
	}, nil
}

// refusedRotation finds out why a rotation did not happen, revoking the family on replay.
func (s *Store) refusedRotation(ctx context.Context, digest []byte, clientID string) error {
	row, err := s.q.RefreshTokenDetectReplay(ctx, s.db, db.RefreshTokenDetectReplayParams{
		Digest:   digest,
		Now:      s.now(),
		ClientID: clientID,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrTokenNotFound
	}
	if err != nil {
		return dbError("detect replay", err)
	}
	switch {
	case row.ClientID != clientID:
		return ErrWrongClient
	case row.ConsumedAt != nil:
		s.log.LogAttrs(ctx, slog.LevelWarn, "oauthstore: refresh token replay detected",
			slog.String("family_id", familyIDString(row.FamilyID)),
			slog.String("client_id", row.ClientID),
			slog.String("user_id", row.UserID),
			slog.Bool("family_revoked_now", row.RevokedNow),
		)
		return ErrReplayDetected
	case row.RevokedAt != nil:
		return ErrFamilyRevoked
	case row.Expired:
		return ErrTokenExpired
	}
	// The token is live, unexpired and the client's, yet the rotation found nothing to consume:
	// only a rotation rolled back between the two statements could do that.
	return dbError("rotate", errors.New("token changed state during rotation; retry"))
}

// TokenInfo describes a stored refresh token and its family.
type TokenInfo struct {
	Grant
	GrantedScope  []string
	CreatedAt     time.Time
	ExpiresAt     time.Time
	ConsumedAt    *time.Time
	FamilyRevoked *time.Time
	RevokedReason string
	// Expired reports whether ExpiresAt has passed by the database clock (or Config.Clock).
	Expired bool
}

// Lookup returns what is stored about a token, whatever its state, without changing anything:
// its family and client, for example to check that a revocation request comes from the client
// the token was issued to (RFC 7009 §2.1).
func (s *Store) Lookup(ctx context.Context, token string) (*TokenInfo, error) {
	digest, ok := s.refresh.digestPresented(token)
	if !ok {
		return nil, ErrTokenNotFound
	}
	row, err := s.q.RefreshTokenGet(ctx, s.db, db.RefreshTokenGetParams{Digest: digest, Now: s.now()})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrTokenNotFound
	}
	if err != nil {
		return nil, dbError("lookup", err)
	}
	info := &TokenInfo{
		Grant: Grant{
			FamilyID: familyIDString(row.FamilyID),
			ClientID: row.ClientID,
			UserID:   row.UserID,
			Scope:    row.Scope,
		},
		GrantedScope:  row.GrantedScope,
		CreatedAt:     utc(row.CreatedAt),
		ExpiresAt:     utc(row.ExpiresAt),
		ConsumedAt:    utcPtr(row.ConsumedAt),
		FamilyRevoked: utcPtr(row.RevokedAt),
		Expired:       row.Expired,
	}
	if row.RevokedReason != nil {
		info.RevokedReason = *row.RevokedReason
	}
	return info, nil
}

// Peek validates a token without consuming it: it returns the token's information when the token
// could be rotated now, and otherwise the invalid-grant cause (ErrTokenConsumed for a used token;
// a peek never revokes). The caller checks TokenInfo.ClientID against the client it serves.
func (s *Store) Peek(ctx context.Context, token string) (*TokenInfo, error) {
	info, err := s.Lookup(ctx, token)
	switch {
	case err != nil:
		return nil, err
	case info.FamilyRevoked != nil:
		return nil, ErrFamilyRevoked
	case info.ConsumedAt != nil:
		return nil, ErrTokenConsumed
	case info.Expired:
		return nil, ErrTokenExpired
	}
	return info, nil
}

// Revocation reasons the package itself records.
const (
	ReasonReplayDetected = "replay_detected"
	ReasonTokenRevoked   = "token_revoked"
)

// RevokeToken revokes the family of a refresh token presented by clientID, as RFC 7009 §2.1
// suggests for refresh tokens. A token of another client is refused with ErrWrongClient and
// revokes nothing; revoking an already revoked family succeeds.
func (s *Store) RevokeToken(ctx context.Context, token, clientID string) error {
	if err := validateID("client_id", clientID); err != nil {
		return err
	}
	info, err := s.Lookup(ctx, token)
	if err != nil {
		return err
	}
	if info.ClientID != clientID {
		return ErrWrongClient
	}
	return s.RevokeFamily(ctx, info.FamilyID, ReasonTokenRevoked)
}

// RevokeFamily revokes a family: its live token stops working at once, and a rotation that has
// not committed yet never produces a successor (I3). The family keeps its rows as evidence until
// cleanup. Revoking an already revoked family succeeds and keeps the first reason.
func (s *Store) RevokeFamily(ctx context.Context, familyID, reason string) error {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return err
	}
	if err := validateReason(reason); err != nil {
		return err
	}
	row, err := s.q.FamilyRevoke(ctx, s.db, db.FamilyRevokeParams{ID: id, Now: s.now(), Reason: reason})
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrFamilyNotFound
	}
	if err != nil {
		return dbError("revoke family", err)
	}
	if row.RevokedNow {
		s.log.LogAttrs(ctx, slog.LevelInfo, "oauthstore: family revoked",
			slog.String("family_id", familyID),
			slog.String("reason", reason),
		)
	}
	return nil
}

// Family is one grant's family of refresh tokens.
type Family struct {
	ID            string
	ClientID      string
	UserID        string
	Scope         []string
	CreatedAt     time.Time
	LastRotatedAt *time.Time
	RotationCount int
	// IdleExpiresAt is when the newest token expires: unless rotated by then, the family dies.
	IdleExpiresAt time.Time
	RevokedAt     *time.Time
	RevokedReason string
}

// Family returns a family by id.
func (s *Store) Family(ctx context.Context, familyID string) (*Family, error) {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return nil, err
	}
	row, err := s.q.FamilyGet(ctx, s.db, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrFamilyNotFound
	}
	if err != nil {
		return nil, dbError("get family", err)
	}
	f := &Family{
		ID:            familyIDString(row.ID),
		ClientID:      row.ClientID,
		UserID:        row.UserID,
		Scope:         row.Scope,
		CreatedAt:     utc(row.CreatedAt),
		LastRotatedAt: utcPtr(row.LastRotatedAt),
		RotationCount: int(row.RotationCount),
		IdleExpiresAt: utc(row.IdleExpiresAt),
		RevokedAt:     utcPtr(row.RevokedAt),
	}
	if row.RevokedReason != nil {
		f.RevokedReason = *row.RevokedReason
	}
	return f, nil
}

// DeleteFamily erases a family and all of its tokens, for example when the user's account is
// deleted. Unlike RevokeFamily it keeps no evidence: its tokens become unknown.
func (s *Store) DeleteFamily(ctx context.Context, familyID string) error {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return err
	}
	n, err := s.q.FamilyDelete(ctx, s.db, id)
	if err != nil {
		return dbError("delete family", err)
	}
	if n == 0 {
		return ErrFamilyNotFound
	}
	return nil
}
