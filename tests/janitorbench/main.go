// Command janitorbench measures what the janitor costs live traffic: it fills the tables with
// expired families (1,000,000 expired refresh tokens by default), then measures refresh-token
// rotation latency at 8 workers without the janitor, while the janitor deletes the backlog, and
// without it again, all on one cluster in one run, and prints the janitor's rows/s and the
// rotation p50/p99 in each phase with their ratios.
//
//	cd tests && go run ./janitorbench [--tokens 1000000] [--workers 8] [--batch-size 1000] [--rate N]
//
// By default each worker rotates as fast as it can, which saturates a small machine: any extra
// work then shows in the tail. --rate offers a fixed total rate instead, spread over the workers,
// and measures each rotation from the moment it was due, so that waiting behind a slow one counts.
//
// It runs on a throwaway PostgreSQL started from the server binaries (internal/pgtemp), or on
// $DATABASE_URL, which it migrates; there it deletes only what is expired.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/latency"
	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

// options are the benchmark's flags.
type options struct {
	tokens, workers, batch int
	pause                  time.Duration
	autovacuum             bool
	baseline, maxJanitor   time.Duration
	rate                   float64
}

func main() {
	var o options
	flag.IntVar(&o.tokens, "tokens", 1_000_000, "expired refresh tokens to fill (two per expired family)")
	flag.IntVar(&o.workers, "workers", 8, "concurrent rotating workers")
	flag.IntVar(&o.batch, "batch-size", repository.DefaultCleanupBatchSize, "janitor batch size (tokens of whole families per statement)")
	flag.DurationVar(&o.pause, "pause", 0, "janitor pause between batches")
	flag.BoolVar(&o.autovacuum, "autovacuum", true, "leave autovacuum on in the throwaway cluster (off: to see its share of the cost)")
	flag.DurationVar(&o.baseline, "baseline", 15*time.Second, "length of each phase without the janitor")
	flag.DurationVar(&o.maxJanitor, "max-janitor", 10*time.Minute, "stop the janitor phase after this long")
	flag.Float64Var(&o.rate, "rate", 0, "rotations per second offered in total (0: each worker as fast as it can)")
	flag.Parse()
	if o.rate < 0 {
		fmt.Fprintln(os.Stderr, "janitorbench: --rate must not be negative")
		os.Exit(2)
	}
	if err := run(o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "janitorbench:", err)
		os.Exit(1)
	}
}

// run fills the expired backlog, then measures rotations without the janitor, while it runs, and
// without it again, and reports the three.
func run(o options, out io.Writer) error {
	ctx := context.Background()
	store, pool, closeDB, err := open(ctx, o)
	if err != nil {
		return err
	}
	defer closeDB()
	fmt.Fprintf(out, "filling %d expired refresh tokens (%d expired families)…\n", o.tokens, o.tokens/2)
	began := time.Now()
	if err := fillExpired(ctx, pool, o.tokens/2); err != nil {
		return err
	}
	fmt.Fprintf(out, "filled in %s\n", time.Since(began).Round(time.Millisecond))
	r, err := newRotator(ctx, store, o)
	if err != nil {
		return err
	}
	// Warm up, then: without the janitor, with it, without it again.
	if _, err := r.timed(10 * time.Second); err != nil {
		return err
	}
	before, err := r.timed(o.baseline)
	if err != nil {
		return err
	}
	j, err := r.whileJanitorRuns(ctx, o)
	if err != nil {
		return err
	}
	after, err := r.timed(o.baseline)
	if err != nil {
		return err
	}
	report(out, o, before, after, j)
	return nil
}

// open connects to DATABASE_URL, or starts a throwaway cluster, and returns a migrated store.
func open(ctx context.Context, o options) (*repository.Store, *pgxpool.Pool, func(), error) {
	url := os.Getenv("DATABASE_URL")
	stop := func() {}
	if url == "" {
		settings := map[string]string{"shared_buffers": "512MB"}
		if !o.autovacuum {
			settings["autovacuum"] = "off"
		}
		c, err := pgtemp.Start(ctx, pgtemp.Options{Settings: settings})
		if err != nil {
			return nil, nil, nil, err
		}
		stop, url = func() { _ = c.Stop() }, c.URL("postgres")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err == nil {
		cfg.MaxConns = int32(o.workers + 2)
	}
	var pool *pgxpool.Pool
	if err == nil {
		pool, err = pgxpool.NewWithConfig(ctx, cfg)
	}
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	closeDB := func() { pool.Close(); stop() }
	pepper := make([]byte, 32)
	_, _ = rand.Read(pepper)
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(pepper), Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		err = schema.Migrate(ctx, pool)
	}
	if err != nil {
		closeDB()
		return nil, nil, nil, err
	}
	return store, pool, closeDB, nil
}

// rotator keeps each worker's current tokens, one per family, and rotates them.
type rotator struct {
	ctx     context.Context
	store   *repository.Store
	workers int
	rate    float64
	live    [][]string
}

func newRotator(ctx context.Context, store *repository.Store, o options) (*rotator, error) {
	r := &rotator{ctx: ctx, store: store, workers: o.workers, rate: o.rate, live: make([][]string, o.workers)}
	for w := range r.live {
		for range 64 {
			t, err := store.Issue(ctx, repository.IssueRequest{ClientID: "bench", UserID: fmt.Sprint("user-", w)})
			if err != nil {
				return nil, err
			}
			r.live[w] = append(r.live[w], t.Token.Reveal())
		}
	}
	return r, nil
}

// rotateFor rotates on every worker until stop is closed and returns the latencies. At a rate,
// a rotation's latency runs from when it was due, so that a stall counts for every rotation it
// delayed.
func (r *rotator) rotateFor(stop <-chan struct{}) ([]time.Duration, error) {
	var (
		mu   sync.Mutex
		all  []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	var interval time.Duration
	if r.rate > 0 {
		interval = time.Duration(float64(r.workers) / r.rate * float64(time.Second))
	}
	for w := range r.workers {
		wg.Go(func() {
			lat, err := r.worker(w, interval, stop)
			mu.Lock()
			defer mu.Unlock()
			all = append(all, lat...)
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return all, nil
}

func (r *rotator) worker(w int, interval time.Duration, stop <-chan struct{}) ([]time.Duration, error) {
	var lat []time.Duration
	due := time.Now().Add(time.Duration(w) * interval / time.Duration(r.workers))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return lat, nil
		default:
		}
		k := i % len(r.live[w])
		t0 := time.Now()
		if interval > 0 {
			time.Sleep(time.Until(due))
			t0, due = due, due.Add(interval)
		}
		next, err := r.store.Rotate(r.ctx, repository.RotateRequest{Token: r.live[w][k], ClientID: "bench"})
		if err != nil {
			return lat, err
		}
		lat = append(lat, time.Since(t0))
		r.live[w][k] = next.Token.Reveal()
	}
}

func (r *rotator) timed(d time.Duration) ([]time.Duration, error) {
	stop := make(chan struct{})
	time.AfterFunc(d, func() { close(stop) })
	return r.rotateFor(stop)
}

// janitorPhase is what happened while the janitor ran.
type janitorPhase struct {
	lat     []time.Duration
	res     repository.CleanupResult
	took    time.Duration
	stopped string
}

// whileJanitorRuns rotates while the janitor deletes the backlog, at most o.maxJanitor.
func (r *rotator) whileJanitorRuns(ctx context.Context, o options) (janitorPhase, error) {
	var (
		j      janitorPhase
		rotErr error
		stop   = make(chan struct{})
		done   = make(chan struct{})
	)
	go func() {
		j.lat, rotErr = r.rotateFor(stop)
		close(done)
	}()
	jctx, cancel := context.WithTimeout(ctx, o.maxJanitor)
	start := time.Now()
	res, err := r.store.Cleanup(jctx, repository.CleanupOptions{BatchSize: o.batch, Pause: o.pause})
	j.res, j.took = res, time.Since(start)
	cancel()
	close(stop)
	<-done
	if err != nil && errors.Is(err, context.DeadlineExceeded) && errors.Is(jctx.Err(), context.DeadlineExceeded) {
		j.stopped, err = fmt.Sprintf(" (stopped by --max-janitor %s)", o.maxJanitor), nil
	}
	if err != nil {
		return j, fmt.Errorf("janitor: %w", err)
	}
	return j, rotErr
}

func report(out io.Writer, o options, before, after []time.Duration, j janitorPhase) {
	rows := j.res.Families + j.res.RefreshTokens
	fmt.Fprintf(out, "\njanitor: deleted %d families and %d refresh tokens (%d rows) in %d batches of at most %d tokens (pause %s), %s%s: %.0f rows/s\n",
		j.res.Families, j.res.RefreshTokens, rows, j.res.Batches, o.batch, o.pause, j.took.Round(time.Millisecond), j.stopped, float64(rows)/j.took.Seconds())
	offered := "as fast as they can"
	if o.rate > 0 {
		offered = fmt.Sprintf("offered %.0f/s in total, latency from when each was due", o.rate)
	}
	fmt.Fprintf(out, "\nrotation at %d workers (%s)\n", o.workers, offered)
	fmt.Fprintf(out, "                            ops      ops/s    p50        p99\n")
	quiet := latency.Summarize(slices.Concat(before, after))
	during := latency.Summarize(j.lat)
	for _, row := range []struct {
		name string
		sum  latency.Summary
		took time.Duration
	}{
		{"without janitor (before)", latency.Summarize(before), o.baseline},
		{"while janitor runs", during, j.took},
		{"without janitor (after)", latency.Summarize(after), o.baseline},
		{"without janitor (both)", quiet, 2 * o.baseline},
	} {
		fmt.Fprintf(out, "%-26s %8d %9.0f   %-10s %-10s\n", row.name, row.sum.N, float64(row.sum.N)/row.took.Seconds(),
			row.sum.P50.Round(time.Microsecond), row.sum.P99.Round(time.Microsecond))
	}
	fmt.Fprintf(out, "\nratio while janitor runs / without: p50 %.2f, p99 %.2f (target: p99 below 1.20)\n",
		float64(during.P50)/float64(quiet.P50), float64(during.P99)/float64(quiet.P99))
}

// fillExpired inserts families whose tokens expired two days ago, each with a consumed token (a
// tombstone) and its expired successor (the family's live token), in chunks.
func fillExpired(ctx context.Context, pool *pgxpool.Pool, families int) error {
	const chunk = 50_000
	for from := 0; from < families; from += chunk {
		n := min(chunk, families-from)
		_, err := pool.Exec(ctx, `
			WITH f AS (
				INSERT INTO oauth_family (client_id, user_id, scope, created_at, last_rotated_at, rotation_count, idle_expires_at,
					token_digest, token_pepper_id, token_scope, parent_digest)
				SELECT 'expired', 'user-' || g, '{openid}', now() - interval '3 days', now() - interval '3 days' + interval '1 hour',
					1, now() - interval '2 days',
					sha256(convert_to(g::text || 'c', 'UTF8')), 'default', '{openid}', sha256(convert_to(g::text || 'p', 'UTF8'))
				FROM generate_series($1::int, $1::int + $2::int - 1) g
				RETURNING id, parent_digest
			)
			INSERT INTO oauth_refresh_tombstone (family_id, digest, pepper_id, scope, created_at, expires_at, consumed_at)
			SELECT id, parent_digest, 'default', '{openid}', now() - interval '3 days',
				now() - interval '2 days' - interval '1 hour', now() - interval '3 days' + interval '1 hour'
			FROM f`, from, n)
		if err != nil {
			return err
		}
	}
	// Settle what the fill left to do (visibility map, statistics, dirty buffers), so that it
	// does not weigh on the first phase only.
	for _, stmt := range []string{"VACUUM ANALYZE oauth_family, oauth_refresh_tombstone", "CHECKPOINT"} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}
