// Package bench measures refresh-token rotation under load: operations per second, latency
// percentiles and what each rotation writes, for five ways to rotate, at several worker counts,
// against one PostgreSQL cluster in one run. The command is `oauthstore bench`.
//
//	a  repository.Store.Rotate, as a service calls it: token decoding, HMAC digests and minting of
//	   the successor included; one statement (RefreshTokenRotate).
//	b  the same statement sent raw through pgx (db.Queries.RefreshTokenRotate) with digests and a
//	   sealed successor of the real size (60 random bytes) computed beforehand: the physical limit
//	   of the single-statement design.
//	c  a conventional transaction doing the same rotation in five round trips (BEGIN, SELECT … FOR
//	   NO KEY UPDATE, UPDATE, INSERT, COMMIT) on the same tables, digests and sealed successors as b.
//	d  the floor: the cheapest single statement that consumes one row and inserts one
//	   (DELETE … RETURNING feeding an INSERT), on a table of its own in the benchmark's schema
//	   whose rows are as wide as the token rows and which has nothing but a primary key; loaded
//	   and seeded like b. b/d is what the package's rules cost over that.
//	p  the previous design: the package's tables (schema/0001, 0003, 0004) and RefreshTokenRotate
//	   (queries/refresh_token.sql) as of commit ae44542, frozen in this package and created in
//	   schema oauthstore_bench_prev; loaded, seeded and rotated as b, with the same precomputed
//	   digests and sealed successors. b/p is the current design (schema 5: the family row names
//	   its live token; a rotation is a heap-only update of it and a tombstone insert) over the
//	   previous one (a token row consumed, the family row updated, a successor row inserted).
//
// Every worker rotates families of its own, so workers never wait on each other's row locks: the
// numbers are throughput and latency, not contention.
//
// On a throwaway cluster every cell runs twice, in two phases of the same run on the same cluster:
// first with fsync, synchronous_commit and full_page_writes on (the headline: what a durable
// server does), then with the three off (ALTER SYSTEM and a reload switch them); Options.Durability
// runs one of the two. On a database given by URL the cells run once, under its settings as
// found, which the report prints and the run never changes.
//
// The RTT series measures some variants (a and c by default) again with their connections going
// through an in-process TCP proxy to the server's TCP port, which delays each direction by RTT/2
// (0, 0.2, 0.5 and 1 ms by default): what the single statement saves grows with the round trips
// it saves. It runs in the first phase at the first table size.
//
// Cells run one at a time. Each starts from a CHECKPOINT, warms up, pauses while the server's
// counters are read, and is then measured; next to its latency it reports what its measured
// rotations wrote, per rotation: WAL bytes, heap tuples, the share of HOT updates and an upper
// bound of index entries (see Writes). Variants a, b and c share the package's tables; since no
// two cells run at once and every write outside the cells (load, seeding) is done on
// connections that have exited before a cell starts, the deltas hold the cell's writes only.
//
// # The command
//
//	oauthstore bench [--database-url URL] [--duration 5s] [--warmup 1s] [--workers 1,8,32]
//	    [--variants a,b,c,d,p] [--rows 10000] [--client client-000]
//	    [--durability both|on|off] [--fsync]
//	    [--rtt 0,200us,500us,1ms|none] [--rtt-workers 1,8] [--rtt-variants a,c]
//	    [--scale] [--scale-rows 10000,1000000,10000000]
//	    [--explain] [--cpuprofile FILE] [--profile-workers 8] [--wait-idle D] [--json]
//
// --fsync is --durability on. --scale measures a and b at 1 and 8 workers at each of --scale-rows
// preloaded families (each flag given explicitly wins), without an RTT series unless --rtt is
// given. Invalid values exit 2.
//
// # The report
//
// A header (database, server and its settings, client, cell timing, the variants, the RTT series,
// each bulk load), then per phase, the headline first, under a line with its fsync,
// synchronous_commit and full_page_writes:
//
//   - the cells: families, variant, workers, ops/s, p50, p99, p999, max, WAL B/rot, tup/rot, HOT,
//     idx/rot ≤, CPU of client, server and other processes, autovacuum runs, notes ("!" other
//     load, "?" counters that did not settle); the first phase's table is followed by a legend;
//   - the throughput ratios per table size and worker count: a/b and a/c against their targets,
//     b/d and b/p;
//   - in the first phase, the round-trip time series: the same columns with the RTT first, and
//     the ratios (a/c) per RTT and worker count;
//   - with --scale, each cell's p50, p99 and ops/s relative to the smallest table.
//
// With --explain the executed plans of RefreshTokenRotate follow. --json writes the same as one
// Report object.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Variant names.
const (
	VariantStore       = "a" // repository.Store.Rotate
	VariantRaw         = "b" // the generated statement with precomputed digests
	VariantTransaction = "c" // BEGIN; SELECT … FOR UPDATE; UPDATE; UPDATE; INSERT; COMMIT
	VariantFloor       = "d" // DELETE … RETURNING + INSERT on a table with only a primary key
	VariantPrevious    = "p" // the previous design, frozen: its tables and its RefreshTokenRotate
)

var variantDescriptions = map[string]string{
	VariantStore:       "Store.Rotate (mint + HMAC + one statement)",
	VariantRaw:         "RefreshTokenRotate raw via pgx, precomputed digests and sealed successor",
	VariantTransaction: "multi-statement transaction (5 round trips)",
	VariantFloor:       "floor: one DELETE … RETURNING + INSERT on a table with only a primary key",
	VariantPrevious:    "previous design (ae44542): its tables and RefreshTokenRotate, frozen, rotated as b",
}

// Defaults of Options.
const (
	DefaultDuration       = 5 * time.Second
	DefaultWarmup         = time.Second
	DefaultRows           = 10_000
	DefaultProfileWorkers = 8
	DefaultClient         = "client-000" // a client of the preloaded families
	// FamiliesPerWorker is how many families each worker rotates in turn.
	FamiliesPerWorker = 8
	// SchemaName is the schema the benchmark creates its tables in (and drops afterwards on a
	// database it did not start), so that it never touches the tables of the database's owner;
	// the previous design's tables go to PrevSchemaName alike.
	SchemaName = "oauthstore_bench"
)

// Defaults of the worker counts, row counts and variants.
var (
	DefaultWorkers      = []int{1, 8, 32}
	DefaultScaleWorkers = []int{1, 8}
	DefaultScaleRows    = []int{10_000, 1_000_000, 10_000_000}
	DefaultVariants     = []string{VariantStore, VariantRaw, VariantTransaction, VariantFloor, VariantPrevious}
	DefaultScaleVar     = []string{VariantStore, VariantRaw}
	DefaultRTTs         = []time.Duration{0, 200 * time.Microsecond, 500 * time.Microsecond, time.Millisecond}
	DefaultRTTWorkers   = []int{1, 8}
	DefaultRTTVariants  = []string{VariantStore, VariantTransaction}
)

// Options configure a run. Zero values take the defaults above.
type Options struct {
	// DatabaseURL is the database to run against. Empty: a throwaway cluster is started from the
	// machine's PostgreSQL server binaries (max_connections 200, shared_buffers 512MB).
	DatabaseURL string
	// Durability is what the throwaway cluster runs the cells under: "both" (the default) runs
	// all of them with fsync, synchronous_commit and full_page_writes on (the headline), then
	// all of them again with the three off, on the same cluster; "on" or "off" runs one of the
	// two. A database given by URL is measured once, with its settings as found.
	Durability string
	// Duration is the measured time of each cell (variant × worker count), after Warmup.
	Duration time.Duration
	Warmup   time.Duration
	// Workers are the worker counts; each cell uses a pool with MaxConns = workers.
	Workers []int
	// Variants to measure, from "a", "b", "c", "d", "p".
	Variants []string
	// Client is the client_id of the rotated families. The default is one of the 100 clients of
	// the preloaded families, so that the statistics know it as a planner would in production; a
	// name absent from the preload shows the plan a client unknown to the statistics gets.
	Client string
	// Rows is the number of live token families preloaded before measuring (ignored with Scale).
	Rows int
	// Scale measures at each of ScaleRows preloaded families instead, growing the same tables.
	Scale     bool
	ScaleRows []int
	// RTTs are the round-trip times of the RTT series: cells of RTTVariants at RTTWorkers whose
	// connections go through an in-process TCP proxy to the server's TCP port (on a throwaway
	// cluster, which then also listens on 127.0.0.1) that delays each direction by RTT/2; RTT 0
	// is the proxy without delay. The series runs in the first phase at the first table size.
	// Nil takes DefaultRTTs, or none with Scale; NoRTT skips the series.
	RTTs        []time.Duration
	RTTWorkers  []int
	RTTVariants []string
	NoRTT       bool
	// Explain appends EXPLAIN (ANALYZE, BUFFERS) of the rotating statement, custom and generic
	// plan, taken on the loaded tables after the measurements.
	Explain bool
	// CPUProfile, when set, receives a Go CPU profile of variant a's measured window at
	// ProfileWorkers workers.
	CPUProfile     string
	ProfileWorkers int
	// WaitIdle, when positive, waits before each cell until processes other than the server and
	// the benchmark use less than IdleCores (at most WaitIdle), and measures a cell again, up to
	// twice, when other load took more than ContendedCores during it: for machines shared with
	// other work. It has an effect only where the server's processes can be seen (/proc).
	WaitIdle time.Duration
	// JSON writes the report as JSON instead of tables.
	JSON bool
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
}

func (o *Options) setDefaults() error {
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Warmup == 0 {
		o.Warmup = DefaultWarmup
	}
	if o.Rows == 0 {
		o.Rows = DefaultRows
	}
	if o.Client == "" {
		o.Client = DefaultClient
	}
	if o.ProfileWorkers == 0 {
		o.ProfileWorkers = DefaultProfileWorkers
	}
	if len(o.Workers) == 0 {
		o.Workers = DefaultWorkers
		if o.Scale {
			o.Workers = DefaultScaleWorkers
		}
	}
	if len(o.Variants) == 0 {
		o.Variants = DefaultVariants
		if o.Scale {
			o.Variants = DefaultScaleVar
		}
	}
	if len(o.ScaleRows) == 0 {
		o.ScaleRows = DefaultScaleRows
	}
	if o.RTTs == nil && !o.Scale {
		o.RTTs = DefaultRTTs
	}
	if o.NoRTT {
		o.RTTs = nil
	}
	if len(o.RTTWorkers) == 0 {
		o.RTTWorkers = DefaultRTTWorkers
	}
	if len(o.RTTVariants) == 0 {
		o.RTTVariants = DefaultRTTVariants
	}
	if o.Durability == "" {
		o.Durability = DurabilityBoth
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	switch {
	case o.Duration < 0 || o.Duration > time.Hour:
		return fmt.Errorf("%w: duration outside 0..1h", ErrInvalidOptions)
	case o.Warmup < 0 || o.Warmup > time.Minute:
		return fmt.Errorf("%w: warmup outside 0..1m", ErrInvalidOptions)
	case o.Rows < 0 || o.Rows > 100_000_000:
		return fmt.Errorf("%w: rows outside 0..100000000", ErrInvalidOptions)
	case o.Durability != DurabilityBoth && o.Durability != DurabilityOn && o.Durability != DurabilityOff:
		return fmt.Errorf("%w: durability %q (want both, on or off)", ErrInvalidOptions, o.Durability)
	}
	for _, w := range slices.Concat(o.Workers, o.RTTWorkers) {
		if w < 1 || w > 180 {
			return fmt.Errorf("%w: worker count %d outside 1..180", ErrInvalidOptions, w)
		}
	}
	for _, v := range slices.Concat(o.Variants, o.RTTVariants) {
		if _, ok := variantDescriptions[v]; !ok {
			return fmt.Errorf("%w: unknown variant %q (want a, b, c, d or p)", ErrInvalidOptions, v)
		}
	}
	for _, rtt := range o.RTTs {
		if rtt < 0 || rtt > 100*time.Millisecond {
			return fmt.Errorf("%w: round-trip time %s outside 0..100ms", ErrInvalidOptions, rtt)
		}
	}
	if o.Scale {
		if !slices.IsSorted(o.ScaleRows) {
			return fmt.Errorf("%w: scale row counts must be ascending", ErrInvalidOptions)
		}
		for _, n := range o.ScaleRows {
			if n < 0 || n > 100_000_000 {
				return fmt.Errorf("%w: scale row count %d outside 0..100000000", ErrInvalidOptions, n)
			}
		}
	}
	return nil
}

// cellSpecs returns the cells of one phase at one table size: every variant at every worker
// count, then the RTT series when rtt is set. profile marks the phase and size whose cell of a
// at ProfileWorkers is profiled.
func cellSpecs(opts Options, profile, rtt bool) []cellSpec {
	var specs []cellSpec
	for _, w := range opts.Workers {
		for _, v := range opts.Variants {
			spec := cellSpec{variant: v, workers: w}
			if profile && v == VariantStore && w == opts.ProfileWorkers {
				spec.profile = opts.CPUProfile
			}
			specs = append(specs, spec)
		}
	}
	if rtt {
		for _, d := range opts.RTTs {
			for _, w := range opts.RTTWorkers {
				for _, v := range opts.RTTVariants {
					specs = append(specs, cellSpec{variant: v, workers: w, proxied: true, rtt: d})
				}
			}
		}
	}
	return specs
}

// measureWithRetries measures a cell, again (up to maxContendedRetries times) when Options.WaitIdle
// asks for it and other load disturbed it.
func measureWithRetries(ctx context.Context, e *env, fx *fixture, spec cellSpec) (Cell, error) {
	opts := e.opts
	fmt.Fprintf(opts.Progress, "measuring %s (%s + %s warm-up)…\n", spec, opts.Duration, opts.Warmup)
	for attempt := 0; ; attempt++ {
		if opts.WaitIdle > 0 {
			e.waitIdle(ctx, opts.WaitIdle)
		}
		c, err := measureCell(ctx, e, fx, spec, opts.Warmup, opts.Duration)
		if err != nil {
			return c, fmt.Errorf("%s: %w", spec, err)
		}
		c.Attempts = attempt + 1
		if opts.WaitIdle == 0 || c.OtherCores <= ContendedCores || attempt == maxContendedRetries {
			fmt.Fprintf(opts.Progress, "  %.0f ops/s, p50 %s, p99 %s, %.0f WAL bytes/rotation\n",
				c.OpsPerSec, fmtDur(c.P50), fmtDur(c.P99), c.Writes.WALPerRotation)
			return c, nil
		}
		fmt.Fprintf(opts.Progress, "  other load took %.2f cores; measuring again\n", c.OtherCores)
	}
}

// ErrInvalidOptions is matched by every error of Run about its options.
var ErrInvalidOptions = errors.New("bench: invalid options")

// Run performs the benchmark and writes the report to out.
func Run(ctx context.Context, opts Options, out io.Writer) (err error) {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	started := time.Now()
	e, err := openEnv(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, e.close(context.WithoutCancel(ctx))) }()

	rep := &Report{
		Config:      reportConfig(opts),
		Environment: e.info,
	}
	sizes := []int{opts.Rows}
	if opts.Scale {
		sizes = opts.ScaleRows
	}
	// Every variant of the run, the RTT series' included (some twice), and every worker count.
	variants, workers := opts.Variants, opts.Workers
	if len(opts.RTTs) > 0 {
		variants = slices.Concat(opts.Variants, opts.RTTVariants)
		workers = slices.Concat(opts.Workers, opts.RTTWorkers)
	}
	sets := tableSetsOf(variants)
	if opts.Explain && !slices.ContainsFunc(sets, func(s tableSet) bool { return s.String() == packageTables.String() }) {
		sets = append(sets, packageTables)
	}
	loaded := 0
	var fx *fixture
	for _, size := range sizes {
		if size > loaded {
			for _, set := range sets {
				ls, err := e.preload(ctx, set, loaded, size)
				if err != nil {
					return err
				}
				rep.Loads = append(rep.Loads, ls)
			}
			loaded = size
		}
		for i, d := range e.phases() {
			settings, err := e.setDurability(ctx, d)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(rep.Phases, func(p Phase) bool { return p.Durability == d }) {
				rep.Phases = append(rep.Phases, Phase{Durability: d, Settings: settings})
			}
			fmt.Fprintf(opts.Progress, "%d preloaded families, durability %s: %v\n", size, d, settings)
			// The rotated families come after the load. Every phase at every size starts fresh ones,
			// without tombstones.
			if fx, err = newFixture(ctx, e, workers, variants); err != nil {
				return err
			}
			specs := cellSpecs(opts, i == 0 && size == sizes[len(sizes)-1], i == 0 && size == sizes[0])
			for _, spec := range specs {
				c, err := measureWithRetries(ctx, e, fx, spec)
				if err != nil {
					return err
				}
				c.Rows, c.Durability = size, d
				rep.Cells = append(rep.Cells, c)
			}
		}
	}
	rep.computeRatios()
	if opts.Scale {
		rep.computeScale(sizes[0])
	}
	if opts.Explain {
		ex, err := explainRotate(ctx, e, fx, loaded)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		rep.Explain = ex
	}
	rep.TotalSeconds = time.Since(started).Seconds()
	if opts.JSON {
		return rep.writeJSON(out)
	}
	return rep.writeText(out)
}
