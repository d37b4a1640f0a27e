package repository

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oauthstore/oauthstore/db"
)

// Revocation reasons the package itself records.
const (
	ReasonReplayDetected     = "replay_detected"
	ReasonCodeReplayDetected = "code_replay_detected"
	ReasonTokenRevoked       = "token_revoked"
)

// RevokeFamily revokes a family: its live token stops working at once, and a rotation that has
// not committed yet never produces a successor (I3). The family keeps its rows as evidence until
// cleanup. Revoking an already revoked family succeeds and keeps the first reason.
func (a *Admin) RevokeFamily(ctx context.Context, familyID, reason string) error {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return err
	}
	if err := validateReason(reason); err != nil {
		return err
	}
	var row db.FamilyRevokeRow
	err = a.readCommitted(ctx, "revoke family", func(q DBTX) (err error) {
		row, err = a.q.FamilyRevoke(ctx, q, db.FamilyRevokeParams{ID: id, Now: a.now(), Reason: reason})
		return err
	})
	if err := interpretError("revoke family", err, ErrFamilyNotFound); err != nil {
		return err
	}
	if row.RevokedNow {
		a.emit(ctx, Event{Kind: EventFamilyRevoked, FamilyID: row.ID.String(), ClientID: row.ClientID, UserID: row.UserID, Reason: reason, SessionID: deref(row.SessionID)})
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

// RevokedFamilies is what RevokeFamilies ended.
type RevokedFamilies struct {
	// Families is how many live families it revoked; their access tokens went with them.
	Families int64
	// StandaloneAccessTokens is how many live standalone access tokens it revoked.
	StandaloneAccessTokens int64
	// SessionIDs are the OpenID Connect sessions (Claims.SessionID) of the revoked families, each
	// once: send their back-channel logout tokens.
	SessionIDs []string
}

// RevokeFamilies revokes every live family of a user (logout everywhere), of a client (the client
// was deleted), or of a user at one client, with the access tokens of those families, and the
// standalone access tokens the filter covers (a user's: those whose subject is the user), in
// batches of short statements; each statement writes one row per family, however many access
// tokens the family has. Each revoked family is reported as an EventFamilyRevoked. It first ends
// the authorization codes the filter covers that could still be exchanged, so that no code minted
// before the call yields a live family after it.
func (a *Admin) RevokeFamilies(ctx context.Context, filter FamilyFilter, reason string) (RevokedFamilies, error) {
	var out RevokedFamilies
	if err := firstError(filter.validate(), validateReason(reason)); err != nil {
		return out, err
	}
	// Codes first: an exchange that commits before this statement made a family that the batches
	// below revoke; one that comes after finds no code.
	if err := a.readCommitted(ctx, "revoke families: end pending codes", func(q DBTX) error {
		_, err := a.q.AuthorizationCodeEndPending(ctx, q, db.AuthorizationCodeEndPendingParams{
			Now: a.now(), UserID: optionalText(filter.UserID), ClientID: optionalText(filter.ClientID),
		})
		return err
	}); err != nil {
		return out, dbError("revoke families: end pending codes", err)
	}
	seen := map[string]bool{}
	for {
		batch, err := a.revokeFamiliesBatch(ctx, filter, reason)
		if err != nil {
			return out, dbError("revoke families", err)
		}
		for _, r := range batch {
			sid := deref(r.SessionID)
			if sid != "" && !seen[sid] {
				seen[sid] = true
				out.SessionIDs = append(out.SessionIDs, sid)
			}
			a.emit(ctx, Event{Kind: EventFamilyRevoked, FamilyID: r.ID.String(), ClientID: r.ClientID, UserID: r.UserID, Reason: reason, SessionID: sid})
		}
		out.Families += int64(len(batch))
		if len(batch) < revokeBatchSize {
			break
		}
	}
	for {
		var n int64
		err := a.readCommitted(ctx, "revoke standalone access tokens", func(q DBTX) (err error) {
			n, err = a.q.AccessTokenRevokeStandalone(ctx, q, db.AccessTokenRevokeStandaloneParams{
				ClientID: optionalText(filter.ClientID), Subject: optionalText(filter.UserID), Now: a.now(), BatchSize: revokeBatchSize,
			})
			return err
		})
		if err != nil {
			return out, dbError("revoke standalone access tokens", err)
		}
		out.StandaloneAccessTokens += n
		if n < revokeBatchSize {
			return out, nil
		}
	}
}

// revokeFamiliesBatch revokes one batch of the filter's live families and returns them.
func (a *Admin) revokeFamiliesBatch(ctx context.Context, filter FamilyFilter, reason string) (batch []db.FamilyRevokeByUserRow, err error) {
	err = a.readCommitted(ctx, "revoke families", func(q DBTX) (err error) {
		if filter.UserID != "" {
			batch, err = a.q.FamilyRevokeByUser(ctx, q, db.FamilyRevokeByUserParams{
				UserID: filter.UserID, ClientID: optionalText(filter.ClientID), BatchSize: revokeBatchSize, Now: a.now(), Reason: reason,
			})
			return err
		}
		rows, err := a.q.FamilyRevokeByClient(ctx, q, db.FamilyRevokeByClientParams{
			ClientID: filter.ClientID, BatchSize: revokeBatchSize, Now: a.now(), Reason: reason,
		})
		batch = batch[:0]
		for _, r := range rows {
			batch = append(batch, db.FamilyRevokeByUserRow(r)) // the same columns: id, client, user
		}
		return err
	})
	return batch, err
}

func (f FamilyFilter) validate() error {
	var errs [2]error
	if f.UserID != "" {
		errs[0] = validateID("user_id", f.UserID)
	}
	if f.ClientID != "" {
		errs[1] = validateID("client_id", f.ClientID)
	}
	if f.UserID == "" && f.ClientID == "" {
		return inputError("filter", "neither user_id nor client_id")
	}
	return firstError(errs[:]...)
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
	// Audience and Claims are the grant's (IssueRequest, or the code's CodeRequest).
	Audience []string
	Claims   Claims
}

// Family returns a family by id. It always reads the primary, never Config.ReadReplica: a service
// may decide on its revocation.
func (a *Admin) Family(ctx context.Context, familyID string) (*Family, error) {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return nil, err
	}
	row, err := a.q.FamilyGet(ctx, a.dbtx, id)
	if err := interpretError("get family", err, ErrFamilyNotFound); err != nil {
		return nil, err
	}
	f := familyFromRow(row.OauthFamily)
	return &f, nil
}

// MaxListedFamilies bounds ActiveFamilies.
const MaxListedFamilies = 1000

// ActiveFamilies lists a user's families that can still be used, newest first, at most
// MaxListedFamilies: the rows of a "your sessions" page. With Config.ReadReplica it may run on the
// replica, and then lag behind the primary by up to Config.MaxReplicaStaleness.
func (a *Admin) ActiveFamilies(ctx context.Context, userID string) ([]Family, error) {
	if err := validateID("user_id", userID); err != nil {
		return nil, err
	}
	var rows []db.FamilyListActiveByUserRow
	err := a.boundedStaleRead(ctx, "list families", func(q DBTX) (err error) {
		rows, err = a.q.FamilyListActiveByUser(ctx, q, db.FamilyListActiveByUserParams{
			UserID: userID, Now: a.now(), MaxRows: MaxListedFamilies,
		})
		return err
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

// DeleteFamily erases a family and all of its tokens, access tokens included, for example when the user's account is
// deleted. Unlike RevokeFamily it keeps no evidence: its tokens become unknown.
func (a *Admin) DeleteFamily(ctx context.Context, familyID string) error {
	id, err := parseFamilyID(familyID)
	if err != nil {
		return err
	}
	// The tombstones go in a second statement: it sees those of a rotation that committed while
	// the first waited for the family's lock, and none can come after the family row is gone.
	var n int64
	err = a.inTx(ctx, "delete family", func(tx pgx.Tx) (bool, error) {
		var err error
		if n, err = a.q.FamilyDelete(ctx, tx, db.FamilyDeleteParams{ID: id, Now: a.now()}); err != nil || n == 0 {
			return false, err
		}
		if _, err = a.q.RefreshTombstoneDeleteByFamily(ctx, tx, id); err != nil {
			return false, err
		}
		_, err = a.q.AccessTokenDeleteByFamily(ctx, tx, id)
		return err == nil, err
	})
	if err != nil {
		return dbError("delete family", err)
	}
	if n == 0 {
		return ErrFamilyNotFound
	}
	return nil
}
