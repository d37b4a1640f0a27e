package repository

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// ReplayRevocationTimeout bounds how long a call that detected a replay inside a caller's
// transaction waits for the family's revocation to commit on the store's own connection: for a
// connection, and for the family's lock while another transaction (a concurrent rotation) holds
// it. The caller's context does not cut it short: a client that hangs up does not undo the
// revocation its replay caused.
const ReplayRevocationTimeout = 10 * time.Second

// blockPoll is how often a revocation waiting for the family's lock asks whether the caller's own
// transaction is what holds it.
const blockPoll = 20 * time.Millisecond

// revokeReplayed revokes, for a replay detected inside a caller's transaction, the family the
// replayed credential belongs to, reports e, and returns refusal. It never begins, commits or
// rolls back anything on the caller's connection (I7): the revocation is committed on a
// connection of the store's own, and e.FamilyRevoked is set only once it is. Two revocations only
// the caller's transaction can make are made in it (e.InCallerTx): when that transaction holds the
// family's lock, for which the store's connection would wait in vain, and when it created the
// family, which is not visible outside it yet. If the revocation fails, the refusal still stands,
// joined with the failure.
func (s *Store) revokeReplayed(ctx context.Context, id pgtype.UUID, e *Event, refusal error) error {
	revokedNow, inCallerTx, err := s.revokeIndependently(ctx, id, e.Reason)
	e.FamilyRevoked, e.InCallerTx = revokedNow, inCallerTx
	if err != nil {
		err = dbError("revoke family on replay", err)
		s.log.LogAttrs(ctx, slog.LevelError, "oauthstore: a replay's revocation did not commit; the family stays alive until its next replay",
			slog.String("family_id", e.FamilyID), slog.String("error", err.Error()))
		s.emit(ctx, *e)
		return errors.Join(refusal, err)
	}
	s.emit(ctx, *e)
	return refusal
}

func (s *Store) revokeIndependently(ctx context.Context, id pgtype.UUID, reason string) (revokedNow, inCallerTx bool, err error) {
	// Two contexts: the store's own bound for its own connection, and for statements on the
	// caller's connection none at all (a deadline that fired during one would make pgx close the
	// caller's connection, and with it the caller's transaction). Neither is cut short by the
	// caller: a client that hangs up does not undo the revocation its replay caused.
	caller := context.WithoutCancel(ctx)
	own, cancel := context.WithTimeout(caller, ReplayRevocationTimeout)
	defer cancel()
	if s.connect == nil {
		return false, false, errors.New("no connection of the store's own: set Config.RevocationConnect")
	}
	select {
	case s.revocations <- struct{}{}:
		defer func() { <-s.revocations }()
	case <-own.Done():
		return false, false, own.Err()
	}
	conn, err := s.connect(own)
	if err != nil {
		return false, false, err
	}
	defer func() {
		closing, cancel := context.WithTimeout(caller, time.Second)
		defer cancel()
		_ = conn.Close(closing)
	}()
	r := s.startRevocation(own, conn, id, reason)
	callerHolds := s.awaitRevocation(caller, own, r)
	if callerHolds {
		return s.revokeInCallerTx(caller, id, reason)
	}
	switch {
	case r.err == nil:
		return r.row.RevokedNow, false, nil
	case errors.Is(r.err, pgx.ErrNoRows):
		// Not visible outside the caller's transaction: it created the family and has not
		// committed. If it does, the revocation commits with the family; if not, neither exists.
		return s.revokeInCallerTx(caller, id, reason)
	}
	return false, false, r.err
}

// revocation is a family's revocation running on the store's own connection.
type revocation struct {
	pid  chan int32    // the server's pid of its session, once known
	done chan struct{} // closed when it has ended, with row and err set
	stop context.CancelFunc
	row  db.FamilyRevokeRow
	err  error
}

func (s *Store) startRevocation(ctx context.Context, conn *pgx.Conn, id pgtype.UUID, reason string) *revocation {
	ctx, stop := context.WithCancel(ctx)
	r := &revocation{pid: make(chan int32, 1), done: make(chan struct{}), stop: stop}
	go func() {
		defer close(r.done)
		r.err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
			// The pid is asked of the server: a pooler in front of it may give another in the
			// handshake, and within a transaction the session is fixed.
			pid, err := s.q.PgBackendPID(ctx, tx)
			if err != nil {
				return err
			}
			r.pid <- pid
			r.row, err = s.q.FamilyRevoke(ctx, tx, db.FamilyRevokeParams{ID: id, Now: s.now(), Reason: reason})
			return err
		})
	}()
	return r
}

// awaitRevocation waits until r has ended and reports false, or, asking now and then on the
// caller's connection whether the caller's own transaction is what r waits for, stops r once it
// is and reports true. It stops asking once own has ended or the caller's connection cannot tell.
func (s *Store) awaitRevocation(caller, own context.Context, r *revocation) (callerHolds bool) {
	defer func() {
		r.stop()
		<-r.done
	}()
	var pid int32
	poll := time.NewTimer(blockPoll / 4)
	defer poll.Stop()
	for {
		select {
		case <-r.done:
			return false
		case pid = <-r.pid:
		case <-poll.C:
			if pid == 0 {
				poll.Reset(blockPoll)
				continue
			}
			blocks, err := s.q.PgBlocksBackend(caller, s.dbtx, pid)
			if err == nil && blocks {
				return true
			}
			if err == nil && own.Err() == nil {
				poll.Reset(blockPoll)
			}
		}
	}
}

func (s *Store) revokeInCallerTx(ctx context.Context, id pgtype.UUID, reason string) (revokedNow, inCallerTx bool, err error) {
	_, err = s.q.FamilyRevoke(ctx, s.dbtx, db.FamilyRevokeParams{ID: id, Now: s.now(), Reason: reason})
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil // deleted meanwhile: nothing left to revoke
	}
	if err != nil {
		return false, false, err
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "oauthstore: the replayed family's revocation is part of the caller's transaction "+
		"(it holds or created the family) and is lost if that transaction rolls back",
		slog.String("family_id", id.String()))
	return false, true, nil
}

// replayLog remembers when a replay of an already revoked family was last reported, so that a
// client presenting a dead token or code in a loop produces one warning and one event a minute per
// family and kind, not one per request. It keeps wall-clock time, not Config.Clock: it paces the
// reports, it decides nothing.
type replayLog struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

const (
	replayReportInterval = time.Minute
	replayLogMax         = 10_000
)

// firstSince returns e if its family's replay was not reported within the last interval, and
// otherwise nil.
func (l *replayLog) firstSince(e *Event) *Event {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	key := string(e.Kind) + " " + e.FamilyID
	if last, ok := l.seen[key]; ok && now.Sub(last) < replayReportInterval {
		return nil
	}
	if len(l.seen) >= replayLogMax {
		for id, last := range l.seen {
			if now.Sub(last) >= replayReportInterval {
				delete(l.seen, id)
			}
		}
		if len(l.seen) >= replayLogMax {
			clear(l.seen)
		}
	}
	l.seen[key] = now
	return e
}
