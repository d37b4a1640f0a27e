package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func runJanitor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("janitor", stderr)
	db := databaseFlags(fs, false)
	batch := fs.Int("batch-size", repository.DefaultCleanupBatchSize, "rows deleted per statement, one short transaction each: codes or states, or whole families holding at most this many tokens")
	limit := fs.Int("limit", 0, "stop after this many families, codes and states, each (0: no limit)")
	retain := fs.Duration("retain", 0, "keep what is dead this much longer (extra time to keep evidence)")
	pause := fs.Duration("pause", 0, "wait this long between batches, to leave live traffic more of the database")
	dryRun := fs.Bool("dry-run", false, "count what would be deleted; delete nothing")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	store, closeDB, err := adminStore(ctx, db, stderr)
	if err != nil {
		return err
	}
	defer closeDB()
	opts := repository.CleanupOptions{BatchSize: *batch, Limit: *limit, Retain: *retain, Pause: *pause}

	backlog, err := store.CleanupBacklog(ctx, opts)
	if err != nil {
		return err
	}
	if *dryRun {
		return printCleanup(stdout, *asJSON, "would delete", backlog, 0)
	}
	began := time.Now()
	if isTerminal(stderr) {
		total := backlog.Families + backlog.AuthorizationCodes + backlog.States
		opts.OnBatch = func(r repository.CleanupResult) {
			done := r.Families + r.AuthorizationCodes + r.States
			rate := float64(done+r.RefreshTokens) / max(time.Since(began).Seconds(), 1e-3)
			fmt.Fprintf(stderr, "\rjanitor: %d / ~%d families, codes and states (%d tokens), %.0f rows/s   ", done, total, r.RefreshTokens, rate)
		}
	}
	res, err := store.Cleanup(ctx, opts)
	if opts.OnBatch != nil && res.Batches > 0 {
		fmt.Fprintln(stderr) // the summary goes on a line of its own
	}
	if err != nil {
		if res.Batches > 0 {
			printCleanup(stderr, false, "deleted before the error", res, time.Since(began))
		}
		return err
	}
	return printCleanup(stdout, *asJSON, "deleted", res, time.Since(began))
}

func printCleanup(w io.Writer, asJSON bool, verb string, r repository.CleanupResult, took time.Duration) error {
	rows := r.Families + r.RefreshTokens + r.AuthorizationCodes + r.States + r.AccessTokens + r.Revocations
	rate := 0.0
	if took > 0 {
		rate = float64(rows) / took.Seconds()
	}
	if asJSON {
		return writeJSON(w, map[string]any{
			"families": r.Families, "refresh_tokens": r.RefreshTokens, "authorization_codes": r.AuthorizationCodes,
			"states": r.States, "grace_ciphertexts": r.GraceCiphertexts, "access_tokens": r.AccessTokens,
			"revocations": r.Revocations, "batches": r.Batches, "seconds": took.Seconds(), "rows_per_second": rate, "dry_run": took == 0,
		})
	}
	_, err := fmt.Fprintf(w, "janitor: %s %d families, %d refresh tokens, %d authorization codes, %d states, %d expired grace copies, %d access tokens, %d revocation feed entries in %d batches (%s, %.0f rows/s)\n",
		verb, r.Families, r.RefreshTokens, r.AuthorizationCodes, r.States, r.GraceCiphertexts, r.AccessTokens, r.Revocations, r.Batches, took.Round(time.Millisecond), rate)
	return err
}

// isTerminal reports whether w is a character device, such as an interactive terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
