package tests

import (
	"errors"
	"testing"

	"github.com/golang-migrate/migrate/v4"

	"github.com/oauthstore/oauthstore/schema"
)

func TestSchema_MigrateUpDownToZeroUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tables := func() int {
		// Tables and views, a partitioned table counted once (migrating down and up again gives the
		// unpartitioned layout).
		return b.count(t, `SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace
			AND relname LIKE 'oauth\_%' AND relkind IN ('r', 'p', 'v') AND NOT relispartition`)
	}
	want := tables()
	if want == 0 {
		t.Fatal("the template database has no oauth_ tables")
	}
	// Up on an up-to-date database is a success.
	if err := schema.Migrate(b.ctx, b.pool); err != nil {
		t.Fatalf("migrate up when current: %v", err)
	}
	m, err := schema.NewMigrator(b.pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v, dirty, err := m.Version()
	if err != nil || dirty || v == 0 {
		t.Fatalf("version %d dirty %v: %v", v, dirty, err)
	}
	if err := m.Down(); err != nil {
		t.Fatalf("down to zero: %v", err)
	}
	if _, _, err := m.Version(); !errors.Is(err, migrate.ErrNilVersion) {
		t.Fatalf("version after down: %v, want none", err)
	}
	if n := tables(); n != 0 {
		t.Fatalf("%d oauth_ tables left after migrating down to zero", n)
	}
	if err := schema.Migrate(b.ctx, b.pool); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if n := tables(); n != want {
		t.Fatalf("%d tables after up again, want %d", n, want)
	}
	// The schema works after the round trip.
	tok := b.issue(t)
	if _, err := b.rotate(tok.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
}
