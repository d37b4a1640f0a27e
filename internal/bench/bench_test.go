package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
)

func TestTrimQueryText(t *testing.T) {
	msg := "duration: 0.1 ms  plan:\nQuery Text: -- name: X\nWITH a AS (\n  SELECT 1\n)\nNested Loop  (cost=1..2 rows=1 width=1) (actual time=0..0 rows=1 loops=1)\n  ->  Seq Scan (cost=0..1 rows=1 width=1)"
	got := trimQueryText(msg)
	want := "duration: 0.1 ms  plan:\nNested Loop  (cost=1..2 rows=1 width=1) (actual time=0..0 rows=1 loops=1)\n  ->  Seq Scan (cost=0..1 rows=1 width=1)"
	if got != want {
		t.Errorf("trimQueryText:\n%s\nwant:\n%s", got, want)
	}
}

func TestOptions_Refused(t *testing.T) {
	for _, o := range []Options{
		{Workers: []int{0}},
		{Variants: []string{"x"}},
		{Scale: true, ScaleRows: []int{10, 5}},
		{Rows: -1},
		{Durability: "sometimes"},
		{RTTs: []time.Duration{-time.Millisecond}},
		{RTTVariants: []string{"x"}},
	} {
		if err := o.setDefaults(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestRun_Smoke runs every variant briefly against a throwaway cluster, in both durability phases
// and through the delaying proxy, and checks the report: every number present and plausible.
func TestRun_Smoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	if _, err := pgtemp.FindBinDir(); errors.Is(err, pgtemp.ErrNoServerBinaries) {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const rtt = 500 * time.Microsecond
	var out bytes.Buffer
	err := Run(ctx, Options{
		Duration:    300 * time.Millisecond,
		Warmup:      100 * time.Millisecond,
		Workers:     []int{2},
		Variants:    []string{VariantStore, VariantRaw, VariantTransaction, VariantFloor, VariantPrevious},
		Rows:        2_000,
		RTTs:        []time.Duration{0, rtt},
		RTTWorkers:  []int{1},
		RTTVariants: []string{VariantStore, VariantTransaction},
		Explain:     true,
		JSON:        true,
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	// Every cell twice: durability on, the headline, then off; the RTT series once, in the first.
	if len(rep.Phases) != 2 || rep.Phases[0].Settings["fsync"] != "on" || rep.Phases[0].Settings["full_page_writes"] != "on" ||
		rep.Phases[1].Settings["synchronous_commit"] != "off" {
		t.Errorf("phases %+v", rep.Phases)
	}
	count := map[string]int{}
	for _, c := range rep.Cells {
		key := c.Durability
		if c.Proxied {
			key += " via proxy"
		}
		count[key]++
	}
	if want := map[string]int{DurabilityOn: 5, DurabilityOff: 5, DurabilityOn + " via proxy": 4}; !maps.Equal(count, want) {
		t.Fatalf("cells %v, want %v", count, want)
	}
	for _, c := range rep.Cells {
		if c.Ops == 0 || c.OpsPerSec <= 0 || c.P50 <= 0 || c.P50 > c.P99 || c.P99 > c.P999 || c.P999 > c.Max {
			t.Errorf("implausible cell %+v", c)
		}
		if c.Proxied && c.RTT == rtt && c.P50 < rtt {
			t.Errorf("variant %s at RTT %s: p50 %s", c.Variant, c.RTT, c.P50)
		}
		// A rotation gives the family row its successor and inserts the consumed token's tombstone:
		// two heap tuples, exactly, when the counters cover the measured phase and nothing else.
		// The previous design consumed the token, bumped the family and inserted the successor:
		// three. The floor deletes one and inserts one, and updates nothing.
		w := c.Writes
		tuples, updates := 2.0, true
		switch c.Variant {
		case VariantPrevious:
			tuples = 3
		case VariantFloor:
			updates = false
		}
		if !w.Settled || w.WALPerRotation <= 0 || w.TuplesPerRotation != tuples || (w.HOTRatio != nil) != updates ||
			w.IndexEntriesPerRotation < tuples-1 {
			t.Errorf("variant %s, %d workers, durability %s: implausible writes %+v", c.Variant, c.Workers, c.Durability, w)
		}
	}
	var direct, proxied int
	for _, ra := range rep.Ratios {
		switch {
		case ra.Proxied:
			proxied++
			if ra.StoreOverConv <= 0 {
				t.Errorf("RTT ratio %+v", ra)
			}
		default:
			direct++
			if ra.StoreOverRaw <= 0 || ra.StoreOverConv <= 0 || ra.RawOverFloor <= 0 || ra.RawOverPrevious <= 0 {
				t.Errorf("ratio %+v", ra)
			}
		}
	}
	if direct != 2 || proxied != 2 {
		t.Errorf("%d ratios of direct cells, want 2, and %d of RTT cells, want 2", direct, proxied)
	}
	var text bytes.Buffer
	if err := rep.writeText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"== durability fsync=on, synchronous_commit=on, full_page_writes=on (headline)",
		"== durability fsync=off, synchronous_commit=off, full_page_writes=off",
		"WAL B/rot", "idx/rot ≤", "an upper bound", "b/d", "b/p", "round-trip time series", "500µs",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the text report lacks %q:\n%s", want, text.String())
		}
	}
	if rep.Explain == nil || !strings.Contains(rep.Explain.Custom, "oauth_refresh_tombstone") || !regexp.MustCompile(`\$[0-9]+`).MatchString(rep.Explain.Generic) {
		t.Errorf("explain %+v", rep.Explain)
	}
}
