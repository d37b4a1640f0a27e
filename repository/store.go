package repository

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/db"
)

// Admin runs the operations that need no pepper: families (Family, ActiveFamilies, RevokeFamily,
// RevokeFamilies, DeleteFamily), Cleanup, CleanupBacklog, Stats and PepperUsage. Operators' tools
// use it through NewAdmin; a Store embeds one. It is safe for concurrent use.
type Admin struct {
	dbtx     DBTX
	callerTx bool // dbtx is a caller's transaction (WithDB, or New given a pgx.Tx)
	q        *db.Queries
	log      *slog.Logger
	onEvent  func(context.Context, Event)
	clock    func() time.Time
	replica  *replica // Config.ReadReplica, for boundedStaleRead alone; nil without one
}

// Store mints, stores and checks credentials — refresh-token families, authorization codes and
// states — and detects their replay; it is also an Admin. It is safe for concurrent use.
type Store struct {
	Admin
	connect        func(context.Context) (*pgx.Conn, error) // a connection outside any caller's transaction
	revocations    chan struct{}                            // bounds the independent revocations in flight
	replays        *replayLog
	refresh        *digester
	code           *digester
	state          *digester
	access         *digester
	accessTTL      time.Duration
	codeTTL        time.Duration
	pkceOptional   bool
	allowPlainPKCE bool
	ttl            time.Duration
	familyLifetime time.Duration
	graceWindow    time.Duration
	graceReuses    int
}

// New returns a Store that runs its statements on dbtx: a *pgxpool.Pool, a *pgx.Conn, or a pgx.Tx,
// which makes it a Store in the caller's transaction (see WithDB).
func New(dbtx DBTX, cfg Config) (*Store, error) {
	if dbtx == nil {
		return nil, inputError("dbtx", "nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(true); err != nil {
		return nil, err
	}
	ring := cfg.ring()
	connect := cfg.RevocationConnect
	if connect == nil {
		connect = connectorOf(dbtx) // nil for another DBTX: WithDB derives one from its transaction
	}
	s := &Store{
		Admin:          newAdmin(dbtx, cfg),
		connect:        connect,
		revocations:    make(chan struct{}, maxRevocationConns),
		replays:        &replayLog{seen: map[string]time.Time{}},
		refresh:        newDigester(ring, "refresh-token", true),
		code:           newDigester(ring, "authorization-code", false),
		state:          newDigester(ring, "state", false),
		access:         newDigester(ring, "access-token", true),
		accessTTL:      cfg.AccessTokenTTL,
		codeTTL:        cfg.CodeTTL,
		pkceOptional:   cfg.PKCEOptional,
		allowPlainPKCE: cfg.AllowPlainPKCE,
		ttl:            cfg.RefreshTokenTTL,
		familyLifetime: cfg.FamilyLifetime,
		graceWindow:    max(cfg.GraceWindow, 0), // StrictRotation: none
		graceReuses:    cfg.GraceMaxReuses,
	}
	if tx, ok := dbtx.(pgx.Tx); ok {
		return s.WithDB(tx), nil
	}
	return s, nil
}

// NewAdmin returns an Admin, for operators' tools. A pepper in cfg is ignored: an Admin cannot mint
// or check credentials.
func NewAdmin(dbtx DBTX, cfg Config) (*Admin, error) {
	if dbtx == nil {
		return nil, inputError("dbtx", "nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(false); err != nil {
		return nil, err
	}
	a := newAdmin(dbtx, cfg)
	if tx, ok := dbtx.(pgx.Tx); ok {
		return a.WithDB(tx), nil
	}
	return &a, nil
}

func newAdmin(dbtx DBTX, cfg Config) Admin {
	return Admin{dbtx: dbtx, q: db.New(), log: cfg.Logger, onEvent: cfg.OnEvent, clock: cfg.Clock, replica: newReplica(cfg)}
}

// WithDB returns an Admin that runs its statements on dbtx, the caller's transaction, which must
// be READ COMMITTED (see Store.WithDB).
func (a *Admin) WithDB(dbtx DBTX) *Admin {
	c := *a
	c.dbtx = &checkedTx{DBTX: dbtx, q: a.q}
	c.callerTx = true
	return &c
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
	c.Admin = *s.Admin.WithDB(dbtx)
	if c.connect == nil {
		c.connect = connectorOf(dbtx)
	}
	return &c
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

// now is the instant passed to the statements: nil lets the database clock rule.
func (a *Admin) now() *time.Time {
	if a.clock == nil {
		return nil
	}
	t := a.clock()
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
