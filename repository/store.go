// Package repository keeps OAuth 2 refresh-token families in PostgreSQL: it mints tokens, stores
// only their keyed digests, rotates them in one statement, and revokes a whole family when a used
// token is replayed. It is the API an authorization server calls; the SQL lives in the generated
// package db and the rules the database can hold live in the schema.
package repository

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// DBTX is what a Store runs its statements on: a *pgxpool.Pool, a *pgx.Conn, or a pgx.Tx that
// the caller commits. Every operation is a single statement or a short series of independent
// ones, so it composes with the caller's transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Defaults and bounds of the configuration.
const (
	DefaultRefreshTokenTTL = 30 * 24 * time.Hour
	// MaxTTL bounds every lifetime the package accepts.
	MaxTTL = 10 * 365 * 24 * time.Hour
)

// Config configures a Store.
type Config struct {
	// Pepper keys the digests of every stored credential. At least MinPepperBytes of random data,
	// kept outside the database (PepperFromEnv reads it from OAUTH_AT_REST_PEPPER).
	Pepper []byte
	// RefreshTokenTTL is the idle lifetime of each refresh token: a family whose current token is
	// not rotated within it dies. Zero means DefaultRefreshTokenTTL.
	RefreshTokenTTL time.Duration
	// Logger receives replay detections and revocations. Nil means slog.Default().
	Logger *slog.Logger
	// Clock, when set, replaces the database clock in every statement. For tests; production
	// leaves it nil so that PostgreSQL's now() rules.
	Clock func() time.Time
}

// Store is the refresh-token repository. It is safe for concurrent use.
type Store struct {
	db      DBTX
	q       *db.Queries
	refresh *digester
	ttl     time.Duration
	log     *slog.Logger
	clock   func() time.Time
}

// New returns a Store that runs its statements on dbtx.
func New(dbtx DBTX, cfg Config) (*Store, error) {
	if dbtx == nil {
		return nil, inputError("dbtx", "nil")
	}
	if len(cfg.Pepper) < MinPepperBytes {
		return nil, ErrPepperTooShort
	}
	ttl := cfg.RefreshTokenTTL
	if ttl == 0 {
		ttl = DefaultRefreshTokenTTL
	}
	if err := validateTTL("RefreshTokenTTL", ttl); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Store{
		db:      dbtx,
		q:       db.New(),
		refresh: newDigester(cfg.Pepper, "refresh-token"),
		ttl:     ttl,
		log:     log,
		clock:   cfg.Clock,
	}, nil
}

// WithDB returns a Store that shares s's keys and configuration but runs its statements on dbtx,
// typically the caller's transaction.
func (s *Store) WithDB(dbtx DBTX) *Store {
	c := *s
	c.db = dbtx
	return &c
}

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

func interval(d time.Duration) pgtype.Interval {
	return pgtype.Interval{Microseconds: d.Microseconds(), Valid: true}
}

func familyIDString(id pgtype.UUID) string { return id.String() }

func parseFamilyID(id string) (pgtype.UUID, error) {
	var u pgtype.UUID
	if len(id) != 36 || u.Scan(id) != nil {
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
