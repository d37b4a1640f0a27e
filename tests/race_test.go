package tests

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

// raceTally counts the outcomes of the race trials.
type raceTally struct {
	rotationTrials, exchangeTrials   atomic.Int64
	rotationWinners, exchangeWinners atomic.Int64
	rotationLosers, exchangeLosers   atomic.Int64

	mu       sync.Mutex
	failures []string // the first few trials that did not have exactly one winner, or a wrong loser
	failed   int
}

func (r *raceTally) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed++
	if len(r.failures) < 10 {
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
	}
}

// TestRace_TenThousandTrialsHaveExactlyOneWinner races, 10,000 times in all, eight requests with
// the same refresh token (strict rotation) or the same authorization code, and counts the
// winners: exactly one every time, and every loser is told it presented a replay: a race with the
// same credential has one outcome, whatever the timing. The
// trials run on a few workers at once, on the database clock.
func TestRace_TenThousandTrialsHaveExactlyOneWinner(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true, configure: func(c *repository.Config) {
		c.Logger = slog.New(slog.DiscardHandler)
	}})
	const (
		trials  = 10_000
		racers  = 8
		workers = 4 // 4 × 8 requests at once stay within the pool's 40 connections
	)
	var (
		tally raceTally
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= trials {
					return
				}
				var err error
				if i%2 == 0 {
					err = rotationTrial(b, &tally, int(i), racers)
				} else {
					err = exchangeTrial(b, &tally, int(i), racers)
				}
				if err != nil {
					tally.fail("worker %d, trial %d: %v", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	rot, ex := tally.rotationTrials.Load(), tally.exchangeTrials.Load()
	t.Logf("%d trials of %d racers in %v: rotation %d trials, %d winners, %d replays; exchange %d trials, %d winners, %d replays",
		rot+ex, racers, elapsed.Round(time.Millisecond), rot, tally.rotationWinners.Load(), tally.rotationLosers.Load(),
		ex, tally.exchangeWinners.Load(), tally.exchangeLosers.Load())
	for _, f := range tally.failures {
		t.Error(f)
	}
	if tally.failed > 0 {
		t.Fatalf("%d trials failed (the first %d above)", tally.failed, len(tally.failures))
	}
	if rot+ex != trials {
		t.Fatalf("%d trials ran, want %d", rot+ex, trials)
	}

	// What the trials left behind. Every rotation family: two tokens (the presented one, consumed,
	// and the winner's successor, live), one rotation, revoked by the losers' replays.
	b.checkInvariants(t, "after the trials")
	if n := b.count(t, `SELECT count(*) FROM oauth_family f WHERE f.client_id = 'race-rotation'
		AND f.rotation_count = 1 AND f.revoked_reason = 'replay_detected'
		AND (SELECT count(*) FROM oauth_refresh_token t WHERE t.family_id = f.id) = 2
		AND (SELECT count(*) FROM oauth_refresh_token t WHERE t.family_id = f.id AND t.consumed_at IS NULL) = 1`); int64(n) != rot {
		t.Fatalf("%d of %d rotation families hold one tombstone, one live token, one rotation and the replay's revocation", n, rot)
	}
	// Every code: consumed once, into one family holding only its first token, revoked by the
	// losers' code replays.
	if n := b.count(t, `SELECT count(*) FROM oauth_authorization_code c JOIN oauth_family f ON f.id = c.family_id
		WHERE c.client_id = 'race-exchange' AND c.consumed_at IS NOT NULL
		AND f.revoked_reason = 'code_replay_detected' AND f.rotation_count = 0
		AND (SELECT count(*) FROM oauth_refresh_token t WHERE t.family_id = f.id AND t.parent_digest IS NULL) = 1
		AND (SELECT count(*) FROM oauth_refresh_token t WHERE t.family_id = f.id) = 1`); int64(n) != ex {
		t.Fatalf("%d of %d codes were exchanged into exactly one revoked family with its first token", n, ex)
	}
	if n := b.count(t, `SELECT count(*) FROM oauth_family WHERE client_id = 'race-exchange'`); int64(n) != ex {
		t.Fatalf("%d families from %d codes", n, ex)
	}
}

func rotationTrial(b *bundle, tally *raceTally, i, racers int) error {
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "race-rotation", UserID: fmt.Sprintf("user-%d", i)})
	if err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	errs := race(racers, func(int) error {
		_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "race-rotation"})
		return err
	})
	tally.rotationTrials.Add(1)
	winners, losers, unexpected := countWinners(errs, repository.ErrReplayDetected)
	tally.rotationLosers.Add(int64(losers))
	for _, err := range unexpected {
		tally.fail("rotation trial %d: a loser got %v, want ErrReplayDetected", i, err)
	}
	tally.rotationWinners.Add(int64(winners))
	if winners != 1 {
		tally.fail("rotation trial %d (family %s): %d winners, want exactly 1", i, tok.FamilyID, winners)
	}
	return nil
}

func exchangeTrial(b *bundle, tally *raceTally, i, racers int) error {
	sum := sha256.Sum256(fmt.Appendf(nil, "race-verifier-%d-%d", i, time.Now().UnixNano()))
	verifier := base64.RawURLEncoding.EncodeToString(sum[:])
	challenge := sha256.Sum256([]byte(verifier))
	code, err := b.store.CreateCode(b.ctx, repository.CodeRequest{
		ClientID: "race-exchange", UserID: fmt.Sprintf("user-%d", i), RedirectURI: redirectURI,
		CodeChallenge: base64.RawURLEncoding.EncodeToString(challenge[:]), CodeChallengeMethod: repository.PKCEMethodS256,
	})
	if err != nil {
		return fmt.Errorf("create code: %w", err)
	}
	errs := race(racers, func(int) error {
		_, err := b.store.Exchange(b.ctx, repository.ExchangeRequest{
			Code: code.Code.Reveal(), ClientID: "race-exchange", RedirectURI: redirectURI, CodeVerifier: verifier,
		})
		return err
	})
	tally.exchangeTrials.Add(1)
	winners, losers, unexpected := countWinners(errs, repository.ErrCodeReplayDetected)
	tally.exchangeLosers.Add(int64(losers))
	for _, err := range unexpected {
		tally.fail("exchange trial %d: a loser got %v, want ErrCodeReplayDetected", i, err)
	}
	tally.exchangeWinners.Add(int64(winners))
	if winners != 1 {
		tally.fail("exchange trial %d: %d winners, want exactly 1", i, winners)
	}
	return nil
}
