package repository

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oauthstore/oauthstore/db"
)

// Cleanup defaults and bounds.
const (
	DefaultCleanupBatchSize = 1000
	MaxCleanupBatchSize     = 100_000
)

// CleanupOptions bound one cleanup run.
type CleanupOptions struct {
	// BatchSize bounds the rows deleted per statement, each its own short transaction on a pool:
	// codes or states, or whole families holding at most this many tokens among them (always at
	// least one family, however many tokens it holds). Zero means DefaultCleanupBatchSize.
	BatchSize int
	// Limit caps the families, codes, states, access tokens and feed entries (each counted on its
	// own) deleted by this run;
	// zero means no cap.
	Limit int
	// Retain keeps what is dead this much longer.
	Retain time.Duration
	// Pause waits this long between batches, to leave live traffic more of the database.
	Pause time.Duration
	// OnBatch, when set, is called after each committed batch with the running totals, for
	// progress reports.
	OnBatch func(CleanupResult)
}

// CleanupResult counts what a cleanup run deleted.
type CleanupResult struct {
	Families           int64
	RefreshTokens      int64
	AuthorizationCodes int64 // codes that expired unused; exchanged codes go with their family
	States             int64
	// GraceCiphertexts counts the sealed copies of unused successors older than the longest grace
	// window, deleted: no client can use them any more.
	GraceCiphertexts int64
	// AccessTokens counts access tokens that expired more than Retain ago; Revocations the entries
	// of the revocation feed whose tokens all expired more than Retain ago.
	AccessTokens int64
	Revocations  int64
	Batches      int
}

// Cleanup deletes, in batches:
//
//   - families whose newest token expired more than Retain ago, with all their tokens and the code
//     that produced them. A family that can still be used keeps every tombstone, and a revoked one
//     keeps its mark until its last token has expired, so replays stay detectable for as long as
//     a token or code of the family could revoke anything (I4);
//   - authorization codes that expired without being exchanged;
//   - expired state bindings;
//   - the sealed copies of unused successors (see Config.GraceWindow) older than MaxGraceWindow;
//   - access tokens that expired, and the revocation feed's entries whose tokens all expired.
//
// Batches lock with SKIP LOCKED, so several cleaners can run at once and none waits on a rotation.
// On error, the result counts the batches that committed.
func (a *Admin) Cleanup(ctx context.Context, opts CleanupOptions) (CleanupResult, error) {
	var res CleanupResult
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return res, err
	}
	// Families first, then codes, then states: batch after batch of each until none is left or
	// the limit is reached.
	for kind, count := range []*int64{&res.Families, &res.AuthorizationCodes, &res.States, &res.GraceCiphertexts,
		&res.AccessTokens, &res.Revocations} {
		for more := true; more; {
			n := opts.BatchSize
			if opts.Limit > 0 {
				n = int(min(int64(n), int64(opts.Limit)-*count))
			}
			if n <= 0 {
				break
			}
			var deleted int64
			var err error
			deleted, more, err = a.cleanupBatch(ctx, cleanupKind(kind), n, opts, &res)
			if err != nil {
				return res, dbError("cleanup", err)
			}
			res.Batches++
			*count += deleted
			if opts.OnBatch != nil {
				opts.OnBatch(res)
			}
			if more && opts.Pause > 0 {
				select {
				case <-ctx.Done():
					return res, dbError("cleanup", ctx.Err())
				case <-time.After(opts.Pause):
				}
			}
		}
	}
	return res, nil
}

type cleanupKind int

const (
	cleanupFamilies cleanupKind = iota
	cleanupCodes
	cleanupStates
	cleanupGraceCiphertexts
	cleanupAccessTokens
	cleanupRevocations
)

// cleanupBatch deletes one batch of at most n rows of a kind and says whether more may be left. A
// family batch holds whole families with at most opts.BatchSize tokens among them (at least one
// family), whose tokens it adds to res; more may be left while it deleted some, but not all, of
// what it looked at, or as many as it looked for.
func (a *Admin) cleanupBatch(ctx context.Context, kind cleanupKind, n int, opts CleanupOptions, res *CleanupResult) (deleted int64, more bool, err error) {
	if kind == cleanupFamilies {
		// The families' tombstones go in a second statement: its snapshot sees those of a rotation
		// that committed while the first waited for a family's lock.
		err = a.inTx(ctx, "cleanup", func(tx pgx.Tx) (bool, error) {
			row, err := a.q.FamilyDeleteExpired(ctx, tx, db.FamilyDeleteExpiredParams{
				Now: a.now(), Retain: opts.Retain, MaxFamilies: int32(n), MaxTokens: int64(opts.BatchSize)})
			if err != nil {
				return false, err
			}
			if len(row.FamilyIds) > 0 {
				if _, err := a.q.RefreshTombstoneDeleteByFamilies(ctx, tx, row.FamilyIds); err != nil {
					return false, err
				}
			}
			res.RefreshTokens += row.TokensDeleted
			deleted, more = row.FamiliesDeleted, row.FamiliesDeleted > 0 && (row.FamiliesDeleted < row.Candidates || row.Candidates == int64(n))
			return true, nil
		})
		return deleted, more, err
	}
	err = a.readCommitted(ctx, "cleanup", func(q DBTX) error {
		switch kind {
		case cleanupCodes:
			deleted, err = a.q.AuthorizationCodeDeleteExpired(ctx, q, db.AuthorizationCodeDeleteExpiredParams{Now: a.now(), Retain: opts.Retain, BatchSize: int32(n)})
		case cleanupAccessTokens:
			deleted, err = a.q.AccessTokenDeleteExpired(ctx, q, db.AccessTokenDeleteExpiredParams{Now: a.now(), Retain: opts.Retain, BatchSize: int32(n)})
		case cleanupRevocations:
			deleted, err = a.q.RevocationDeleteExpired(ctx, q, db.RevocationDeleteExpiredParams{Now: a.now(), Retain: opts.Retain, BatchSize: int32(n)})
		case cleanupGraceCiphertexts:
			deleted, err = a.q.RefreshTokenClearSealedSuccessors(ctx, q, db.RefreshTokenClearSealedSuccessorsParams{Now: a.now(), GraceWindow: MaxGraceWindow, BatchSize: int32(n)})
		default:
			deleted, err = a.q.StateDeleteExpired(ctx, q, db.StateDeleteExpiredParams{Now: a.now(), Retain: opts.Retain, BatchSize: int32(n)})
		}
		more = deleted == int64(n)
		return err
	})
	return deleted, more, err
}

func (o CleanupOptions) withDefaults() CleanupOptions {
	if o.BatchSize == 0 {
		o.BatchSize = DefaultCleanupBatchSize
	}
	return o
}

func (o CleanupOptions) validate() error {
	switch {
	case o.BatchSize < 0 || o.BatchSize > MaxCleanupBatchSize:
		return inputError("batch_size", "outside 1..100000")
	case o.Limit < 0:
		return inputError("limit", "negative")
	case o.Retain < 0 || o.Retain > MaxTTL:
		return inputError("retain", "outside 0..ten years")
	case o.Pause < 0 || o.Pause > time.Minute:
		return inputError("pause", "outside 0..1m")
	}
	return nil
}
