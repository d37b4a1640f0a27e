package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"

	"github.com/golang-migrate/migrate/v4"

	"github.com/oauthstore/oauthstore/schema"
)

const migrateUsage = "usage: oauthstore migrate up | down N | version | force V [--database-url URL] [--json]"

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stderr, migrateUsage)
		if len(args) == 0 {
			return usageError{"migrate needs an action"}
		}
		return flag.ErrHelp
	}
	action, rest := args[0], args[1:]
	var n int
	switch action {
	case "up", "version":
	case "down", "force":
		if len(rest) == 0 {
			return usageError{migrateUsage}
		}
		v, err := strconv.Atoi(rest[0])
		if err != nil || v < 0 || (action == "down" && v == 0) {
			return usageError{fmt.Sprintf("migrate %s: %q is not a valid number", action, rest[0])}
		}
		n, rest = v, rest[1:]
	default:
		return usageError{fmt.Sprintf("migrate: unknown action %q; %s", action, migrateUsage)}
	}
	fs := newFlagSet("migrate "+action, stderr)
	url := databaseURLFlag(fs)
	asJSON := fs.Bool("json", false, "print the resulting version as JSON")
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	d, err := openDatabase(ctx, *url, false, stderr)
	if err != nil {
		return err
	}
	defer d.close()
	m, err := schema.NewMigrator(d.pool)
	if err != nil {
		return err
	}
	defer m.Close()
	switch action {
	case "up":
		err = m.Up()
	case "down":
		err = m.Steps(-n)
	case "force":
		err = m.Force(n)
	}
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("migrate %s: %w", action, err)
	}
	version, dirty, err := m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		version, dirty, err = 0, false, nil
	}
	if err != nil {
		return fmt.Errorf("migrate version: %w", err)
	}
	if *asJSON {
		return writeJSON(stdout, map[string]any{"version": version, "dirty": dirty})
	}
	state := "clean"
	if dirty {
		state = "dirty: a migration failed half-way; fix the database, then migrate force V"
	}
	fmt.Fprintf(stdout, "schema version %d (%s)\n", version, state)
	return nil
}
