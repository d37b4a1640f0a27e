package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/latency"
	"github.com/oauthstore/oauthstore/repository"
)

// Cell is the result of one variant at one worker count.
type Cell struct {
	// Durability names the phase (Phase.Durability) the cell ran in.
	Durability string `json:"durability"`
	Variant    string `json:"variant"`
	Workers    int    `json:"workers"`
	// Proxied cells belong to the RTT series: their connections went through the delaying proxy
	// with round-trip time RTT.
	Proxied   bool          `json:"via_proxy"`
	RTT       time.Duration `json:"rtt_ns"`
	Rows      int           `json:"preloaded_families"`
	Ops       int           `json:"ops"`
	Seconds   float64       `json:"seconds"`
	OpsPerSec float64       `json:"ops_per_sec"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
	P999      time.Duration `json:"p999_ns"`
	Max       time.Duration `json:"max_ns"`
	// ClientCores is the CPU the benchmark process (client) used in the measured window, in
	// cores; MachineCores is the whole machine's busy CPU (client + server + anything else).
	// Zero where the platform does not tell.
	ClientCores  float64 `json:"client_cores"`
	MachineCores float64 `json:"machine_cores"`
	// ServerCores is the CPU of the PostgreSQL server's processes (backends, autovacuum,
	// checkpointer, …), and OtherCores what the machine spent on anything else: other load that
	// competed with the measurement. Both -1 when the server is not on this machine.
	ServerCores float64 `json:"server_cores"`
	OtherCores  float64 `json:"other_cores"`
	// Autovacuums counts the autovacuum and autoanalyze runs on the variant's tables that
	// finished in the measured window: background work competing for the same CPUs.
	Autovacuums int64 `json:"autovacuums"`
	// Writes is what the measured rotations wrote: WAL, heap tuples, index entries.
	Writes Writes `json:"writes"`
	// Attempts is how many times the cell was measured (more than one when other load disturbed
	// it and Options.WaitIdle asked to measure again); the last measurement is reported.
	Attempts int `json:"attempts"`
}

// cellSpec is what a cell measures.
type cellSpec struct {
	variant string
	workers int
	proxied bool          // through the delaying proxy,
	rtt     time.Duration // with this round-trip time
	profile string        // a file for a CPU profile of the measured phase
}

func (s cellSpec) String() string {
	out := fmt.Sprintf("%s at %d workers", s.variant, s.workers)
	if s.proxied {
		out += fmt.Sprintf(" via the proxy, RTT %s", s.rtt)
	}
	return out
}

// measureCell runs the spec's variant with its workers on a fresh pool (MaxConns = workers): a
// warm-up, a pause in which the server's counters are read, and the measured phase, which starts
// with every worker at once and in which each worker starts operations for dur. It returns the
// throughput and latency percentiles of the measured phase's operations and what they wrote.
//
// The cell starts from a CHECKPOINT (where the role may run one), so that every cell finds the
// same state: the first change of a page after it writes the whole page to the WAL
// (full_page_writes), and no cell inherits a checkpoint that an earlier one made due.
func measureCell(ctx context.Context, e *env, fx *fixture, spec cellSpec, warmup, dur time.Duration) (Cell, error) {
	cell := Cell{Variant: spec.variant, Workers: spec.workers, Proxied: spec.proxied, RTT: spec.rtt}
	tables := tablesOf(spec.variant).tables()
	_, _ = e.admin.Exec(ctx, "CHECKPOINT")
	before, settled, err := e.settle(ctx, tables, nil, 0, time.Now().Add(e.exitFlushInterval()))
	if err != nil {
		return cell, err
	}
	pool, err := e.openCellPool(ctx, spec)
	if err != nil {
		return cell, err
	}
	defer pool.close(context.WithoutCancel(ctx))
	var store *repository.Store
	if spec.variant == VariantStore {
		if store, err = fx.store(pool.Pool); err != nil {
			return cell, err
		}
	}
	workers := make([]worker, spec.workers)
	for k := range workers {
		workers[k] = fx.worker(spec.variant, pool.Pool, store, k)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	warm := runWorkers(ctx, cancel, workers, time.Now().Add(warmup), false)
	if err := warm.wait(); err != nil {
		return cell, err
	}
	base, ok, err := e.settle(ctx, tables, pool.Pool, before.inserts()+int64(warm.ops), time.Now().Add(e.flushInterval()))
	if err != nil {
		return cell, err
	}
	settled = settled && ok
	wal0, err := e.walPosition(ctx)
	if err != nil {
		return cell, err
	}
	run, err := e.measuredPhase(ctx, cancel, &cell, workers, tables, dur, spec.profile)
	if err != nil {
		return cell, err
	}
	walBytes, err := e.walSince(ctx, wal0)
	if err != nil {
		return cell, err
	}
	if err := pool.close(ctx); err != nil {
		return cell, err
	}
	after, ok, err := e.settle(ctx, tables, nil, base.inserts()+int64(run.ops), time.Now().Add(e.exitFlushInterval()))
	if err != nil {
		return cell, err
	}
	settled = settled && ok

	sum := latency.Summarize(slices.Concat(run.lat...))
	cell.Ops = sum.N
	cell.Seconds = dur.Seconds()
	if cell.Ops == 0 {
		return cell, fmt.Errorf("no operation completed in %s", dur)
	}
	cell.OpsPerSec = float64(cell.Ops) / dur.Seconds()
	cell.P50, cell.P99, cell.P999, cell.Max = sum.P50, sum.P99, sum.P999, sum.Max
	cell.Writes = writesBetween(base, after, walBytes, cell.Ops, settled)
	return cell, nil
}

// cellPool is the pool of one cell, whose connections go through the delaying proxy in the RTT
// series.
type cellPool struct {
	*pgxpool.Pool
	e      *env
	proxy  *delayProxy // nil: direct
	closed bool
}

func (e *env) openCellPool(ctx context.Context, spec cellSpec) (*cellPool, error) {
	p := &cellPool{e: e}
	ps := poolSpec{maxConns: spec.workers, minConns: spec.workers, app: cellApp, searchPath: tablesOf(spec.variant).schema}
	if spec.proxied {
		if e.dialServer == nil {
			return nil, errors.New("the RTT series needs the server's TCP port or socket, which the connection string does not name")
		}
		var err error
		if p.proxy, err = startDelayProxy(e.dialServer, spec.rtt/2); err != nil {
			return nil, err
		}
		ps.proxy = p.proxy.addr()
	}
	var err error
	if p.Pool, err = e.pool(ctx, ps); err != nil {
		if p.proxy != nil {
			_ = p.proxy.close()
		}
		return nil, err
	}
	return p, nil
}

// close closes the pool, waits until its connections have left the server (and so have flushed
// their table counters), then stops the proxy. Closing again does nothing.
func (p *cellPool) close(ctx context.Context) error {
	if p.closed {
		return nil
	}
	p.closed = true
	p.Pool.Close()
	err := p.e.waitGone(ctx, cellApp)
	if p.proxy != nil {
		err = errors.Join(err, p.proxy.close())
	}
	return err
}

// measuredPhase runs the workers for dur and records, around that phase only, the CPU the
// client, the server and the rest of the machine used and the autovacuum runs on tables in cell,
// with a CPU profile when profile names a file.
func (e *env) measuredPhase(ctx context.Context, cancel context.CancelFunc, cell *Cell, workers []worker, tables []string,
	dur time.Duration, profile string) (*workerRun, error) {
	cpu0 := sampleCPU(e.serverPID)
	av0 := e.autovacuums(ctx, tables)
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	end := time.Now().Add(dur)
	run := runWorkers(ctx, cancel, workers, end, true)
	timer := time.NewTimer(time.Until(end))
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	if profile != "" {
		pprof.StopCPUProfile()
	}
	cpu1 := sampleCPU(e.serverPID)
	av1 := e.autovacuums(ctx, tables)
	if err := run.wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cell.ClientCores, cell.ServerCores, cell.MachineCores = cpu1.since(cpu0)
	cell.OtherCores = -1
	if cell.ServerCores >= 0 {
		cell.OtherCores = max(0, cell.MachineCores-cell.ClientCores-cell.ServerCores)
	}
	cell.Autovacuums = av1 - av0
	return run, nil
}

// workerRun is one phase of a cell: every worker starts operations until a deadline.
type workerRun struct {
	wg   sync.WaitGroup
	lat  [][]time.Duration // per worker, when recorded
	errs []error
	ops  int // operations completed, after wait
	done []int
}

// runWorkers starts the workers; each starts operations until until, and records their latency
// when record is set. The first error cancels the others.
func runWorkers(ctx context.Context, cancel context.CancelFunc, workers []worker, until time.Time, record bool) *workerRun {
	r := &workerRun{lat: make([][]time.Duration, len(workers)), errs: make([]error, len(workers)), done: make([]int, len(workers))}
	for k, wk := range workers {
		r.wg.Go(func() {
			var rec []time.Duration
			if record {
				rec = make([]time.Duration, 0, 4096)
			}
			for ctx.Err() == nil {
				wk.prepare()
				t0 := time.Now()
				if !t0.Before(until) {
					break
				}
				err := wk.op(ctx)
				d := time.Since(t0)
				if err != nil {
					r.errs[k] = err
					cancel()
					break
				}
				r.done[k]++
				if record {
					rec = append(rec, d)
				}
			}
			r.lat[k] = rec
		})
	}
	return r
}

// wait waits for every worker to stop and returns the first error.
func (r *workerRun) wait() error {
	r.wg.Wait()
	for _, n := range r.done {
		r.ops += n
	}
	return errors.Join(r.errs...)
}

const (
	// IdleCores is the CPU other processes may use for the machine to count as idle.
	IdleCores           = 0.10
	maxContendedRetries = 2
)

// waitIdle waits, at most limit, until the CPU used by anything but the server and this process
// stays below IdleCores for a one-second sample.
func (e *env) waitIdle(ctx context.Context, limit time.Duration) {
	if e.serverPID == 0 {
		return
	}
	deadline := time.Now().Add(limit)
	reported := false
	for time.Now().Before(deadline) {
		s0 := sampleCPU(e.serverPID)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		client, server, machine := sampleCPU(e.serverPID).since(s0)
		if server < 0 || machine-client-server < IdleCores {
			return
		}
		if !reported {
			fmt.Fprintf(e.opts.Progress, "  waiting up to %s for other load (%.2f cores) to subside…\n", limit, machine-client-server)
			reported = true
		}
	}
}

// autovacuums returns how many autovacuum and autoanalyze runs tables have had; the statistics
// are those the server has flushed, so the count may lag by a fraction of a second.
func (e *env) autovacuums(ctx context.Context, tables []string) int64 {
	var n int64
	_ = e.admin.QueryRow(ctx, `SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint
		FROM pg_stat_user_tables WHERE relid IN (SELECT to_regclass(n) FROM unnest($1::text[]) n)`, tables).Scan(&n)
	return n
}
