package tests

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/repository"
)

// A replay detected inside a caller's transaction (Store.WithDB) is revoked durably, within a
// bounded time, and never by beginning, committing or rolling back anything on the caller's
// connection (I7). These tests play the caller: a request handler that rolls back on error.

func TestReplay_InACallerTransactionOnAConnNeverCommitsThatTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, next := b.replayed(t)
	conn, err := pgx.Connect(b.ctx, b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	store, err := repository.New(conn, repository.Config{Pepper: repository.NewKey(b.pepper), GraceWindow: repository.StrictRotation, Clock: b.clock.Now, Logger: slog.New(slog.NewJSONHandler(b.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := store.WithDB(tx)
	// The request's own write, which its rollback must undo.
	mine, err := s.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "caller-tx"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(mine.Token)
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay: %v", err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatalf("the caller's rollback: %v", err)
	}
	if _, err := b.store.Family(b.ctx, mine.FamilyID); !errors.Is(err, repository.ErrFamilyNotFound) {
		t.Fatalf("the caller rolled back, yet its own write is there (%v): the replay committed the caller's transaction", err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil {
		t.Fatal("the replay's revocation did not survive the caller's rollback")
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after the replay: %v", err)
	}
}

func TestReplay_InCallerTransactionsHoldingEveryPooledConnectionIsRevokedInBoundedTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 4
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = n
	pool, err := pgxpool.NewWithConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var events sync.Map
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper), GraceWindow: repository.StrictRotation, Clock: b.clock.Now, Logger: slog.New(slog.NewJSONHandler(b.logs, nil)),
		OnEvent: func(_ context.Context, e repository.Event) {
			if e.Kind == repository.EventReplayDetected {
				events.Store(e.FamilyID, e)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	var firsts [n]*repository.RefreshToken
	for i := range firsts {
		firsts[i], _ = b.replayed(t)
	}
	// Every connection of the pool is in a request transaction when the replays arrive.
	txs := make([]pgx.Tx, n)
	for i := range txs {
		if txs[i], err = pool.Begin(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(b.ctx, repository.ReplayRevocationTimeout+20*time.Second)
			defer cancel()
			start := time.Now()
			_, errs[i] = store.WithDB(txs[i]).Rotate(ctx, repository.RotateRequest{Token: firsts[i].Token.Reveal(), ClientID: "client-a"})
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i, tx := range txs {
		if err := tx.Rollback(b.ctx); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(errs[i], repository.ErrReplayDetected) || repository.ErrorCode(errs[i]) != "invalid_grant" {
			t.Errorf("replay %d: %v (%s) after %v, want ErrReplayDetected", i, errs[i], repository.ErrorCode(errs[i]), took[i])
		}
		if took[i] > repository.ReplayRevocationTimeout {
			t.Errorf("replay %d took %v, longer than the bound", i, took[i])
		}
		if f := b.family(t, firsts[i].FamilyID); f.RevokedAt == nil {
			t.Errorf("replay %d: family not revoked after the callers rolled back", i)
		}
		e, ok := events.Load(firsts[i].FamilyID)
		if !ok || !e.(repository.Event).FamilyRevoked {
			t.Errorf("replay %d: event %+v, want one reporting the committed revocation", i, e)
		}
	}
}

// hookedTx is a caller's transaction that runs a hook before each savepoint the store opens in it
// is rolled back, that is, after a refused rotation decided and before anything else happens.
type hookedTx struct {
	pgx.Tx
	beforeRollback func()
}

func (h hookedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	sp, err := h.Tx.Begin(ctx)
	return hookedSavepoint{Tx: sp, before: h.beforeRollback}, err
}

type hookedSavepoint struct {
	pgx.Tx
	before func()
}

func (h hookedSavepoint) Rollback(ctx context.Context) error {
	h.before()
	return h.Tx.Rollback(ctx)
}

func TestReplay_WhileAnotherTransactionHoldsTheFamilyIsCommittedOutsideTheCaller(t *testing.T) {
	t.Parallel()
	b := setup(t)
	log := &eventLog{}
	store, err := repository.New(b.pool, repository.Config{Pepper: repository.NewKey(b.pepper), GraceWindow: repository.StrictRotation, Clock: b.clock.Now, Logger: slog.New(slog.NewJSONHandler(b.logs, nil)),
		OnEvent: log.add})
	if err != nil {
		t.Fatal(err)
	}
	first, stolen := b.replayed(t) // the thief used the first token and holds its successor
	// The thief's rotation of its token runs in a slow transaction that takes the family's lock
	// the moment the victim's refused rotation lets go of it, and holds it for three seconds.
	thief := b.begin(t)
	thiefDone := make(chan error, 1)
	var once sync.Once
	hook := func() {
		once.Do(func() {
			go func() {
				_, err := store.WithDB(thief).Rotate(b.ctx, repository.RotateRequest{Token: stolen.Token.Reveal(), ClientID: "client-a"})
				if err == nil {
					time.Sleep(3 * time.Second)
					err = thief.Commit(b.ctx)
				}
				thiefDone <- err
			}()
			b.waitForLockWait(t, "RefreshTokenRotate")
		})
	}
	victim := b.begin(t)
	_, err = store.WithDB(hookedTx{Tx: victim, beforeRollback: hook}).Rotate(b.ctx,
		repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("the victim's replay: %v", err)
	}
	if err := victim.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-thiefDone; err != nil {
		t.Fatalf("the thief's rotation: %v", err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil {
		t.Fatal("the victim rolled back and the revocation went with it: the thief's chain lives on")
	}
	if events := log.all(); len(events) != 1 || !events[0].FamilyRevoked || events[0].InCallerTx {
		t.Fatalf("events %+v, want one replay reporting a committed revocation outside the caller", events)
	}
}

func TestReplay_OfAFamilyCreatedInTheCallersTransactionIsRevokedWhenItCommits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tx := b.begin(t)
	s := b.store.WithDB(tx)
	first, err := s.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	next, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(first.Token, next.Token)
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay: %v", err)
	}
	if err := tx.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil {
		t.Fatal("the caller committed the family and the replay, but the family is not revoked")
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after the committed replay: %v", err)
	}
}

func TestNew_OnACallerTransactionRevokesAReplayOutsideIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, _ := b.replayed(t)
	tx := b.begin(t)
	s, err := repository.New(tx, repository.Config{Pepper: repository.NewKey(b.pepper), GraceWindow: repository.StrictRotation, Clock: b.clock.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay: %v", err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil {
		t.Fatal("a store made by New on a transaction let the replay's revocation roll back with it")
	}
}

// strictDatabase sets the test database's default isolation level and returns a pool whose
// connections have it.
func strictDatabase(t *testing.T, b *bundle, level string) *pgxpool.Pool {
	t.Helper()
	if _, err := b.pool.Exec(b.ctx, fmt.Sprintf("ALTER DATABASE %s SET default_transaction_isolation = '%s'",
		pgx.Identifier{b.db.Name}.Sanitize(), level)); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(b.ctx, b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var got string
	if err := pool.QueryRow(b.ctx, "SHOW default_transaction_isolation").Scan(&got); err != nil || got != level {
		t.Fatalf("default isolation %q, %v; want %q", got, err, level)
	}
	return pool
}

func TestIsolation_AStricterDefaultStillRevokesEveryRacingReplay(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"repeatable read", "serializable"} {
		t.Run(level, func(t *testing.T) {
			t.Parallel()
			b := setup(t, setupOptions{realClock: true})
			pool := strictDatabase(t, b, level)
			store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper), GraceWindow: repository.StrictRotation, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			const trials, racers = 60, 4
			var replays int
			for i := range trials {
				tok, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "u"})
				if err != nil {
					t.Fatal(err)
				}
				b.remember(tok.Token)
				errs := race(racers, func(int) error {
					next, err := store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"})
					if err == nil {
						b.remember(next.Token)
					}
					return err
				})
				winners, losers, unexpected := countWinners(errs, repository.ErrReplayDetected)
				replays += losers
				for _, err := range unexpected {
					t.Fatalf("trial %d: %v (%s), want a winner or ErrReplayDetected", i, err, repository.ErrorCode(err))
				}
				if winners != 1 {
					t.Fatalf("trial %d: %d winners", i, winners)
				}
				if f := b.family(t, tok.FamilyID); f.RevokedAt == nil {
					t.Fatalf("trial %d: the racing replays left the family alive", i)
				}
			}
			if replays != trials*(racers-1) {
				t.Fatalf("%d replays, want %d", replays, trials*(racers-1))
			}
		})
	}
}

func TestWithDB_RefusesATransactionThatIsNotReadCommittedAndChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, _ := b.replayed(t)
	before := b.tableChecksum(t)
	for _, level := range []pgx.TxIsoLevel{pgx.RepeatableRead, pgx.Serializable} {
		tx, err := b.pool.BeginTx(b.ctx, pgx.TxOptions{IsoLevel: level})
		if err != nil {
			t.Fatal(err)
		}
		s := b.store.WithDB(tx)
		_, err1 := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
		_, err2 := s.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "u"})
		err3 := s.RevokeFamily(b.ctx, first.FamilyID, "x")
		for i, err := range []error{err1, err2, err3} {
			if !errors.Is(err, repository.ErrNotReadCommitted) {
				t.Errorf("%s, call %d: %v, want ErrNotReadCommitted", level, i+1, err)
			}
		}
		if err := tx.Commit(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("a refused call changed the tables")
	}
	// READ COMMITTED, named or by default, is accepted.
	tx, err := b.pool.BeginTx(b.ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := b.store.WithDB(tx).Family(b.ctx, first.FamilyID); err != nil {
		t.Fatal(err)
	}
}

func TestReplay_InATransactionHoldingTheFamilyJoinsItEvenBehindAQueuedRotation(t *testing.T) {
	t.Parallel()
	log := &eventLog{}
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.OnEvent = log.add }})
	first := b.issue(t)
	tx := b.begin(t)
	s := b.store.WithDB(tx)
	// The caller's transaction rotates, so it holds the family's lock ...
	next, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(next.Token)
	// ... and another session queues for it first. Later waiters, the store's revocation among
	// them, wait for that session, not for the caller.
	other, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	queued := make(chan error, 1)
	go func() {
		_, err := other.Exec(b.ctx, "SELECT 1 FROM oauth_family WHERE id = $1 FOR NO KEY UPDATE /* queued */", first.FamilyID)
		queued <- err
	}()
	// Whatever happens, the caller's transaction ends before the queued session's connection is
	// used again.
	var queuedErr error
	waited := false
	defer func() {
		_ = tx.Rollback(context.Background())
		if !waited {
			<-queued
		}
		_ = other.Rollback(context.Background())
	}()
	deadline := time.Now().Add(30 * time.Second)
	for b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND wait_event_type = 'Lock' AND query LIKE '%/* queued */%'`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the other session never queued for the family")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) ||
		repository.ErrorCode(err) != "invalid_grant" || strings.Contains(err.Error(), "revoke family on replay") {
		t.Fatalf("replay in the transaction holding the family: %v", err)
	}
	if took := time.Since(start); took > repository.ReplayRevocationTimeout/2 {
		t.Fatalf("the replay took %v: the revocation waited for its own caller", took)
	}
	if err := tx.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	queuedErr, waited = <-queued, true
	if queuedErr != nil {
		t.Fatal(queuedErr)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil {
		t.Fatal("the caller committed its replay, but the family is not revoked")
	}
	if events := log.all(); len(events) != 1 || !events[0].InCallerTx || events[0].FamilyRevoked {
		t.Fatalf("events %+v, want one replay made in the caller's transaction, not reported as committed", events)
	}
}

func TestRotate_ReplayInsideACallerTransactionSurvivesItsRollback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)
	next, err := b.rotate(first.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	tx := b.begin(t)
	_, err = b.store.WithDB(tx).Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay in a transaction: %v", err)
	}
	// The usual error handling: roll back.
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil || f.RevokedReason != repository.ReasonReplayDetected {
		t.Fatalf("the rollback undid the replay's revocation: %+v", f)
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after the replay: %v, want ErrFamilyRevoked", err)
	}
}

func TestRotate_ReplayInsideATransactionHoldingTheFamilyJoinsIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)
	tx := b.begin(t)
	s := b.store.WithDB(tx)
	// The transaction rotates, so it holds the family's row lock, and then replays.
	next, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay: %v", err)
	}
	if err := tx.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after a committed replay: %v, want ErrFamilyRevoked", err)
	}
}

func TestReplay_OfAnAlreadyRevokedFamilyIsReportedOnceAMinute(t *testing.T) {
	t.Parallel()
	var replays atomic.Int64
	b := setup(t, setupOptions{configure: func(c *repository.Config) {
		c.OnEvent = func(_ context.Context, e repository.Event) {
			if e.Kind == repository.EventReplayDetected {
				replays.Add(1)
			}
		}
	}})
	first, _ := b.replayed(t)
	for range 20 {
		if _, err := b.rotate(first.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
			t.Fatal(err)
		}
	}
	// The first replay revokes the family; the next reports the revoked family's replay once;
	// the other 18 are refused the same way, in silence.
	if n := replays.Load(); n != 2 {
		t.Fatalf("%d replay events for 20 presentations of one used token, want 2", n)
	}
	if n := strings.Count(b.logs.String(), `"event":"replay_detected"`); n != 2 {
		t.Fatalf("%d replay warnings logged, want 2", n)
	}
}

func TestStore_ComposesWithCallerTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)

	// Rolled back: the rotation never happened.
	tx := b.begin(t)
	if _, err := b.store.WithDB(tx).Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID); err != nil {
		t.Fatalf("token after a rolled-back rotation: %v", err)
	}

	// Committed: the rotation and the caller's own write land together; a refused rotation inside
	// the transaction leaves it usable.
	tx2 := b.begin(t)
	s := b.store.WithDB(tx2)
	next, err := s.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: next.Token.Reveal(), ClientID: "client-b"}); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("wrong client inside a transaction: %v", err)
	}
	if _, err := tx2.Exec(b.ctx, "CREATE TABLE audit (note text)"); err != nil {
		t.Fatalf("the caller's transaction is no longer usable: %v", err)
	}
	if err := tx2.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Peek(b.ctx, next.Token.Reveal(), next.ClientID); err != nil {
		t.Fatalf("successor after commit: %v", err)
	}
}

func TestExchange_ReplayInsideACallerTransactionSurvivesItsRollback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	got, err := b.exchange(f)
	if err != nil {
		t.Fatal(err)
	}
	tx := b.begin(t)
	_, err = b.store.WithDB(tx).Exchange(b.ctx, repository.ExchangeRequest{Code: f.code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: f.verifier})
	if !errors.Is(err, repository.ErrCodeReplayDetected) {
		t.Fatal(err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if fam := b.family(t, got.FamilyID); fam.RevokedAt == nil {
		t.Fatal("the rollback undid the code replay's revocation")
	}
}
