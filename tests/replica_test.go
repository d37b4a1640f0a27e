package tests

// Reads from a hot standby (Config.ReadReplica, Config.MaxReplicaStaleness). A primary streams its
// WAL to a standby of the test's own, which an apply delay (recovery_min_apply_delay) may hold
// back. On the primary a churn keeps commits flowing: sessions of one user are issued and, a few
// steps later, revoked, and the time each revocation was acknowledged is kept. The test lists the
// user's sessions through a store whose ReadReplica is the standby, and holds every listing to
// what had been revoked before the call began:
//
//   - held back beyond the bound, every read falls back to the primary, and no revoked session is
//     ever listed, although the standby itself still lists them;
//   - held back within the bound, the standby serves the reads, which list sessions revoked less
//     than the bound before the call, never one revoked longer ago (the same check, applied to the
//     standby read directly with a bound shorter than the delay, does find such sessions);
//   - caught up, the standby serves the reads, and they match the primary, also for a role that
//     cannot see the walreceiver;
//   - on an idle primary, the standby serves the reads as long as it hears from the primary;
//   - down, silent, promoted, or a primary given as the replica, every read falls back and matches
//     the primary;
//   - no operation that decides a credential's fate sends a statement to the replica.
//
// Each test logs the store's counts (Admin.ReplicaReads). They need two clusters of their own from
// the server binaries, as the failover tests do, and skip with the same message without them (make
// test-ha runs them). They do not run in parallel: each measures replication lag against
// wall-clock bounds, which on a small machine parallel clusters would mostly disturb.

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

func TestReplica_HeldBackBeyondTheBoundEveryReadFallsBackAndListsNoRevokedSession(t *testing.T) {
	p := startReplicaPair(t, 2*time.Second, 500*time.Millisecond)
	c := p.startChurn(t)
	time.Sleep(2500 * time.Millisecond) // the delay in full effect: the standby shows the primary of 2 s ago

	// Every read runs on the primary, so it lists no session revoked before the call began
	// (bound 0); the standby, read directly, does.
	var viaStore, direct listingCheck
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		began, listed := p.list(t, &p.b.store.Admin)
		c.check(&viaStore, began, listed, 0)
		began, listed = p.list(t, p.onStandby)
		c.check(&direct, began, listed, 0)
	}
	c.halt(t)

	reads := p.b.store.ReplicaReads()
	p.logCounts(t, c, reads, map[string]listingCheck{"through the store (bound 0)": viaStore, "from the standby directly (bound 0)": direct})
	for _, v := range viaStore.violations {
		t.Errorf("a read through the store: %s", v)
	}
	if int(reads.Fallbacks()) != viaStore.reads || reads.Served != 0 || reads.Behind == 0 {
		t.Errorf("%d reads: %+v; want every one a fallback, most of them behind", viaStore.reads, reads)
	}
	if direct.stale == 0 {
		t.Errorf("the standby, read directly, never listed a revoked session: it was not held back, and the test proves nothing")
	}
}

func TestReplica_HeldBackWithinTheBoundServesReadsNeverStalerThanTheBound(t *testing.T) {
	// The bound is generous against the 2 s delay, and short enough that a run of a few seconds
	// holds many listings to sessions revoked longer ago than it.
	const bound = 3 * time.Second
	p := startReplicaPair(t, 2*time.Second, bound)
	c := p.startChurn(t)
	time.Sleep(2500 * time.Millisecond)

	// The standby read directly is held to a bound shorter than the delay: that check must fail,
	// which shows that it would catch a read staler than its bound.
	const shortBound = time.Second
	var viaStore, direct listingCheck
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		began, listed := p.list(t, &p.b.store.Admin)
		c.check(&viaStore, began, listed, bound)
		began, listed = p.list(t, p.onStandby)
		c.check(&direct, began, listed, shortBound)
	}
	c.halt(t)

	reads := p.b.store.ReplicaReads()
	p.logCounts(t, c, reads, map[string]listingCheck{"through the store (bound 3s)": viaStore, "from the standby directly (bound 1s)": direct})
	for _, v := range viaStore.violations {
		t.Errorf("a read through the store: %s", v)
	}
	switch {
	case reads.Served == 0:
		t.Errorf("%d reads: %+v; want reads served by the standby", viaStore.reads, reads)
	case viaStore.stale == 0:
		t.Errorf("no read through the store listed a revoked session: none was served by the held-back standby")
	case viaStore.exercised == 0:
		t.Errorf("no session had been revoked longer than the bound before a read: the bound was never tested")
	case len(direct.violations) == 0:
		t.Errorf("the standby, read directly, never listed a session revoked more than %v before: the check cannot fail", shortBound)
	}
}

func TestReplica_CaughtUpServesReadsThatMatchThePrimary(t *testing.T) {
	const bound = 2 * time.Second
	p := startReplicaPair(t, 0, bound)
	p.startTrickle(t) // commits of another user's sessions keep the standby's lag measurable
	c := p.startChurn(t)

	var viaStore listingCheck
	var stats, backlogs int
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		began, listed := p.list(t, &p.b.store.Admin)
		c.check(&viaStore, began, listed, bound)
		if viaStore.reads%10 == 0 {
			if _, err := p.b.store.Stats(p.ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := p.b.store.CleanupBacklog(p.ctx, repository.CleanupOptions{}); err != nil {
				t.Fatal(err)
			}
			stats, backlogs = stats+1, backlogs+1
		}
	}
	c.halt(t)
	busy := p.b.store.ReplicaReads()
	for _, v := range viaStore.violations {
		t.Errorf("a read through the store: %s", v)
	}
	if busy.Served == 0 {
		t.Errorf("%d reads on a busy primary, none served by the standby: %+v", viaStore.reads+stats+backlogs, busy)
	}

	// Once the standby has replayed the churn's last change, a read it serves is the primary's.
	p.waitReplayed(t)
	want := familyIDs(t, p.ctx, p.onPrimary)
	var matched bool
	for deadline := time.Now().Add(10 * time.Second); !matched && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		before := p.b.store.ReplicaReads().Served
		got := familyIDs(t, p.ctx, &p.b.store.Admin)
		if p.b.store.ReplicaReads().Served == before {
			continue // fell back: try again
		}
		if !slices.Equal(got, want) {
			t.Fatalf("served by the caught-up standby: %d sessions %v; the primary lists %d: %v", len(got), got, len(want), want)
		}
		matched = true
	}
	if !matched {
		t.Fatalf("the caught-up standby served no read in 10 s: %+v", p.b.store.ReplicaReads())
	}
	p.logCounts(t, c, p.b.store.ReplicaReads(), map[string]listingCheck{"through the store (bound 2s)": viaStore})
	t.Logf("%d Stats and %d CleanupBacklog among the reads", stats, backlogs)

	// A role without the privileges of pg_read_all_stats sees nothing of the walreceiver: only the
	// age of the last replayed transaction bounds the staleness, which a busy primary keeps short.
	if _, err := p.primaryPool.Exec(p.ctx, "CREATE ROLE replica_reader LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO replica_reader"); err != nil {
		t.Fatal(err)
	}
	p.waitReplayed(t)
	readerPool := openReplicaTestPool(t, p.standby, "replica_reader", nil)
	var hidden bool
	if err := readerPool.QueryRow(p.ctx, "SELECT status IS NULL FROM pg_stat_wal_receiver").Scan(&hidden); err != nil || !hidden {
		t.Fatalf("the walreceiver's status, as a role without pg_read_all_stats: hidden %v, %v; want hidden", hidden, err)
	}
	unprivileged := p.storeWithReplica(t, readerPool, bound)
	var served bool
	for deadline := time.Now().Add(10 * time.Second); !served && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got := familyIDs(t, p.ctx, &unprivileged.Admin); !slices.Equal(got, want) {
			t.Fatalf("read as a role without pg_read_all_stats: %v, want the primary's %v", got, want)
		}
		served = unprivileged.ReplicaReads().Served > 0
	}
	if !served {
		t.Errorf("a role without pg_read_all_stats had no read served in 10 s: %+v", unprivileged.ReplicaReads())
	}
	t.Logf("as a role without pg_read_all_stats: %+v", unprivileged.ReplicaReads())
}

func TestReplica_IdlePrimaryServesReadsWhileTheStandbyHearsFromIt(t *testing.T) {
	// The standby asks the primary for a keepalive whenever it has heard nothing for a second
	// (wal_receiver_timeout/2). With no commit for longer than the bound, the age of the last
	// replayed transaction cannot serve a read: only the age of the last message can.
	const bound = 3 * time.Second
	p := startReplicaPairWith(t, pgtemp.StandbyOptions{Settings: map[string]string{"wal_receiver_timeout": "2s"}}, bound)
	p.sessions(t, 3, 1)
	p.waitReplayed(t)
	want := familyIDs(t, p.ctx, p.onPrimary)
	time.Sleep(bound + time.Second)

	var lastReplayed *time.Duration
	if err := p.standbyPool.QueryRow(p.ctx, "SELECT clock_timestamp() - pg_last_xact_replay_timestamp()").Scan(&lastReplayed); err != nil {
		t.Fatal(err)
	}
	if lastReplayed != nil && *lastReplayed <= bound {
		t.Fatalf("the standby replayed a transaction %v ago: the primary is not idle, and the test proves nothing", *lastReplayed)
	}
	const reads = 10
	for range reads {
		if got := familyIDs(t, p.ctx, &p.b.store.Admin); !slices.Equal(got, want) {
			t.Fatalf("on an idle primary: %v, want %v", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := p.b.store.ReplicaReads()
	if r.Served == 0 {
		t.Errorf("%d reads on an idle primary whose standby hears from it every second: %+v; want reads served", reads, r)
	}
	t.Logf("idle primary, last transaction replayed %v ago: %d reads, %+v; log lines by reason: %v",
		lastReplayed, reads, r, fallbackLogLines(t, p.b.logs.String()))
}

func TestReplica_DownOrSilentFallsBackToThePrimary(t *testing.T) {
	p := startReplicaPair(t, 0, 2*time.Second)
	p.startTrickle(t)
	p.sessions(t, 3, 1)
	p.awaitServed(t)

	if err := p.standby.Crash(); err != nil {
		t.Fatal(err)
	}
	before := p.b.store.ReplicaReads()
	want := familyIDs(t, p.ctx, p.onPrimary)
	const reads = 10
	for range reads {
		if got := familyIDs(t, p.ctx, &p.b.store.Admin); !slices.Equal(got, want) {
			t.Fatalf("with the standby down: %v, want the primary's %v", got, want)
		}
	}
	if _, err := p.b.store.Stats(p.ctx); err != nil {
		t.Fatalf("Stats with the standby down: %v", err)
	}
	if _, err := p.b.store.CleanupBacklog(p.ctx, repository.CleanupOptions{}); err != nil {
		t.Fatalf("CleanupBacklog with the standby down: %v", err)
	}
	down := p.b.store.ReplicaReads()
	if down.Failed-before.Failed != reads+2 || down.Served != before.Served {
		t.Errorf("%d reads with the standby down: %+v before, %+v after; want each counted as failed", reads+2, before, down)
	}
	t.Logf("standby down: before the crash %+v; after %d reads %+v", before, reads+2, down)

	// A replica that accepts connections and never answers: each read waits for it no longer than
	// the check allows (one second here), although neither the pool nor the context bounds it.
	silent := p.storeWithReplica(t, silentServer(t), 2*time.Second)
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	start := time.Now()
	got := familyIDs(t, ctx, &silent.Admin)
	took := time.Since(start)
	if !slices.Equal(got, want) {
		t.Errorf("with a silent replica: %v, want the primary's %v", got, want)
	}
	if r := silent.ReplicaReads(); r.Failed != 1 || took > 15*time.Second {
		t.Errorf("a read with a silent replica took %v: %+v; want one failed fallback after about a second", took, r)
	}
	t.Logf("silent replica: the read fell back after %v: %+v", took.Round(time.Millisecond), silent.ReplicaReads())
}

func TestReplica_PromotedOrPrimaryIsNotTrusted(t *testing.T) {
	p := startReplicaPair(t, 0, 2*time.Second)
	p.startTrickle(t)
	ids := p.sessions(t, 3, 0)
	p.awaitServed(t)

	// The standby is promoted while the primary goes on: a revocation on the primary never
	// reaches it, however long one waits.
	if err := p.standby.Promote(p.ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.writer.RevokeFamily(p.ctx, ids[0], "logout"); err != nil {
		t.Fatal(err)
	}
	before := p.b.store.ReplicaReads()
	const reads = 5
	for range reads {
		if got := familyIDs(t, p.ctx, &p.b.store.Admin); slices.Contains(got, ids[0]) {
			t.Fatalf("with the standby promoted, a session revoked on the primary is listed: %v", got)
		}
	}
	promoted := p.b.store.ReplicaReads()
	if promoted.NotInRecovery-before.NotInRecovery != reads || promoted.Served != before.Served {
		t.Errorf("%d reads with the standby promoted: %+v before, %+v after; want each counted as not in recovery", reads, before, promoted)
	}
	if got := familyIDs(t, p.ctx, p.onStandby); !slices.Contains(got, ids[0]) {
		t.Errorf("the promoted standby, read directly, does not list the session revoked on the primary: the test proves nothing")
	}
	t.Logf("standby promoted: %+v", promoted)

	// The primary itself given as the replica: every read runs on it, counted as not in recovery.
	self := p.storeWithReplica(t, p.primaryPool, 2*time.Second)
	want := familyIDs(t, p.ctx, p.onPrimary)
	for range reads {
		if got := familyIDs(t, p.ctx, &self.Admin); !slices.Equal(got, want) {
			t.Fatalf("with the primary as replica: %v, want %v", got, want)
		}
	}
	if r := self.ReplicaReads(); r.NotInRecovery != reads || r.Fallbacks() != reads {
		t.Errorf("%d reads with the primary as replica: %+v; want each counted as not in recovery", reads, r)
	}
	t.Logf("the primary as replica: %+v", self.ReplicaReads())
}

func TestReplica_VerdictsNeverTouchTheReplica(t *testing.T) {
	p := startReplicaPair(t, 0, 2*time.Second)
	p.startTrickle(t)
	p.sessions(t, 2, 0)
	p.awaitServed(t)
	if _, err := p.b.store.Stats(p.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.b.store.CleanupBacklog(p.ctx, repository.CleanupOptions{}); err != nil {
		t.Fatal(err)
	}
	reads := p.tracer.statements.Load()
	if reads == 0 {
		t.Fatal("the replica's tracer saw no statement of the reads: it would see none of anything else either")
	}

	s, ctx := p.b.store, p.ctx
	var ops int
	untouched := func(name string, op func() error) {
		t.Helper()
		before := p.tracer.statements.Load()
		if err := op(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n := p.tracer.statements.Load() - before; n != 0 {
			t.Errorf("%s sent %d statements to the replica", name, n)
		}
		ops++
	}
	want := func(err, target error) error {
		if !errors.Is(err, target) {
			return fmt.Errorf("%v, want %v", err, target)
		}
		return nil
	}
	issue := func() *repository.RefreshToken {
		tok, err := s.Issue(ctx, repository.IssueRequest{ClientID: "client-a", UserID: replicaUser, Scope: []string{"openid"}})
		if err != nil {
			t.Fatal(err)
		}
		p.b.remember(tok.Token)
		return tok
	}

	rotate := func(tok *repository.RefreshToken) (*repository.RefreshToken, error) {
		next, err := s.Rotate(ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"})
		if err == nil {
			p.b.remember(next.Token)
		}
		return next, err
	}
	var first, next, last, third, fourth *repository.RefreshToken
	untouched("Issue", func() error { first = issue(); return nil })
	untouched("Rotate", func() (err error) { next, err = rotate(first); return err })
	untouched("Rotate of the parent within the grace window (grace reuse)", func() error {
		again, err := rotate(first)
		if err == nil && again.Token.Reveal() != next.Token.Reveal() {
			return errors.New("a grace reuse handed out another token")
		}
		return err
	})
	untouched("Rotate again", func() (err error) { last, err = rotate(next); return err })
	untouched("Rotate of a token two rotations back (replay, revocation)", func() error {
		_, err := rotate(first)
		return want(err, repository.ErrReplayDetected)
	})
	untouched("Rotate of a revoked family's token", func() error {
		_, err := rotate(last)
		return want(err, repository.ErrFamilyRevoked)
	})
	third = issue()
	untouched("Peek", func() error { _, err := s.Peek(ctx, third.Token.Reveal(), "client-a"); return err })
	untouched("Lookup", func() error { _, err := s.Lookup(ctx, third.Token.Reveal()); return err })
	untouched("Lookup of a revoked family's token", func() error { _, err := s.Lookup(ctx, next.Token.Reveal()); return err })
	untouched("RevokeToken", func() error { return s.RevokeToken(ctx, third.Token.Reveal(), "client-a") })
	fourth = issue()
	untouched("RevokeFamily", func() error { return s.RevokeFamily(ctx, fourth.FamilyID, "logout") })
	untouched("Family", func() error { _, err := s.Family(ctx, fourth.FamilyID); return err })
	issue()
	untouched("RevokeFamilies", func() error {
		_, err := s.RevokeFamilies(ctx, repository.FamilyFilter{UserID: replicaUser}, "logout everywhere")
		return err
	})

	verifier, challenge := pkce(t)
	var code *repository.AuthorizationCode
	untouched("CreateCode", func() (err error) {
		code, err = s.CreateCode(ctx, repository.CodeRequest{ClientID: "client-a", UserID: "replica-code-user", RedirectURI: redirectURI,
			Scope: []string{"openid"}, CodeChallenge: challenge, CodeChallengeMethod: "S256"})
		if err == nil {
			p.b.remember(code.Code)
		}
		return err
	})
	exchange := func() (*repository.CodeExchange, error) {
		got, err := s.Exchange(ctx, repository.ExchangeRequest{Code: code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: verifier})
		if err == nil {
			p.b.remember(got.Token)
		}
		return got, err
	}
	var exchanged *repository.CodeExchange
	untouched("Exchange", func() (err error) { exchanged, err = exchange(); return err })
	untouched("Exchange of a used code (replay, revocation)", func() error {
		_, err := exchange()
		return want(err, repository.ErrCodeReplayDetected)
	})
	untouched("CreateState and ConsumeState", func() error {
		st, err := s.CreateState(ctx, repository.StateRequest{ClientID: "client-a", RedirectURI: redirectURI})
		if err != nil {
			return err
		}
		p.b.remember(st.State)
		_, err = s.ConsumeState(ctx, st.State.Reveal())
		return err
	})
	untouched("PepperUsage", func() error { _, err := s.PepperUsage(ctx); return err })
	untouched("DeleteFamily", func() error { return s.DeleteFamily(ctx, exchanged.FamilyID) })
	untouched("Cleanup", func() error { _, err := s.Cleanup(ctx, repository.CleanupOptions{}); return err })

	// In a caller's transaction even the reads that tolerate lag stay on it: they must see its writes.
	untouched("ActiveFamilies, Stats and CleanupBacklog in a caller's transaction", func() error {
		tx, err := p.primaryPool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		in := s.WithDB(tx)
		tok, err := in.Issue(ctx, repository.IssueRequest{ClientID: "client-a", UserID: "replica-tx-user", Scope: []string{"openid"}})
		if err != nil {
			return err
		}
		p.b.remember(tok.Token)
		listed, err := in.ActiveFamilies(ctx, "replica-tx-user")
		if err != nil {
			return err
		}
		if len(listed) != 1 || listed[0].ID != tok.FamilyID {
			return fmt.Errorf("the caller's transaction lists %v, want its own new session %s", listed, tok.FamilyID)
		}
		if _, err := in.Stats(ctx); err != nil {
			return err
		}
		_, err = in.CleanupBacklog(ctx, repository.CleanupOptions{})
		return err
	})

	for _, sql := range p.tracer.foreignStatements() {
		t.Errorf("a statement other than a bounded-staleness read's was sent to the replica: %.120q", sql)
	}
	t.Logf("%d operations sent no statement to the replica; the reads before them sent %d (%+v); %d statements on the replica in all",
		ops, reads, p.b.store.ReplicaReads(), p.tracer.statements.Load())
}

const (
	replicaUser         = "replica-user"
	replicaOtherUser    = "replica-other-user"
	replicaLiveSessions = 5 // the churn keeps this many of replicaUser's sessions live
)

// replicaPair is a primary, a standby streaming from it, and what the tests read them with.
type replicaPair struct {
	ctx              context.Context
	primary, standby *pgtemp.Cluster
	primaryPool      *pgxpool.Pool
	tracer           *replicaTracer    // watches every statement on the store's replica pool
	b                *bundle           // b.store has the standby as its ReadReplica
	writer           *repository.Store // writes on the primary, without a replica
	onPrimary        *repository.Admin // reads the primary: what is true
	onStandby        *repository.Admin // reads the standby without any check: what it shows
	standbyPool      *pgxpool.Pool     // the standby, for the test's own questions
}

// startReplicaPair starts a primary with the schema, a standby of it whose replay applyDelay
// holds back, and a store that reads from the standby within maxStaleness.
func startReplicaPair(t *testing.T, applyDelay, maxStaleness time.Duration) *replicaPair {
	t.Helper()
	return startReplicaPairWith(t, pgtemp.StandbyOptions{ApplyDelay: applyDelay}, maxStaleness)
}

// startReplicaPairWith is startReplicaPair with the standby's options.
func startReplicaPairWith(t *testing.T, standby pgtemp.StandbyOptions, maxStaleness time.Duration) *replicaPair {
	t.Helper()
	p := &replicaPair{ctx: context.Background()}
	// No autovacuum: an ANALYZE of the tables the migrations wrote commits a transaction, which
	// would make a primary the tests keep idle look busy to its standby.
	p.primary = startPrimary(t, "a replica-read test", map[string]string{"autovacuum": "off"})
	p.primaryPool = openReplicaTestPool(t, p.primary, "", nil)
	if err := schema.Migrate(p.ctx, p.primaryPool); err != nil {
		t.Fatal(err)
	}
	standby.Name = "replica"
	p.standby = startStandby(t, p.primary, standby)
	// Without pg_basebackup (the server binaries of the npm registry) the standby is made from a
	// copy of the primary stopped for it: the connections the pool opened before are gone.
	p.primaryPool.Reset()
	p.tracer = &replicaTracer{}
	replicaPool := openReplicaTestPool(t, p.standby, "", p.tracer)
	p.standbyPool = openReplicaTestPool(t, p.standby, "", nil)

	p.b = &bundle{ctx: p.ctx, pool: p.primaryPool, logs: &syncBuffer{}, pepper: make([]byte, 32)}
	_, _ = crand.Read(p.b.pepper)
	t.Cleanup(func() { p.b.checkSecretHygiene(t) }) // the fallbacks' log lines among what it searches
	p.b.store = p.storeWithReplica(t, replicaPool, maxStaleness)
	var err error
	if p.writer, err = repository.New(p.primaryPool, repository.Config{Pepper: repository.NewKey(p.b.pepper), Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	if p.onPrimary, err = repository.NewAdmin(p.primaryPool, repository.Config{}); err != nil {
		t.Fatal(err)
	}
	if p.onStandby, err = repository.NewAdmin(p.standbyPool, repository.Config{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// storeWithReplica returns a store on the primary, with the pair's pepper and log, that reads from
// replica within maxStaleness.
func (p *replicaPair) storeWithReplica(t *testing.T, replica repository.DBTX, maxStaleness time.Duration) *repository.Store {
	t.Helper()
	s, err := repository.New(p.primaryPool, repository.Config{
		Pepper:              repository.NewKey(p.b.pepper),
		Logger:              slog.New(slog.NewJSONHandler(p.b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ReadReplica:         replica,
		MaxReplicaStaleness: maxStaleness,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// openReplicaTestPool opens a pool on the cluster's postgres database as user (the superuser if
// empty), closed when the test ends.
func openReplicaTestPool(t *testing.T, c *pgtemp.Cluster, user string, tracer pgx.QueryTracer) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtemp.MultiHostConnString("postgres", c) + " connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		cfg.ConnConfig.User = user
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// list lists replicaUser's sessions through admin, and says when the call began.
func (p *replicaPair) list(t *testing.T, admin *repository.Admin) (time.Time, []repository.Family) {
	t.Helper()
	began := time.Now()
	listed, err := admin.ActiveFamilies(p.ctx, replicaUser)
	if err != nil {
		t.Fatalf("list sessions: %v", err)
	}
	return began, listed
}

// familyIDs lists replicaUser's sessions through admin: their ids, newest first.
func familyIDs(t *testing.T, ctx context.Context, admin *repository.Admin) []string {
	t.Helper()
	listed, err := admin.ActiveFamilies(ctx, replicaUser)
	if err != nil {
		t.Fatalf("list sessions: %v", err)
	}
	ids := make([]string, len(listed))
	for i, f := range listed {
		ids[i] = f.ID
	}
	return ids
}

// sessions issues n sessions of replicaUser on the primary, revokes the first revoked of them, and
// returns their ids.
func (p *replicaPair) sessions(t *testing.T, n, revoked int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		tok, err := p.writer.Issue(p.ctx, repository.IssueRequest{ClientID: "client-a", UserID: replicaUser, Scope: []string{"openid"}})
		if err != nil {
			t.Fatal(err)
		}
		p.b.remember(tok.Token)
		ids[i] = tok.FamilyID
	}
	for _, id := range ids[:revoked] {
		if err := p.writer.RevokeFamily(p.ctx, id, "logout"); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// awaitServed lists replicaUser's sessions through the store until the standby serves a read:
// the setup works, so that a test's fallbacks are the standby's doing.
func (p *replicaPair) awaitServed(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		familyIDs(t, p.ctx, &p.b.store.Admin)
		if p.b.store.ReplicaReads().Served > 0 {
			return
		}
	}
	t.Fatalf("the standby served no read in 20 s: %+v", p.b.store.ReplicaReads())
}

// waitReplayed waits until the standby has replayed everything the primary has flushed now.
func (p *replicaPair) waitReplayed(t *testing.T) {
	t.Helper()
	var lsn string
	if err := p.primaryPool.QueryRow(p.ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var replayed bool
		if err := p.standbyPool.QueryRow(p.ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn).Scan(&replayed); err != nil {
			t.Fatal(err)
		}
		if replayed {
			return
		}
	}
	t.Fatalf("the standby did not replay the primary's WAL up to %s in a minute", lsn)
}

// startTrickle issues a session of another user on the primary every 20 ms until the test ends:
// commits that keep the standby's lag measurable while replicaUser's sessions stay as they are.
func (p *replicaPair) startTrickle(t *testing.T) {
	t.Helper()
	var stop atomic.Bool
	var issued atomic.Int64
	done := make(chan error, 1)
	go func() {
		for !stop.Load() {
			tok, err := p.writer.Issue(p.ctx, repository.IssueRequest{ClientID: "client-a", UserID: replicaOtherUser, Scope: []string{"openid"}})
			if err != nil {
				done <- err
				return
			}
			p.b.remember(tok.Token)
			issued.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
		done <- nil
	}()
	t.Cleanup(func() {
		stop.Store(true)
		if err := <-done; err != nil {
			t.Errorf("the trickle of commits failed: %v", err)
		}
		t.Logf("the trickle issued %d sessions of another user", issued.Load())
	})
}

// churn issues sessions of replicaUser on the primary and revokes each once replicaLiveSessions
// newer ones are live, and keeps when each revocation was acknowledged.
type churn struct {
	mu        sync.Mutex
	live      []string
	revokedAt map[string]time.Time // family id: when RevokeFamily returned
	issued    atomic.Int64
	stop      atomic.Bool
	done      chan error
	halted    error
	once      sync.Once
}

func (p *replicaPair) startChurn(t *testing.T) *churn {
	t.Helper()
	c := &churn{revokedAt: map[string]time.Time{}, done: make(chan error, 1)}
	go func() {
		for !c.stop.Load() {
			if err := c.step(p); err != nil {
				c.done <- err
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		c.done <- nil
	}()
	t.Cleanup(func() { c.halt(t) }) // before the pools close
	return c
}

func (c *churn) step(p *replicaPair) error {
	tok, err := p.writer.Issue(p.ctx, repository.IssueRequest{ClientID: "client-a", UserID: replicaUser, Scope: []string{"openid"}})
	if err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	p.b.remember(tok.Token)
	c.issued.Add(1)
	c.mu.Lock()
	c.live = append(c.live, tok.FamilyID)
	var oldest string
	if len(c.live) > replicaLiveSessions {
		oldest, c.live = c.live[0], c.live[1:]
	}
	c.mu.Unlock()
	if oldest == "" {
		return nil
	}
	if err := p.writer.RevokeFamily(p.ctx, oldest, "logout"); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	acknowledged := time.Now()
	c.mu.Lock()
	c.revokedAt[oldest] = acknowledged
	c.mu.Unlock()
	return nil
}

// halt stops the churn and fails the test if it failed.
func (c *churn) halt(t *testing.T) {
	t.Helper()
	c.once.Do(func() {
		c.stop.Store(true)
		c.halted = <-c.done
	})
	if c.halted != nil {
		t.Fatalf("the churn on the primary failed: %v", c.halted)
	}
}

func (c *churn) revoked() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.revokedAt)
}

// listingCheck holds listings of replicaUser's sessions to what was revoked before each call began.
type listingCheck struct {
	reads int
	// stale counts listed sessions whose revocation was acknowledged before the call began.
	stale int
	// exercised counts sessions revoked longer than the bound before a call, which it must not list.
	exercised  int
	violations []string
}

// check holds a listing made by a call that began at began to bound: no session whose revocation
// was acknowledged more than bound before may be in it.
func (c *churn) check(lc *listingCheck, began time.Time, listed []repository.Family, bound time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lc.reads++
	for _, at := range c.revokedAt {
		if began.Sub(at) > bound {
			lc.exercised++
		}
	}
	for _, f := range listed {
		at, ok := c.revokedAt[f.ID]
		if !ok || !at.Before(began) {
			continue
		}
		lc.stale++
		if age := began.Sub(at); age > bound {
			lc.violations = append(lc.violations, fmt.Sprintf("session %s is listed by a call that began %v after its revocation was acknowledged (bound %v)",
				f.ID, age.Round(time.Millisecond), bound))
		}
	}
}

// logCounts logs the churn, the store's replica counts, the fallbacks it logged by reason, and the
// listing checks.
func (p *replicaPair) logCounts(t *testing.T, c *churn, reads repository.ReplicaReads, checks map[string]listingCheck) {
	t.Helper()
	t.Logf("churn on the primary: %d sessions issued, %d revoked", c.issued.Load(), c.revoked())
	t.Logf("replica reads: %d served by the standby; fallbacks %d (behind %d, not in recovery %d, failed %d); log lines by reason: %v",
		reads.Served, reads.Fallbacks(), reads.Behind, reads.NotInRecovery, reads.Failed, fallbackLogLines(t, p.b.logs.String()))
	names := make([]string, 0, len(checks))
	for name := range checks {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		lc := checks[name]
		t.Logf("listings %s: %d reads, %d listed sessions already revoked, %d sessions revoked longer than the bound before a read, %d of them listed",
			name, lc.reads, lc.stale, lc.exercised, len(lc.violations))
	}
}

// fallbackLogLines counts the store's "fell back" log lines by reason, and fails the test when one
// is not a well-formed record.
func fallbackLogLines(t *testing.T, log string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, "replica read fell back") {
			continue
		}
		var rec struct {
			Reason string `json:"reason"`
			Op     string `json:"op"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Reason == "" || rec.Op == "" {
			t.Errorf("a fallback log line without its reason or operation: %s", line)
			continue
		}
		counts[rec.Reason]++
	}
	return counts
}

// replicaTracer watches every statement sent on the store's replica pool. The store's
// bounded-staleness reads are the only ones allowed there: their transaction, the staleness check,
// and the reads that may lag.
type replicaTracer struct {
	statements atomic.Int64
	mu         sync.Mutex
	foreign    []string
}

var replicaReadStatements = []string{
	"begin isolation level read committed read only", "commit", "rollback",
	"-- name: ReplicaStaleness ", "-- name: FamilyListActiveByUser ", "-- name: Stats",
}

func (r *replicaTracer) saw(sql string) {
	r.statements.Add(1)
	for _, prefix := range replicaReadStatements {
		if strings.HasPrefix(sql, prefix) {
			return
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.foreign = append(r.foreign, sql)
}

func (r *replicaTracer) foreignStatements() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.foreign)
}

func (r *replicaTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	r.saw(data.SQL)
	return ctx
}

func (r *replicaTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *replicaTracer) TracePrepareStart(ctx context.Context, _ *pgx.Conn, data pgx.TracePrepareStartData) context.Context {
	r.saw(data.SQL)
	return ctx
}

func (r *replicaTracer) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// silentServer listens where a PostgreSQL server would, accepts connections and never answers,
// until the test ends; it returns a pool for it, as a replica.
func silentServer(t *testing.T) *pgxpool.Pool {
	t.Helper()
	dir, err := os.MkdirTemp("", "silent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ln, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL.5432"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", dir))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
