package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
)

// database is a pool on the chosen database and how to let go of it.
type database struct {
	pool        *pgxpool.Pool
	description string
	close       func()
}

// openDatabase connects to url, or, when url is empty and throwaway is allowed, to a new
// throwaway cluster that close removes.
func openDatabase(ctx context.Context, url string, throwaway bool, progress io.Writer) (*database, error) {
	if url == "" && !throwaway {
		return nil, usageError{"no database: set DATABASE_URL or pass --database-url"}
	}
	var cluster *pgtemp.Cluster
	description := "DATABASE_URL"
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
	pool, err := pgxpool.New(ctx, url)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		if cluster != nil {
			_ = cluster.Stop()
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	return &database{pool: pool, description: description, close: func() {
		pool.Close()
		if cluster != nil {
			_ = cluster.Stop()
		}
	}}, nil
}

// adminStore opens the database at url (no throwaway cluster) and returns a store for operators'
// commands, which need no pepper.
func adminStore(ctx context.Context, url string, stderr io.Writer) (*repository.Admin, func(), error) {
	d, err := openDatabase(ctx, url, false, stderr)
	if err != nil {
		return nil, nil, err
	}
	store, err := repository.NewAdmin(d.pool, repository.Config{Logger: slog.New(slog.NewTextHandler(stderr, nil))})
	if err != nil {
		d.close()
		return nil, nil, err
	}
	return store, d.close, nil
}
