// Package dbtest gives integration tests a real PostgreSQL: one server per test process and one
// freshly migrated database per test, cloned from a template.
//
// The server comes from the first provider that answers:
//
//  1. TEST_DATABASE_URL: an existing server; the role must be allowed to create databases.
//  2. testcontainers-go's postgres module, when a Docker engine answers (image from
//     OAUTHSTORE_TEST_POSTGRES_IMAGE, default postgres:15-alpine).
//  3. A throwaway cluster started from the machine's PostgreSQL server binaries (internal/pgtemp).
//
// OAUTHSTORE_TEST_PROVIDER=url|testcontainers|binaries forces one. When none is available the
// tests fail and say so; they never skip.
package dbtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/schema"
)

// Server is the PostgreSQL server of a test process.
type Server struct {
	// Provider names where the server came from: "url", "testcontainers" or "binaries".
	Provider string
	admin    string // connection string of a maintenance database
	template string // migrated template database
	prefix   string
	seq      atomic.Int64
	stop     func() error
	// keepTemplate keeps the template when the process ends: on a server of its own (url) the
	// next test process with the same migrations reuses it.
	keepTemplate bool
}

var current *Server

// Main starts the server, runs the tests, calls each of after, and stops the server. Call it
// from TestMain:
//
//	func TestMain(m *testing.M) { dbtest.Main(m) }
func Main(m *testing.M, after ...func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	srv, err := Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dbtest:", err)
		os.Exit(2)
	}
	current = srv
	fmt.Fprintf(os.Stderr, "dbtest: PostgreSQL from provider %q\n", srv.Provider)
	code := m.Run()
	for _, f := range after {
		f()
	}
	if err := srv.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "dbtest: stop:", err)
	}
	os.Exit(code)
}

// Current returns the server Main started.
func Current() *Server { return current }

// Start starts (or connects to) a server and migrates a template database on it.
func Start(ctx context.Context) (*Server, error) {
	provider := os.Getenv("OAUTHSTORE_TEST_PROVIDER")
	var (
		admin string
		stop  func() error
		err   error
		tried []string
	)
	if url := os.Getenv("TEST_DATABASE_URL"); url != "" && (provider == "" || provider == "url") {
		admin, stop, provider = url, func() error { return nil }, "url"
	} else if provider == "url" {
		return nil, errors.New("OAUTHSTORE_TEST_PROVIDER=url but TEST_DATABASE_URL is not set")
	}
	if admin == "" && (provider == "" || provider == "testcontainers") {
		admin, stop, err = startContainer(ctx)
		switch {
		case err == nil:
			provider = "testcontainers"
		case provider == "testcontainers":
			return nil, fmt.Errorf("testcontainers: %w", err)
		default:
			tried = append(tried, "testcontainers: "+err.Error())
		}
	}
	if admin == "" && (provider == "" || provider == "binaries") {
		var c *pgtemp.Cluster
		c, err = pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{"max_connections": "300"}})
		switch {
		case err == nil:
			admin, stop, provider = c.URL("postgres"), c.Stop, "binaries"
		case provider == "binaries":
			return nil, fmt.Errorf("server binaries: %w", err)
		default:
			tried = append(tried, "server binaries: "+err.Error())
		}
	}
	if admin == "" {
		if provider != "" && provider != "url" && provider != "testcontainers" && provider != "binaries" {
			return nil, fmt.Errorf("OAUTHSTORE_TEST_PROVIDER=%q: want url, testcontainers or binaries", provider)
		}
		return nil, fmt.Errorf("no PostgreSQL for the integration tests. Provide one of:\n"+
			"  1. TEST_DATABASE_URL=postgres://... (a role that may CREATE DATABASE)\n"+
			"  2. a Docker engine for testcontainers-go\n"+
			"  3. PostgreSQL server binaries (initdb, postgres; e.g. apt-get install postgresql, or PG_BINDIR)\n"+
			"tried:\n  %s", strings.Join(tried, "\n  "))
	}
	srv := &Server{Provider: provider, admin: admin, stop: stop, prefix: "oauthstore_test_" + randomHex(4),
		keepTemplate: provider == "url"}
	if err := srv.migrateTemplate(ctx); err != nil {
		_ = stop()
		return nil, err
	}
	return srv, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// migrateTemplate makes sure the server has a template database migrated with this build's
// migrations, named by their hash: a process that finds one already there (a server that several
// test runs share) uses it as it is. A template is marked a template (IS_TEMPLATE) only once its
// migration has finished, so one left half-made by a killed process is made again; an advisory
// lock keeps two processes from making the same one at once.
func (s *Server) migrateTemplate(ctx context.Context) error {
	sum, err := migrationsHash()
	if err != nil {
		return err
	}
	s.template = "oauthstore_template_" + sum[:16]
	partitions, err := Partitions()
	if err != nil {
		return err
	}
	if partitions > 0 {
		s.template += fmt.Sprintf("_p%d", partitions)
	}
	conn, err := connectRetry(ctx, s.admin)
	if err != nil {
		return fmt.Errorf("connect to %s server: %w", s.Provider, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", s.template); err != nil {
		return fmt.Errorf("lock the template: %w", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock(hashtext($1))", s.template) //nolint:errcheck
	var exists, ready bool
	if err := conn.QueryRow(ctx, "SELECT true, datistemplate FROM pg_database WHERE datname = $1", s.template).Scan(&exists, &ready); err != nil &&
		!errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look for the template: %w", err)
	}
	if ready {
		return nil
	}
	name := pgx.Identifier{s.template}.Sanitize()
	if exists {
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop a half-made template: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("create template database: %w", err)
	}
	pool, err := pgxpool.New(ctx, s.ConnString(s.template))
	if err != nil {
		return err
	}
	err = schema.Migrate(ctx, pool)
	if err == nil && partitions > 0 {
		err = schema.PartitionByFamily(ctx, pool, partitions)
	}
	pool.Close()
	if err != nil {
		return fmt.Errorf("migrate template database: %w", err)
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE true"); err != nil {
		return fmt.Errorf("mark the template: %w", err)
	}
	return nil
}

// PartitionsEnv, when set to a number of partitions, makes the template database's families and
// tombstones hash-partitioned by family id (schema.PartitionByFamily): the whole suite then runs on
// the partitioned layout.
const PartitionsEnv = "OAUTHSTORE_TEST_PARTITIONS"

// Partitions returns the partition count PartitionsEnv asks for, or 0.
func Partitions() (int, error) {
	v := os.Getenv(PartitionsEnv)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 2 || n > schema.MaxPartitions {
		return 0, fmt.Errorf("%s=%q: want a partition count from 2 to %d", PartitionsEnv, v, schema.MaxPartitions)
	}
	return n, nil
}

// migrationsHash is the SHA-256, in hex, of the embedded migration files' names and contents.
func migrationsHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(schema.Files(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(schema.Files(), path)
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return err
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// connectRetry connects, retrying briefly: a server that has just logged readiness may still be
// finishing its start.
func connectRetry(ctx context.Context, connString string) (*pgx.Conn, error) {
	var last error
	for i := 0; i < 50; i++ {
		conn, err := pgx.Connect(ctx, connString)
		if err == nil {
			return conn, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, last
}

// ConnString returns a connection string for database name on this server.
func (s *Server) ConnString(name string) string { return withDatabase(s.admin, name) }

// withDatabase points a connection string, URL or keyword/value form, at another database.
func withDatabase(connString, name string) string {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err == nil {
			u.Path = "/" + name
			u.RawPath = ""
			return u.String()
		}
	}
	// In the keyword/value form the last setting of a keyword wins.
	return connString + " dbname='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(name) + "'"
}

// Stop drops the template, unless other processes may reuse it (keepTemplate), and stops the
// server this process started.
func (s *Server) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if conn, err := pgx.Connect(ctx, s.admin); err == nil && !s.keepTemplate {
		name := pgx.Identifier{s.template}.Sanitize()
		_, err = conn.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE false")
		errs = append(errs, err)
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		errs = append(errs, err)
		_ = conn.Close(ctx)
	} else if err == nil {
		_ = conn.Close(ctx)
	}
	errs = append(errs, s.stop())
	return errors.Join(errs...)
}

// DB is one test's database.
type DB struct {
	Pool *pgxpool.Pool
	Name string
	// URL connects to this database, e.g. for psql when a failed test keeps it.
	URL string
}

// NewDB creates a database for t from the migrated template. It is dropped when t passes and
// kept, with its connection string logged, when t fails.
func NewDB(t testing.TB) *DB {
	t.Helper()
	s := current
	if s == nil {
		t.Fatal("dbtest: no server; call dbtest.Main from TestMain")
	}
	name := fmt.Sprintf("%s_%d", s.prefix, s.seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{s.template}.Sanitize()); err != nil {
		t.Fatalf("dbtest: create database: %v", err)
	}
	url := s.ConnString(name)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 40
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dbtest: connect: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		if t.Failed() {
			t.Logf("dbtest: kept database %s for inspection: psql %q", name, url)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.exec(ctx, "DROP DATABASE %s WITH (FORCE)", pgx.Identifier{name}.Sanitize()); err != nil {
			t.Errorf("dbtest: drop database: %v", err)
		}
	})
	return &DB{Pool: pool, Name: name, URL: url}
}

func (s *Server) exec(ctx context.Context, format string, args ...any) error {
	conn, err := pgx.Connect(ctx, s.admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, fmt.Sprintf(format, args...))
	return err
}
