// Package oauthstoretest gives a service's own tests a real, migrated, throwaway PostgreSQL
// database and a Store on it, in one call; t.Cleanup does the rest.
//
// The server comes from TEST_DATABASE_URL when it is set (a role that may CREATE DATABASE), and
// otherwise is a cluster of the test process's own, started once from the machine's PostgreSQL
// server binaries (PG_BINDIR, Debian's /usr/lib/postgresql/N/bin, or initdb and postgres on the
// PATH) in a temporary directory, and gone when the process ends. Each test gets a database of its
// own, cloned from a migrated template and dropped when the test passes; a failed test's database
// is kept and its name logged. Call Main from TestMain to remove the cluster's directory (or, on
// TEST_DATABASE_URL, the template) when the tests end. No Docker, no test framework.
package oauthstoretest

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/url"
	"os"
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

// server is the process's PostgreSQL, started (or found) once.
var server struct {
	once     sync.Once
	admin    string // a connection string to a maintenance database
	template string
	cluster  *pgtemp.Cluster // the process's own, if it started one
	err      error
	seq      atomic.Int64
}

// Main runs the tests and then removes what NewDB left behind: the throwaway cluster and its
// directory, or the template database on TEST_DATABASE_URL. Call it from TestMain:
//
//	func TestMain(m *testing.M) { oauthstoretest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if server.cluster != nil {
		_ = server.cluster.Stop()
	} else if server.admin != "" && server.template != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		name := pgx.Identifier{server.template}.Sanitize()
		_ = exec(ctx, server.admin, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		cancel()
	}
	os.Exit(code)
}

// NewDB returns a pool on a freshly migrated database of the test's own.
func NewDB(t testing.TB) *pgxpool.Pool {
	t.Helper()
	server.once.Do(startServer)
	if server.err != nil {
		t.Fatalf("oauthstoretest: %v", server.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := fmt.Sprintf("%s_%d", server.template, server.seq.Add(1))
	if err := exec(ctx, server.admin, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{server.template}.Sanitize()); err != nil {
		t.Fatalf("oauthstoretest: create a database: %v", err)
	}
	url := withDatabase(server.admin, name)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatalf("oauthstoretest: connect: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		if t.Failed() {
			t.Logf("oauthstoretest: kept database %s for inspection", name)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := exec(ctx, server.admin, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("oauthstoretest: drop database %s: %v", name, err)
		}
	})
	return pool
}

// NewStore returns a Store on a database of the test's own (NewDB). cfg may leave the pepper unset:
// a random one is used.
func NewStore(t testing.TB, cfg repository.Config) *repository.Store {
	t.Helper()
	if cfg.Pepper.IsZero() && cfg.Peppers == nil {
		cfg.Pepper = repository.NewKey([]byte(rand.Text() + rand.Text()))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	store, err := repository.New(NewDB(t), cfg)
	if err != nil {
		t.Fatalf("oauthstoretest: %v", err)
	}
	return store
}

func startServer() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	server.admin = os.Getenv("TEST_DATABASE_URL")
	if server.admin == "" {
		c, err := pgtemp.Start(ctx, pgtemp.Options{})
		if err != nil {
			server.err = fmt.Errorf("no PostgreSQL: set TEST_DATABASE_URL, or install the server binaries (PG_BINDIR): %w", err)
			return
		}
		server.admin, server.cluster = c.URL("postgres"), c
	}
	server.template = "oauthstoretest_" + rand.Text()[:10]
	server.err = migrateTemplate(ctx)
}

func migrateTemplate(ctx context.Context) error {
	name := pgx.Identifier{server.template}.Sanitize()
	if err := exec(ctx, server.admin, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("create the template: %w", err)
	}
	pool, err := pgxpool.New(ctx, withDatabase(server.admin, server.template))
	if err != nil {
		return err
	}
	defer pool.Close()
	return schema.Migrate(ctx, pool)
}

func exec(ctx context.Context, connString, sql string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase points a connection string, URL or keyword/value, at another database.
func withDatabase(connString, name string) string {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		if u, err := url.Parse(connString); err == nil {
			u.Path, u.RawPath = "/"+name, ""
			return u.String()
		}
	}
	// In the keyword/value form the last setting of a keyword wins.
	return connString + " dbname='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(name) + "'"
}
