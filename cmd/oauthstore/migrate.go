package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"

	"github.com/golang-migrate/migrate/v4"

	"github.com/oauthstore/oauthstore/schema"
)

const migrateUsage = "usage: oauthstore migrate up | down N --yes | version | force V [--database-url URL] [--json]"

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stderr, migrateUsage)
		if len(args) == 0 {
			return usageError{msg: "migrate needs an action"}
		}
		return flag.ErrHelp
	}
	action, rest := args[0], args[1:]
	var n int
	switch action {
	case "up", "version":
	case "down", "force":
		if len(rest) == 0 {
			return usageError{msg: migrateUsage}
		}
		v, err := strconv.Atoi(rest[0])
		if err != nil || v < 0 || (action == "down" && v == 0) {
			return usageError{msg: fmt.Sprintf("migrate %s: %s is not a valid number", action, shown(rest[0]))}
		}
		if action == "force" && v != 0 && !slices.Contains(schema.Versions(), uint(v)) {
			return usageError{msg: fmt.Sprintf("migrate force: %d is not a version of this schema (%v)", v, schema.Versions())}
		}
		n, rest = v, rest[1:]
	default:
		return usageError{msg: fmt.Sprintf("migrate: unknown action %s; %s", shown(action), migrateUsage)}
	}
	fs := newFlagSet("migrate "+action, stderr)
	db := databaseFlags(fs, false)
	asJSON := fs.Bool("json", false, "print the resulting version as JSON")
	yes := fs.Bool("yes", false, "down: drop the tables and what they hold (see what first without it)")
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	d, err := openDatabase(ctx, db, false, stderr)
	if err != nil {
		return err
	}
	defer d.close()
	m, err := schema.NewMigrator(d.pool)
	if err != nil {
		return err
	}
	defer m.Close()
	// golang-migrate does not take a context: on a signal, it stops after the migration it is in.
	stop := context.AfterFunc(ctx, func() {
		select {
		case m.GracefulStop <- true:
		default:
		}
	})
	defer stop()
	current, _, err := m.Version()
	if err != nil && !errors.Is(err, migrate.ErrNilVersion) {
		return fmt.Errorf("migrate %s: %w", action, err)
	}
	switch action {
	case "up":
		err = m.Up()
	case "down":
		if err := confirmDown(ctx, d, current, n, *yes, stderr); err != nil {
			return err
		}
		err = m.Steps(-n)
	case "force":
		if n == 0 {
			err = m.Force(-1) // no version: as before the first migration
		} else {
			err = m.Force(n)
		}
	}
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("migrate %s: %s", action, plainMigrateError(err))
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

// confirmDown refuses a down migration beyond what is applied, and without --yes says what it
// would destroy: every down migration drops tables, and with them credentials and the evidence
// that detects their replay.
func confirmDown(ctx context.Context, d *database, current uint, n int, yes bool, stderr io.Writer) error {
	applied := 0
	for _, v := range schema.Versions() {
		if v <= current {
			applied++
		}
	}
	if n > applied {
		return usageError{msg: fmt.Sprintf("migrate down %d: only %d migrations are applied (version %d); nothing was changed", n, applied, current)}
	}
	if yes {
		return nil
	}
	var families, tokens, codes int64
	err := d.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM oauth_family WHERE revoked_at IS NULL AND idle_expires_at > now()),
		(SELECT count(*) FROM oauth_refresh_token), (SELECT count(*) FROM oauth_authorization_code WHERE consumed_at IS NOT NULL)`).
		Scan(&families, &tokens, &codes)
	if err != nil {
		fmt.Fprintf(stderr, "migrate down %d drops tables, with the credentials in them and the evidence that detects their replay "+
			"(what they hold could not be counted).\n", n)
	} else {
		fmt.Fprintf(stderr, "migrate down %d drops tables: %d live families (their users are signed out), %d refresh tokens and "+
			"%d used codes (the evidence that detects their replay) may be lost.\n", n, families, tokens, codes)
	}
	return usageError{msg: fmt.Sprintf("migrate down %d: refused without --yes; nothing was changed", n)}
}

// plainMigrateError says in plain words what golang-migrate's errors mean.
func plainMigrateError(err error) string {
	var short migrate.ErrShortLimit
	switch {
	case errors.As(err, &short):
		return fmt.Sprintf("%d fewer migrations to apply than asked", short.Short)
	case errors.Is(err, os.ErrNotExist):
		return "no such migration in this build's schema"
	}
	var dirty migrate.ErrDirty
	if errors.As(err, &dirty) {
		return fmt.Sprintf("schema version %d is dirty (a migration failed half-way): fix the database, then migrate force %d", dirty.Version, dirty.Version)
	}
	return err.Error()
}
