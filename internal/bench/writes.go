package bench

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Writes is what the measured rotations of a cell wrote: the deltas of the server's counters
// around the measured phase, and the same per rotation.
type Writes struct {
	// WALBytes is the WAL the whole cluster generated during the measured phase (the difference
	// of pg_current_wal_insert_lsn: the bytes inserted, whether or not the WAL writer has written
	// them yet, which with synchronous_commit off it may not have). Background work in that
	// window (autovacuum, a checkpoint's full-page images) is part of it.
	WALBytes int64 `json:"wal_bytes"`
	// The tuple counters of pg_stat_user_tables, summed over the tables the variant writes.
	Inserted   int64 `json:"tuples_inserted"`
	Updated    int64 `json:"tuples_updated"`
	HOTUpdated int64 `json:"tuples_hot_updated"`
	Deleted    int64 `json:"tuples_deleted"`
	// IndexEntries is an upper bound of the index entries written: every inserted row and every
	// update that is not HOT counted once per index of its table, partial indexes included.
	IndexEntries int64 `json:"index_entries_upper_bound"`
	// Settled is false when the table counters did not settle in time: then they may lack writes
	// of the cell, or hold writes from before it.
	Settled bool `json:"counters_settled"`

	WALPerRotation          float64 `json:"wal_bytes_per_rotation"`
	TuplesPerRotation       float64 `json:"heap_tuples_per_rotation"`
	IndexEntriesPerRotation float64 `json:"index_entries_per_rotation_upper_bound"`
	// HOTRatio is HOTUpdated / Updated; null when nothing was updated.
	HOTRatio *float64 `json:"hot_ratio"`
}

// tableCounters are one table's cumulative counters in pg_stat_user_tables, and its index count.
type tableCounters struct {
	ins, upd, hotUpd, del int64
	indexes               int64
}

// counters are the tableCounters of a variant's tables, by qualified name.
type counters map[string]tableCounters

func (c counters) inserts() int64 {
	var n int64
	for _, t := range c {
		n += t.ins
	}
	return n
}

// writesBetween returns the writes of ops rotations from the counters before and after them.
func writesBetween(before, after counters, walBytes int64, ops int, settled bool) Writes {
	w := Writes{WALBytes: walBytes, Settled: settled}
	for name, a := range after {
		b := before[name]
		ins, upd, hot, del := a.ins-b.ins, a.upd-b.upd, a.hotUpd-b.hotUpd, a.del-b.del
		w.Inserted += ins
		w.Updated += upd
		w.HOTUpdated += hot
		w.Deleted += del
		w.IndexEntries += (ins + upd - hot) * a.indexes
	}
	if ops > 0 {
		n := float64(ops)
		w.WALPerRotation = float64(w.WALBytes) / n
		w.TuplesPerRotation = float64(w.Inserted+w.Updated+w.Deleted) / n
		w.IndexEntriesPerRotation = float64(w.IndexEntries) / n
	}
	if w.Updated > 0 {
		r := float64(w.HOTUpdated) / float64(w.Updated)
		w.HOTRatio = &r
	}
	return w
}

// readCounters reads the counters of tables as the server has them now, outside any snapshot of
// the statistics an earlier read took.
func (e *env) readCounters(ctx context.Context, tables []string) (counters, error) {
	if _, err := e.admin.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		return nil, err
	}
	rows, err := e.admin.Query(ctx, `SELECT n.name,
		coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_hot_upd, 0), coalesce(s.n_tup_del, 0),
		(SELECT count(*) FROM pg_index i WHERE i.indrelid = to_regclass(n.name))
		FROM unnest($1::text[]) AS n(name)
		LEFT JOIN pg_stat_user_tables s ON s.relid = to_regclass(n.name)`, tables)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	c := counters{}
	for rows.Next() {
		var name string
		var t tableCounters
		if err := rows.Scan(&name, &t.ins, &t.upd, &t.hotUpd, &t.del, &t.indexes); err != nil {
			return nil, err
		}
		c[name] = t
	}
	return c, rows.Err()
}

// Table statistics reach pg_stat_user_tables lazily. PostgreSQL 15 and later flush a backend's
// pending counters to shared memory when it goes idle, but at most once per PGSTAT_MIN_INTERVAL
// (1 s) and otherwise only after 10 s idle, and at exit before the backend leaves
// pg_stat_activity. PostgreSQL 13 and 14 send them to the statistics collector when a transaction
// ends at most every 500 ms (and an idle backend never), and at exit; a reader then accepts a
// statistics file up to 500 ms old. pg_stat_force_next_flush (15 and later) acts on the calling
// session only. So the counters are read
//
//   - after the warm-up, with the cell's connections idle and open: every poll first sends each of
//     them a statement, so that each flushes once its interval has passed, and the counters count
//     once they stayed the same on two polls after that interval;
//   - after the measured phase, once the cell's connections have been closed and have left
//     pg_stat_activity: on 15 and later the counters are then complete, on 13 and 14 they
//     count after the collector's interval as above.
//
// Every rotation of every variant inserts one row, so a read that has fewer inserts than
// rotations is incomplete whatever the timing says.
const (
	statsPoll    = 100 * time.Millisecond
	statsTimeout = 15 * time.Second
)

// flushInterval is how long after its last write an idle backend that is sent a statement has
// flushed its counters where a reader sees them.
func (e *env) flushInterval() time.Duration {
	if e.info.ServerVersionNum >= 150000 {
		return time.Second + statsPoll
	}
	return 500*time.Millisecond + 500*time.Millisecond + 2*statsPoll
}

// exitFlushInterval is the same for a backend that has exited.
func (e *env) exitFlushInterval() time.Duration {
	if e.info.ServerVersionNum >= 150000 {
		return 0
	}
	return e.flushInterval()
}

// settle polls the counters of tables until they are complete: from readyAt on, equal on two
// consecutive polls and with at least minInserts inserts. With nudge, every idle connection of
// that pool runs a statement before each poll. It returns the last read and whether it settled
// within statsTimeout after readyAt.
func (e *env) settle(ctx context.Context, tables []string, nudge *pgxpool.Pool, minInserts int64, readyAt time.Time) (counters, bool, error) {
	var prev counters
	deadline := readyAt.Add(statsTimeout)
	for {
		if nudge != nil {
			for _, c := range nudge.AcquireAllIdle(ctx) {
				_, err := c.Exec(ctx, "SELECT 1")
				c.Release()
				if err != nil {
					return nil, false, fmt.Errorf("statistics: %w", err)
				}
			}
		}
		cur, err := e.readCounters(ctx, tables)
		if err != nil {
			return nil, false, fmt.Errorf("statistics: %w", err)
		}
		now := time.Now()
		if !now.Before(readyAt) && prev != nil && maps.Equal(prev, cur) && cur.inserts() >= minInserts {
			return cur, true, nil
		}
		if now.After(deadline) {
			return cur, false, nil
		}
		prev = cur
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(statsPoll):
		}
	}
}

// walPosition returns the WAL insert position.
func (e *env) walPosition(ctx context.Context) (string, error) {
	var lsn string
	err := e.admin.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn)
	return lsn, err
}

// walSince returns the WAL bytes inserted since the position from.
func (e *env) walSince(ctx context.Context, from string) (int64, error) {
	var n int64
	err := e.admin.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint", from).Scan(&n)
	return n, err
}
