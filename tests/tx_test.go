package tests

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

// waitForLockWait waits until a backend running a statement named name waits for a lock.
func (b *bundle) waitForLockWait(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '-- name: ' || $1 || ' %'`, name) > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s statement ever waited for a lock", name)
}

func TestRotate_RevocationCommittedWhileTheRotationWaitsLeavesNoSuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)

	// Another session holds the family row, as a revocation in progress does.
	holder, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.Background())
	if _, err := holder.Exec(b.ctx, "SELECT 1 FROM oauth_family WHERE id = $1 FOR NO KEY UPDATE", tok.FamilyID); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.rotate(tok.Token, "client-a")
		done <- err
	}()
	b.waitForLockWait(t, "RefreshTokenRotate")
	if _, err := holder.Exec(b.ctx, "UPDATE oauth_family SET revoked_at = now(), revoked_reason = 'test' WHERE id = $1", tok.FamilyID); err != nil {
		t.Fatal(err)
	}
	if err := holder.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("rotation that waited for a revocation: %v, want ErrFamilyRevoked", err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", tok.FamilyID); n != 1 {
		t.Fatalf("the revoked family gained a successor: %d token rows (I3)", n)
	}
	if n := b.liveTokens(t, tok.FamilyID); n != 1 {
		t.Fatal("the refused rotation consumed the token")
	}
}

func TestRotate_ReplayInsideACallerTransactionSurvivesItsRollback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)
	next, err := b.rotate(first.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	_, err = b.store.WithDB(tx).Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay in a transaction: %v", err)
	}
	// The usual error handling: roll back.
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil || f.RevokedReason != repository.ReasonReplayDetected {
		t.Fatalf("the rollback undid the replay's revocation: %+v", f)
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after the replay: %v, want ErrFamilyRevoked", err)
	}
}

func TestRotate_ReplayInsideATransactionHoldingTheFamilyJoinsIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	s := b.store.WithDB(tx)
	// The transaction rotates, so it holds the family's row lock, and then replays.
	next, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay: %v", err)
	}
	if err := tx.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after a committed replay: %v, want ErrFamilyRevoked", err)
	}
}

func TestCleanup_SkipsAFamilyARotationHoldsInsteadOfWaiting(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The held family is the oldest: a cleaner must pass over it, not stop at it, whatever its
	// batch size.
	held := b.issue(t)
	b.clock.Advance(time.Minute)
	other := b.issue(t)
	b.clock.Advance(25 * time.Hour)
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(b.ctx, "SELECT 1 FROM oauth_family WHERE id = $1 FOR NO KEY UPDATE", held.FamilyID); err != nil {
		t.Fatal(err)
	}
	// A cleaner that waited for the lock would hang here until the deadline.
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	res, err := b.store.Cleanup(ctx, repository.CleanupOptions{BatchSize: 1})
	if err != nil || res.Families != 1 {
		t.Fatalf("cleanup beside a held family: %+v, %v; want the other one deleted", res, err)
	}
	if _, err := b.store.Family(b.ctx, other.FamilyID); !errors.Is(err, repository.ErrFamilyNotFound) {
		t.Fatal("the unheld dead family survived")
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{}); err != nil || res.Families != 1 {
		t.Fatalf("cleanup after the lock was released: %+v, %v", res, err)
	}
}
