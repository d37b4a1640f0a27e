package bench

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"
)

// Durability of the phases of a run (Options.Durability): fsync, synchronous_commit and
// full_page_writes all on, all off, or one phase with each, on first.
const (
	DurabilityBoth = "both"
	DurabilityOn   = "on"
	DurabilityOff  = "off"
	// DurabilityAsFound is the one phase on a database given by URL: its settings are reported,
	// never changed.
	DurabilityAsFound = "as found"
)

// durabilitySettings are the settings a phase switches together.
var durabilitySettings = []string{"fsync", "synchronous_commit", "full_page_writes"}

// Phase is one pass over the cells under one set of durability settings.
type Phase struct {
	Durability string `json:"durability"`
	// Settings are fsync, synchronous_commit and full_page_writes as a new connection found them.
	Settings map[string]string `json:"settings"`
}

// phases returns the durability of each phase, the headline first.
func (e *env) phases() []string {
	switch {
	case e.cluster == nil:
		return []string{DurabilityAsFound}
	case e.opts.Durability == DurabilityBoth:
		return []string{DurabilityOn, DurabilityOff}
	}
	return []string{e.opts.Durability}
}

// setDurability switches the throwaway cluster to durability d with ALTER SYSTEM and a reload,
// which takes effect without a restart for all three settings, and waits until a new connection
// sees them; it returns the settings as found. On a database given by URL (d = as found) it
// changes nothing.
func (e *env) setDurability(ctx context.Context, d string) (map[string]string, error) {
	want := map[string]string{}
	if d == DurabilityOn || d == DurabilityOff {
		for _, k := range durabilitySettings {
			want[k] = d
		}
	}
	found, err := e.durabilityFound(ctx)
	if err != nil || d == DurabilityAsFound || maps.Equal(found, want) {
		return found, err
	}
	for _, k := range durabilitySettings {
		if _, err := e.admin.Exec(ctx, "ALTER SYSTEM SET "+k+" = "+d); err != nil {
			return nil, fmt.Errorf("durability %s: %w", d, err)
		}
	}
	if _, err := e.admin.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return nil, fmt.Errorf("durability %s: %w", d, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if found, err = e.durabilityFound(ctx); err != nil || maps.Equal(found, want) {
			return found, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("durability %s: the server still has %v after a reload", d, found)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// durabilityFound reads the durability settings on a new connection: a backend started after the
// postmaster reloaded its configuration has them.
func (e *env) durabilityFound(ctx context.Context) (map[string]string, error) {
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT name, setting FROM pg_settings WHERE name = ANY($1)", durabilitySettings)
	if err != nil {
		return nil, err
	}
	found := map[string]string{}
	var k, v string
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
		found[k] = v
		return nil
	})
	return found, err
}
