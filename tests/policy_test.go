package tests

import (
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func TestGrace_TwoClientsRacingOneTokenLeaveOneLiveTokenAndTheFamilyAlive(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 1))
	const trials = 50
	for range trials {
		first := b.issue(t)
		var got [2]*repository.RefreshToken
		errs := race(2, func(i int) (err error) {
			got[i], err = b.rotate(first.Token, "client-a")
			return err
		})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("racer %d: %v; with grace on both racers get a token", i, err)
			}
		}
		if f := b.family(t, first.FamilyID); f.RevokedAt != nil {
			t.Fatalf("family revoked by a race inside the grace window: %+v", f)
		}
		if n := b.liveTokens(t, first.FamilyID); n != 1 {
			t.Fatalf("family holds %d live tokens, want 1", n)
		}
		// Both racers hold the same token, and it is the live one.
		if got[0].Token.Reveal() != got[1].Token.Reveal() {
			t.Fatal("the racers got different tokens: the family forked")
		}
		if _, err := b.store.Peek(b.ctx, got[0].Token.Reveal(), got[0].ClientID); err != nil {
			t.Fatalf("the racers' token is not live: %v", err)
		}
	}
}

func TestGrace_LostResponseRetrySucceedsWithinTheWindow(t *testing.T) {
	t.Parallel()
	events := &eventLog{}
	b := setup(t, setupOptions{configure: func(c *repository.Config) {
		c.GraceWindow, c.OnEvent = time.Minute, events.add
	}})
	t1 := b.issue(t)
	lost, err := b.rotate(t1.Token, "client-a") // the response never reaches the client
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(30 * time.Second)
	t3, err := b.rotate(t1.Token, "client-a")
	if err != nil {
		t.Fatalf("retry within the window: %v", err)
	}
	if n := b.liveTokens(t, t1.FamilyID); n != 1 {
		t.Fatalf("%d live tokens after the grace reuse, want 1", n)
	}
	// The retry gets the lost token itself, as it was handed out, and it is still live.
	if t3.Token.Reveal() != lost.Token.Reveal() || !t3.ExpiresAt.Equal(lost.ExpiresAt) {
		t.Fatal("the retry got another token than the lost one")
	}
	if _, err := b.store.Peek(b.ctx, lost.Token.Reveal(), lost.ClientID); err != nil {
		t.Fatalf("the lost token after the grace reuse: %v, want it live", err)
	}
	if !events.has(repository.EventGraceReuse, t1.FamilyID) {
		t.Fatalf("no grace event: %+v", events.all())
	}
	// The family goes on from the retried token.
	if _, err := b.rotate(t3.Token, "client-a"); err != nil {
		t.Fatalf("rotating the grace successor: %v", err)
	}
	if f := b.family(t, t1.FamilyID); f.RevokedAt != nil || f.RotationCount != 2 {
		t.Fatalf("family: %+v, want two rotations (the retry is none)", f)
	}
}

func TestGrace_RetryAfterTheWindowRevokesTheFamily(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 1))
	t1 := b.issue(t)
	t2, err := b.rotate(t1.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Minute) // the window is [consumed, consumed + 1 min)
	if _, err := b.rotate(t1.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("retry at the end of the window: %v, want ErrReplayDetected", err)
	}
	if _, err := b.rotate(t2.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("current token after the replay: %v, want ErrFamilyRevoked", err)
	}
}

func TestGrace_RetryPastTheCountRevokesTheFamily(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 2))
	t1 := b.issue(t)
	if _, err := b.rotate(t1.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := b.rotate(t1.Token, "client-a"); err != nil {
			t.Fatalf("grace reuse %d of 2: %v", i+1, err)
		}
	}
	if _, err := b.rotate(t1.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("third reuse with an allowance of 2: %v, want ErrReplayDetected", err)
	}
	if f := b.family(t, t1.FamilyID); f.RevokedAt == nil {
		t.Fatal("family not revoked")
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", t1.FamilyID); n != 2 {
		t.Fatalf("%d token rows, want 2 (t1 and its successor, handed out three times)", n)
	}
}

func TestGrace_GrandparentInsideTheWindowIsAReplay(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 5))
	t1 := b.issue(t)
	t2, err := b.rotate(t1.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(t2.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Second)
	if _, err := b.rotate(t1.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("grandparent inside the window: %v, want ErrReplayDetected", err)
	}
	// The parent of a token that was itself used is no longer eligible either.
	b2 := setup(t, withGrace(time.Minute, 5))
	u1 := b2.issue(t)
	u2, err := b2.rotate(u1.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.rotate(u2.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.rotate(u2.Token, "client-a"); err != nil {
		t.Fatalf("parent of the unused current token: %v", err)
	}
	if _, err := b2.rotate(u1.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("grandparent after a grace reuse of its child: %v, want ErrReplayDetected", err)
	}
}

func TestLifetime_AbsoluteLifetimeCapsEverySuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	start := b.clock.Now()
	first, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Lifetime: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	end := start.Add(2 * time.Hour)
	if !first.ExpiresAt.Equal(end) || first.FamilyExpiresAt == nil || !first.FamilyExpiresAt.Equal(end) {
		t.Fatalf("first token expires %v (family %v), want both at %v: the 24 h idle TTL is capped", first.ExpiresAt, first.FamilyExpiresAt, end)
	}
	tok := first
	for range 3 {
		b.clock.Advance(30 * time.Minute)
		tok, err = b.rotate(tok.Token, "client-a")
		if err != nil {
			t.Fatal(err)
		}
		if !tok.ExpiresAt.Equal(end) {
			t.Fatalf("successor expires %v, after the family's end %v", tok.ExpiresAt, end)
		}
	}
	if f := b.family(t, first.FamilyID); f.ExpiresAt == nil || !f.ExpiresAt.Equal(end) {
		t.Fatalf("rotation moved the family's end: %+v", f)
	}
	b.clock.Set(end)
	if _, err := b.rotate(tok.Token, "client-a"); !errors.Is(err, repository.ErrTokenExpired) {
		t.Fatalf("rotation at the family's end: %v, want ErrTokenExpired", err)
	}
	// The configured default applies when the request names none.
	b2 := setup(t, setupOptions{configure: func(c *repository.Config) { c.FamilyLifetime = time.Hour }})
	tok2 := b2.issue(t)
	if want := b2.clock.Now().Add(time.Hour); tok2.FamilyExpiresAt == nil || !tok2.FamilyExpiresAt.Equal(want) {
		t.Fatalf("default lifetime: family ends %v, want %v", tok2.FamilyExpiresAt, want)
	}
}

func TestSender_WrongThumbprintConsumesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const jktA, jktB = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
	first, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", SenderThumbprint: jktA})
	if err != nil {
		t.Fatal(err)
	}
	before := b.tableChecksum(t)
	for _, presented := range []string{jktB, ""} {
		_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", SenderThumbprint: presented})
		if !errors.Is(err, repository.ErrSenderMismatch) || !errors.Is(err, repository.ErrInvalidGrant) {
			t.Fatalf("thumbprint %q: %v, want ErrSenderMismatch", presented, err)
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a wrong key changed the tables")
	}
	next, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", SenderThumbprint: jktA})
	if err != nil {
		t.Fatalf("the right key: %v", err)
	}
	// The binding is the family's: the successor needs the same key, and a replay of the consumed
	// token without the key revokes nothing.
	before = b.tableChecksum(t)
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", SenderThumbprint: jktB}); !errors.Is(err, repository.ErrSenderMismatch) {
		t.Fatalf("replay with the wrong key: %v, want ErrSenderMismatch", err)
	}
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: next.Token.Reveal(), ClientID: "client-a", SenderThumbprint: jktB}); !errors.Is(err, repository.ErrSenderMismatch) {
		t.Fatalf("successor with the wrong key: %v", err)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a wrong key changed the tables")
	}
	if _, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", SenderThumbprint: "not/base64url="}); !errors.Is(err, repository.ErrInvalidInput) {
		t.Fatalf("malformed thumbprint: %v", err)
	}
}

func TestScope_NarrowingCarriesTheSubsetAndWiderScopeConsumesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"openid", "email", "offline_access"}})
	if err != nil {
		t.Fatal(err)
	}
	before := b.tableChecksum(t)
	_, err = b.store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", Scope: []string{"email", "admin"}})
	if !errors.Is(err, repository.ErrInvalidScope) || errors.Is(err, repository.ErrInvalidGrant) {
		t.Fatalf("wider scope: %v, want ErrInvalidScope (not an invalid grant)", err)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a request for wider scope changed the tables")
	}
	narrow, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", Scope: []string{"email"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(narrow.Scope, []string{"email"}) {
		t.Fatalf("narrowed token carries %v", narrow.Scope)
	}
	if info, err := b.store.Peek(b.ctx, narrow.Token.Reveal(), narrow.ClientID); err != nil || !slices.Equal(info.Scope, []string{"email"}) {
		t.Fatalf("stored scope of the narrowed token: %+v, %v", info, err)
	}
	// Omitting scope means the scope originally granted (RFC 6749 §6).
	full, err := b.rotate(narrow.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(full.Scope, []string{"openid", "email", "offline_access"}) {
		t.Fatalf("rotation without scope carries %v, want the granted scope", full.Scope)
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
		errs := race(retries, func(int) error {
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
	b.checkInvariants(t, "after the retries")
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

func TestGrace_EightRacersPresentingOneParentAllGetTheSameToken(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 10))
	const trials, racers = 20, 8
	for i := range trials {
		first := b.issue(t)
		got := make([]*repository.RefreshToken, racers)
		for r, err := range race(racers, func(r int) (err error) {
			got[r], err = b.rotate(first.Token, "client-a")
			return err
		}) {
			if err != nil {
				t.Fatalf("trial %d, racer %d: %v; within the window every racer gets the token", i, r, err)
			}
		}
		for r := range got {
			if got[r].Token.Reveal() != got[0].Token.Reveal() || !got[r].ExpiresAt.Equal(got[0].ExpiresAt) {
				t.Fatalf("trial %d: racers %d and 0 got different tokens: the family forked", i, r)
			}
		}
		b.assertAliveWithOneLiveToken(t, first.FamilyID)
		if n := b.family(t, first.FamilyID).RotationCount; n != 1 {
			t.Fatalf("trial %d: %d rotations, want 1", i, n)
		}
	}
	b.checkInvariants(t, "after the races")
}

func TestGrace_ARacerRotatingTheLiveTokenEndsItsParentsGrace(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 10))
	const racers = 6
	var trials, sameToken, replays int64
	var q quota
	q.need("parents presented before the live token's rotation (the same token back)", 20, func() int64 { return sameToken })
	q.need("parents presented after it (replays)", 20, func() int64 { return replays })
	for ; (trials < 50 || !q.met()) && trials < 1000; trials++ {
		first := b.issue(t)
		live, err := b.rotate(first.Token, "client-a")
		if err != nil {
			t.Fatal(err)
		}
		// Racer 0 rotates the live token; the others present its parent.
		got := make([]*repository.RefreshToken, racers)
		errs := race(racers, func(r int) (err error) {
			presented := first.Token
			if r == 0 {
				presented = live.Token
			}
			got[r], err = b.rotate(presented, "client-a")
			return err
		})
		if errs[0] != nil {
			t.Fatalf("trial %d: the live token's rotation: %v", trials, errs[0])
		}
		replayed := false
		for r := 1; r < racers; r++ {
			switch {
			case errs[r] == nil && got[r].Token.Reveal() == live.Token.Reveal():
				sameToken++
			case errors.Is(errs[r], repository.ErrReplayDetected):
				replays++
				replayed = true
			default:
				t.Fatalf("trial %d, racer %d: %v; want the live token back before its rotation, a replay after", trials, r, errs[r])
			}
		}
		f := b.family(t, first.FamilyID)
		if replayed != (f.RevokedAt != nil) {
			t.Fatalf("trial %d: a parent came after the live token's rotation: %v, family revoked: %v", trials, replayed, f.RevokedAt != nil)
		}
		if n := b.liveTokens(t, first.FamilyID); n != 1 {
			t.Fatalf("trial %d: %d unconsumed tokens", trials, n)
		}
	}
	t.Logf("%d trials: %d parents got the live token back, %d were replays", trials, sameToken, replays)
	q.check(t, "parents racing the live token's rotation")
	b.checkInvariants(t, "after the races")
}

func TestGrace_SealedSuccessorsLiveOnTombstonesUntilTheLongestWindowPasses(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 3))
	sealed := func(digestOf string) int {
		return b.count(t, `SELECT count(*) FROM oauth_refresh_tombstone WHERE family_id = $1 AND successor_sealed IS NOT NULL`, digestOf)
	}
	first := b.issue(t)
	second, err := b.rotate(first.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	if n := sealed(first.FamilyID); n != 1 {
		t.Fatalf("%d sealed successors after a rotation, want 1", n)
	}
	if _, err := b.rotate(second.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	// Each rotation sealed its successor on the tombstone of the token it consumed, and nowhere
	// else: the live token's row (the family's) has none.
	if n := sealed(first.FamilyID); n != 2 {
		t.Fatalf("%d sealed successors after two rotations, want 2", n)
	}
	if n := b.count(t, `SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1 AND consumed_at IS NULL
		AND successor_sealed IS NOT NULL`, first.FamilyID); n != 0 {
		t.Fatalf("%d live tokens carry a sealed copy", n)
	}
	// Within the longest window cleanup keeps them.
	if res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{}); err != nil || res.GraceCiphertexts != 0 {
		t.Fatalf("cleanup within the longest window: %+v, %v; want nothing deleted", res, err)
	}
	b.clock.Advance(repository.MaxGraceWindow + time.Second)
	if backlog, err := b.store.CleanupBacklog(b.ctx, repository.CleanupOptions{}); err != nil || backlog.GraceCiphertexts != 2 {
		t.Fatalf("backlog past the longest window: %+v, %v; want two sealed copies", backlog, err)
	}
	res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{})
	if err != nil || res.GraceCiphertexts != 2 {
		t.Fatalf("cleanup past the longest window: %+v, %v; want two sealed copies deleted", res, err)
	}
	if n := sealed(first.FamilyID); n != 0 {
		t.Fatalf("%d sealed copies left past the longest window", n)
	}
}
