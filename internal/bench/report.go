package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets the report checks.
const (
	TargetStoreOverRaw         = 0.85 // a/b at 1 and 8 workers
	TargetStoreOverTransaction = 3.0  // a/c at 1 worker
)

// Report is everything a run found.
type Report struct {
	Config      Config      `json:"config"`
	Environment Environment `json:"environment"`
	// Phases are the durability settings the cells ran under, the headline first.
	Phases       []Phase        `json:"phases"`
	Loads        []LoadStat     `json:"loads"`
	Cells        []Cell         `json:"cells"`
	Ratios       []Ratio        `json:"ratios"`
	Scale        []ScalePoint   `json:"scale,omitempty"`
	Explain      *ExplainResult `json:"explain,omitempty"`
	TotalSeconds float64        `json:"total_seconds"`
}

// Config echoes the options of the run.
type Config struct {
	DurationSeconds float64         `json:"duration_seconds"`
	WarmupSeconds   float64         `json:"warmup_seconds"`
	Workers         []int           `json:"workers"`
	Variants        []string        `json:"variants"`
	Rows            []int           `json:"preloaded_families"`
	Scale           bool            `json:"scale"`
	Durability      string          `json:"durability"`
	RTTs            []time.Duration `json:"rtt_ns"`
	RTTWorkers      []int           `json:"rtt_workers"`
	RTTVariants     []string        `json:"rtt_variants"`
	FamiliesPerWkr  int             `json:"families_per_worker"`
	Client          string          `json:"client_id"`
	WaitIdleSeconds float64         `json:"wait_idle_seconds"`
}

// Ratio compares the throughput of the variants at one worker count and table size, under one
// phase's durability, directly or (Proxied) at one round-trip time of the RTT series.
type Ratio struct {
	Durability    string        `json:"durability"`
	Proxied       bool          `json:"via_proxy"`
	RTT           time.Duration `json:"rtt_ns"`
	Workers       int           `json:"workers"`
	Rows          int           `json:"preloaded_families"`
	StoreOverRaw  float64       `json:"a_over_b,omitempty"`
	StoreOverConv float64       `json:"a_over_c,omitempty"`
	// RawOverFloor is b/d: the single-statement rotation against the floor.
	RawOverFloor float64 `json:"b_over_d,omitempty"`
	// RawOverPrevious is b/p: the current design's statement over the previous design's.
	RawOverPrevious float64 `json:"b_over_p,omitempty"`
}

// ScalePoint is one cell of a scale run with its latency relative to the smallest table.
type ScalePoint struct {
	Durability string        `json:"durability"`
	Variant    string        `json:"variant"`
	Workers    int           `json:"workers"`
	Rows       int           `json:"preloaded_families"`
	OpsPerSec  float64       `json:"ops_per_sec"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	P50Growth  float64       `json:"p50_growth"`
	P99Growth  float64       `json:"p99_growth"`
	OpsGrowth  float64       `json:"ops_growth"`
}

func reportConfig(o Options) Config {
	c := Config{
		DurationSeconds: o.Duration.Seconds(),
		WarmupSeconds:   o.Warmup.Seconds(),
		Workers:         o.Workers,
		Variants:        o.Variants,
		Rows:            []int{o.Rows},
		Scale:           o.Scale,
		Durability:      o.Durability,
		RTTs:            o.RTTs,
		RTTWorkers:      o.RTTWorkers,
		RTTVariants:     o.RTTVariants,
		FamiliesPerWkr:  FamiliesPerWorker,
		Client:          o.Client,
		WaitIdleSeconds: o.WaitIdle.Seconds(),
	}
	if o.Scale {
		c.Rows = o.ScaleRows
	}
	return c
}

// cell returns the cell of variant v like c (same phase, proxy, RTT and workers) at rows, or nil.
func (r *Report) cell(like *Cell, v string, rows int) *Cell {
	for i := range r.Cells {
		c := &r.Cells[i]
		if c.Variant == v && c.Durability == like.Durability && c.Proxied == like.Proxied && c.RTT == like.RTT &&
			c.Workers == like.Workers && c.Rows == rows {
			return c
		}
	}
	return nil
}

func (r *Report) computeRatios() {
	type key struct {
		durability    string
		proxied       bool
		rtt           time.Duration
		rows, workers int
	}
	seen := map[key]bool{}
	for i := range r.Cells {
		c := &r.Cells[i]
		k := key{c.Durability, c.Proxied, c.RTT, c.Rows, c.Workers}
		if seen[k] {
			continue
		}
		seen[k] = true
		ratio := func(x, y string) float64 {
			cx, cy := r.cell(c, x, c.Rows), r.cell(c, y, c.Rows)
			if cx == nil || cy == nil {
				return 0
			}
			return cx.OpsPerSec / cy.OpsPerSec
		}
		none := Ratio{Durability: c.Durability, Proxied: c.Proxied, RTT: c.RTT, Workers: c.Workers, Rows: c.Rows}
		ra := none
		ra.StoreOverRaw = ratio(VariantStore, VariantRaw)
		ra.StoreOverConv = ratio(VariantStore, VariantTransaction)
		ra.RawOverFloor = ratio(VariantRaw, VariantFloor)
		ra.RawOverPrevious = ratio(VariantRaw, VariantPrevious)
		if ra != none {
			r.Ratios = append(r.Ratios, ra)
		}
	}
}

func (r *Report) computeScale(baseRows int) {
	for i := range r.Cells {
		c := &r.Cells[i]
		base := r.cell(c, c.Variant, baseRows)
		if base == nil || c.Proxied {
			continue
		}
		r.Scale = append(r.Scale, ScalePoint{
			Durability: c.Durability, Variant: c.Variant, Workers: c.Workers, Rows: c.Rows,
			OpsPerSec: c.OpsPerSec, P50: c.P50, P99: c.P99,
			P50Growth: float64(c.P50) / float64(base.P50),
			P99Growth: float64(c.P99) / float64(base.P99),
			OpsGrowth: c.OpsPerSec / base.OpsPerSec,
		})
	}
}

func (r *Report) writeJSON(out io.Writer) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func (r *Report) writeText(out io.Writer) error {
	env := r.Environment
	fmt.Fprintf(out, "oauthstore bench: refresh-token rotation\n\n")
	fmt.Fprintf(out, "database   %s\n", env.Database)
	fmt.Fprintf(out, "server     PostgreSQL %s; %s\n", env.ServerVersion, settingsLine(env.Settings))
	fmt.Fprintf(out, "client     %s %s/%s, GOMAXPROCS %d, %d CPUs shared by client and server\n",
		env.GoVersion, env.GOOS, env.GOARCH, env.GOMAXPROCS, env.NumCPU)
	fmt.Fprintf(out, "cells      %s measured after %s warm-up; pool MaxConns = workers; %d families per worker, client_id %s\n",
		secs(r.Config.DurationSeconds), secs(r.Config.WarmupSeconds), r.Config.FamiliesPerWkr, r.Config.Client)
	for _, v := range r.Config.Variants {
		fmt.Fprintf(out, "variant %s  %s\n", v, variantDescriptions[v])
	}
	if len(r.Config.RTTs) > 0 {
		fmt.Fprintf(out, "rtt        %s at %s workers through an in-process TCP proxy that delays each direction by RTT/2,\n"+
			"           to the server's TCP port (RTT 0: the proxy without delay), in the first phase at the first size\n",
			strings.Join(r.Config.RTTVariants, ", "), joinInts(r.Config.RTTWorkers))
	}
	for _, l := range r.Loads {
		fmt.Fprintf(out, "load       %s, %d → %d families: COPY %.1fs (%.0f families/s), VACUUM ANALYZE + CHECKPOINT %.1fs; tables %d MB, indexes %d MB\n",
			l.Tables, l.FromRows, l.ToRows, l.CopySeconds, l.RowsPerSecond, l.AnalyzeSeconds, l.TableBytes>>20, l.IndexBytes>>20)
	}
	fmt.Fprintln(out)

	for i, ph := range r.Phases {
		title := "durability " + phaseSettings(ph)
		switch {
		case ph.Durability == DurabilityAsFound:
			title += " (the server's settings as found)"
		case i == 0 && len(r.Phases) > 1:
			title += " (headline)"
		}
		fmt.Fprintf(out, "== %s\n\n", title)
		if err := r.writeCells(out, ph.Durability, false, i == 0); err != nil {
			return err
		}
		if err := r.writeRatios(out, ph.Durability, false); err != nil {
			return err
		}
		if slices.ContainsFunc(r.Cells, func(c Cell) bool { return c.Durability == ph.Durability && c.Proxied }) {
			fmt.Fprintf(out, "round-trip time series (%s)\n\n", phaseSettings(ph))
			if err := r.writeCells(out, ph.Durability, true, false); err != nil {
				return err
			}
			if err := r.writeRatios(out, ph.Durability, true); err != nil {
				return err
			}
		}
		if err := r.writeScale(out, ph.Durability); err != nil {
			return err
		}
	}

	if x := r.Explain; x != nil {
		fmt.Fprintf(out, "RefreshTokenRotate as executed (auto_explain, ANALYZE, BUFFERS) on %d preloaded families, on a measured\n"+
			"family with %d tombstones, %d runs per plan mode; statement text sha256 %s…;\n", x.Rows, x.Tombstones, x.Runs, x.StatementSHA256)
		fmt.Fprintf(out, "median server execution time: custom plan %s, generic plan %s. Last custom plan:\n%s\n\n",
			fmtDur(x.CustomMedian), fmtDur(x.GenericMedian), x.Custom)
		fmt.Fprintf(out, "last generic plan (what the prepared statement of a pooled connection may settle on):\n%s\n\n", x.Generic)
	}
	fmt.Fprintf(out, "total %s\n", (time.Duration(r.TotalSeconds * float64(time.Second))).Round(time.Second))
	return nil
}

// writeCells writes the table of the cells of one phase, direct or through the proxy, and the
// legend when asked.
func (r *Report) writeCells(out io.Writer, durability string, proxied, legend bool) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	first := "families"
	if proxied {
		first = "RTT"
	}
	fmt.Fprintln(tw, first+"\tvariant\tworkers\tops/s\tp50\tp99\tp999\tmax\tWAL B/rot\ttup/rot\tHOT\tidx/rot ≤\tCPU client\tserver\tother\tautovac\tnote\t")
	contended, unsettled := false, false
	for _, c := range r.Cells {
		if c.Durability != durability || c.Proxied != proxied {
			continue
		}
		key := strconv.Itoa(c.Rows)
		if proxied {
			key = fmtDur(c.RTT)
		}
		var notes []string
		if c.OtherCores > ContendedCores {
			notes, contended = append(notes, "!"), true
		}
		if !c.Writes.Settled {
			notes, unsettled = append(notes, "?"), true
		}
		if c.Attempts > 1 {
			notes = append(notes, fmt.Sprintf("attempt %d", c.Attempts))
		}
		mark := strings.Join(notes, " ")
		wr := c.Writes
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%s\t%.2f\t%.2f\t%s\t%s\t%d\t%s\t\n", key, c.Variant, c.Workers, c.OpsPerSec,
			fmtDur(c.P50), fmtDur(c.P99), fmtDur(c.P999), fmtDur(c.Max),
			wr.WALPerRotation, wr.TuplesPerRotation, hotRatio(wr.HOTRatio), wr.IndexEntriesPerRotation,
			c.ClientCores, cores(c.ServerCores), cores(c.OtherCores), c.Autovacuums, mark)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if legend {
		fmt.Fprint(out, writesLegend)
		fmt.Fprintf(out, "CPU in cores of the %d: client = this process, server = the PostgreSQL processes, other = the rest of the\n"+
			"machine's busy CPU; autovac = autovacuum/autoanalyze runs on the variant's tables finished in the window\n", r.Environment.NumCPU)
	}
	if contended {
		fmt.Fprintf(out, "! = other load used more than %.2f cores during these cells: their numbers are low by that much CPU\n", ContendedCores)
	}
	if unsettled {
		fmt.Fprintf(out, "? = the table counters did not settle within %s: tup/rot, HOT and idx/rot of these cells are unreliable\n", statsTimeout)
	}
	fmt.Fprintln(out)
	return nil
}

// writeRatios writes the throughput ratios of one phase, direct or through the proxy. The
// targets apply to the direct cells.
func (r *Report) writeRatios(out io.Writer, durability string, proxied bool) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	first := "families"
	if proxied {
		first = "RTT"
	}
	fmt.Fprintln(tw, first+"\tworkers\ta/b\ttarget\ta/c\ttarget\tb/d\tb/p\t")
	n := 0
	for _, ra := range r.Ratios {
		if ra.Durability != durability || ra.Proxied != proxied {
			continue
		}
		n++
		key := strconv.Itoa(ra.Rows)
		if proxied {
			key = fmtDur(ra.RTT)
		}
		ab, abt := ratioCells(ra.StoreOverRaw, !proxied && ra.Workers <= 8, TargetStoreOverRaw)
		ac, act := ratioCells(ra.StoreOverConv, !proxied && ra.Workers == 1, TargetStoreOverTransaction)
		bd, _ := ratioCells(ra.RawOverFloor, false, 0)
		bp, _ := ratioCells(ra.RawOverPrevious, false, 0)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", key, ra.Workers, ab, abt, ac, act, bd, bp)
	}
	if n == 0 {
		return nil
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "throughput ratios; b/d = the single statement over the floor, b/p = the current design over the previous one")
	fmt.Fprintln(out)
	return nil
}

// writeScale writes the scale table of one phase.
func (r *Report) writeScale(out io.Writer, durability string) error {
	if len(r.Scale) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(out, "scale: latency and throughput relative to the smallest table")
	fmt.Fprintln(tw, "variant\tworkers\tfamilies\tops/s\tp50\tp99\tp50 ×\tp99 ×\tops/s ×\t")
	for _, v := range r.Config.Variants {
		for _, w := range r.Config.Workers {
			for _, s := range r.Scale {
				if s.Durability == durability && s.Variant == v && s.Workers == w {
					fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%s\t%s\t%.2f\t%.2f\t%.2f\t\n", s.Variant, s.Workers, s.Rows,
						s.OpsPerSec, fmtDur(s.P50), fmtDur(s.P99), s.P50Growth, s.P99Growth, s.OpsGrowth)
				}
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	return nil
}

// phaseSettings formats a phase's durability settings, e.g. "fsync=on, synchronous_commit=on, …".
func phaseSettings(ph Phase) string {
	var parts []string
	for _, k := range durabilitySettings {
		parts = append(parts, k+"="+ph.Settings[k])
	}
	return strings.Join(parts, ", ")
}

// ContendedCores is the CPU of other processes above which a cell is marked as disturbed.
const ContendedCores = 0.15

// writesLegend explains the write columns of a cell table.
const writesLegend = `per measured rotation, from deltas around the measured phase only:
WAL B/rot = WAL bytes the cluster inserted (pg_current_wal_insert_lsn, pg_wal_lsn_diff); every cell starts from a
  CHECKPOINT, after which, with full_page_writes=on, the first change of a page writes all of it: the warm-up takes
  the hot pages, the rest is spread over the cell's rotations, so a slow cell shows more per rotation;
tup/rot = heap tuples written (n_tup_ins + n_tup_upd + n_tup_del of pg_stat_user_tables) on the variant's tables;
HOT = n_tup_hot_upd / n_tup_upd on those tables ("-": no updates);
idx/rot ≤ = index entries written, an upper bound: Σ (n_tup_ins + n_tup_upd − n_tup_hot_upd) × indexes of the table
  (a partial index is counted for every row written, whether or not the row is in it)
`

func hotRatio(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *r)
}

func cores(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func ratioCells(v float64, targeted bool, target float64) (string, string) {
	if v == 0 {
		return "-", ""
	}
	if !targeted {
		return fmt.Sprintf("%.2f", v), ""
	}
	verdict := "met"
	if v < target {
		verdict = "MISSED"
	}
	return fmt.Sprintf("%.2f", v), fmt.Sprintf("≥ %.2g %s", target, verdict)
}

// settingsLine formats the server's settings but those of durability, which each phase's heading
// gives as they were in that phase.
func settingsLine(s map[string]string) string {
	var b strings.Builder
	for _, k := range []string{"shared_buffers", "max_connections", "max_wal_size", "wal_level", "jit"} {
		if v, ok := s[k]; ok {
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(k + "=" + v)
		}
	}
	return b.String()
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func secs(s float64) string { return time.Duration(s * float64(time.Second)).String() }

func numCPU() int { return runtime.NumCPU() }
