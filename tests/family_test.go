package tests

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

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

func TestRevokeFamilies_ConcurrentBulkRevocationsOfOverlappingFamiliesNeverDeadlock(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.Logger = slog.New(slog.DiscardHandler) }})
	for round := range 3 {
		if _, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_family (client_id, user_id, scope, idle_expires_at, token_digest,
				token_pepper_id, token_scope)
			SELECT 'client-a', 'user-1', '{}', now() + interval '1 day', sha256(g::text::bytea || random()::text::bytea), 'default', '{}'
			FROM generate_series(1, 1200) g`); err != nil {
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

func TestRevokeToken_RevokesFamilyOnlyForItsClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	if err := b.store.RevokeToken(b.ctx, tok.Token.Reveal(), "client-b"); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("revocation by another client: got %v, want ErrWrongClient", err)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a refused revocation changed the tables")
	}
	if err := b.store.RevokeToken(b.ctx, tok.Token.Reveal(), "client-a"); err != nil {
		t.Fatal(err)
	}
	if f := b.family(t, tok.FamilyID); f.RevokedAt == nil || f.RevokedReason != repository.ReasonTokenRevoked {
		t.Fatalf("family after RFC 7009 revocation: %+v", f)
	}
	// Revocation is idempotent and keeps the first reason.
	if err := b.store.RevokeToken(b.ctx, tok.Token.Reveal(), "client-a"); err != nil {
		t.Fatalf("second revocation: %v", err)
	}
	if err := b.store.RevokeFamily(b.ctx, tok.FamilyID, "admin"); err != nil {
		t.Fatalf("revoking a revoked family: %v", err)
	}
	if f := b.family(t, tok.FamilyID); f.RevokedReason != repository.ReasonTokenRevoked {
		t.Fatalf("reason overwritten: %q", f.RevokedReason)
	}
	if _, err := b.rotate(tok.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("rotation after revocation: got %v, want ErrFamilyRevoked", err)
	}
	if err := b.store.RevokeToken(b.ctx, strings.Repeat("A", 43), "client-a"); !errors.Is(err, repository.ErrTokenNotFound) {
		t.Fatalf("revoking an unknown token: got %v, want ErrTokenNotFound", err)
	}
}

func TestRevokeFamily_UnknownAndInvalidIDs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.store.RevokeFamily(b.ctx, "00000000-0000-4000-8000-000000000000", "x"); !errors.Is(err, repository.ErrFamilyNotFound) {
		t.Fatalf("unknown family: got %v, want ErrFamilyNotFound", err)
	}
	for _, id := range []string{"", "not-a-uuid", "00000000-0000-4000-8000-00000000000\x00", "'; DROP TABLE oauth_family; --"} {
		if err := b.store.RevokeFamily(b.ctx, id, "x"); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("family id %q: got %v, want ErrInvalidInput", id, err)
		}
	}
	tok := b.issue(t)
	for _, reason := range []string{"", strings.Repeat("r", 257), "bad\x00reason", "\xff"} {
		if err := b.store.RevokeFamily(b.ctx, tok.FamilyID, reason); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("reason %q: got %v, want ErrInvalidInput", reason, err)
		}
	}
	if f := b.family(t, tok.FamilyID); f.RevokedAt != nil {
		t.Fatal("an invalid reason revoked the family")
	}
}

func TestPeekAndLookup_ReadWithoutConsuming(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	info, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if info.FamilyID != tok.FamilyID || info.ClientID != "client-a" || info.UserID != "user-1" || !info.ExpiresAt.Equal(tok.ExpiresAt) {
		t.Fatalf("peek: %+v", info)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("peek changed the tables")
	}
	next, err := b.rotate(tok.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	before = b.tableChecksum(t)
	if _, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID); !errors.Is(err, repository.ErrTokenConsumed) {
		t.Fatalf("peek of a consumed token: got %v, want ErrTokenConsumed", err)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("peeking at a consumed token changed the tables (a peek never revokes)")
	}
	info, err = b.store.Lookup(b.ctx, tok.Token.Reveal())
	if err != nil || info.ConsumedAt == nil || info.FamilyID != next.FamilyID {
		t.Fatalf("lookup of a consumed token: %+v, %v", info, err)
	}
	b.clock.Advance(25 * time.Hour)
	if _, err := b.store.Peek(b.ctx, next.Token.Reveal(), next.ClientID); !errors.Is(err, repository.ErrTokenExpired) {
		t.Fatalf("peek of an expired token: got %v, want ErrTokenExpired", err)
	}
}

func TestRevokeFamilies_ByUserLeavesOtherUsersAlone(t *testing.T) {
	t.Parallel()
	events := &eventLog{}
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.OnEvent = events.add }})
	issue := func(client, user string) *repository.RefreshToken {
		tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: client, UserID: user})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	u1a, u1b, u1b2 := issue("app-a", "u1"), issue("app-b", "u1"), issue("app-b", "u1")
	u2a, u2b := issue("app-a", "u2"), issue("app-b", "u2")

	r, err := b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{UserID: "u1", ClientID: "app-b"}, "signed out of app-b")
	if n := r.Families; err != nil || n != 2 {
		t.Fatalf("user at one client: %d, %v; want 2", n, err)
	}
	if _, err := b.rotate(u1a.Token, "app-a"); err != nil {
		t.Fatalf("u1's family at another client: %v", err)
	}
	r, err = b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{UserID: "u1"}, "logout everywhere")
	if n := r.Families; err != nil || n != 1 {
		t.Fatalf("user everywhere: %d, %v; want the 1 still live", n, err)
	}
	for _, tok := range []*repository.RefreshToken{u1b, u1b2} {
		if f := b.family(t, tok.FamilyID); f.RevokedReason != "signed out of app-b" {
			t.Fatalf("first reason lost: %+v", f)
		}
	}
	for _, tok := range []*repository.RefreshToken{u2a, u2b} {
		if _, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID); err != nil {
			t.Fatalf("another user's family was touched: %v", err)
		}
	}
	if got := len(events.all()); got != 3 {
		t.Fatalf("%d revocation events, want 3", got)
	}
	if _, err := b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{}, "x"); !errors.Is(err, repository.ErrInvalidInput) {
		t.Fatalf("empty filter: %v", err)
	}
}

func TestRevokeFamilies_ByClientRevokesAllInBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// More families than one batch revokes.
	if _, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_family (client_id, user_id, idle_expires_at, token_digest, token_pepper_id,
			token_scope)
		SELECT 'doomed', 'user-' || g, now() + interval '1 day', sha256(g::text::bytea || random()::text::bytea), 'default', '{}'
		FROM generate_series(1, 1234) g`); err != nil {
		t.Fatal(err)
	}
	keep := b.issue(t)
	r, err := b.store.RevokeFamilies(b.ctx, repository.FamilyFilter{ClientID: "doomed"}, "client deleted")
	if n := r.Families; err != nil || n != 1234 {
		t.Fatalf("revoked %d (%v), want 1234", n, err)
	}
	if left := b.count(t, "SELECT count(*) FROM oauth_family WHERE client_id = 'doomed' AND revoked_at IS NULL"); left != 0 {
		t.Fatalf("%d families of the deleted client escaped", left)
	}
	if _, err := b.store.Peek(b.ctx, keep.Token.Reveal(), keep.ClientID); err != nil {
		t.Fatalf("another client's family: %v", err)
	}
}

func TestActiveFamilies_ListsOnlyUsableFamiliesNewestFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	older := b.issue(t)
	b.clock.Advance(time.Minute)
	newer := b.issue(t)
	b.clock.Advance(time.Minute)
	revoked := b.issue(t)
	if err := b.store.RevokeFamily(b.ctx, revoked.FamilyID, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "someone-else"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(newer.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	got, err := b.store.ActiveFamilies(b.ctx, "user-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != newer.FamilyID || got[1].ID != older.FamilyID {
		t.Fatalf("active families: %+v", got)
	}
	if got[0].RotationCount != 1 || got[0].LastRotatedAt == nil || got[0].ClientID != "client-a" {
		t.Fatalf("session row: %+v", got[0])
	}
	b.clock.Advance(25 * time.Hour)
	if got, err := b.store.ActiveFamilies(b.ctx, "user-1"); err != nil || len(got) != 0 {
		t.Fatalf("after every token expired: %+v, %v", got, err)
	}
}

func TestDeleteFamily_WaitingForARotationDeletesItsTombstoneToo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for trial := range 5 {
		tok := b.issue(t)
		// A rotation holds the family's row lock in an open transaction…
		tx := b.begin(t)
		next, err := b.store.WithDB(tx).Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"})
		if err != nil {
			t.Fatal(err)
		}
		b.remember(next.Token)
		// …the deletion waits for it…
		deleted := make(chan error, 1)
		go func() { deleted <- b.store.DeleteFamily(b.ctx, tok.FamilyID) }()
		b.waitForLockWait(t, "FamilyDelete")
		// …and once the rotation commits, deletes the family with the tombstone the rotation wrote.
		if err := tx.Commit(b.ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-deleted; err != nil {
			t.Fatalf("trial %d: delete: %v", trial, err)
		}
		if n := b.count(t, "SELECT count(*) FROM oauth_refresh_tombstone WHERE family_id = $1", tok.FamilyID); n != 0 {
			t.Fatalf("trial %d: %d tombstones of the deleted family remain", trial, n)
		}
	}
	b.checkInvariants(t, "after the deletions")
}
