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
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

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

const usage = `oauthstore: OAuth 2 refresh-token families, access tokens and authorization codes in PostgreSQL

Usage:
  oauthstore migrate up | down N --yes | version | force V   apply or inspect the embedded schema
  oauthstore janitor [--batch-size N] [--limit N] [--retain D] [--pause D] [--dry-run] [--json]
                                                       delete what is dead, in short batches
  oauthstore revoke (--family ID | --user ID [--client ID] | --client ID) --reason R [--json]
  oauthstore sessions --user ID [--limit N] [--json]   a user's active families
  oauthstore stats [--json]                            rows by state and sizes, per table
  oauthstore introspect [--jti JTI] < token            RFC 7662 answer for a token read from stdin
                                                       (needs the pepper ring in OAUTH_AT_REST_PEPPER)
  oauthstore pepper generate [--id ID]                 a new random pepper in the ring format
  oauthstore pepper status [--json]                    what depends on each pepper: may it be retired?
  oauthstore demo                                      walk issue → rotate → replay → revoked, with an access token
  oauthstore bench [flags]                             measure rotation throughput and latency

Every command takes --database-url (default $DATABASE_URL, never printed), --connect-timeout
and --help; the read-only ones --statement-timeout. Without a database,
demo and bench start a throwaway PostgreSQL from the machine's server binaries.
Exit codes: 0 done, 1 failed, 2 usage error, 3 not found.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal asks the command to stop cleanly; a second one ends the process at once.
	context.AfterFunc(ctx, stop)
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
	case "introspect":
		err = runIntrospect(ctx, args[1:], os.Stdin, stdout, stderr)
	case "pepper":
		err = runPepper(ctx, args[1:], stdout, stderr)
	case "bench":
		err = runBench(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "oauthstore: unknown command %s\n\n%s", shown(args[0]), usage)
		return exitUsage
	}
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &u):
		if !u.printed {
			printError(stderr, err)
		}
		return exitUsage
	case errors.Is(err, repository.ErrInvalidInput):
		printError(stderr, err)
		return exitUsage
	case errors.Is(err, repository.ErrFamilyNotFound):
		printError(stderr, err)
		return exitNotFound
	default:
		printError(stderr, err)
		return exitError
	}
}

// printError prints err once, with one "oauthstore: " prefix, and a hint when the database lacks
// the schema.
func printError(w io.Writer, err error) {
	fmt.Fprintln(w, "oauthstore:", strings.TrimPrefix(err.Error(), "oauthstore: "))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable {
		fmt.Fprintln(w, "oauthstore: the database has no oauthstore schema, or an old one: run `oauthstore migrate up`")
	}
}

// usageError is a usage error (exit 2); printed is true when the flag package has printed it.
type usageError struct {
	msg     string
	printed bool
}

func (e usageError) Error() string { return e.msg }

// dbFlags are how a command reaches its database.
type dbFlags struct {
	url              string
	connectTimeout   time.Duration
	statementTimeout time.Duration // 0: none (commands that write in batches)
}

// databaseFlags registers --database-url (default: $DATABASE_URL, whose value, which may hold a
// password, is never printed) and --connect-timeout, and for read-only commands
// --statement-timeout.
func databaseFlags(fs *flag.FlagSet, readOnly bool) *dbFlags {
	f := &dbFlags{}
	fs.StringVar(&f.url, "database-url", "", "PostgreSQL connection string (default $DATABASE_URL)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second, "give up connecting after this long, unless the connection string sets connect_timeout (0: none)")
	if readOnly {
		fs.DurationVar(&f.statementTimeout, "statement-timeout", time.Minute, "cancel a statement that runs longer, at least 1ms (0: none)")
	}
	return f
}

// validate refuses timeouts that mean nothing.
func (f *dbFlags) validate() error {
	switch {
	case f.connectTimeout < 0:
		return usageError{msg: "--connect-timeout must not be negative"}
	case f.statementTimeout < 0 || (f.statementTimeout > 0 && f.statementTimeout < time.Millisecond):
		return usageError{msg: "--statement-timeout must be 0 or at least 1ms"}
	}
	return nil
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("oauthstore "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses a command's flags and refuses arguments it does not take.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{msg: fmt.Sprintf("%s: unexpected argument %s", fs.Name(), shown(fs.Arg(0)))}
	}
	return nil
}

// parseFlagsOnly parses a command's flags and leaves its other arguments to the caller. A flag
// error is printed with the command's usage, and without any argument that may be a secret: the
// flag package names the flag or the value it refuses, and a token pasted in the wrong place
// begins with a dash one time in 64.
func parseFlagsOnly(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if err == nil {
		return nil
	}
	help := errors.Is(err, flag.ErrHelp)
	msg := redactArgs(err.Error(), args)
	if !help {
		fmt.Fprintln(out, msg)
	}
	if fs.Usage != nil {
		fs.Usage()
	} else {
		fmt.Fprintf(out, "Usage of %s:\n", fs.Name())
		fs.PrintDefaults()
	}
	if help {
		return err
	}
	return usageError{msg: msg, printed: true}
}

// plainArg is what an argument that is plainly a command, a flag name or a short value looks
// like. Tokens, codes and peppers are longer, and base64 with both cases.
var plainArg = regexp.MustCompile(`^-{0,2}[a-z0-9][a-z0-9.,:_-]{0,23}$`)

// shown quotes arg for an error message when it is plain, and says it is not shown otherwise.
func shown(arg string) string {
	if plainArg.MatchString(arg) {
		return strconv.Quote(arg)
	}
	return "(an argument that is not shown: it may be a secret)"
}

// redactArgs takes out of msg every argument, flag name or flag value in args that is not plain.
func redactArgs(msg string, args []string) string {
	for _, a := range args {
		v := strings.TrimLeft(a, "-")
		name, value, _ := strings.Cut(v, "=")
		for _, part := range []string{v, name, value} {
			if part != "" && !plainArg.MatchString(part) {
				// As given, and as the flag package quotes it (%q escapes some characters).
				quoted := strconv.Quote(part)
				msg = strings.ReplaceAll(msg, quoted[1:len(quoted)-1], "(not shown)")
				msg = strings.ReplaceAll(msg, part, "(not shown)")
			}
		}
	}
	return msg
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
