package tests

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/oauthstore/oauthstore/repository"
)

func TestRotate_IssueRotateRotateChain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)

	b.clock.Advance(time.Minute)
	second, err := b.rotate(first.Token, "client-a")
	if err != nil {
		t.Fatalf("first rotation: %v", err)
	}
	b.clock.Advance(time.Minute)
	third, err := b.rotate(second.Token, "client-a")
	if err != nil {
		t.Fatalf("second rotation: %v", err)
	}

	if second.FamilyID != first.FamilyID || third.FamilyID != first.FamilyID {
		t.Fatalf("rotation left the family: %s, %s, %s", first.FamilyID, second.FamilyID, third.FamilyID)
	}
	if first.Token.Reveal() == second.Token.Reveal() || second.Token.Reveal() == third.Token.Reveal() {
		t.Fatal("rotation returned the presented token")
	}
	if third.UserID != "user-1" || third.ClientID != "client-a" || strings.Join(third.Scope, " ") != "openid offline_access" {
		t.Fatalf("grant not carried through rotation: %+v", third.Grant)
	}
	if want := b.clock.Now().Add(24 * time.Hour); !third.ExpiresAt.Equal(want) {
		t.Fatalf("successor expires at %v, want %v (idle TTL from the rotation)", third.ExpiresAt, want)
	}
	f := b.family(t, first.FamilyID)
	if f.RotationCount != 2 || f.RevokedAt != nil || f.LastRotatedAt == nil || !f.LastRotatedAt.Equal(b.clock.Now()) {
		t.Fatalf("family after two rotations: %+v", f)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", first.FamilyID); n != 3 {
		t.Fatalf("family holds %d token rows, want 3 (two tombstones and the live one)", n)
	}
	if n := b.liveTokens(t, first.FamilyID); n != 1 {
		t.Fatalf("family holds %d live tokens, want 1", n)
	}
	// The chain is linked: each token names its parent.
	if n := b.count(t, `SELECT count(*) FROM oauth_refresh_token c JOIN oauth_refresh_token p
		ON c.parent_digest = p.digest WHERE c.family_id = $1 AND p.consumed_at IS NOT NULL`, first.FamilyID); n != 2 {
		t.Fatalf("%d tokens linked to a consumed parent, want 2", n)
	}
}

func TestRotate_ReplayAfterRotationRevokesFamily(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)
	second, err := b.rotate(first.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}

	// The attacker (or the victim) presents the consumed token.
	_, err = b.rotate(first.Token, "client-a")
	if !errors.Is(err, repository.ErrReplayDetected) || !errors.Is(err, repository.ErrInvalidGrant) {
		t.Fatalf("replay: got %v, want ErrReplayDetected (an invalid grant)", err)
	}
	f := b.family(t, first.FamilyID)
	if f.RevokedAt == nil || f.RevokedReason != repository.ReasonReplayDetected {
		t.Fatalf("family not revoked for replay: %+v", f)
	}
	// The successor dies with its family.
	if _, err := b.rotate(second.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("successor after replay: got %v, want ErrFamilyRevoked", err)
	}
	// A second replay is still recognised: the evidence was kept, not deleted.
	if _, err := b.rotate(first.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("second replay: got %v, want ErrReplayDetected", err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", first.FamilyID); n != 2 {
		t.Fatalf("revocation deleted evidence: %d token rows, want 2", n)
	}
	// The event names the family and never the token.
	logs := b.logs.String()
	if !strings.Contains(logs, `"event":"replay_detected"`) || !strings.Contains(logs, first.FamilyID) {
		t.Fatalf("no replay event with the family id in the log:\n%s", logs)
	}
	for _, secret := range []string{first.Token.Reveal(), second.Token.Reveal()} {
		if strings.Contains(logs, secret) {
			t.Fatal("a raw token reached the log")
		}
	}
}

func TestRotate_ConcurrentRotationsOfOneTokenHaveOneWinner(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.issue(t)

	const racers = 32
	results := race(racers, func(int) error {
		_, err := b.rotate(first.Token, "client-a")
		return err
	})

	winners, _, unexpected := countWinners(results, repository.ErrReplayDetected)
	for _, err := range unexpected {
		t.Errorf("loser got %v, want ErrReplayDetected", err)
	}
	if winners != 1 {
		t.Fatalf("%d rotations succeeded, want exactly 1", winners)
	}
	// Strict rotation: the losers presented a consumed token, so the family is revoked; it still
	// holds exactly one unconsumed token (the winner's successor) and one tombstone.
	if n := b.liveTokens(t, first.FamilyID); n != 1 {
		t.Fatalf("family holds %d unconsumed tokens, want 1", n)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", first.FamilyID); n != 2 {
		t.Fatalf("family holds %d token rows, want 2", n)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil || f.RotationCount != 1 {
		t.Fatalf("family after the race: %+v, want revoked with one rotation", f)
	}
}

func TestRotate_RacingFamilyRevocationNeverLeavesARotatableToken(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	// Which of the two commits first depends on timing; the trials go on until each order has won
	// often enough for both cases to be checked.
	var rotated, revokedFirst, trials int64
	var q quota
	q.need("trials the rotation won", 20, func() int64 { return rotated })
	q.need("trials the revocation won", 20, func() int64 { return revokedFirst })
	for ; (trials < 200 || !q.met()) && trials < 3000; trials++ {
		tok := b.issue(t)
		var successor *repository.RefreshToken
		errs := race(2, func(i int) (err error) {
			if i == 0 {
				successor, err = b.rotate(tok.Token, "client-a")
				return err
			}
			return b.store.RevokeFamily(b.ctx, tok.FamilyID, "logout")
		})
		rotErr, revErr := errs[0], errs[1]
		if revErr != nil {
			t.Fatalf("revoke: %v", revErr)
		}
		switch {
		case rotErr == nil:
			rotated++
			// The rotation committed first; the revocation then killed its successor.
			if _, err := b.store.Peek(b.ctx, successor.Token.Reveal(), successor.ClientID); !errors.Is(err, repository.ErrFamilyRevoked) {
				t.Fatalf("successor of a rotation that raced revocation: peek = %v, want ErrFamilyRevoked", err)
			}
		case errors.Is(rotErr, repository.ErrFamilyRevoked):
			revokedFirst++
			// The revocation committed first: the rotation consumed nothing and added nothing.
			if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", tok.FamilyID); n != 1 {
				t.Fatalf("family revoked before the rotation gained a successor: %d token rows", n)
			}
			if n := b.liveTokens(t, tok.FamilyID); n != 1 {
				t.Fatalf("rotation refused by revocation still consumed the token")
			}
		default:
			t.Fatalf("rotation: %v", rotErr)
		}
	}
	if n := b.count(t, `SELECT count(*) FROM oauth_family WHERE revoked_at IS NULL`); n != 0 {
		t.Fatalf("%d families escaped revocation", n)
	}
	b.checkInvariants(t, "after the races")
	t.Logf("%d trials: rotation first %d, revocation first %d", trials, rotated, revokedFirst)
	q.check(t, "rotation racing revocation")
}

func TestRotate_ExpiredTokenRejectedWhileRowExists(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	b.clock.Advance(24*time.Hour + time.Second)
	before := b.tableChecksum(t)

	_, err := b.rotate(tok.Token, "client-a")
	if !errors.Is(err, repository.ErrTokenExpired) || !errors.Is(err, repository.ErrInvalidGrant) {
		t.Fatalf("expired token: got %v, want ErrTokenExpired", err)
	}
	if b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1", tok.FamilyID) != 1 {
		t.Fatal("the expired token's row is gone; the test needs it present")
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("rotating an expired token changed the tables")
	}
	// Exactly at the expiry instant the token is already dead.
	b2 := setup(t)
	tok2 := b2.issue(t)
	b2.clock.Advance(24 * time.Hour)
	if _, err := b2.rotate(tok2.Token, "client-a"); !errors.Is(err, repository.ErrTokenExpired) {
		t.Fatalf("token at its expiry instant: got %v, want ErrTokenExpired", err)
	}
}

func TestRotate_WrongClientConsumesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)

	_, err := b.rotate(tok.Token, "client-b")
	if !errors.Is(err, repository.ErrWrongClient) || !errors.Is(err, repository.ErrInvalidGrant) {
		t.Fatalf("wrong client: got %v, want ErrWrongClient", err)
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("a wrong client's rotation changed the tables")
	}
	if _, err := b.rotate(tok.Token, "client-a"); err != nil {
		t.Fatalf("the right client could not rotate after a wrong client tried: %v", err)
	}
	// A wrong client presenting a consumed token is not taken for a replay: it changes nothing.
	before = b.tableChecksum(t)
	if _, err := b.rotate(tok.Token, "client-b"); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("wrong client with a consumed token: got %v, want ErrWrongClient", err)
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("a wrong client's replay changed the tables")
	}
}

func TestRotate_UnknownAndMalformedTokensAreNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	other := setup(t).issue(t) // minted under another pepper
	for name, presented := range map[string]string{
		"empty":              "",
		"other pepper":       other.Token.Reveal(),
		"truncated":          tok.Token.Reveal()[:42],
		"extended":           tok.Token.Reveal() + "A",
		"standard alphabet":  strings.NewReplacer("-", "+", "_", "/").Replace(tok.Token.Reveal()) + "+",
		"NUL byte":           tok.Token.Reveal()[:42] + "\x00",
		"invalid UTF-8":      tok.Token.Reveal()[:41] + "\xff\xfe",
		"SQL metacharacters": "' OR 1=1; DROP TABLE oauth_family; --xxxxxxxxxxxxxxx",
		"huge":               strings.Repeat("A", 1<<20),
	} {
		_, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: presented, ClientID: "client-a"})
		if !errors.Is(err, repository.ErrTokenNotFound) {
			t.Errorf("%s: got %v, want ErrTokenNotFound", name, err)
		}
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("refused tokens changed the tables")
	}
}

func TestRotate_IsOneStatement(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool, counter := b.countingPool(t, 1)
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper), Clock: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if n := counter.queries.Load(); n != 1 {
		t.Fatalf("Issue sent %d statements, want 1", n)
	}
	for i := range 3 {
		counter.queries.Store(0)
		counter.prepares.Store(0)
		tok, err = store.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		if n := counter.queries.Load(); n != 1 {
			t.Fatalf("rotation %d sent %d statements, want 1", i, n)
		}
		// After the first use the statement is prepared and cached: one round trip.
		if n := counter.prepares.Load(); i > 0 && n != 0 {
			t.Fatalf("rotation %d prepared %d statements, want 0", i, n)
		}
	}
}

func TestInvariant_DatabaseRefusesSecondLiveToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	// A family's live token is the one value of oauth_family.token_digest in the family's one row:
	// even SQL that bypasses the repository cannot give a family a second row (I1)…
	_, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_family (id, client_id, user_id, scope, idle_expires_at, token_digest,
			token_pepper_id, token_scope)
		SELECT id, client_id, user_id, scope, idle_expires_at, decode(repeat('ab', 32), 'hex'), token_pepper_id, token_scope
		FROM oauth_family WHERE id = $1`, tok.FamilyID)
	var pgErr *pgconn.PgError
	// (On a table partitioned by family, the violation names the partition's primary key.)
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || !strings.HasPrefix(pgErr.ConstraintName, "oauth_family_") ||
		!strings.HasSuffix(pgErr.ConstraintName, "_pkey") {
		t.Fatalf("second live token: got %v, want a unique violation of oauth_family's primary key", err)
	}
	// …or a row without a live token, which is what a rotation writes its successor into.
	_, err = b.pool.Exec(b.ctx, `UPDATE oauth_family SET token_digest = NULL WHERE id = $1`, tok.FamilyID)
	if !errors.As(err, &pgErr) || pgErr.Code != "23502" || pgErr.ColumnName != "token_digest" {
		t.Fatalf("family without a live token: got %v, want a not-null violation of token_digest", err)
	}
	if n := b.liveTokens(t, tok.FamilyID); n != 1 {
		t.Fatalf("%d live tokens, want 1", n)
	}
}

func TestRotate_RevocationCommittedWhileTheRotationWaitsLeavesNoSuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)

	// Another session holds the family row, as a revocation in progress does.
	holder := b.begin(t)
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
