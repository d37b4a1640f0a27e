package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/tests/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

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
	cfg := repository.Config{
		Pepper:          b.pepper,
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
	return tok
}

func (b *bundle) rotate(token repository.Secret, client string) (*repository.RefreshToken, error) {
	return b.store.Rotate(b.ctx, repository.RotateRequest{Token: token.Reveal(), ClientID: client})
}

// liveTokens counts the family's unconsumed tokens.
func (b *bundle) liveTokens(t *testing.T, familyID string) int {
	t.Helper()
	return b.count(t, "SELECT count(*) FROM oauth_refresh_token WHERE family_id = $1 AND consumed_at IS NULL", familyID)
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
		           coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM oauth_state x), ''))`).Scan(&sum)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *testClock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
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
