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
	// BatchSize is the number of families deleted per statement (each its own short transaction
	// on a pool). Zero means DefaultCleanupBatchSize.
	BatchSize int
	// Limit caps the families deleted by this run; zero means no cap.
	Limit int
	// Retain keeps dead families this much longer after their last token expired.
	Retain time.Duration
}

// CleanupResult counts what a cleanup run deleted.
type CleanupResult struct {
	Families      int64
	RefreshTokens int64
	Batches       int
}

// Cleanup deletes families whose newest token expired more than Retain ago, with all their tokens,
// in batches. A family that can still be used keeps every tombstone, and a revoked family keeps its
// mark until its last token has expired, so replays stay detectable for as long as a token of the
// family could be presented (I4). Batches lock with SKIP LOCKED, so several cleaners can run at
// once and none waits on a rotation. On error, the result counts the batches that committed.
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
	for {
		n := batch
		if opts.Limit > 0 {
			left := int64(opts.Limit) - res.Families
			if left <= 0 {
				return res, nil
			}
			n = int(min(int64(n), left))
		}
		row, err := s.q.FamilyDeleteExpired(ctx, s.db, db.FamilyDeleteExpiredParams{
			Now:       s.now(),
			Retain:    interval(opts.Retain),
			BatchSize: int32(n),
		})
		if err != nil {
			return res, dbError("cleanup", err)
		}
		res.Batches++
		res.Families += row.FamiliesDeleted
		res.RefreshTokens += row.TokensDeleted
		if row.FamiliesDeleted < int64(n) {
			return res, nil
		}
	}
}
