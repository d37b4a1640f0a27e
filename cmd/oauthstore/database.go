package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

// database is a pool on the chosen database and how to let go of it.
type database struct {
	pool        *pgxpool.Pool
	description string
	throwaway   bool // a cluster of its own, removed by close
	close       func()
}

// openDatabase connects to the database the flags name (or $DATABASE_URL), or, when there is none
// and throwaway is allowed, to a new throwaway cluster that close removes. Its errors never show
// the connection string.
func openDatabase(ctx context.Context, f *dbFlags, throwaway bool, progress io.Writer) (*database, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	url := f.url
	if url == "" {
		url = os.Getenv("DATABASE_URL")
	}
	if url == "" && !throwaway {
		return nil, usageError{msg: "no database: set DATABASE_URL or pass --database-url"}
	}
	var cluster *pgtemp.Cluster
	description := "the database of DATABASE_URL or --database-url"
	if url == "" {
		start := time.Now()
		fmt.Fprintln(progress, "starting a throwaway PostgreSQL (DATABASE_URL is unset)…")
		c, err := pgtemp.Start(ctx, pgtemp.Options{})
		if err != nil {
			return nil, err
		}
		cluster, url = c, c.URL("postgres")
		description = fmt.Sprintf("throwaway cluster in %s, started in %s", c.Dir(), time.Since(start).Round(time.Millisecond))
	}
	stop := func() {
		if cluster != nil {
			_ = cluster.Stop()
		}
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		stop()
		// pgx's message quotes the string it could not parse: say only that.
		return nil, usageError{msg: "the connection string is not valid (see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING)"}
	}
	if f.connectTimeout > 0 && cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = f.connectTimeout
	}
	if f.statementTimeout > 0 {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(f.statementTimeout.Milliseconds())
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		stop()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return &database{pool: pool, description: description, throwaway: cluster != nil, close: func() {
		pool.Close()
		stop()
	}}, nil
}

// adminStore opens the database the flags name (no throwaway cluster), checks that its schema is
// the one this build needs, and returns an Admin for operators' commands, which need no pepper.
// Its log goes to stderr at warning level: a bulk revocation reports one summary, not a line per
// family.
func adminStore(ctx context.Context, f *dbFlags, stderr io.Writer) (*repository.Admin, func(), error) {
	d, err := openDatabase(ctx, f, false, stderr)
	if err != nil {
		return nil, nil, err
	}
	if err := checkSchema(ctx, d.pool); err != nil {
		d.close()
		return nil, nil, err
	}
	store, err := repository.NewAdmin(d.pool, repository.Config{Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		d.close()
		return nil, nil, err
	}
	return store, d.close, nil
}

// checkSchema refuses a database whose schema is missing, behind or ahead of this build.
func checkSchema(ctx context.Context, pool *pgxpool.Pool) error {
	var version int64
	var dirty bool
	err := pool.QueryRow(ctx, "SELECT version, dirty FROM "+schema.MigrationsTable).Scan(&version, &dirty)
	var pgErr *pgconn.PgError
	latest := int64(schema.Latest())
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable, errors.Is(err, pgx.ErrNoRows):
		return errors.New("the database has no oauthstore schema: run `oauthstore migrate up`")
	case err != nil:
		return fmt.Errorf("read the schema version: %w", err)
	case dirty:
		return fmt.Errorf("schema version %d is dirty (a migration failed half-way): fix the database, then `oauthstore migrate force %d`", version, version)
	case version < latest:
		return fmt.Errorf("schema version %d, this oauthstore needs %d: run `oauthstore migrate up`", version, latest)
	case version > latest:
		return fmt.Errorf("schema version %d is newer than this oauthstore knows (%d): use a newer oauthstore", version, latest)
	}
	return nil
}
