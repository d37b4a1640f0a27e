// Package schema holds the database schema of oauthstore as numbered golang-migrate files and
// applies them. The same folder is what sqlc reads to type-check the queries.
package schema

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// MigrationsTable is where golang-migrate records the applied version. It is not the default
// "schema_migrations", so that the package can share a database with a service that migrates its
// own tables with golang-migrate.
const MigrationsTable = "oauthstore_schema_migrations"

//go:embed *.sql
var files embed.FS

// Files returns the migration files (NNNN_name.up.sql / .down.sql).
func Files() embed.FS { return files }

// Migrator is a golang-migrate instance over the embedded schema. Close it when done; closing it
// does not close the pool it was made from.
type Migrator struct {
	*migrate.Migrate
	db *sql.DB
}

// NewMigrator returns a migrator for the database behind pool.
func NewMigrator(pool *pgxpool.Pool) (*Migrator, error) {
	src, err := iofs.New(files, ".")
	if err != nil {
		return nil, fmt.Errorf("schema: open embedded migrations: %w", err)
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	driver, err := pgxmigrate.WithInstance(sqlDB, &pgxmigrate.Config{MigrationsTable: MigrationsTable})
	if err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("schema: prepare migration driver: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("schema: prepare migrations: %w", err)
	}
	return &Migrator{Migrate: m, db: sqlDB}, nil
}

// Close releases the migrator's source and its handle on the pool.
func (m *Migrator) Close() error {
	srcErr, dbErr := m.Migrate.Close()
	return errors.Join(srcErr, dbErr)
}

// Migrate brings the database behind pool to the latest schema version. A database that is
// already up to date is a success. Cancelling ctx stops after the migration in progress.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := NewMigrator(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	stop := context.AfterFunc(ctx, func() {
		select {
		case m.GracefulStop <- true:
		default:
		}
	})
	defer stop()
	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("schema: migrate up: %w", err)
	}
	return ctx.Err()
}

// Versions returns the versions of the embedded migrations, in order.
func Versions() []uint {
	entries, _ := files.ReadDir(".")
	var out []uint
	for _, e := range entries {
		var v uint
		var rest string
		if n, _ := fmt.Sscanf(e.Name(), "%d_%s", &v, &rest); n == 2 && strings.HasSuffix(e.Name(), ".up.sql") {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// Latest is the version of the newest embedded migration: the one this build of the package needs.
func Latest() uint {
	v := Versions()
	return v[len(v)-1]
}
