package tests

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func TestPepper_RetiringAPepperKeepsRecognisingItsReplaysAndUsageSaysWhatDependsOnIt(t *testing.T) {
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

func TestRevokeFamilies_EndsTheCodesItCovers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, filter := range []repository.FamilyFilter{{UserID: "user-1"}, {ClientID: "client-a"}, {UserID: "user-1", ClientID: "client-a"}} {
		pending := b.createCode(t)
		other := b.createCode(t, func(r *repository.CodeRequest) { r.UserID, r.ClientID = "user-2", "client-b" })
		if _, err := b.store.RevokeFamilies(b.ctx, filter, "logout"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.exchange(pending); !errors.Is(err, repository.ErrCodeNotFound) {
			t.Fatalf("%+v: a code minted before the bulk revocation: %v, want ErrCodeNotFound", filter, err)
		}
		got, err := b.store.Exchange(b.ctx, repository.ExchangeRequest{Code: other.code.Code.Reveal(), ClientID: "client-b",
			RedirectURI: redirectURI, CodeVerifier: other.verifier})
		if err != nil {
			t.Fatalf("%+v: another user's code at another client: %v", filter, err)
		}
		b.remember(got.Token)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_family WHERE user_id = 'user-1' AND revoked_at IS NULL"); n != 0 {
		t.Fatalf("%d live families of the revoked user", n)
	}
}

func TestGrace_ConcurrentRetriesOfOneParentDateNothingBeforeWhatTheyWaitedFor(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true, configure: func(c *repository.Config) {
		c.GraceWindow, c.GraceMaxReuses = time.Minute, 10
		c.Logger = slog.New(slog.DiscardHandler)
	}})
	const trials, retries = 60, 6
	for i := range trials {
		first := b.issue(t)
		if _, err := b.rotate(first.Token, "client-a"); err != nil {
			t.Fatal(err)
		}
		// Lost-response retries of the consumed parent, all at once: each is a grace reuse that
		// replaces the live token, whatever order they get the family's lock in.
		errs := race(retries, func() error {
			_, err := b.rotate(first.Token, "client-a")
			return err
		})
		for _, err := range errs {
			if err != nil {
				t.Fatalf("trial %d: a concurrent lost-response retry: %v (%s)", i, err, repository.ErrorCode(err))
			}
		}
		if n := b.liveTokens(t, first.FamilyID); n != 1 {
			t.Fatalf("trial %d: %d live tokens", i, n)
		}
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE consumed_at < created_at"); n != 0 {
		t.Fatalf("%d tokens consumed before they were created", n)
	}
}

func TestRotate_TheFamilyDiesWhenItsNewestTokenExpiresEvenIfSooner(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t) // 24 h
	short, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(short.Token)
	if f := b.family(t, first.FamilyID); !f.IdleExpiresAt.Equal(short.ExpiresAt) {
		t.Fatalf("family idle expiry %v, want its newest token's %v", f.IdleExpiresAt, short.ExpiresAt)
	}
	b.clock.Advance(2 * time.Hour)
	if _, err := b.store.Peek(b.ctx, short.Token.Reveal(), "client-a"); !errors.Is(err, repository.ErrTokenExpired) {
		t.Fatalf("peek: %v", err)
	}
	active, err := b.store.ActiveFamilies(b.ctx, "user-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 0 {
		t.Fatalf("a family whose only live token expired is listed as active: %+v", active)
	}
}

func TestGrace_AnExpiredParentIsAReplayInsideTheWindow(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(10*time.Minute, 3))
	first, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(first.Token)
	b.clock.Advance(30 * time.Second)
	if _, err := b.rotate(first.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Minute) // the parent has expired; the window is still open
	if _, err := b.rotate(first.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("an expired parent inside the window: %v, want ErrReplayDetected", err)
	}
}

func TestReplay_OfAnAlreadyRevokedFamilyIsReportedOnceAMinute(t *testing.T) {
	t.Parallel()
	var replays atomic.Int64
	b := setup(t, setupOptions{configure: func(c *repository.Config) {
		c.OnEvent = func(_ context.Context, e repository.Event) {
			if e.Kind == repository.EventReplayDetected {
				replays.Add(1)
			}
		}
	}})
	first, _ := b.replayed(t)
	for range 20 {
		if _, err := b.rotate(first.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
			t.Fatal(err)
		}
	}
	// The first replay revokes the family; the next reports the revoked family's replay once;
	// the other 18 are refused the same way, in silence.
	if n := replays.Load(); n != 2 {
		t.Fatalf("%d replay events for 20 presentations of one used token, want 2", n)
	}
	if n := strings.Count(b.logs.String(), `"event":"replay_detected"`); n != 2 {
		t.Fatalf("%d replay warnings logged, want 2", n)
	}
}

func TestRevokeFamilies_ConcurrentBulkRevocationsOfOverlappingFamiliesNeverDeadlock(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.Logger = slog.New(slog.DiscardHandler) }})
	for round := range 3 {
		if _, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_family (client_id, user_id, scope, idle_expires_at)
			SELECT 'client-a', 'user-1', '{}', now() + interval '1 day' FROM generate_series(1, 1200)`); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i, f := range []repository.FamilyFilter{{UserID: "user-1"}, {ClientID: "client-a"}, {UserID: "user-1", ClientID: "client-a"}, {ClientID: "client-a"}} {
			wg.Go(func() { _, errs[i] = b.store.RevokeFamilies(b.ctx, f, "bulk") })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, revocation %d: %v", round, i, err)
			}
		}
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_family WHERE revoked_at IS NULL"); n != 0 {
		t.Fatalf("%d families left alive", n)
	}
}
