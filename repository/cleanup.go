package repository

import (
	"context"
	"time"

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
	// Limit caps the families, codes and states (each counted on its own) deleted by this run;
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
	Batches            int
}

// Cleanup deletes, in batches:
//
//   - families whose newest token expired more than Retain ago, with all their tokens and the code
//     that produced them. A family that can still be used keeps every tombstone, and a revoked one
//     keeps its mark until its last token has expired, so replays stay detectable for as long as
//     a token or code of the family could revoke anything (I4);
//   - authorization codes that expired without being exchanged;
//   - expired state bindings.
//
// Batches lock with SKIP LOCKED, so several cleaners can run at once and none waits on a rotation.
// On error, the result counts the batches that committed.
func (s *Store) Cleanup(ctx context.Context, opts CleanupOptions) (CleanupResult, error) {
	var res CleanupResult
	batch := opts.BatchSize
	switch {
	case batch == 0:
		batch = DefaultCleanupBatchSize
	case batch < 0 || batch > MaxCleanupBatchSize:
		return res, inputError("batch_size", "outside 1..100000")
	}
	if opts.Limit < 0 {
		return res, inputError("limit", "negative")
	}
	if opts.Retain < 0 || opts.Retain > MaxTTL {
		return res, inputError("retain", "outside 0..ten years")
	}
	if opts.Pause < 0 || opts.Pause > time.Minute {
		return res, inputError("pause", "outside 0..1m")
	}
	retain := interval(opts.Retain)
	// run deletes batches of at most n rows until deleteBatch reports that nothing is left or the
	// limit is reached.
	run := func(count *int64, deleteBatch func(n int) (deleted int64, more bool, err error)) error {
		for {
			n := batch
			if opts.Limit > 0 {
				left := int64(opts.Limit) - *count
				if left <= 0 {
					return nil
				}
				n = int(min(int64(n), left))
			}
			deleted, more, err := deleteBatch(n)
			if err != nil {
				return dbError("cleanup", err)
			}
			res.Batches++
			*count += deleted
			if opts.OnBatch != nil {
				opts.OnBatch(res)
			}
			if !more {
				return nil
			}
			if opts.Pause > 0 {
				select {
				case <-ctx.Done():
					return dbError("cleanup", ctx.Err())
				case <-time.After(opts.Pause):
				}
			}
		}
	}
	// A family batch holds whole families with at most batch tokens among them (at least one
	// family); more may be left while it deleted some, but not all, of what it looked at, or as
	// many as it looked for.
	err := run(&res.Families, func(n int) (int64, bool, error) {
		var row db.FamilyDeleteExpiredRow
		err := s.readCommitted(ctx, "cleanup", func(q DBTX) (err error) {
			row, err = s.q.FamilyDeleteExpired(ctx, q, db.FamilyDeleteExpiredParams{
				Now: s.now(), Retain: retain, MaxFamilies: int32(n), MaxTokens: int64(batch)})
			return err
		})
		res.RefreshTokens += row.TokensDeleted
		more := row.FamiliesDeleted > 0 && (row.FamiliesDeleted < row.Candidates || row.Candidates == int64(n))
		return row.FamiliesDeleted, more, err
	})
	if err == nil {
		err = run(&res.AuthorizationCodes, func(n int) (int64, bool, error) {
			var deleted int64
			err := s.readCommitted(ctx, "cleanup", func(q DBTX) (err error) {
				deleted, err = s.q.AuthorizationCodeDeleteExpired(ctx, q, db.AuthorizationCodeDeleteExpiredParams{Now: s.now(), Retain: retain, BatchSize: int32(n)})
				return err
			})
			return deleted, deleted == int64(n), err
		})
	}
	if err == nil {
		err = run(&res.States, func(n int) (int64, bool, error) {
			var deleted int64
			err := s.readCommitted(ctx, "cleanup", func(q DBTX) (err error) {
				deleted, err = s.q.StateDeleteExpired(ctx, q, db.StateDeleteExpiredParams{Now: s.now(), Retain: retain, BatchSize: int32(n)})
				return err
			})
			return deleted, deleted == int64(n), err
		})
	}
	return res, err
}
