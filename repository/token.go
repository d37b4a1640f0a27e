package repository

import (
	"context"
	"time"
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
	pt, err := s.presentedRefresh(ctx, token)
	if err != nil {
		return nil, err
	}
	row, err := s.getToken(ctx, s.dbtx, pt, s.now())
	if err := interpretError("lookup", err, ErrTokenNotFound); err != nil {
		return nil, err
	}
	return tokenInfo(row), nil
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

// RevokeToken answers an RFC 7009 revocation request of clientID. A refresh token revokes its
// family, as RFC 7009 §2.1 suggests: every token of the grant, access tokens included, stops
// working at once. An opaque access token revokes itself alone. A token of another client is
// refused with ErrWrongClient and revokes nothing; revoking again succeeds. A JWT is revoked by its
// jti with RevokeJTI. RFC 7009 §2.2 answers 200 for an unknown token (ErrTokenNotFound) too.
func (s *Store) RevokeToken(ctx context.Context, token, clientID string) error {
	if err := validateID("client_id", clientID); err != nil {
		return err
	}
	if len(token) == accessTokenLen {
		id, digests, ok := s.access.decodeAccess(token)
		if !ok {
			return ErrTokenNotFound
		}
		return s.revokeAccess(ctx, id, digests, false, clientID)
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
