package main

import (
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func runPepper(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "generate" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, "usage: oauthstore pepper generate [--id ID]")
			return flag.ErrHelp
		}
		return usageError{"usage: oauthstore pepper generate [--id ID]"}
	}
	fs := newFlagSet("pepper generate", stderr)
	id := fs.String("id", time.Now().UTC().Format("2006-01-02"), "the new pepper's ID in the ring")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	secret := make([]byte, repository.MinPepperBytes)
	_, _ = rand.Read(secret)
	entry := *id + ":" + base64.StdEncoding.EncodeToString(secret)
	// Validate the way the service will parse it.
	if _, err := repository.ParsePepperRing(entry); err != nil {
		return usageError{fmt.Sprintf("pepper generate: %v", err)}
	}
	fmt.Fprintln(stdout, entry)
	fmt.Fprintf(stderr, "Put it first in %s (id:base64,id:base64,…; the first is current) and keep the old entry until no live token uses it.\n", repository.PepperEnv)
	return nil
}
