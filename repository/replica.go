package repository

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oauthstore/oauthstore/db"
)

// replica is Config.ReadReplica with its bound and its counts. Only boundedStaleRead reads from
// it: everything else an Admin or Store runs goes to the primary (Admin.dbtx).
type replica struct {
	dbtx         DBTX
	maxStaleness time.Duration
	checkTimeout time.Duration
	counts       struct{ served, behind, notInRecovery, failed atomic.Int64 }
}

// maxReplicaCheck bounds the time the replica gets to hand out a connection, begin and answer the
// staleness check (MaxReplicaStaleness, if shorter): a replica that cannot say that fast is treated
// as failed, so that an unreachable one delays the read by little more than this.
const maxReplicaCheck = time.Second

func newReplica(cfg Config) *replica {
	if cfg.ReadReplica == nil {
		return nil
	}
	return &replica{dbtx: cfg.ReadReplica, maxStaleness: cfg.MaxReplicaStaleness,
		checkTimeout: min(cfg.MaxReplicaStaleness, maxReplicaCheck)}
}

// ReplicaReads counts the reads that Config.ReadReplica may serve (ActiveFamilies, Stats,
// CleanupBacklog outside a caller's transaction), by where they ran. Each fallback is logged at
// debug level (behind) or info level (not in recovery, failed), with the reason and no secret.
type ReplicaReads struct {
	// Served: the replica showed that it was at most MaxReplicaStaleness behind, and answered.
	Served int64 `json:"served"`
	// Behind: ran on the primary because the replica was staler than MaxReplicaStaleness, or could
	// not show how stale it was (it has replayed no transaction since it started and has not
	// heard from the primary lately, as when the primary is idle).
	Behind int64 `json:"behind"`
	// NotInRecovery: ran on the primary because the replica is not a standby: it was promoted,
	// or is a primary. Its data may have parted from the primary's for good.
	NotInRecovery int64 `json:"not_in_recovery"`
	// Failed: ran on the primary because the replica failed: unreachable, slower than the check
	// allows (see Config.ReadReplica), or an error, such as a read cancelled by a conflict with
	// recovery.
	Failed int64 `json:"failed"`
}

// Fallbacks is how many of the reads ran on the primary.
func (r ReplicaReads) Fallbacks() int64 { return r.Behind + r.NotInRecovery + r.Failed }

// ReplicaReads returns the counts since New or NewAdmin; the copies WithDB makes share them. All
// zero without Config.ReadReplica.
func (a *Admin) ReplicaReads() ReplicaReads {
	if a.replica == nil {
		return ReplicaReads{}
	}
	c := &a.replica.counts
	return ReplicaReads{Served: c.served.Load(), Behind: c.behind.Load(), NotInRecovery: c.notInRecovery.Load(), Failed: c.failed.Load()}
}

// The outcomes of trying a read on the replica.
type replicaOutcome int

const (
	replicaServed replicaOutcome = iota
	replicaBehind
	replicaNotInRecovery
	replicaFailed
)

var replicaFallbackReasons = [...]string{replicaBehind: "behind", replicaNotInRecovery: "not_in_recovery", replicaFailed: "failed"}

// boundedStaleRead runs read, which only reads and tolerates lag, on the replica when the replica
// shows that it is at most MaxReplicaStaleness behind the primary, and on the primary otherwise:
// without a replica, in a caller's transaction (which must see its own writes), and whenever the
// replica is behind, not in recovery or failing. read may run twice, on the replica and then on
// the primary: it must set its results afresh each time.
//
// The check and the read run in one READ COMMITTED transaction on the replica, the check first: the
// read's snapshot is taken after the check, and replay only moves forward, so the read is at least
// as fresh as what the check measured. The transaction also keeps both on one server, whatever
// the pool balances over.
func (a *Admin) boundedStaleRead(ctx context.Context, op string, read func(DBTX) error) error {
	r := a.replica
	if r == nil || a.callerTx {
		return read(a.dbtx)
	}
	try := r.tryRead(ctx, a.q, read)
	switch try.outcome {
	case replicaServed:
		r.counts.served.Add(1)
		return nil
	case replicaBehind:
		r.counts.behind.Add(1)
	case replicaNotInRecovery:
		r.counts.notInRecovery.Add(1)
	case replicaFailed:
		if ctx.Err() != nil {
			return dbError(op, context.Cause(ctx)) // the caller gave up; the primary would fail too
		}
		r.counts.failed.Add(1)
	}
	a.logReplicaFallback(ctx, op, try)
	return read(a.dbtx)
}

// replicaTry is what came of trying a read on the replica.
type replicaTry struct {
	outcome   replicaOutcome
	bounded   bool          // the check gave a bound: staleness
	staleness time.Duration // may be negative when the standby's clock runs behind the primary's
	err       error         // why it failed
}

// tryRead runs the check and, if the replica is fresh enough, read, in a read-only transaction on
// the replica.
func (r *replica) tryRead(ctx context.Context, q *db.Queries, read func(DBTX) error) replicaTry {
	checkCtx, cancel := context.WithTimeout(ctx, r.checkTimeout)
	defer cancel()
	tx, err := beginReadOnly(checkCtx, r.dbtx, q)
	if err != nil {
		return replicaTry{outcome: replicaFailed, err: err}
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit
	check, err := q.ReplicaStaleness(checkCtx, tx)
	switch {
	case err != nil:
		return replicaTry{outcome: replicaFailed, err: err}
	case !check.InRecovery:
		return replicaTry{outcome: replicaNotInRecovery}
	case !check.Bounded || check.Staleness > r.maxStaleness:
		return replicaTry{outcome: replicaBehind, bounded: check.Bounded, staleness: check.Staleness}
	}
	try := replicaTry{outcome: replicaFailed, bounded: true, staleness: check.Staleness}
	if try.err = read(tx); try.err == nil {
		try.err = tx.Commit(ctx)
	}
	if try.err == nil {
		try.outcome = replicaServed
	}
	return try
}

// beginReadOnly begins a READ COMMITTED transaction on dbtx, whatever its server's or role's
// default isolation level (a hot standby refuses SERIALIZABLE, and a snapshot taken before the
// check could be older than what it measured), and READ ONLY where dbtx can begin one so.
func beginReadOnly(ctx context.Context, dbtx DBTX, q *db.Queries) (pgx.Tx, error) {
	type txBeginner interface {
		BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
	}
	if b, ok := dbtx.(txBeginner); ok {
		return b.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted, AccessMode: pgx.ReadOnly})
	}
	tx, err := dbtx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if err := q.PgSetReadCommitted(ctx, tx); err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

// logReplicaFallback logs why a read ran on the primary: at debug level when the replica was
// behind, which is routine, and at info level when it is not a standby or failed.
func (a *Admin) logReplicaFallback(ctx context.Context, op string, try replicaTry) {
	level := slog.LevelInfo
	if try.outcome == replicaBehind {
		level = slog.LevelDebug
	}
	if !a.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("op", op),
		slog.String("reason", replicaFallbackReasons[try.outcome]),
		slog.Duration("max_staleness", a.replica.maxStaleness),
	}
	if try.bounded {
		attrs = append(attrs, slog.Duration("staleness", try.staleness))
	}
	if try.err != nil {
		attrs = append(attrs, slog.String("error", try.err.Error()))
	}
	a.log.LogAttrs(ctx, level, "oauthstore: replica read fell back to the primary", attrs...)
}
