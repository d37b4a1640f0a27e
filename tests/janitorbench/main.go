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

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

func main() {
	tokens := flag.Int("tokens", 1_000_000, "expired refresh tokens to fill (two per expired family)")
	workers := flag.Int("workers", 8, "concurrent rotating workers")
	batch := flag.Int("batch-size", repository.DefaultCleanupBatchSize, "janitor batch size (tokens of whole families per statement)")
	pause := flag.Duration("pause", 0, "janitor pause between batches")
	autovacuum := flag.Bool("autovacuum", true, "leave autovacuum on in the throwaway cluster (off: to see its share of the cost)")
	baseline := flag.Duration("baseline", 15*time.Second, "length of each phase without the janitor")
	maxJanitor := flag.Duration("max-janitor", 10*time.Minute, "stop the janitor phase after this long")
	rate := flag.Float64("rate", 0, "rotations per second offered in total (0: each worker as fast as it can)")
	flag.Parse()
	if *rate < 0 {
		fmt.Fprintln(os.Stderr, "janitorbench: --rate must not be negative")
		os.Exit(2)
	}
	if err := run(*tokens, *workers, *batch, *pause, *autovacuum, *baseline, *maxJanitor, *rate, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "janitorbench:", err)
		os.Exit(1)
	}
}

func run(tokens, workers, batch int, pause time.Duration, autovacuum bool, baseline, maxJanitor time.Duration, rate float64, out io.Writer) error {
	ctx := context.Background()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		settings := map[string]string{"shared_buffers": "512MB"}
		if !autovacuum {
			settings["autovacuum"] = "off"
		}
		c, err := pgtemp.Start(ctx, pgtemp.Options{Settings: settings})
		if err != nil {
			return err
		}
		defer c.Stop()
		url = c.URL("postgres")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(workers + 2)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		return err
	}
	pepper := make([]byte, 32)
	_, _ = rand.Read(pepper)
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(pepper), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}

	fmt.Fprintf(out, "filling %d expired refresh tokens (%d expired families)…\n", tokens, tokens/2)
	began := time.Now()
	if err := fillExpired(ctx, pool, tokens/2); err != nil {
		return err
	}
	fmt.Fprintf(out, "filled in %s\n", time.Since(began).Round(time.Millisecond))

	live := make([][]string, workers) // each worker's current tokens, one per family
	for w := range live {
		for range 64 {
			t, err := store.Issue(ctx, repository.IssueRequest{ClientID: "bench", UserID: fmt.Sprint("user-", w)})
			if err != nil {
				return err
			}
			live[w] = append(live[w], t.Token.Reveal())
		}
	}
	rotateFor := func(stop <-chan struct{}) ([]time.Duration, error) {
		var (
			mu   sync.Mutex
			all  []time.Duration
			errs []error
			wg   sync.WaitGroup
		)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lat []time.Duration
				var interval time.Duration
				if rate > 0 {
					interval = time.Duration(float64(workers) / rate * float64(time.Second))
				}
				due := time.Now().Add(time.Duration(w) * interval / time.Duration(workers))
				for i := 0; ; i++ {
					select {
					case <-stop:
						mu.Lock()
						all = append(all, lat...)
						mu.Unlock()
						return
					default:
					}
					k := i % len(live[w])
					t0 := time.Now()
					if interval > 0 {
						time.Sleep(time.Until(due))
						t0, due = due, due.Add(interval)
					}
					next, err := store.Rotate(ctx, repository.RotateRequest{Token: live[w][k], ClientID: "bench"})
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					lat = append(lat, time.Since(t0))
					live[w][k] = next.Token.Reveal()
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			return nil, errs[0]
		}
		return all, nil
	}
	timed := func(d time.Duration) ([]time.Duration, error) {
		stop := make(chan struct{})
		time.AfterFunc(d, func() { close(stop) })
		return rotateFor(stop)
	}

	// Warm up, then: without the janitor, with it, without it again.
	if _, err := timed(10 * time.Second); err != nil {
		return err
	}
	before, err := timed(baseline)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	var (
		during []time.Duration
		rotErr error
		done   = make(chan struct{})
	)
	go func() {
		during, rotErr = rotateFor(stop)
		close(done)
	}()
	jctx, cancel := context.WithTimeout(ctx, maxJanitor)
	jStart := time.Now()
	res, jErr := store.Cleanup(jctx, repository.CleanupOptions{BatchSize: batch, Pause: pause})
	jTook := time.Since(jStart)
	cancel()
	close(stop)
	<-done
	stopped := ""
	if jErr != nil && errors.Is(jErr, context.DeadlineExceeded) && errors.Is(jctx.Err(), context.DeadlineExceeded) {
		stopped, jErr = fmt.Sprintf(" (stopped by --max-janitor %s)", maxJanitor), nil
	}
	if jErr != nil {
		return fmt.Errorf("janitor: %w", jErr)
	}
	if rotErr != nil {
		return rotErr
	}
	after, err := timed(baseline)
	if err != nil {
		return err
	}

	rows := res.Families + res.RefreshTokens
	fmt.Fprintf(out, "\njanitor: deleted %d families and %d refresh tokens (%d rows) in %d batches of at most %d tokens (pause %s), %s%s: %.0f rows/s\n",
		res.Families, res.RefreshTokens, rows, res.Batches, batch, pause, jTook.Round(time.Millisecond), stopped, float64(rows)/jTook.Seconds())
	offered := "as fast as they can"
	if rate > 0 {
		offered = fmt.Sprintf("offered %.0f/s in total, latency from when each was due", rate)
	}
	fmt.Fprintf(out, "\nrotation at %d workers (%s)\n", workers, offered)
	fmt.Fprintf(out, "                            ops      ops/s    p50        p99\n")
	quiet := append(slices.Clone(before), after...)
	for _, row := range []struct {
		name string
		lat  []time.Duration
		took time.Duration
	}{
		{"without janitor (before)", before, baseline},
		{"while janitor runs", during, jTook},
		{"without janitor (after)", after, baseline},
		{"without janitor (both)", quiet, 2 * baseline},
	} {
		p50, p99 := percentile(row.lat, 0.50), percentile(row.lat, 0.99)
		fmt.Fprintf(out, "%-26s %8d %9.0f   %-10s %-10s\n", row.name, len(row.lat), float64(len(row.lat))/row.took.Seconds(),
			p50.Round(time.Microsecond), p99.Round(time.Microsecond))
	}
	q50, q99 := percentile(quiet, 0.50), percentile(quiet, 0.99)
	d50, d99 := percentile(during, 0.50), percentile(during, 0.99)
	fmt.Fprintf(out, "\nratio while janitor runs / without: p50 %.2f, p99 %.2f (target: p99 below 1.20)\n",
		float64(d50)/float64(q50), float64(d99)/float64(q99))
	return nil
}

// fillExpired inserts families whose tokens expired two days ago, each with a consumed token and
// its expired successor, in chunks.
func fillExpired(ctx context.Context, pool *pgxpool.Pool, families int) error {
	const chunk = 50_000
	for from := 0; from < families; from += chunk {
		n := min(chunk, families-from)
		_, err := pool.Exec(ctx, `
			WITH f AS (
				INSERT INTO oauth_family (client_id, user_id, scope, created_at, last_rotated_at, rotation_count, idle_expires_at)
				SELECT 'expired', 'user-' || g, '{openid}', now() - interval '3 days', now() - interval '3 days' + interval '1 hour',
					1, now() - interval '2 days'
				FROM generate_series($1::int, $1::int + $2::int - 1) g
				RETURNING id
			), numbered AS (
				SELECT id, row_number() OVER () AS n FROM f
			), parent AS (
				INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, scope, created_at, expires_at, consumed_at)
				SELECT sha256(convert_to(id::text || 'p', 'UTF8')), 'default', id, '{openid}', now() - interval '3 days',
					now() - interval '2 days' - interval '1 hour', now() - interval '3 days' + interval '1 hour'
				FROM numbered
				RETURNING family_id, digest
			)
			INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope, created_at, expires_at)
			SELECT sha256(convert_to(family_id::text || 'c', 'UTF8')), 'default', family_id, digest, '{openid}',
				now() - interval '3 days' + interval '1 hour', now() - interval '2 days'
			FROM parent`, from, n)
		if err != nil {
			return err
		}
	}
	// Settle what the fill left to do (visibility map, statistics, dirty buffers), so that it
	// does not weigh on the first phase only.
	for _, stmt := range []string{"VACUUM ANALYZE oauth_family, oauth_refresh_token", "CHECKPOINT"} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
