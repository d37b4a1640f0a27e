package repository

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// The one place where statements' results become the package's: "no row" becomes the verdict
// the caller names, anything else a database error; rows become public types, times in UTC.

// interpretError maps the error of a statement run for op: no row is noRow (the verdict, or nil
// where no row is no error), anything else a database error.
func interpretError(op string, err error, noRow error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pgx.ErrNoRows):
		return noRow
	}
	return dbError(op, err)
}

// dbError wraps an unexpected database error with the operation that met it. The statements
// never carry a raw secret, so neither can the error.
func dbError(op string, err error) error {
	return fmt.Errorf("oauthstore: %s: %w", op, err)
}

// parseFamilyID accepts a UUID in its canonical text form only: 8-4-4-4-12 hex digits.
func parseFamilyID(id string) (pgtype.UUID, error) {
	var u pgtype.UUID
	if len(id) != 36 {
		return u, inputError("family_id", "not a UUID")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		dash := i == 8 || i == 13 || i == 18 || i == 23
		hex := '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
		if dash != (c == '-') || !dash && !hex {
			return u, inputError("family_id", "not a UUID")
		}
	}
	if u.Scan(id) != nil {
		return u, inputError("family_id", "not a UUID")
	}
	return u, nil
}

func optionalText(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// optionalDuration is NULL for zero.
func optionalDuration(d time.Duration) *time.Duration {
	if d == 0 {
		return nil
	}
	return &d
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// Rows to the package's types.

func newRefreshToken(token Secret, expires time.Time, familyExpires *time.Time, g Grant) *RefreshToken {
	return &RefreshToken{Token: token, ExpiresAt: expires.UTC(), FamilyExpiresAt: utcPtr(familyExpires), Grant: g}
}

// rotatedToken is the successor a rotation (or a grace reuse) inserted, as the client gets it, with
// the access token issued with it, if any.
func rotatedToken(token Secret, row db.RefreshTokenRotateRow, access *accessPlan) *RefreshToken {
	g := Grant{
		FamilyID: row.FamilyID.String(), ClientID: row.ClientID, UserID: row.UserID, Scope: row.Scope,
		Audience: row.Audience, Claims: claimsOf(row.AuthTime, row.ACR, row.AMR, row.SessionID, row.UserAgent, row.IP, row.Label),
		CreatedAt: row.CreatedAt.UTC(), LastUsedAt: utcPtr(row.LastRotatedAt),
	}
	rt := newRefreshToken(token, row.ExpiresAt, row.FamilyExpiresAt, g)
	if row.LastRotatedAt != nil {
		rt.Access = access.issued(g.FamilyID, *row.LastRotatedAt, row.AccessExpiresAt, row.Scope, row.Audience)
	}
	return rt
}

// codeExchange is what an exchange returns: the family's first token and what the code carried.
func codeExchange(token Secret, c db.AuthorizationCodeGetRow, row db.AuthorizationCodeExchangeRow, access *accessPlan) *CodeExchange {
	g := Grant{
		FamilyID: row.FamilyID.String(), ClientID: c.ClientID, UserID: c.UserID, Scope: c.Scope,
		Audience: row.Audience, Claims: claimsOf(row.AuthTime, row.ACR, row.AMR, row.SessionID, row.UserAgent, row.IP, row.Label),
		CreatedAt: row.CreatedAt.UTC(),
	}
	rt := newRefreshToken(token, row.ExpiresAt, row.FamilyExpiresAt, g)
	rt.Access = access.issued(g.FamilyID, row.CreatedAt, row.AccessExpiresAt, c.Scope, row.Audience)
	return &CodeExchange{
		RefreshToken: rt,
		Nonce:        deref(c.Nonce),
		Resources:    c.Resources,
		Session:      json.RawMessage(c.Session),
		RedirectURI:  c.RedirectURI,
	}
}

// grantOf is the grant of a token read with its family.
func grantOf(row db.RefreshTokenGetRow) Grant {
	return Grant{
		FamilyID: row.FamilyID.String(), ClientID: row.ClientID, UserID: row.UserID, Scope: row.Scope,
		Audience: row.Audience, Claims: claimsOf(row.AuthTime, row.ACR, row.AMR, row.SessionID, row.UserAgent, row.IP, row.Label),
		CreatedAt: row.FamilyCreatedAt.UTC(), LastUsedAt: utcPtr(row.LastRotatedAt),
	}
}

func tokenInfo(row db.RefreshTokenGetRow) *TokenInfo {
	return &TokenInfo{
		Grant:            grantOf(row),
		GrantedScope:     row.GrantedScope,
		CreatedAt:        row.CreatedAt.UTC(),
		ExpiresAt:        row.ExpiresAt.UTC(),
		ConsumedAt:       utcPtr(row.ConsumedAt),
		FamilyExpiresAt:  utcPtr(row.FamilyExpiresAt),
		FamilyRevokedAt:  utcPtr(row.RevokedAt),
		RevokedReason:    deref(row.RevokedReason),
		SenderThumbprint: deref(row.SenderThumbprint),
		PepperID:         row.PepperID,
		Expired:          row.Expired,
	}
}

func stateBinding(row db.StateConsumeRow) *StateBinding {
	return &StateBinding{
		ClientID:    row.ClientID,
		RedirectURI: row.RedirectURI,
		ReturnTo:    deref(row.ReturnTo),
		Data:        json.RawMessage(row.Data),
		CreatedAt:   row.CreatedAt.UTC(),
		ExpiresAt:   row.ExpiresAt.UTC(),
	}
}

func familyFromRow(f db.OauthFamily) Family {
	return Family{
		ID:               f.ID.String(),
		ClientID:         f.ClientID,
		UserID:           f.UserID,
		Scope:            f.Scope,
		CreatedAt:        f.CreatedAt.UTC(),
		LastRotatedAt:    utcPtr(f.LastRotatedAt),
		RotationCount:    int(f.RotationCount),
		IdleExpiresAt:    f.IdleExpiresAt.UTC(),
		ExpiresAt:        utcPtr(f.ExpiresAt),
		SenderThumbprint: deref(f.SenderThumbprint),
		RevokedAt:        utcPtr(f.RevokedAt),
		RevokedReason:    deref(f.RevokedReason),
		Audience:         f.Audience,
		Claims:           claimsOf(f.AuthTime, f.ACR, f.AMR, f.SessionID, f.UserAgent, f.IP, f.Label),
	}
}
