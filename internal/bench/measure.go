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

	"github.com/oauthstore/oauthstore/internal/latency"
	"github.com/oauthstore/oauthstore/repository"
)

// Cell is the result of one variant at one worker count.
type Cell struct {
	Variant   string        `json:"variant"`
	Workers   int           `json:"workers"`
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
	// Autovacuums counts the autovacuum and autoanalyze runs on the two tables that finished in
	// the measured window: background work competing for the same CPUs.
	Autovacuums int64 `json:"autovacuums"`
	// Attempts is how many times the cell was measured (more than one when other load disturbed
	// it and Options.WaitIdle asked to measure again); the last measurement is reported.
	Attempts int `json:"attempts"`
}

// measureCell runs variant v with w workers on a fresh pool (MaxConns = w) for warmup + dur and
// returns the throughput and latency percentiles of the operations started in the measured window.
func measureCell(ctx context.Context, e *env, fx *fixture, v string, w int, warmup, dur time.Duration, profile string) (Cell, error) {
	cell := Cell{Variant: v, Workers: w}
	pool, err := e.pool(ctx, w, w)
	if err != nil {
		return cell, err
	}
	defer pool.Close()
	var store *repository.Store
	if v == VariantStore {
		if store, err = fx.store(pool); err != nil {
			return cell, err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)
	lat := make([][]time.Duration, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	for k := range w {
		wk := fx.worker(v, pool, store, k)
		wg.Go(func() {
			rec := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				wk.prepare()
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				err := wk.op(ctx)
				d := time.Since(t0)
				if err != nil {
					errs[k] = err
					cancel()
					break
				}
				if !t0.Before(measureFrom) {
					rec = append(rec, d)
				}
			}
			lat[k] = rec
		})
	}

	// The coordinator samples CPU use and profiles the measured window only.
	var cpu0, cpu1 cpuSample
	var av0, av1 int64
	timer := time.NewTimer(time.Until(measureFrom))
	select {
	case <-timer.C:
		cpu0 = sampleCPU(e.serverPID)
		av0 = e.autovacuums(ctx)
		if profile != "" {
			f, err := os.Create(profile)
			if err != nil {
				cancel()
				wg.Wait()
				return cell, err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				cancel()
				wg.Wait()
				return cell, err
			}
			timer.Reset(time.Until(end))
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
			pprof.StopCPUProfile()
		} else {
			timer.Reset(time.Until(end))
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		cpu1 = sampleCPU(e.serverPID)
		av1 = e.autovacuums(ctx)
	case <-ctx.Done():
		timer.Stop()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return cell, err
	}
	if err := ctx.Err(); err != nil {
		return cell, err
	}

	sum := latency.Summarize(slices.Concat(lat...))
	cell.Ops = sum.N
	cell.Seconds = dur.Seconds()
	if cell.Ops == 0 {
		return cell, fmt.Errorf("no operation completed in %s", dur)
	}
	cell.OpsPerSec = float64(cell.Ops) / dur.Seconds()
	cell.P50, cell.P99, cell.P999, cell.Max = sum.P50, sum.P99, sum.P999, sum.Max
	cell.ClientCores, cell.ServerCores, cell.MachineCores = cpu1.since(cpu0)
	cell.OtherCores = -1
	if cell.ServerCores >= 0 {
		cell.OtherCores = max(0, cell.MachineCores-cell.ClientCores-cell.ServerCores)
	}
	cell.Autovacuums = av1 - av0
	return cell, nil
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

// autovacuums returns how many autovacuum and autoanalyze runs the two tables have had; the
// statistics are those the server has flushed, so the count may lag by a fraction of a second.
func (e *env) autovacuums(ctx context.Context) int64 {
	var n int64
	_ = e.admin.QueryRow(ctx, `SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint
		FROM pg_stat_user_tables WHERE relid IN ('oauth_family'::regclass, 'oauth_refresh_token'::regclass)`).Scan(&n)
	return n
}
