package tests

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/oauthstore/oauthstore/repository"
)

func TestPepper_RetiringAPepperKeepsRecognisingItsReplaysAndUsageSaysWhatDependsOnIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	old := repository.Pepper{ID: "old", Secret: repository.NewKey(bytes.Repeat([]byte{1}, 32))}
	cur := repository.Pepper{ID: "new", Secret: repository.NewKey(bytes.Repeat([]byte{2}, 32))}
	store := func(ring ...repository.Pepper) *repository.Store {
		s, err := repository.New(b.pool, repository.Config{Peppers: ring, GraceWindow: repository.StrictRotation, Clock: b.clock.Now, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	usage := func() map[string]repository.PepperUse {
		uses, err := b.store.PepperUsage(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]repository.PepperUse{}
		for _, u := range uses {
			m[u.PepperID] = u
		}
		return m
	}
	t1, err := store(old).Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	// The new pepper goes first; a thief rotates the victim's token before the victim does.
	ring := store(cur, old)
	t2, err := ring.Rotate(b.ctx, repository.RotateRequest{Token: t1.Token.Reveal(), ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(t1.Token, t2.Token)
	// No live token uses the old pepper any more, but the live family's tombstone does: it may be
	// retired, not removed.
	u := usage()["old"]
	if u.LiveTokens != 0 || u.Tombstones != 1 || !u.Retirable() || u.Removable() {
		t.Fatalf("usage of the old pepper: %+v (retirable %v, removable %v); want one tombstone of a live family, retirable, not removable",
			u, u.Retirable(), u.Removable())
	}
	// Retired: the victim's replay of the old-pepper token is still recognised, and revokes.
	retired := old
	retired.Retired = true
	if _, err := store(cur, retired).Rotate(b.ctx, repository.RotateRequest{Token: t1.Token.Reveal(), ClientID: "c"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay of a token of the retired pepper: %v, want ErrReplayDetected", err)
	}
	if _, err := ring.Rotate(b.ctx, repository.RotateRequest{Token: t2.Token.Reveal(), ClientID: "c"}); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("the thief's token after the replay: %v, want ErrFamilyRevoked", err)
	}
	// The family is revoked: nothing depends on the old pepper any more.
	if u, ok := usage()["old"]; ok && !u.Removable() {
		t.Fatalf("usage of the old pepper after its family's revocation: %+v, want removable", u)
	}
	// A live token, a pending code and a state made under a retired pepper are not accepted.
	live, err := store(old).Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(live.Token)
	if u := usage()["old"]; u.LiveTokens != 1 || u.Retirable() {
		t.Fatalf("usage with a live token: %+v, want one live token, not retirable", u)
	}
	before := b.tableChecksum(t)
	if _, err := store(cur, retired).Rotate(b.ctx, repository.RotateRequest{Token: live.Token.Reveal(), ClientID: "c"}); !errors.Is(err, repository.ErrTokenNotFound) {
		t.Fatalf("live token of a retired pepper: %v, want ErrTokenNotFound", err)
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("refusing a live token of a retired pepper changed the tables")
	}
	if _, err := repository.New(b.pool, repository.Config{Peppers: []repository.Pepper{retired, cur}}); !errors.Is(err, repository.ErrInvalidInput) {
		t.Fatalf("a retired current pepper: %v, want ErrInvalidInput", err)
	}
	if ring, err := repository.ParsePepperRing("new:" + strings.Repeat("Ag", 22) + ",old:" + strings.Repeat("AQ", 22) + ":retired"); err != nil ||
		len(ring) != 2 || ring[0].Retired || !ring[1].Retired {
		t.Fatalf("ring with a retired entry: %v, %v", ring, err)
	}
}

func TestPepper_OldPepperTokenRotatesIntoTheCurrentPepperAndARetiredPepperIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	k1 := repository.Pepper{ID: "k1", Secret: repository.NewKey(bytes.Repeat([]byte{1}, 32))}
	k2 := repository.Pepper{ID: "k2", Secret: repository.NewKey(bytes.Repeat([]byte{2}, 32))}
	store := func(ring ...repository.Pepper) *repository.Store {
		s, err := repository.New(b.pool, repository.Config{Peppers: ring, GraceWindow: repository.StrictRotation, Clock: b.clock.Now, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	old := store(k1)
	a, err := old.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	untouched, err := old.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}

	// Step 1 of the procedure: the new pepper goes first, the old one stays in the ring.
	ring := store(k2, k1)
	a2, err := ring.Rotate(b.ctx, repository.RotateRequest{Token: a.Token.Reveal(), ClientID: "c"})
	if err != nil {
		t.Fatalf("rotating a token made with the old pepper: %v", err)
	}
	var pepperID string
	if err := b.pool.QueryRow(b.ctx, "SELECT pepper_id FROM oauth_refresh_token WHERE family_id = $1 AND consumed_at IS NULL", a.FamilyID).Scan(&pepperID); err != nil || pepperID != "k2" {
		t.Fatalf("successor made with pepper %q (%v), want k2", pepperID, err)
	}
	// Step 2: the old pepper is retired. Its tokens are unknown; the re-hashed family lives on.
	current := store(k2)
	if _, err := current.Rotate(b.ctx, repository.RotateRequest{Token: untouched.Token.Reveal(), ClientID: "c"}); !errors.Is(err, repository.ErrTokenNotFound) {
		t.Fatalf("token of a retired pepper: %v, want ErrTokenNotFound", err)
	}
	if _, err := current.Rotate(b.ctx, repository.RotateRequest{Token: a2.Token.Reveal(), ClientID: "c"}); err != nil {
		t.Fatalf("re-hashed family under the current pepper alone: %v", err)
	}
	// A replay of the old-pepper tombstone is still recognised while the old pepper is in the ring.
	if _, err := ring.Rotate(b.ctx, repository.RotateRequest{Token: a.Token.Reveal(), ClientID: "c"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replay of an old-pepper tombstone: %v", err)
	}
}

func TestPepper_AParentMadeUnderAnOlderPepperGetsTheSameSuccessorWithinTheWindow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	old := repository.Pepper{ID: "old", Secret: repository.NewKey(bytes.Repeat([]byte{1}, 32))}
	cur := repository.Pepper{ID: "new", Secret: repository.NewKey(bytes.Repeat([]byte{2}, 32))}
	store := func(ring ...repository.Pepper) *repository.Store {
		s, err := repository.New(b.pool, repository.Config{Peppers: ring, Clock: b.clock.Now, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first, err := store(old).Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	ring := store(cur, old) // the default grace window
	next, err := ring.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := ring.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "c"})
	if err != nil || again.Token.Reveal() != next.Token.Reveal() {
		t.Fatalf("the old-pepper parent again within the window: %v; want the same successor", err)
	}
	b.remember(first.Token, next.Token)
	b.assertAliveWithOneLiveToken(t, first.FamilyID)
}
