package repository

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// TokenInfo describes a stored refresh token and its family.
type TokenInfo struct {
	Grant
	GrantedScope    []string
	CreatedAt       time.Time
	ExpiresAt       time.Time
	ConsumedAt      *time.Time
	FamilyExpiresAt *time.Time
	FamilyRevokedAt *time.Time
	RevokedReason   string
	// SenderThumbprint is the key the family is bound to, if any.
	SenderThumbprint string
	// PepperID names the pepper of the ring the token's digest was made with.
	PepperID string
	// Expired reports whether ExpiresAt has passed by the database clock (or Config.Clock).
	Expired bool
}

// Lookup returns what is stored about a token, whatever its state and whoever asks, without
// changing anything: for the server's own use, such as an administrator's tools. To answer a
// client, use Peek or RevokeToken, which check that the token is the client's.
func (s *Store) Lookup(ctx context.Context, token string) (*TokenInfo, error) {
	if s.refresh == nil {
		return nil, errNoCredentials
	}
	digests, ok := s.refresh.digestPresented(token)
	if !ok {
		return nil, ErrTokenNotFound
	}
	row, err := s.q.RefreshTokenGet(ctx, s.db, db.RefreshTokenGetParams{Digests: digests, Now: s.now()})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrTokenNotFound
	}
	if err != nil {
		return nil, dbError("lookup", err)
	}
	return &TokenInfo{
		Grant: Grant{
			FamilyID: familyIDString(row.FamilyID),
			ClientID: row.ClientID,
			UserID:   row.UserID,
			Scope:    row.Scope,
		},
		GrantedScope:     row.GrantedScope,
		CreatedAt:        utc(row.CreatedAt),
		ExpiresAt:        utc(row.ExpiresAt),
		ConsumedAt:       utcPtr(row.ConsumedAt),
		FamilyExpiresAt:  utcPtr(row.FamilyExpiresAt),
		FamilyRevokedAt:  utcPtr(row.RevokedAt),
		RevokedReason:    deref(row.RevokedReason),
		SenderThumbprint: deref(row.SenderThumbprint),
		PepperID:         row.PepperID,
		Expired:          row.Expired,
	}, nil
}

// Peek validates a token of clientID without consuming it, for example for token introspection
// (RFC 7662): it returns the token's information when the token could be rotated now, and
// otherwise the invalid-grant cause (ErrTokenConsumed for a used token; a peek never revokes).
// A token of another client is ErrWrongClient and reveals nothing about it (I5).
func (s *Store) Peek(ctx context.Context, token, clientID string) (*TokenInfo, error) {
	if err := validateID("client_id", clientID); err != nil {
		return nil, err
	}
	info, err := s.Lookup(ctx, token)
	switch {
	case err != nil:
		return nil, err
	case info.ClientID != clientID:
		return nil, ErrWrongClient
	case info.FamilyRevokedAt != nil:
		return nil, ErrFamilyRevoked
	case info.ConsumedAt != nil:
		return nil, ErrTokenConsumed
	case s.refresh.retired(info.PepperID):
		return nil, ErrTokenNotFound
	case info.Expired:
		return nil, ErrTokenExpired
	}
	return info, nil
}

// Revocation reasons the package itself records.
const (
	ReasonReplayDetected     = "replay_detected"
	ReasonCodeReplayDetected = "code_replay_detected"
	ReasonTokenRevoked       = "token_revoked"
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
	var row db.FamilyRevokeRow
	err = s.readCommitted(ctx, "revoke family", func(q DBTX) (err error) {
		row, err = s.q.FamilyRevoke(ctx, q, db.FamilyRevokeParams{ID: id, Now: s.now(), Reason: reason})
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrFamilyNotFound
	}
	if err != nil {
		return dbError("revoke family", err)
	}
	if row.RevokedNow {
		s.emit(ctx, Event{Kind: EventFamilyRevoked, FamilyID: familyIDString(row.ID), ClientID: row.ClientID, UserID: row.UserID, Reason: reason})
	}
	return nil
}

// FamilyFilter selects families by user, by client, or by both.
type FamilyFilter struct {
	UserID   string
	ClientID string
}

// revokeBatchSize bounds the row locks one revoking statement holds.
const revokeBatchSize = 500

// RevokeFamilies revokes every live family of a user (logout everywhere), of a client (the client
// was deleted), or of a user at one client, in batches of short statements, and returns how many
// it revoked. Each revoked family is reported as an EventFamilyRevoked. It first ends the
// authorization codes the filter covers that could still be exchanged, so that no code minted
// before the call yields a live family after it.
func (s *Store) RevokeFamilies(ctx context.Context, filter FamilyFilter, reason string) (int64, error) {
	if filter.UserID == "" && filter.ClientID == "" {
		return 0, inputError("filter", "neither user_id nor client_id")
	}
	if filter.UserID != "" {
		if err := validateID("user_id", filter.UserID); err != nil {
			return 0, err
		}
	}
	if filter.ClientID != "" {
		if err := validateID("client_id", filter.ClientID); err != nil {
			return 0, err
		}
	}
	if err := validateReason(reason); err != nil {
		return 0, err
	}
	revoked := func(id pgtype.UUID, clientID, userID string) {
		s.emit(ctx, Event{Kind: EventFamilyRevoked, FamilyID: familyIDString(id), ClientID: clientID, UserID: userID, Reason: reason})
	}
	// Codes first: an exchange that commits before this statement made a family that the batches
	// below revoke; one that comes after finds no code.
	if err := s.readCommitted(ctx, "revoke families: end pending codes", func(q DBTX) error {
		_, err := s.q.AuthorizationCodeEndPending(ctx, q, db.AuthorizationCodeEndPendingParams{
			Now: s.now(), UserID: optionalText(filter.UserID), ClientID: optionalText(filter.ClientID),
		})
		return err
	}); err != nil {
		return 0, dbError("revoke families: end pending codes", err)
	}
	var total int64
	for {
		var batch []db.FamilyRevokeByUserRow // the rows of either query: id, client, user
		err := s.readCommitted(ctx, "revoke families", func(q DBTX) (err error) {
			if filter.UserID != "" {
				batch, err = s.q.FamilyRevokeByUser(ctx, q, db.FamilyRevokeByUserParams{
					UserID: filter.UserID, ClientID: optionalText(filter.ClientID), BatchSize: revokeBatchSize, Now: s.now(), Reason: reason,
				})
				return err
			}
			rows, err := s.q.FamilyRevokeByClient(ctx, q, db.FamilyRevokeByClientParams{
				ClientID: filter.ClientID, BatchSize: revokeBatchSize, Now: s.now(), Reason: reason,
			})
			batch = batch[:0]
			for _, r := range rows {
				batch = append(batch, db.FamilyRevokeByUserRow(r))
			}
			return err
		})
		if err != nil {
			return total, dbError("revoke families", err)
		}
		for _, r := range batch {
			revoked(r.ID, r.ClientID, r.UserID)
		}
		n := len(batch)
		total += int64(n)
		if n < revokeBatchSize {
			return total, nil
		}
	}
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
	// ExpiresAt is the absolute end of the family, if it has one.
	ExpiresAt        *time.Time
	SenderThumbprint string
	RevokedAt        *time.Time
	RevokedReason    string
}

func familyFromRow(f db.OauthFamily) Family {
	return Family{
		ID:               familyIDString(f.ID),
		ClientID:         f.ClientID,
		UserID:           f.UserID,
		Scope:            f.Scope,
		CreatedAt:        utc(f.CreatedAt),
		LastRotatedAt:    utcPtr(f.LastRotatedAt),
		RotationCount:    int(f.RotationCount),
		IdleExpiresAt:    utc(f.IdleExpiresAt),
		ExpiresAt:        utcPtr(f.ExpiresAt),
		SenderThumbprint: deref(f.SenderThumbprint),
		RevokedAt:        utcPtr(f.RevokedAt),
		RevokedReason:    deref(f.RevokedReason),
	}
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
	f := familyFromRow(row.OauthFamily)
	return &f, nil
}

// MaxListedFamilies bounds ActiveFamilies.
const MaxListedFamilies = 1000

// ActiveFamilies lists a user's families that can still be used, newest first, at most
// MaxListedFamilies: the rows of a "your sessions" page.
func (s *Store) ActiveFamilies(ctx context.Context, userID string) ([]Family, error) {
	if err := validateID("user_id", userID); err != nil {
		return nil, err
	}
	rows, err := s.q.FamilyListActiveByUser(ctx, s.db, db.FamilyListActiveByUserParams{
		UserID: userID, Now: s.now(), MaxRows: MaxListedFamilies,
	})
	if err != nil {
		return nil, dbError("list families", err)
	}
	out := make([]Family, len(rows))
	for i, r := range rows {
		out[i] = familyFromRow(r.OauthFamily)
	}
	return out, nil
}

// DeleteFamily erases a family and all of its tokens, for example when the user's account is
// deleted. Unlike RevokeFamily it keeps no evidence: its tokens become unknown.
func (s *Store) DeleteFamily(ctx context.Context, familyID string) error {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return err
	}
	var n int64
	err = s.readCommitted(ctx, "delete family", func(q DBTX) (err error) {
		n, err = s.q.FamilyDelete(ctx, q, id)
		return err
	})
	if err != nil {
		return dbError("delete family", err)
	}
	if n == 0 {
		return ErrFamilyNotFound
	}
	return nil
}
