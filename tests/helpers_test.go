package tests

// The harness of the integration tests: one freshly migrated database per test (dbtest), a store
// on it with a settable clock, and the helpers every test shares. Each test file holds the tests of
// one unit; what more than one of them needs lives here.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/tests/dbtest"
)

// bundle is what a test needs: its own migrated database, a store on it with a settable clock,
// and the store's captured log.
type bundle struct {
	ctx    context.Context
	db     *dbtest.DB
	pool   *pgxpool.Pool
	store  *repository.Store
	clock  *testClock
	logs   *syncBuffer
	pepper []byte

	mu      sync.Mutex
	secrets []string // raw credentials the test created, looked for when it ends
}

// remember records raw credentials to look for in the tables and the log when the test ends.
func (b *bundle) remember(secrets ...repository.Secret) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range secrets {
		b.secrets = append(b.secrets, s.Reveal())
	}
}

// rememberRaw records raw credentials a client received, as remember does.
func (b *bundle) rememberRaw(raw ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.secrets = append(b.secrets, raw...)
}

// checkSecretHygiene looks for every raw credential the test created, and the pepper, in every
// row of every table and in the store's log: none may be there (I6).
func (b *bundle) checkSecretHygiene(t *testing.T) {
	rows, err := b.pool.Query(b.ctx, `SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
		FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Errorf("secret hygiene: %v", err)
		return
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Errorf("secret hygiene: %v", err)
		return
	}
	var dump strings.Builder
	for _, table := range tables {
		var text string
		if err := b.pool.QueryRow(b.ctx, "SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM "+table+" x").Scan(&text); err != nil {
			t.Errorf("secret hygiene: %v", err)
			return
		}
		dump.WriteString(text)
	}
	haystack := dump.String() + b.logs.String()
	b.mu.Lock()
	secrets := append(slices.Clone(b.secrets), base64.StdEncoding.EncodeToString(b.pepper), hex.EncodeToString(b.pepper))
	b.mu.Unlock()
	hygiene.databases.Add(1)
	hygiene.secrets.Add(int64(len(secrets)))
	for _, s := range secrets {
		if strings.Contains(haystack, s) {
			hygiene.found.Add(1)
			t.Errorf("secret hygiene: a raw credential (%d characters) is in a table or the log", len(s))
		}
	}
}

type setupOptions struct {
	realClock bool                     // let the database clock rule instead of the test clock
	configure func(*repository.Config) // adjusts the store's configuration
}

func setup(t *testing.T, opts ...setupOptions) *bundle {
	t.Helper()
	var o setupOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	d := dbtest.NewDB(t)
	b := &bundle{ctx: context.Background(), db: d, pool: d.Pool, logs: &syncBuffer{}}
	b.clock = &testClock{}
	b.clock.Set(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	b.pepper = make([]byte, 32)
	_, _ = rand.Read(b.pepper)
	// Strict rotation unless a test asks for grace (withGrace): most tests present consumed tokens
	// to see them refused. The defaults have their own tests.
	cfg := repository.Config{
		GraceWindow:     repository.StrictRotation,
		Pepper:          repository.NewKey(b.pepper),
		RefreshTokenTTL: 24 * time.Hour,
		Logger:          slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if !o.realClock {
		cfg.Clock = b.clock.Now
	}
	if o.configure != nil {
		o.configure(&cfg)
	}
	store, err := repository.New(d.Pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.store = store
	t.Cleanup(func() { b.checkSecretHygiene(t) }) // runs before the database is dropped
	return b
}

// setupBench gives a benchmark a database and a store on the database clock.
func setupBench(tb testing.TB) *bundle {
	tb.Helper()
	d := dbtest.NewDB(tb)
	b := &bundle{ctx: context.Background(), db: d, pool: d.Pool, logs: &syncBuffer{}, pepper: make([]byte, 32)}
	_, _ = rand.Read(b.pepper)
	store, err := repository.New(d.Pool, repository.Config{Pepper: repository.NewKey(b.pepper), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	b.store = store
	return b
}

// issue starts a family for client "client-a" and user "user-1".
func (b *bundle) issue(t *testing.T) *repository.RefreshToken {
	t.Helper()
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{
		ClientID: "client-a", UserID: "user-1", Scope: []string{"openid", "offline_access"},
	})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	b.remember(tok.Token)
	return tok
}

func (b *bundle) rotate(token repository.Secret, client string) (*repository.RefreshToken, error) {
	next, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: token.Reveal(), ClientID: client})
	if err == nil {
		b.remember(next.Token)
	}
	return next, err
}

// liveTokens counts the family's tokens that a rotation would accept: its live token (one per
// family row), unless that token is also a tombstone, which only a defect could make it.
func (b *bundle) liveTokens(t *testing.T, familyID string) int {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM oauth_family f WHERE f.id = $1
		AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tombstone t WHERE t.family_id = f.id AND t.digest = f.token_digest)`, familyID)
}

func (b *bundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (b *bundle) family(t *testing.T, id string) *repository.Family {
	t.Helper()
	f, err := b.store.Family(b.ctx, id)
	if err != nil {
		t.Fatalf("family %s: %v", id, err)
	}
	return f
}

// tableChecksum is an md5 of every row of every table the package owns, to show that a refused
// call changed nothing.
func (b *bundle) tableChecksum(t *testing.T) string {
	t.Helper()
	var sum string
	err := b.pool.QueryRow(b.ctx, `
		SELECT md5(coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_family x), '') || '|' ||
		           coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_refresh_token x), '') || '|' ||
		           coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_authorization_code x), '') || '|' ||
		           coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_state x), '') || '|' ||
		           coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_access_token x), '') || '|' ||
		           coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_revocation x), ''))`).Scan(&sum)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }

func (c *testClock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }

func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// statementCounter is a pgx tracer that counts the statements sent and the prepares pgx makes.
type statementCounter struct{ queries, prepares atomic.Int64 }

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.queries.Add(1)
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *statementCounter) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	c.prepares.Add(1)
	return ctx
}

func (c *statementCounter) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// countingPool returns a pool on the test's database whose statements the returned counter
// counts, with at most maxConns connections (0: pgxpool's default); the test closes it.
func (b *bundle) countingPool(t *testing.T, maxConns int32) (*pgxpool.Pool, *statementCounter) {
	t.Helper()
	counter := &statementCounter{}
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = counter
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, counter
}

// replayed issues a family on b's store and rotates it once: the first token is now a replay.
func (b *bundle) replayed(t *testing.T) (first, next *repository.RefreshToken) {
	t.Helper()
	first = b.issue(t)
	next, err := b.rotate(first.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	b.remember(next.Token)
	return first, next
}

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

func withGrace(window time.Duration, reuses int) setupOptions {
	return setupOptions{configure: func(c *repository.Config) {
		c.GraceWindow, c.GraceMaxReuses = window, reuses
	}}
}

const redirectURI = "https://app.example/callback"

// pkce returns a fresh verifier and its S256 challenge.
func pkce(t *testing.T) (verifier, challenge string) {
	t.Helper()
	verifier = strings.Repeat("v", 20) + base64.RawURLEncoding.EncodeToString([]byte(t.Name() + time.Now().String()))[:30]
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

type codeFixture struct {
	code     *repository.AuthorizationCode
	verifier string
}

func (b *bundle) createCode(t *testing.T, mutate ...func(*repository.CodeRequest)) codeFixture {
	t.Helper()
	verifier, challenge := pkce(t)
	req := repository.CodeRequest{
		ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI,
		Scope: []string{"openid", "offline_access"}, CodeChallenge: challenge, CodeChallengeMethod: "S256",
		Nonce: "n-0S6_WzA2Mj", Resources: []string{"https://mcp.example/api"},
		Session: json.RawMessage(`{"auth_time":1700000000,"acr":"urn:mace:incommon:iap:silver"}`),
	}
	for _, m := range mutate {
		m(&req)
	}
	code, err := b.store.CreateCode(b.ctx, req)
	if err != nil {
		t.Fatalf("create code: %v", err)
	}
	b.remember(code.Code)
	return codeFixture{code: code, verifier: verifier}
}

func (b *bundle) exchange(f codeFixture) (*repository.CodeExchange, error) {
	got, err := b.store.Exchange(b.ctx, repository.ExchangeRequest{
		Code: f.code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: f.verifier,
	})
	if err == nil {
		b.remember(got.Token)
	}
	return got, err
}

// race runs racers calls of fn at once, released together, and returns their errors; fn gets the
// racer's index.
func race(racers int, fn func(i int) error) []error {
	var (
		wg    sync.WaitGroup
		ready sync.WaitGroup
		start = make(chan struct{})
		errs  = make([]error, racers)
	)
	for i := range racers {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-start
			errs[i] = fn(i)
		}()
	}
	ready.Wait()
	close(start)
	wg.Wait()
	return errs
}

// fataler is what the invariant checks need of a *testing.T or a *rapid.T.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// invariants are what must hold in every state the store leaves the database in, whatever
// happened: each a query that counts the rows that break it.
var invariants = []struct{ name, sql string }{
	// A family row names one live token (I1 by construction); a token must not be live and
	// consumed at once.
	{"I1: live tokens that are also tombstones", `SELECT count(*) FROM oauth_family f
		JOIN oauth_refresh_tombstone t ON t.family_id = f.id AND t.digest = f.token_digest`},
	{"I1: families holding two rows", `SELECT count(*) FROM (SELECT id FROM oauth_family GROUP BY id HAVING count(*) > 1) x`},
	// A consumed token has the successor it produced, or the one that replaced it in a grace reuse:
	// a tombstone, or the family's live token. (The checks read the tables, not the view of every
	// token, so that they stay cheap on tables partitioned by family.)
	{"I2: consumed tokens without a successor", `SELECT count(*) FROM oauth_refresh_tombstone x
		WHERE NOT EXISTS (SELECT 1 FROM oauth_refresh_tombstone y WHERE y.family_id = x.family_id AND y.digest <> x.digest
			AND (y.parent_digest = x.digest OR (y.parent_digest = x.parent_digest AND y.created_at >= x.created_at)))
		AND NOT EXISTS (SELECT 1 FROM oauth_family f WHERE f.id = x.family_id AND f.token_digest <> x.digest
			AND (f.parent_digest = x.digest OR (f.parent_digest = x.parent_digest AND coalesce(f.last_rotated_at, f.created_at) >= x.created_at)))`},
	{"tokens whose parent is not in their family", `SELECT count(*) FROM (
			SELECT family_id, parent_digest FROM oauth_refresh_tombstone WHERE parent_digest IS NOT NULL
			UNION ALL
			SELECT id, parent_digest FROM oauth_family WHERE parent_digest IS NOT NULL) x
		WHERE NOT EXISTS (SELECT 1 FROM oauth_refresh_tombstone p WHERE p.family_id = x.family_id AND p.digest = x.parent_digest)`},
	// Cleanup finds a family by the UTC day of its idle expiry, which every statement that moves
	// the expiry sets with it.
	{"families whose sweep_day is not the UTC day of idle_expires_at", `SELECT count(*) FROM oauth_family
		WHERE sweep_day IS DISTINCT FROM (idle_expires_at AT TIME ZONE 'UTC')::date`},
	{"tokens consumed before they were created", `SELECT count(*) FROM oauth_refresh_tombstone WHERE consumed_at < created_at`},
	{"tombstones without their family", `SELECT count(*) FROM oauth_refresh_tombstone t
		WHERE NOT EXISTS (SELECT 1 FROM oauth_family f WHERE f.id = t.family_id)`},
	{"codes consumed without their family and its first token, or the reverse", `SELECT count(*) FROM oauth_authorization_code c
		WHERE (c.consumed_at IS NULL) <> (c.family_id IS NULL)
		OR (c.consumed_at IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tombstone t WHERE t.family_id = c.family_id AND t.parent_digest IS NULL)
			AND NOT EXISTS (SELECT 1 FROM oauth_family f WHERE f.id = c.family_id AND f.parent_digest IS NULL))`},
}

// checkInvariants fails t with every invariant the database breaks.
func (b *bundle) checkInvariants(t fataler, when string) {
	t.Helper()
	for _, inv := range invariants {
		var n int
		if err := b.pool.QueryRow(b.ctx, inv.sql).Scan(&n); err != nil {
			t.Fatalf("%s: checking %s: %v", when, inv.name, err)
		}
		if n != 0 {
			t.Fatalf("%s: %s: %d", when, inv.name, n)
		}
	}
}

// eventLog collects the events a store reports (Config.OnEvent: add).
type eventLog struct {
	mu     sync.Mutex
	events []repository.Event
}

func (l *eventLog) add(_ context.Context, e repository.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) all() []repository.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func (l *eventLog) has(kind repository.EventKind, familyID string) bool {
	return slices.ContainsFunc(l.all(), func(e repository.Event) bool { return e.Kind == kind && e.FamilyID == familyID })
}

func sprintEvent(e repository.Event) string {
	return strings.Join([]string{string(e.Kind), e.FamilyID, e.ClientID, e.UserID, e.Reason}, " ")
}

// countWinners counts the calls of a race that succeeded and those refused with loser; any other
// outcome is returned as unexpected.
func countWinners(errs []error, loser error) (winners, losers int, unexpected []error) {
	for _, err := range errs {
		switch {
		case err == nil:
			winners++
		case errors.Is(err, loser):
			losers++
		default:
			unexpected = append(unexpected, err)
		}
	}
	return winners, losers, unexpected
}

// begin begins a transaction on the test's pool, as a request handler does; it is rolled back when
// the test ends unless the test ended it.
func (b *bundle) begin(t *testing.T) pgx.Tx {
	t.Helper()
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}
