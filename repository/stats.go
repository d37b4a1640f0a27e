package repository

import (
	"context"

	"github.com/oauthstore/oauthstore/db"
)

// Stats is the operator's view of the package's tables. Its counts scan the tables: gather it on
// demand, not in a hot path.
type Stats struct {
	Families struct{ Live, Revoked, Expired int64 }
	// RefreshTokens: Live can be rotated now; Consumed are tombstones; Revoked are unconsumed in a
	// revoked family; Expired are unconsumed past their idle lifetime.
	RefreshTokens      struct{ Live, Consumed, Revoked, Expired int64 }
	AuthorizationCodes struct{ Pending, Consumed, Expired int64 }
	States             struct{ Pending, Expired int64 }
	Tables             []TableSize
}

// TableSize is the size on disk of one table and of its indexes.
type TableSize struct {
	Table      string
	TableBytes int64
	IndexBytes int64
}

// Stats counts the rows of every table by state and reports the tables' sizes.
func (s *Store) Stats(ctx context.Context) (*Stats, error) {
	var st Stats
	now := s.now()
	f, err := s.q.StatsFamilies(ctx, s.db, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.Families.Live, st.Families.Revoked, st.Families.Expired = f.Live, f.Revoked, f.Expired
	t, err := s.q.StatsRefreshTokens(ctx, s.db, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.RefreshTokens.Live, st.RefreshTokens.Consumed, st.RefreshTokens.Revoked, st.RefreshTokens.Expired = t.Live, t.Consumed, t.Revoked, t.Expired
	c, err := s.q.StatsAuthorizationCodes(ctx, s.db, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.AuthorizationCodes.Pending, st.AuthorizationCodes.Consumed, st.AuthorizationCodes.Expired = c.Pending, c.Consumed, c.Expired
	sb, err := s.q.StatsStates(ctx, s.db, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.States.Pending, st.States.Expired = sb.Pending, sb.Expired
	sizes, err := s.q.StatsTableSizes(ctx, s.db)
	if err != nil {
		return nil, dbError("stats", err)
	}
	for _, r := range sizes {
		st.Tables = append(st.Tables, TableSize{Table: r.TableName, TableBytes: r.TableBytes, IndexBytes: r.IndexBytes})
	}
	return &st, nil
}

// CleanupBacklog counts what Cleanup with opts.Retain would delete now, without deleting anything.
func (s *Store) CleanupBacklog(ctx context.Context, opts CleanupOptions) (CleanupResult, error) {
	if opts.Retain < 0 || opts.Retain > MaxTTL {
		return CleanupResult{}, inputError("retain", "outside 0..ten years")
	}
	r, err := s.q.StatsCleanupBacklog(ctx, s.db, db.StatsCleanupBacklogParams{Now: s.now(), Retain: interval(opts.Retain)})
	if err != nil {
		return CleanupResult{}, dbError("cleanup backlog", err)
	}
	return CleanupResult{Families: r.Families, RefreshTokens: r.RefreshTokens, AuthorizationCodes: r.AuthorizationCodes, States: r.States}, nil
}
