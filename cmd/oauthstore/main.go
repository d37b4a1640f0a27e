// Command oauthstore operates the oauthstore schema: migrations, cleanup, incident response and
// the operator's view, plus a demo and a benchmark.
//
// Every subcommand takes --database-url (default $DATABASE_URL) and --help. Exit codes: 0 done,
// 1 failed, 2 usage error, 3 not found (revoke --family of an unknown family).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/oauthstore/oauthstore/repository"
)

// Exit codes scripts can rely on.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
	// exitNotFound: the command addressed something that does not exist.
	exitNotFound = 3
)

const usage = `oauthstore: OAuth 2 refresh-token families and authorization codes in PostgreSQL

Usage:
  oauthstore migrate up | down N | version | force V   apply or inspect the embedded schema
  oauthstore janitor [--batch-size N] [--limit N] [--retain D] [--pause D] [--dry-run] [--json]
                                                       delete what is dead, in short batches
  oauthstore revoke (--family ID | --user ID [--client ID] | --client ID) --reason R [--json]
  oauthstore sessions --user ID [--json]               a user's active families
  oauthstore stats [--json]                            rows by state and sizes, per table
  oauthstore pepper generate [--id ID]                 a new random pepper in the ring format
  oauthstore pepper status [--json]                    what depends on each pepper: may it be retired?
  oauthstore demo                                      walk issue → rotate → replay → revoked
  oauthstore bench [flags]                             measure rotation throughput and latency

Every command takes --database-url (default $DATABASE_URL) and --help. Without a database,
demo and bench start a throwaway PostgreSQL from the machine's server binaries.
Exit codes: 0 done, 1 failed, 2 usage error, 3 not found.
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
	case "janitor":
		err = runJanitor(ctx, args[1:], stdout, stderr)
	case "revoke":
		err = runRevoke(ctx, args[1:], stdout, stderr)
	case "sessions":
		err = runSessions(ctx, args[1:], stdout, stderr)
	case "stats":
		err = runStats(ctx, args[1:], stdout, stderr)
	case "pepper":
		err = runPepper(ctx, args[1:], stdout, stderr)
	case "bench":
		err = runBench(ctx, args[1:], stdout, stderr)
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
	case errors.Is(err, repository.ErrFamilyNotFound):
		fmt.Fprintln(stderr, "oauthstore:", err)
		return exitNotFound
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

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
