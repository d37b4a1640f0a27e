package tests

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

// Fault injection under load. Eight workers rotate their families' tokens, exchange codes, create
// short-lived credentials and run cleanup, while backends are terminated, contexts cancelled or the
// server crashes and restarts. A worker whose rotation fails for a reason other than a verdict on
// the token (ErrorCode "server_error") does not know whether it committed, and does what a client
// whose response was lost does: it presents the same token again, which the grace window accepts
// in either case. Afterwards the database must agree with everything the callers were told.

// faultFamily is a family a worker holds: the last token the store handed it.
type faultFamily struct {
	id        string
	token     repository.Secret
	rotations int // rotations the store acknowledged
}

type faultCounts struct {
	rotations, rotateFaults, exchanges, exchangeFaults, cleanups, cleanupFaults, other, otherFaults atomic.Int64
}

type faultRun struct {
	b     *bundle
	store *repository.Store
	// cancelOneIn, when set, cancels one operation's context in that many, after a delay drawn
	// from delay: a cancellation that comes before the operation's end hits it.
	cancelOneIn int
	delay       *faultDelay
	counts      faultCounts
	graces      atomic.Int64 // grace reuses the store reported

	mu   sync.Mutex
	held []*faultFamily
}

// newFaultRun gives the workload a store on b's pool with the longest grace window, so that a
// rotation whose outcome a fault hid can always be retried.
func newFaultRun(t *testing.T, b *bundle, cancelOneIn int) *faultRun {
	r := &faultRun{b: b, cancelOneIn: cancelOneIn}
	store, err := repository.New(b.pool, repository.Config{
		Pepper: repository.NewKey(b.pepper), GraceWindow: repository.MaxGraceWindow, GraceMaxReuses: repository.MaxGraceReuses,
		Logger: slog.New(slog.NewJSONHandler(b.logs, nil)),
		OnEvent: func(_ context.Context, e repository.Event) {
			if e.Kind == repository.EventGraceReuse {
				r.graces.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.store = store
	return r
}

// calibrate measures the median latency of a rotation on this server, on a family of its own, and
// times the cancellations from it.
func (r *faultRun) calibrate(t *testing.T) time.Duration {
	t.Helper()
	tok, err := r.store.Issue(r.b.ctx, repository.IssueRequest{ClientID: "client-c", UserID: "calibration"})
	if err != nil {
		t.Fatal(err)
	}
	r.b.remember(tok.Token)
	d := median(t, 21, func() error {
		next, err := r.store.Rotate(r.b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-c"})
		if err == nil {
			r.b.remember(next.Token)
			tok = next
		}
		return err
	})
	r.delay = newFaultDelay(d)
	return d
}

// acked is the number of operations the store has acknowledged so far.
func (r *faultRun) acked() int64 {
	c := &r.counts
	return c.rotations.Load() + c.exchanges.Load() + c.cleanups.Load() + c.other.Load()
}

// waitProgress waits until the store has acknowledged n more operations than at its call, and
// reports whether it did before ctx ended or limit passed.
func (r *faultRun) waitProgress(ctx context.Context, n int64, limit time.Duration) bool {
	target := r.acked() + n
	deadline := time.Now().Add(limit)
	for r.acked() < target {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// isFault reports whether err is not a verdict on the request but one of the failures the tests
// inject: a cancelled call, a terminated backend, a server shutting down or restarting, a broken
// or refused connection. Any other error, a bug's constraint violation or SQL error among them,
// is not a fault and fails the test.
func isFault(err error) bool {
	if repository.ErrorCode(err) != "server_error" {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57014", // query_canceled: a cancelled context
			"57P01", "57P02", "57P03": // admin_shutdown, crash_shutdown, cannot_connect_now
			return true
		}
		return strings.HasPrefix(pgErr.Code, "08") // connection_exception
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.As(err, &netErr) || errors.As(err, &connectErr) || pgconn.SafeToRetry(err)
}

// opContext is the context of one operation: the run's, cancelled after a delay from r.delay in
// one operation of r.cancelOneIn. done ends it with the operation's error, and tells r.delay
// whether an armed cancellation hit.
func (r *faultRun) opContext(ctx context.Context) (context.Context, func(error)) {
	ctx, cancel := context.WithCancel(ctx)
	if r.cancelOneIn == 0 || rand.IntN(r.cancelOneIn) != 0 {
		return ctx, func(error) { cancel() }
	}
	timer := time.AfterFunc(r.delay.next(), cancel)
	return ctx, func(err error) {
		if timer.Stop() {
			r.delay.observe(false) // the operation ended first
		} else {
			r.delay.observe(err != nil)
		}
		cancel()
	}
}

// run runs the workers until ctx is done. A verdict the workload does not expect fails the test.
func (r *faultRun) run(t *testing.T, ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var own []*faultFamily
			for ctx.Err() == nil {
				if len(own) < 4 {
					f, err := r.issue(ctx)
					if err != nil {
						t.Errorf("worker %d: %v", w, err)
						return
					}
					if f != nil {
						own = append(own, f)
					}
					continue
				}
				var err error
				switch op := rand.IntN(10); {
				case op < 6:
					err = r.rotate(t, ctx, own[rand.IntN(len(own))])
				case op < 8:
					var f *faultFamily
					if f, err = r.exchange(t, ctx); f != nil && len(own) < 12 {
						own = append(own, f)
					}
				case op < 9:
					err = r.shortLived(ctx)
				default:
					err = r.cleanup(ctx)
				}
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
			}
			r.mu.Lock()
			r.held = append(r.held, own...)
			r.mu.Unlock()
		})
	}
	wg.Wait()
}

// issue starts a family; a fault leaves nothing the worker holds, and it tries again later.
func (r *faultRun) issue(ctx context.Context) (*faultFamily, error) {
	opCtx, done := r.opContext(ctx)
	tok, err := r.store.Issue(opCtx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"openid"}})
	done(err)
	switch {
	case err == nil:
	case isFault(err):
		r.counts.otherFaults.Add(1)
		backoff(ctx)
		return nil, nil
	default:
		return nil, fmt.Errorf("issue: %w", err)
	}
	r.b.remember(tok.Token)
	r.counts.other.Add(1)
	return &faultFamily{id: tok.FamilyID, token: tok.Token}, nil
}

// rotate rotates f's token, presenting the same token again after every fault until the store
// answers. Any verdict but success is an error: the token was the last one acknowledged.
func (r *faultRun) rotate(t *testing.T, ctx context.Context, f *faultFamily) error {
	for attempt := 0; ; attempt++ {
		var next *repository.RefreshToken
		var err error
		if attempt == 0 {
			opCtx, done := r.opContext(ctx)
			next, err = r.store.Rotate(opCtx, repository.RotateRequest{Token: f.token.Reveal(), ClientID: "client-a"})
			done(err)
		} else {
			// A retry is not cancelled at random and outlives the run, so that the family's last
			// token is known when the run ends.
			opCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			next, err = r.store.Rotate(opCtx, repository.RotateRequest{Token: f.token.Reveal(), ClientID: "client-a"})
			cancel()
		}
		if err == nil {
			r.b.remember(next.Token)
			f.token = next.Token
			f.rotations++
			r.counts.rotations.Add(1)
			return nil
		}
		if !isFault(err) {
			return fmt.Errorf("rotation of family %s after %d faults: %w", f.id, attempt, err)
		}
		r.counts.rotateFaults.Add(1)
		if attempt > 2000 {
			return fmt.Errorf("rotation of family %s: still failing after %d attempts: %w", f.id, attempt, err)
		}
		time.Sleep(time.Duration(5+rand.IntN(10)) * time.Millisecond)
	}
}

// exchange creates a code and exchanges it once. A fault during the exchange leaves its outcome
// unknown to the worker, which does not present the code again: that would be a replay.
func (r *faultRun) exchange(t *testing.T, ctx context.Context) (*faultFamily, error) {
	verifier, challenge := pkce(t)
	code, err := r.store.CreateCode(ctx, repository.CodeRequest{
		ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI, Scope: []string{"openid"},
		CodeChallenge: challenge, CodeChallengeMethod: "S256",
	})
	if err != nil {
		if !isFault(err) {
			return nil, fmt.Errorf("create code: %w", err)
		}
		r.counts.otherFaults.Add(1)
		backoff(ctx)
		return nil, nil
	}
	r.b.remember(code.Code)
	opCtx, done := r.opContext(ctx)
	got, err := r.store.Exchange(opCtx, repository.ExchangeRequest{Code: code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: verifier})
	done(err)
	if err != nil {
		if !isFault(err) {
			return nil, fmt.Errorf("exchange: %w", err)
		}
		r.counts.exchangeFaults.Add(1)
		backoff(ctx)
		return nil, nil
	}
	r.b.remember(got.Token)
	r.counts.exchanges.Add(1)
	return &faultFamily{id: got.FamilyID, token: got.Token}, nil
}

// shortLived creates a state and a family that expire within a second, for cleanup to remove.
func (r *faultRun) shortLived(ctx context.Context) error {
	opCtx, done := r.opContext(ctx)
	st, err := r.store.CreateState(opCtx, repository.StateRequest{ClientID: "client-a", RedirectURI: redirectURI, TTL: time.Second})
	if err == nil {
		r.b.remember(st.State)
		var tok *repository.RefreshToken
		tok, err = r.store.Issue(opCtx, repository.IssueRequest{ClientID: "client-b", UserID: "user-2", TTL: time.Second})
		if err == nil {
			r.b.remember(tok.Token)
		}
	}
	done(err)
	switch {
	case err == nil:
		r.counts.other.Add(1)
	case isFault(err):
		r.counts.otherFaults.Add(1)
		backoff(ctx)
	default:
		return fmt.Errorf("short-lived state or family: %w", err)
	}
	return nil
}

func (r *faultRun) cleanup(ctx context.Context) error {
	opCtx, done := r.opContext(ctx)
	_, err := r.store.Cleanup(opCtx, repository.CleanupOptions{BatchSize: 20, Limit: 200})
	done(err)
	switch {
	case err == nil:
		r.counts.cleanups.Add(1)
	case isFault(err):
		r.counts.cleanupFaults.Add(1)
		backoff(ctx)
	default:
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}

func backoff(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(time.Duration(5+rand.IntN(10)) * time.Millisecond):
	}
}

// check compares the database with what the workers were told, after the faults have stopped,
// through the same store and pool: the package recovers without a restart of the process.
func (r *faultRun) check(t *testing.T) {
	t.Helper()
	b := r.b
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	// An idle connection whose backend died stays in the pool until it is next used or the pool's
	// periodic health check finds it; do that check now, so that the checks below see no fault.
	for _, c := range b.pool.AcquireAllIdle(ctx) {
		if err := c.Ping(ctx); err != nil {
			_ = c.Conn().Close(ctx) // a closed connection is destroyed on release
		}
		c.Release()
	}
	// Every acknowledged rotation and exchange is durable: the last token each worker was handed
	// is its family's live token and rotates now.
	acked := map[string]int{}
	for _, f := range r.held {
		acked[f.id] = f.rotations
		next, err := r.store.Rotate(ctx, repository.RotateRequest{Token: f.token.Reveal(), ClientID: "client-a"})
		if err != nil {
			t.Fatalf("family %s: its last acknowledged token (after %d acknowledged rotations) does not rotate after the faults: %v", f.id, f.rotations, err)
		}
		b.remember(next.Token)
	}
	// No fault was taken for a replay.
	if n := b.count(t, "SELECT count(*) FROM oauth_family WHERE revoked_at IS NOT NULL"); n != 0 {
		t.Fatalf("%d families revoked, though no token was replayed", n)
	}
	// Every family holds exactly one unconsumed token (I1, and no family lost its live token).
	if n := b.count(t, `SELECT count(*) FROM oauth_family f WHERE (SELECT count(*) FROM oauth_refresh_token t
		WHERE t.family_id = f.id AND t.consumed_at IS NULL) <> 1`); n != 0 {
		t.Fatalf("%d families do not hold exactly one unconsumed token", n)
	}
	// I1, I2, and no token or code without what it came from or produced.
	b.checkInvariants(t, "after the faults")
	// The rotation count of every held family covers its acknowledged rotations.
	for id, n := range acked {
		if fam := b.family(t, id); fam.RotationCount < n+1 {
			t.Fatalf("family %s counts %d rotations; %d were acknowledged, then one more", id, fam.RotationCount, n)
		}
	}
	// A family that came from a code the worker was not told about came from an exchange a fault
	// hid.
	exchanged := b.count(t, "SELECT count(*) FROM oauth_authorization_code WHERE consumed_at IS NOT NULL")
	if acknowledged := int(r.counts.exchanges.Load()); exchanged < acknowledged || exchanged > acknowledged+int(r.counts.exchangeFaults.Load()) {
		t.Fatalf("%d codes consumed; %d exchanges acknowledged and %d hidden by faults", exchanged, acknowledged, r.counts.exchangeFaults.Load())
	}
}

func (r *faultRun) summary() string {
	c := &r.counts
	return fmt.Sprintf("rotations %d acknowledged / %d faults (%d grace reuses); exchanges %d acknowledged / %d faults; "+
		"cleanups %d / %d faults; issues and short-lived credentials %d / %d faults; %d families held",
		c.rotations.Load(), c.rotateFaults.Load(), r.graces.Load(), c.exchanges.Load(), c.exchangeFaults.Load(),
		c.cleanups.Load(), c.cleanupFaults.Load(), c.other.Load(), c.otherFaults.Load(), len(r.held))
}

// faultQuota is what a fault run must reach before it may stop, and what it is held to: enough
// acknowledged rotations and exchanges for "no acknowledged write lost" to mean something, and
// enough of them hit by a fault for "a fault leaves no partial state" to mean something.
func (r *faultRun) faultQuota(rotations, rotateFaults, exchanges, exchangeFaults int64) quota {
	var q quota
	q.need("rotations acknowledged", rotations, r.counts.rotations.Load)
	q.need("rotations hit by a fault", rotateFaults, r.counts.rotateFaults.Load)
	q.need("exchanges acknowledged", exchanges, r.counts.exchanges.Load)
	q.need("exchanges hit by a fault", exchangeFaults, r.counts.exchangeFaults.Load)
	return q
}

func TestFault_TerminatedBackendsAndCancelledCallsUnderLoadLoseNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	r := newFaultRun(t, b, 8)
	// The faults are timed from this server's latencies: a cancellation after a delay around one
	// rotation's latency, adapted as the run goes; a termination after a few acknowledged
	// operations, so that the workers always get work done between two faults, however long a
	// new connection takes.
	opLatency := r.calibrate(t)
	connLatency := connectLatency(t, b.ctx, b.db.URL)

	killer, err := pgx.Connect(b.ctx, b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer killer.Close(context.Background())
	ctx, stop := context.WithCancel(b.ctx)
	defer stop()
	var terminated atomic.Int64
	q := r.faultQuota(400, 40, 60, 12)
	q.need("backends terminated", 40, terminated.Load)
	go q.runUntil(ctx, 2*time.Second, 2*time.Minute, stop)
	killed := make(chan error, 1)
	go func() {
		defer close(killed)
		for {
			if !r.waitProgress(ctx, 1+rand.Int64N(8), time.Minute) {
				return
			}
			time.Sleep(time.Duration(rand.Int64N(int64(opLatency) + 1)))
			var n int64
			err := killer.QueryRow(b.ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (
				SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
					AND backend_type = 'client backend' ORDER BY random() LIMIT 1) x`).Scan(&n)
			if err != nil {
				killed <- err
				return
			}
			terminated.Add(n)
		}
	}()
	start := time.Now()
	r.run(t, ctx, 8)
	if err := <-killed; err != nil {
		t.Fatalf("terminating backends: %v", err)
	}
	if t.Failed() {
		return
	}
	r.check(t)
	t.Logf("rotation %v, new connection %v, cancellation delay around %v at the end; in %v: %d backends terminated; %s",
		opLatency.Round(time.Microsecond), connLatency.Round(time.Microsecond), r.delay, time.Since(start).Round(time.Millisecond),
		terminated.Load(), r.summary())
	q.check(t, "terminations and cancellations")
}

func TestFault_ServerCrashesAndRestartsUnderLoadLoseNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	// The server this test crashes is its own, so that the other tests keep theirs. Commits wait
	// for their WAL to be written (synchronous_commit=on), which is what makes an acknowledged
	// commit survive a crash of the server process.
	c, err := pgtemp.Start(t.Context(), pgtemp.Options{Settings: map[string]string{"synchronous_commit": "on", "max_connections": "50"}})
	if errors.Is(err, pgtemp.ErrNoServerBinaries) {
		t.Skipf("crashing a server needs one of the test's own, from the PostgreSQL server binaries: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	b := &bundle{ctx: ctx, pool: pool, logs: &syncBuffer{}, pepper: make([]byte, 32)}
	_, _ = crand.Read(b.pepper)
	t.Cleanup(func() { b.checkSecretHygiene(t) })
	r := newFaultRun(t, b, 0)
	b.store = r.store

	// Each crash comes after the workload has made progress since the last one, so that it always
	// lands on a workload that recovered, however long the restart took; the workload then runs on
	// after the last one.
	const crashes = 4
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	restarted := atomic.Int64{}
	crashed := make(chan error, 1)
	go func() {
		defer stop()
		for range crashes {
			if !r.waitProgress(runCtx, 150+rand.Int64N(150), time.Minute) {
				crashed <- fmt.Errorf("no progress after %d crashes (%s)", restarted.Load(), r.summary())
				return
			}
			if err := c.Restart(ctx, true); err != nil {
				crashed <- err
				return
			}
			restarted.Add(1)
		}
		if !r.waitProgress(runCtx, 150, time.Minute) {
			crashed <- fmt.Errorf("no progress after the last crash (%s)", r.summary())
			return
		}
		crashed <- nil
	}()
	r.run(t, runCtx, 8)
	if err := <-crashed; err != nil {
		t.Fatalf("crash and restart: %v", err)
	}
	if t.Failed() {
		return
	}
	r.check(t)
	t.Logf("%d server crashes and restarts; %s", restarted.Load(), r.summary())
	q := r.faultQuota(300, crashes, 20, 0)
	q.need("operations hit by a crash", 2*crashes, func() int64 {
		c := &r.counts
		return c.rotateFaults.Load() + c.exchangeFaults.Load() + c.cleanupFaults.Load() + c.otherFaults.Load()
	})
	q.check(t, "crashes")
}

func TestExchange_AFaultMidExchangeNeverLeavesACodeWithoutItsFamily(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	// The exchanges run on a pool of one connection whose backend the test kills.
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	faultPool, err := pgxpool.NewWithConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer faultPool.Close()
	faulty, err := repository.New(faultPool, repository.Config{Pepper: repository.NewKey(b.pepper), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// The fault comes after a delay around the exchange's latency on this server, adapted after
	// every trial, so that about half the exchanges succeed and half are hit, on a fast server or
	// a slow one; the trials go on until both outcomes are there in volume.
	exchange := func(ctx context.Context, f codeFixture) error {
		_, err := faulty.Exchange(ctx, repository.ExchangeRequest{Code: f.code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: f.verifier})
		return err
	}
	latency := median(t, 11, func() error { return exchange(b.ctx, b.createCode(t)) })
	delay := newFaultDelay(latency)
	var succeeded, cancelled, terminated, trials int64
	var q quota
	q.need("exchanges that succeeded", 60, func() int64 { return succeeded })
	q.need("exchanges hit by a cancellation", 30, func() int64 { return cancelled })
	q.need("exchanges hit by a termination", 30, func() int64 { return terminated })
	for i := 0; (i < 300 || !q.met()) && i < 3000; i++ {
		f := b.createCode(t)
		var pid int
		if err := faultPool.QueryRow(b.ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(b.ctx)
		done := make(chan error, 1)
		go func() { done <- exchange(ctx, f) }()
		time.Sleep(delay.next())
		if i%2 == 0 {
			cancel()
		} else if _, err := b.pool.Exec(b.ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		err := <-done
		cancel()
		delay.observe(err != nil)
		trials++
		switch {
		case err == nil:
			succeeded++
		case !isFault(err):
			t.Fatalf("trial %d: the exchange failed other than by the injected fault: %v", i, err)
		case i%2 == 0:
			cancelled++
		default:
			terminated++
		}
		faultPool.Reset() // the next trial starts on a live connection
	}
	// Whatever happened, no code is consumed without the family it produced and that family's
	// first token, and no family exists without the code that produced it.
	if n := b.count(t, `SELECT count(*) FROM oauth_authorization_code c
		WHERE c.consumed_at IS NOT NULL AND NOT EXISTS (
			SELECT 1 FROM oauth_family f JOIN oauth_refresh_token t ON t.family_id = f.id WHERE f.id = c.family_id)`); n != 0 {
		t.Fatalf("%d consumed codes without their family and token", n)
	}
	if n := b.count(t, `SELECT count(*) FROM oauth_family f
		WHERE NOT EXISTS (SELECT 1 FROM oauth_authorization_code c WHERE c.family_id = f.id)`); n != 0 {
		t.Fatalf("%d families without their code", n)
	}
	consumed := b.count(t, "SELECT count(*) FROM oauth_authorization_code WHERE consumed_at IS NOT NULL")
	if int64(consumed) < succeeded {
		t.Fatalf("%d exchanges reported success but only %d codes are consumed", succeeded, consumed)
	}
	t.Logf("exchange %v; %d exchanges: %d succeeded, %d cancelled, %d terminated; %d codes consumed; fault delay around %v at the end",
		latency.Round(time.Microsecond), trials, succeeded, cancelled, terminated, consumed, delay)
	q.check(t, "exchanges under faults")
}
