// Package repository keeps OAuth 2 refresh-token families in PostgreSQL: it mints tokens, stores
// only their keyed digests, rotates them in one statement, and revokes a whole family when a used
// token is replayed. It is the API an authorization server calls; the SQL lives in the generated
// package db and the rules the database can hold live in the schema.
package repository

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/db"
)

// DBTX is what a Store runs its statements on: a *pgxpool.Pool, a *pgx.Conn, or a pgx.Tx that
// the caller commits. The happy paths are single statements; the rare paths that need several
// (a refused rotation, a grace reuse) run them in a READ COMMITTED transaction of their own, which
// inside the caller's transaction is a savepoint.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Defaults and bounds of the configuration.
const (
	DefaultRefreshTokenTTL = 30 * 24 * time.Hour
	// MaxTTL bounds every lifetime the package accepts.
	MaxTTL = 10 * 365 * 24 * time.Hour
	// MaxGraceWindow bounds Config.GraceWindow: the window weakens replay detection for its length.
	MaxGraceWindow = 10 * time.Minute
	// MaxGraceReuses bounds Config.GraceMaxReuses.
	MaxGraceReuses = 100
)

// Config configures a Store.
type Config struct {
	// Pepper keys the digests of every stored credential: at least MinPepperBytes of random data,
	// kept outside the database. It is a one-key ring with ID "default"; set Peppers instead to
	// rotate peppers. Exactly one of Pepper and Peppers must be set.
	Pepper Key
	// Peppers is the pepper ring, the current pepper first. New digests use the current pepper;
	// presented credentials are looked up under every pepper of the ring, and a rotation moves the
	// family to the current one. A credential made with a pepper no longer in the ring is unknown;
	// one made with a retired pepper (Pepper.Retired) is recognised as evidence, never accepted.
	// PepperFromEnv reads a ring from OAUTH_AT_REST_PEPPER.
	Peppers []Pepper
	// RefreshTokenTTL is the idle lifetime of each refresh token: a family whose current token is
	// not rotated within it dies. Zero means DefaultRefreshTokenTTL.
	RefreshTokenTTL time.Duration
	// FamilyLifetime is the default absolute lifetime of a family, from its issue; no token of the
	// family outlives it, and rotation never extends it. Zero means none (IssueRequest.Lifetime
	// can still set one).
	FamilyLifetime time.Duration
	// GraceWindow lets a client whose rotation response was lost present the parent of its
	// family's current token again, within this long after it was consumed. The unused current
	// token is replaced, never joined, by a new one. Zero (the default) is strict rotation: every
	// consumed token presented again is a replay.
	GraceWindow time.Duration
	// GraceMaxReuses is how many times one consumed token may be presented within the window.
	// Zero means 1 when GraceWindow is set.
	GraceMaxReuses int
	// CodeTTL is the lifetime of authorization codes; zero means DefaultCodeTTL (60 s). At most
	// MaxCodeTTL (10 minutes, RFC 6749 §4.1.2).
	CodeTTL time.Duration
	// PKCEOptional lets CreateCode accept a request without a PKCE challenge. OAuth 2.1 and the MCP
	// authorization specification require PKCE; leave it false unless a confidential client cannot.
	PKCEOptional bool
	// AllowPlainPKCE accepts the "plain" PKCE method. S256 is always accepted; plain protects only
	// against an attacker who cannot read the authorization request (RFC 7636 §7.2).
	AllowPlainPKCE bool
	// Logger receives replay detections, revocations and grace reuses. Nil means slog.Default().
	Logger *slog.Logger
	// OnEvent, when set, is called with every replay detection, revocation and grace reuse, after
	// the change is committed (inside a caller's transaction: after its savepoint is released).
	// It runs on the caller's goroutine: keep it fast.
	OnEvent func(context.Context, Event)
	// Clock, when set, replaces the database clock in every statement. For tests; production
	// leaves it nil so that PostgreSQL's now() rules.
	Clock func() time.Time
	// RevocationConnect opens a connection of the store's own, used for one thing: committing the
	// revocation of a family whose consumed token or code was replayed inside a caller's
	// transaction, independently of that transaction (see WithDB). Nil derives it from the handle
	// given to New: from a *pgxpool.Pool, a new connection with the pool's settings, running its
	// BeforeConnect and AfterConnect hooks each time; from a *pgx.Conn or pgx.Tx (given to New or,
	// for another DBTX, to WithDB), the settings that connection was opened with, as they were
	// then — set RevocationConnect where they do not last, such as short-lived credentials.
	RevocationConnect func(ctx context.Context) (*pgx.Conn, error)
}

// Store is the refresh-token repository. It is safe for concurrent use.
type Store struct {
	db             DBTX
	callerTx       bool                                     // db is a caller's transaction (WithDB, or New given a pgx.Tx)
	connect        func(context.Context) (*pgx.Conn, error) // a connection outside any caller's transaction
	revocations    chan struct{}                            // bounds the independent revocations in flight
	replays        *replayLog
	q              *db.Queries
	refresh        *digester
	code           *digester
	state          *digester
	codeTTL        time.Duration
	pkceOptional   bool
	allowPlainPKCE bool
	ttl            time.Duration
	familyLifetime time.Duration
	graceWindow    time.Duration
	graceReuses    int
	log            *slog.Logger
	onEvent        func(context.Context, Event)
	clock          func() time.Time
}

// New returns a Store that runs its statements on dbtx.
func New(dbtx DBTX, cfg Config) (*Store, error) {
	return newStore(dbtx, cfg, true)
}

// NewAdmin returns a Store for the operations that need no pepper, for operators' tools: Family,
// ActiveFamilies, RevokeFamily, RevokeFamilies, DeleteFamily, Cleanup, CleanupBacklog and Stats.
// Its operations on credentials return ErrNoPepper. A pepper in cfg is ignored.
func NewAdmin(dbtx DBTX, cfg Config) (*Store, error) {
	cfg.Pepper, cfg.Peppers = Key{}, nil
	return newStore(dbtx, cfg, false)
}

func newStore(dbtx DBTX, cfg Config, withPepper bool) (*Store, error) {
	if dbtx == nil {
		return nil, inputError("dbtx", "nil")
	}
	ring := cfg.Peppers
	switch {
	case !withPepper:
	case !cfg.Pepper.IsZero() && ring != nil:
		return nil, inputError("pepper", "set Pepper or Peppers, not both")
	case !cfg.Pepper.IsZero():
		if cfg.Pepper.Len() < MinPepperBytes {
			return nil, ErrPepperTooShort
		}
		ring = []Pepper{{ID: DefaultPepperID, Secret: cfg.Pepper}}
	}
	if withPepper {
		if err := validateRing(ring); err != nil {
			return nil, err
		}
	}
	ttl := cfg.RefreshTokenTTL
	if ttl == 0 {
		ttl = DefaultRefreshTokenTTL
	}
	if err := validateTTL("RefreshTokenTTL", ttl); err != nil {
		return nil, err
	}
	if cfg.FamilyLifetime != 0 {
		if err := validateTTL("FamilyLifetime", cfg.FamilyLifetime); err != nil {
			return nil, err
		}
	}
	reuses := cfg.GraceMaxReuses
	switch {
	case cfg.GraceWindow < 0 || cfg.GraceWindow > MaxGraceWindow:
		return nil, inputError("GraceWindow", "outside 0..10 minutes")
	case reuses < 0 || reuses > MaxGraceReuses:
		return nil, inputError("GraceMaxReuses", "outside 0..100")
	case reuses == 0 && cfg.GraceWindow > 0:
		reuses = 1
	}
	codeTTL := cfg.CodeTTL
	switch {
	case codeTTL == 0:
		codeTTL = DefaultCodeTTL
	case codeTTL < time.Second || codeTTL > MaxCodeTTL:
		return nil, inputError("CodeTTL", "outside 1s..10m")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	connect := cfg.RevocationConnect
	if connect == nil {
		connect = connectorOf(dbtx) // nil for another DBTX: WithDB derives one from its transaction
	}
	s := &Store{
		db:             dbtx,
		connect:        connect,
		revocations:    make(chan struct{}, maxRevocationConns),
		replays:        &replayLog{seen: map[string]time.Time{}},
		q:              db.New(),
		refresh:        newDigester(ring, "refresh-token"),
		code:           newDigester(ring, "authorization-code"),
		state:          newDigester(ring, "state"),
		codeTTL:        codeTTL,
		pkceOptional:   cfg.PKCEOptional,
		allowPlainPKCE: cfg.AllowPlainPKCE,
		ttl:            ttl,
		familyLifetime: cfg.FamilyLifetime,
		graceWindow:    cfg.GraceWindow,
		graceReuses:    reuses,
		log:            log,
		onEvent:        cfg.OnEvent,
		clock:          cfg.Clock,
	}
	if tx, ok := dbtx.(pgx.Tx); ok {
		return s.WithDB(tx), nil
	}
	return s, nil
}

// maxRevocationConns bounds the connections a Store opens at once for independent revocations.
const maxRevocationConns = 4

// connectorOf returns how to open a connection to the server behind dbtx, with its settings, or nil.
func connectorOf(dbtx DBTX) func(context.Context) (*pgx.Conn, error) {
	switch h := dbtx.(type) {
	case *pgxpool.Pool:
		return func(ctx context.Context) (*pgx.Conn, error) {
			cfg := h.Config()
			cc := cfg.ConnConfig.Copy()
			if cfg.BeforeConnect != nil {
				if err := cfg.BeforeConnect(ctx, cc); err != nil {
					return nil, err
				}
			}
			conn, err := pgx.ConnectConfig(ctx, cc)
			if err != nil {
				return nil, err
			}
			if cfg.AfterConnect != nil {
				if err := cfg.AfterConnect(ctx, conn); err != nil {
					_ = conn.Close(context.Background())
					return nil, err
				}
			}
			return conn, nil
		}
	case *pgx.Conn:
		cfg := h.Config()
		return func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, cfg) }
	case pgx.Tx:
		if h.Conn() != nil {
			return connectorOf(h.Conn())
		}
	}
	return nil
}

// WithDB returns a Store that shares s's keys and configuration but runs its statements on dbtx,
// the caller's transaction, so that they commit or roll back with the caller's own writes. New
// given a pgx.Tx behaves the same.
//
// One change never rolls back with it: the revocation of a family whose consumed token or code
// was replayed (I7). The store commits it on a connection of its own (Config.RevocationConnect;
// never one of the caller's pool, so a pool whose every connection is in a request transaction
// cannot stall it).
// The call waits for that commit, at most ReplayRevocationTimeout, whatever the caller's context
// says; the event reports FamilyRevoked only once it is committed. Two cases join the caller's
// transaction instead, because nothing outside it can do the job: the caller's transaction itself
// holds the family's lock (it rotated or revoked the same family earlier) or created the family
// (it is not visible outside yet). The event then says InCallerTx, and the revocation commits or
// rolls back with the caller — as does, in the second case, the family itself.
//
// No transaction is begun or ended on the caller's connection: the only transaction control the
// store sends there is a savepoint of its own (a refused rotation is settled in one), which it
// releases or rolls back itself.
//
// The transaction must be READ COMMITTED, PostgreSQL's default: the rotation's guarantees rest on
// each statement seeing what committed before it. The first statement on the returned Store
// checks it (one round trip) and every call on a transaction of another level returns
// ErrNotReadCommitted and changes nothing.
func (s *Store) WithDB(dbtx DBTX) *Store {
	c := *s
	c.db = &checkedTx{DBTX: dbtx, q: s.q}
	c.callerTx = true
	if c.connect == nil {
		c.connect = connectorOf(dbtx)
	}
	return &c
}

// checkedTx is a caller's transaction, checked to be READ COMMITTED before its first statement.
type checkedTx struct {
	DBTX
	q       *db.Queries
	mu      sync.Mutex
	checked bool
	err     error // ErrNotReadCommitted, once found
}

func (c *checkedTx) check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checked {
		return c.err
	}
	level, err := c.q.SessionIsolation(ctx, c.DBTX)
	if err != nil {
		return fmt.Errorf("read the transaction's isolation level: %w", err)
	}
	c.checked = true
	if level != "read committed" {
		c.err = fmt.Errorf("%w (it is %s)", ErrNotReadCommitted, level)
	}
	return c.err
}

func (c *checkedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := c.check(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return c.DBTX.Exec(ctx, sql, args...)
}

func (c *checkedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := c.check(ctx); err != nil {
		return nil, err
	}
	return c.DBTX.Query(ctx, sql, args...)
}

func (c *checkedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := c.check(ctx); err != nil {
		return errRow{err}
	}
	return c.DBTX.QueryRow(ctx, sql, args...)
}

func (c *checkedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := c.check(ctx); err != nil {
		return nil, err
	}
	return c.DBTX.Begin(ctx)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// errNoCredentials is what an admin store (NewAdmin) answers to an operation on credentials.
var errNoCredentials = fmt.Errorf("%w: this store was made by NewAdmin and cannot mint or check credentials", ErrNoPepper)

// now is the instant passed to the statements: nil lets the database clock rule.
func (s *Store) now() *time.Time {
	if s.clock == nil {
		return nil
	}
	t := s.clock()
	return &t
}

func (s *Store) ttlOr(field string, d time.Duration) (time.Duration, error) {
	if d == 0 {
		return s.ttl, nil
	}
	return d, validateTTL(field, d)
}

// familyLifetimes resolves a new family's first-token TTL and absolute lifetime, zero meaning the
// configured default (and a zero lifetime, none).
func (s *Store) familyLifetimes(ttl, lifetime time.Duration) (time.Duration, time.Duration, error) {
	ttl, err := s.ttlOr("ttl", ttl)
	if err != nil {
		return 0, 0, err
	}
	if lifetime == 0 {
		return ttl, s.familyLifetime, nil
	}
	return ttl, lifetime, validateTTL("lifetime", lifetime)
}

func interval(d time.Duration) pgtype.Interval {
	return pgtype.Interval{Microseconds: d.Microseconds(), Valid: true}
}

// optionalInterval is NULL for zero.
func optionalInterval(d time.Duration) pgtype.Interval {
	if d == 0 {
		return pgtype.Interval{}
	}
	return interval(d)
}

func optionalText(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// inTx runs fn in a READ COMMITTED transaction of its own (a savepoint inside the caller's) and
// commits it when fn asks to, whatever else fn returns: a replay's revocation must commit although
// the call fails.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx pgx.Tx) (commit bool, err error)) error {
	tx, err := s.begin(ctx)
	if err != nil {
		return dbError(op, err)
	}
	commit, err := fn(tx)
	if !commit {
		if rbErr := tx.Rollback(ctx); rbErr != nil && err == nil {
			return dbError(op, rbErr)
		}
		return err
	}
	if cErr := tx.Commit(ctx); cErr != nil {
		return dbError(op, cErr)
	}
	return err
}

// begin opens a transaction pinned to READ COMMITTED whatever the database's or role's default
// (default_transaction_isolation), or a savepoint inside the caller's transaction.
func (s *Store) begin(ctx context.Context) (pgx.Tx, error) {
	type txBeginner interface {
		BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
	}
	if s.callerTx {
		return s.db.Begin(ctx)
	}
	if b, ok := s.db.(txBeginner); ok {
		return b.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.q.SessionReadCommitted(ctx, tx); err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

// readCommitted runs one statement. Alone it runs in an implicit transaction at the database's
// default isolation level; should that be stricter and the statement meet a concurrent change
// (a serialization failure), it runs again in a READ COMMITTED transaction, where it waits for
// the change and sees its outcome.
func (s *Store) readCommitted(ctx context.Context, op string, fn func(DBTX) error) error {
	err := fn(s.db)
	if !isSerializationFailure(err) || s.callerTx {
		return err
	}
	return s.inTx(ctx, op, func(tx pgx.Tx) (bool, error) {
		err := fn(tx)
		return err == nil, err
	})
}

func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.SerializationFailure
}

func familyIDString(id pgtype.UUID) string { return id.String() }

// parseFamilyID accepts a UUID in its canonical text form only: 8-4-4-4-12 hex digits.
func parseFamilyID(id string) (pgtype.UUID, error) {
	var u pgtype.UUID
	if len(id) != 36 {
		return u, inputError("family_id", "not a UUID")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		dash := i == 8 || i == 13 || i == 18 || i == 23
		hex := '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
		if dash != (c == '-') || !dash && !hex {
			return u, inputError("family_id", "not a UUID")
		}
	}
	if u.Scan(id) != nil {
		return u, inputError("family_id", "not a UUID")
	}
	return u, nil
}

// dbError wraps an unexpected database error with the operation that met it. The statements
// never carry a raw secret, so neither can the error.
func dbError(op string, err error) error {
	return fmt.Errorf("oauthstore: %s: %w", op, err)
}

func utc(t time.Time) time.Time { return t.UTC() }

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
