package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/oauthstore/oauthstore/repository"
)

// runIntrospect answers RFC 7662 introspection of one token for an operator. The token is read
// from stdin, never from the command line, where other users of the machine and shell history
// would see it. A JWT is named by its jti (--jti), which is no secret.
func runIntrospect(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("introspect", stderr)
	db := databaseFlags(fs, true)
	jti := fs.String("jti", "", "introspect the JWT access token with this jti instead of reading a token from stdin")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{msg: "introspect: the token is read from stdin, never from arguments (the argument is not shown)"}
	}
	ring, err := repository.PepperFromEnv()
	if err != nil {
		return fmt.Errorf("introspect needs the pepper ring in %s: %w", repository.PepperEnv, err)
	}
	var token string
	if *jti == "" {
		line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read the token from stdin: %w", err)
		}
		if token = strings.TrimSpace(line); token == "" {
			return usageError{msg: "introspect: give the token on stdin (or --jti)"}
		}
	}
	d, err := openDatabase(ctx, db, false, stderr)
	if err != nil {
		return err
	}
	defer d.close()
	if err := checkSchema(ctx, d.pool); err != nil {
		return err
	}
	store, err := repository.New(d.pool, repository.Config{Peppers: ring,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	var info *repository.Introspection
	if *jti != "" {
		info, err = store.IntrospectJTI(ctx, *jti)
	} else {
		info, err = store.Introspect(ctx, token)
	}
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(info.Response())
}
