package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/oauthstore/oauthstore/internal/bench"
)

const benchUsage = `Usage: oauthstore bench [flags]

Measures refresh-token rotation: operations/s, p50/p99/p999 latency and what each rotation
writes, per variant and worker count, against one cluster in one run.

  a  repository.Store.Rotate as a service calls it (minting and HMAC digests included)
  b  the same RefreshTokenRotate statement sent raw through pgx, digests computed beforehand
  c  a conventional transaction: BEGIN; SELECT … FOR NO KEY UPDATE; UPDATE; INSERT; COMMIT
  d  the floor: one DELETE … RETURNING + INSERT on a table of token-row width with only a
     primary key (b/d: what the package's rules cost)
  p  the previous design: the tables and RefreshTokenRotate of schema 4 (commit ae44542), frozen in
     internal/bench and rotated as b in schema oauthstore_bench_prev (b/p: new over old design)

Each worker rotates its own families (no lock contention); each cell gets a pool with
MaxConns = workers and a warm-up before it is measured. Without --database-url or DATABASE_URL
a throwaway PostgreSQL is started (max_connections 200, shared_buffers 512MB) and every cell
runs twice: first with fsync, synchronous_commit and full_page_writes on (the headline table),
then with the three off (the second table), switched with ALTER SYSTEM on the same cluster
(--durability on or off runs one of the two). The RTT series runs --rtt-variants again through
an in-process TCP proxy that delays each direction by RTT/2, to the server's TCP port, in the
first of those phases. On a given database the cells run once under
its settings, which are reported and not changed, and everything is created in schemas
oauthstore_bench and oauthstore_bench_prev, which the run drops at the end.

The report has, per phase (headline first, its fsync, synchronous_commit and full_page_writes
in the heading): a table of cells with ops/s, latency, and per measured rotation WAL B/rot
(WAL bytes), tup/rot (heap tuples written), HOT (share of updates that were HOT) and
idx/rot ≤ (an upper bound of index entries written: a partial index counts for every row),
then CPU of client, server and other processes; the throughput ratios a/b, a/c (with their
targets), b/d and b/p; in the first phase the RTT series with a/c per RTT; with --scale, the
growth of latency and throughput with the table size. --json writes the same as JSON.

Flags:
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	// The benchmark opens its own connections; it takes only the database.
	db := &dbFlags{}
	fs.StringVar(&db.url, "database-url", "", "PostgreSQL connection string (default $DATABASE_URL; without one, a throwaway cluster)")
	var opts bench.Options
	fs.DurationVar(&opts.Duration, "duration", bench.DefaultDuration, "measured time of each cell")
	fs.DurationVar(&opts.Warmup, "warmup", bench.DefaultWarmup, "warm-up of each cell before it is measured")
	workers := fs.String("workers", "1,8,32", "comma-separated worker counts (with --scale: default 1,8)")
	variants := fs.String("variants", "a,b,c,d,p", "comma-separated variants to measure (with --scale: default a,b)")
	fs.IntVar(&opts.Rows, "rows", bench.DefaultRows, "live token families preloaded before measuring (COPY)")
	fs.StringVar(&opts.Client, "client", bench.DefaultClient, "client_id of the rotated families (the default is one of the preloaded families' 100 clients)")
	fs.BoolVar(&opts.Scale, "scale", false, "measure a and b at 1 and 8 workers at each of --scale-rows preloaded families")
	scaleRows := fs.String("scale-rows", "10000,1000000,10000000", "ascending preloaded family counts of --scale")
	rtts := fs.String("rtt", "0,200us,500us,1ms", "comma-separated round-trip times of the RTT series, \"none\" to skip it (with --scale: default none)")
	rttWorkers := fs.String("rtt-workers", "1,8", "comma-separated worker counts of the RTT series")
	rttVariants := fs.String("rtt-variants", "a,c", "comma-separated variants of the RTT series")
	fs.StringVar(&opts.Durability, "durability", bench.DurabilityBoth, "on the throwaway cluster: both (every cell with fsync, synchronous_commit and full_page_writes on, then again with the three off), on, or off")
	fsync := fs.Bool("fsync", false, "the same as --durability on (kept for older scripts)")
	fs.BoolVar(&opts.Explain, "explain", false, "append the executed plans of RefreshTokenRotate (auto_explain, ANALYZE, BUFFERS)")
	fs.StringVar(&opts.CPUProfile, "cpuprofile", "", "write a Go CPU profile of variant a's measured window to `file`")
	fs.IntVar(&opts.ProfileWorkers, "profile-workers", bench.DefaultProfileWorkers, "worker count of the cell --cpuprofile profiles")
	fs.DurationVar(&opts.WaitIdle, "wait-idle", 0, "on a shared machine: before each cell wait up to this long for other processes to go idle, and re-measure (twice at most) a cell they disturbed")
	fs.BoolVar(&opts.JSON, "json", false, "write the report as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), benchUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	if set["workers"] || !opts.Scale {
		if opts.Workers, err = intList("workers", *workers); err != nil {
			return err
		}
	}
	if set["variants"] || !opts.Scale {
		opts.Variants = strings.Split(*variants, ",")
	}
	if opts.ScaleRows, err = intList("scale-rows", *scaleRows); err != nil {
		return err
	}
	switch {
	case strings.TrimSpace(*rtts) == "none" || strings.TrimSpace(*rtts) == "":
		opts.NoRTT = true
	case set["rtt"] || !opts.Scale:
		for f := range strings.SplitSeq(*rtts, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil {
				return usageError{msg: fmt.Sprintf("--rtt: %s is not a list of durations", shown(*rtts))}
			}
			opts.RTTs = append(opts.RTTs, d)
		}
	}
	if opts.RTTWorkers, err = intList("rtt-workers", *rttWorkers); err != nil {
		return err
	}
	opts.RTTVariants = strings.Split(*rttVariants, ",")
	if *fsync {
		if set["durability"] && opts.Durability != bench.DurabilityOn {
			return usageError{msg: "--fsync is --durability on; it cannot go with --durability " + opts.Durability}
		}
		opts.Durability = bench.DurabilityOn
	}
	opts.DatabaseURL = db.url
	if opts.DatabaseURL == "" {
		opts.DatabaseURL = os.Getenv("DATABASE_URL")
	}
	opts.Progress = stderr
	if err := bench.Run(ctx, opts, stdout); errors.Is(err, bench.ErrInvalidOptions) {
		return usageError{msg: redactArgs(err.Error(), args)}
	} else if err != nil {
		return err
	}
	return nil
}

func intList(name, s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, usageError{msg: fmt.Sprintf("--%s: %s is not a list of counts", name, shown(s))}
		}
		out = append(out, n)
	}
	return out, nil
}
