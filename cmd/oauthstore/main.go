// Command oauthstore operates the oauthstore schema and shows the package at work.
//
//	oauthstore demo          walk issue → rotate → replay → family revoked
//	oauthstore migrate up    apply the embedded schema to DATABASE_URL
//
// Without DATABASE_URL, demo starts a throwaway PostgreSQL from the machine's server binaries.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes scripts can rely on.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

const usage = `oauthstore: OAuth 2 refresh-token families in PostgreSQL

Usage:
  oauthstore demo [--database-url URL]        walk issue → rotate → replay → revoked
  oauthstore migrate up [--database-url URL]  apply the embedded schema

The database comes from --database-url or DATABASE_URL. Without either, demo starts a
throwaway PostgreSQL from the machine's server binaries and removes it afterwards.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "migrate":
		err = runMigrate(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "oauthstore: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &u):
		fmt.Fprintln(stderr, "oauthstore:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "oauthstore:", err)
		return exitError
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// databaseURLFlag registers --database-url, defaulting to DATABASE_URL.
func databaseURLFlag(fs *flag.FlagSet) *string {
	return fs.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL connection string (default $DATABASE_URL)")
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("oauthstore "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}
