package tests

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
	"github.com/oauthstore/oauthstore/tests/dbtest"
)

// TestDurability_AReplayRevocationSurvivesACrashUnderAsynchronousCommit runs a server whose commits
// return before their WAL is written (synchronous_commit off, the WAL writer asleep for 10 s): an
// ordinary acknowledged write may be lost in a crash there, as PostgreSQL documents. A revocation
// the store reported (I7) must not be: a replay revokes the family, the server crashes at once,
// and after recovery the family is revoked and its live token refused.
func TestDurability_AReplayRevocationSurvivesACrashUnderAsynchronousCommit(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c, err := pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{
		"synchronous_commit": "off", "wal_writer_delay": "10000ms", "wal_writer_flush_after": "0", "max_connections": "20",
	}})
	if errors.Is(err, pgtemp.ErrNoServerBinaries) && dbtest.Current().Provider != "binaries" {
		t.Skipf("a crash test needs a PostgreSQL cluster of its own, from the server binaries, besides the suite's %q server: %v",
			dbtest.Current().Provider, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	pool, err := pgxpool.New(ctx, c.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	pepper := make([]byte, repository.MinPepperBytes)
	var events []repository.Event
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(pepper), GraceWindow: repository.StrictRotation,
		OnEvent: func(_ context.Context, e repository.Event) { events = append(events, e) }})
	if err != nil {
		t.Fatal(err)
	}
	const families = 20
	type family struct{ first, live *repository.RefreshToken }
	var fams []family
	for range families {
		first, err := store.Issue(ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1"})
		if err != nil {
			t.Fatal(err)
		}
		live, err := store.Rotate(ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
		if err != nil {
			t.Fatal(err)
		}
		fams = append(fams, family{first, live})
	}
	// What came before the replays is on disk.
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	for i, f := range fams {
		if _, err := store.Rotate(ctx, repository.RotateRequest{Token: f.first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
			t.Fatalf("family %d: replay: %v, want ErrReplayDetected", i, err)
		}
	}
	revoked := 0
	for _, e := range events {
		if e.Kind == repository.EventReplayDetected && e.FamilyRevoked {
			revoked++
		}
	}
	if revoked != families {
		t.Fatalf("%d replay events reported a revocation, want %d", revoked, families)
	}
	pool.Close()
	if err := c.Restart(ctx, true); err != nil {
		t.Fatal(err)
	}
	pool, err = pgxpool.New(ctx, c.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err = repository.New(pool, repository.Config{Pepper: repository.NewKey(pepper), GraceWindow: repository.StrictRotation})
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, f := range fams {
		fam, err := store.Family(ctx, f.live.FamilyID)
		if err != nil {
			t.Fatal(err)
		}
		if fam.RevokedAt == nil {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d replay revocations the store reported were lost in the crash", lost, families)
	}
	for i, f := range fams {
		if _, err := store.Rotate(ctx, repository.RotateRequest{Token: f.live.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrFamilyRevoked) {
			t.Fatalf("family %d: its live token after the crash: %v, want ErrFamilyRevoked", i, err)
		}
	}
}
