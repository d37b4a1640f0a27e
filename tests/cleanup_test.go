package tests

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func TestCleanup_RemovesOnlyDeadFamiliesInBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// 25 families left idle until their tokens expire, each with a tombstone and a live token.
	var dead []string
	for range 25 {
		tok := b.issue(t)
		if _, err := b.rotate(tok.Token, "client-a"); err != nil {
			t.Fatal(err)
		}
		dead = append(dead, tok.FamilyID)
	}
	b.clock.Advance(2 * time.Hour)
	// A revoked family whose tokens are still unexpired keeps its evidence.
	revoked := b.issue(t)
	if err := b.store.RevokeFamily(b.ctx, revoked.FamilyID, "test"); err != nil {
		t.Fatal(err)
	}
	// A live family with a tombstone: the replay must stay detectable after cleanup.
	live := b.issue(t)
	liveNext, err := b.rotate(live.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(23 * time.Hour) // the 25 families' tokens are now 1 h past expiry

	for _, bad := range []repository.CleanupOptions{{BatchSize: -1}, {Limit: -1}, {Retain: -time.Second}, {Pause: -time.Second}, {Pause: time.Hour}} {
		if _, err := b.store.Cleanup(b.ctx, bad); !errors.Is(err, repository.ErrInvalidInput) {
			t.Fatalf("cleanup options %+v: %v, want ErrInvalidInput", bad, err)
		}
	}
	// Retain keeps them while their expiry is younger than the retention.
	res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{BatchSize: 10, Retain: 2 * time.Hour})
	if err != nil || res.Families != 0 {
		t.Fatalf("cleanup within retention deleted %+v (%v)", res, err)
	}
	// Limit caps a run; batches are bounded.
	res, err = b.store.Cleanup(b.ctx, repository.CleanupOptions{BatchSize: 10, Limit: 15})
	if err != nil {
		t.Fatal(err)
	}
	// Three batches of five families (ten tokens each), one (empty) each of codes, states, sealed
	// successors, access tokens and revocation feed entries.
	if res.Families != 15 || res.RefreshTokens != 30 || res.Batches != 8 {
		t.Fatalf("limited cleanup: %+v, want 15 families, 30 tokens in 3+1+1+1+1+1 batches", res)
	}
	res, err = b.store.Cleanup(b.ctx, repository.CleanupOptions{BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Families != 10 || res.RefreshTokens != 20 || res.Batches != 10 {
		t.Fatalf("second cleanup: %+v, want 10 families, 20 tokens in 5+1+1+1+1+1 batches (two families, four tokens each)", res)
	}
	for _, id := range dead {
		if _, err := b.store.Family(b.ctx, id); !errors.Is(err, repository.ErrFamilyNotFound) {
			t.Fatalf("dead family %s survived cleanup: %v", id, err)
		}
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = ANY($1::uuid[])", dead); n != 0 {
		t.Fatalf("%d tokens of deleted families remain", n)
	}
	// What must stay, stayed.
	if f := b.family(t, revoked.FamilyID); f.RevokedAt == nil {
		t.Fatal("revoked family lost its mark")
	}
	if _, err := b.rotate(live.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay after cleanup: got %v, want ErrReplayDetected", err)
	}
	if _, err := b.rotate(liveNext.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after replay: %v", err)
	}
	// Once every token of the revoked and live families has expired, they go too.
	b.clock.Advance(48 * time.Hour)
	res, err = b.store.Cleanup(b.ctx, repository.CleanupOptions{})
	if err != nil || res.Families != 2 || res.RefreshTokens != 3 {
		t.Fatalf("final cleanup: %+v (%v), want 2 families and 3 tokens", res, err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_family"); n != 0 {
		t.Fatalf("%d families left", n)
	}
}

func TestCleanup_BatchesAreBoundedByTokensNotFamilies(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Dead families of 6, 6, 6, 30 and 6 tokens, in that order of expiry.
	sizes := []int{6, 6, 6, 30, 6}
	for _, size := range sizes {
		tok := b.issue(t)
		for range size - 1 {
			next, err := b.rotate(tok.Token, "client-a")
			if err != nil {
				t.Fatal(err)
			}
			tok = next
		}
		b.clock.Advance(time.Minute)
	}
	b.clock.Advance(48 * time.Hour)
	var perBatch []int64
	var last int64
	res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{BatchSize: 13, OnBatch: func(r repository.CleanupResult) {
		perBatch = append(perBatch, r.RefreshTokens-last)
		last = r.RefreshTokens
	}})
	if err != nil {
		t.Fatal(err)
	}
	// 6+6 fit in 13 tokens; 6 alone (6+30 does not); 30 alone, the first of its batch; 6.
	want := []int64{12, 6, 30, 6, 0, 0, 0, 0, 0}
	if res.Families != 5 || res.RefreshTokens != 54 || !slices.Equal(perBatch, want) {
		t.Fatalf("cleanup: %+v, tokens per batch %v; want 5 families, 54 tokens in batches of %v (families, then codes, states, sealed successors, access tokens and feed entries)", res, perBatch, want)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token"); n != 0 {
		t.Fatalf("%d tokens left", n)
	}
}

func TestCleanup_ConcurrentCleanersDeleteEveryDeadFamilyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const families = 120
	for range families {
		b.issue(t)
	}
	b.clock.Advance(25 * time.Hour)
	results := make(chan repository.CleanupResult, 4)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{BatchSize: 3})
			results <- res
			errs <- err
		}()
	}
	var deleted, tokens int64
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		res := <-results
		deleted += res.Families
		tokens += res.RefreshTokens
	}
	if deleted != families || tokens != families {
		t.Fatalf("four cleaners deleted %d families and %d tokens in all, want %d of each", deleted, tokens, families)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_family"); n != 0 {
		t.Fatalf("%d dead families left after four concurrent cleaners", n)
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
	tx := b.begin(t)
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
