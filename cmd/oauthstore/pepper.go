package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

const pepperUsage = "usage: oauthstore pepper generate [--id ID] | oauthstore pepper status [--json]"

func runPepper(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) > 0 && args[0] == "status":
		return runPepperStatus(ctx, args[1:], stdout, stderr)
	case len(args) == 0 || args[0] != "generate":
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, pepperUsage)
			return flag.ErrHelp
		}
		if len(args) > 0 {
			return usageError{msg: fmt.Sprintf("pepper: unknown action %s; %s", shown(args[0]), pepperUsage)}
		}
		return usageError{msg: pepperUsage}
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
		return usageError{msg: fmt.Sprintf("pepper generate: %v", err)}
	}
	fmt.Fprintln(stdout, entry)
	fmt.Fprintf(stderr, "Put it first in %s (id:base64,id:base64,…; the first is current). Keep the old entry until "+
		"`oauthstore pepper status` says it may be retired (add :retired) and later removed.\n", repository.PepperEnv)
	return nil
}

// pepperStatus is one line of `pepper status`: what depends on a pepper, whether the ring in the
// environment has it, and what the operator may do with it.
type pepperStatus struct {
	repository.PepperUse
	// InRing: "current", "accepted", "retired", "absent" (the ring lacks it: what depends on it
	// is already unknown), or "" when the environment has no ring.
	InRing  string `json:"in_ring,omitempty"`
	Verdict string `json:"verdict"`
}

// runPepperStatus answers, for every pepper anything depends on and every pepper of the ring in
// OAUTH_AT_REST_PEPPER (when set), whether it may be retired or removed.
func runPepperStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pepper status", stderr)
	db := databaseFlags(fs, true)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var ring []repository.Pepper
	if os.Getenv(repository.PepperEnv) != "" {
		var err error
		if ring, err = repository.PepperFromEnv(); err != nil {
			return err
		}
	}
	store, closeDB, err := adminStore(ctx, db, stderr)
	if err != nil {
		return err
	}
	defer closeDB()
	uses, err := store.PepperUsage(ctx)
	if err != nil {
		return err
	}
	out := pepperStatuses(ring, uses)
	if *asJSON {
		return writeJSON(stdout, out)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "PEPPER\tRING\tLIVE TOKENS\tTOMBSTONES\tPENDING CODES\tUSED CODES\tPENDING STATES\tDEPENDS UNTIL\tVERDICT")
	for _, p := range out {
		until := "-"
		if p.DependsUntil != nil {
			until = p.DependsUntil.Format(time.RFC3339)
		}
		ringState := p.InRing
		if ringState == "" {
			ringState = "?"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", p.PepperID, ringState, p.LiveTokens, p.Tombstones,
			p.PendingCodes, p.UsedCodes, p.PendingStates, until, p.Verdict)
	}
	return w.Flush()
}

func pepperStatuses(ring []repository.Pepper, uses []repository.PepperUse) []pepperStatus {
	byID := map[string]repository.PepperUse{}
	for _, u := range uses {
		byID[u.PepperID] = u
	}
	var out []pepperStatus
	add := func(u repository.PepperUse, inRing string) {
		var verdict string
		switch {
		case inRing == "current":
			verdict = "current"
		case u.Removable():
			verdict = "may be removed from the ring"
		case inRing == "absent":
			verdict = "not in the ring: what depends on it is already unknown"
		case inRing == "retired" && !u.Retirable():
			verdict = "retired: its live tokens, pending codes and states are refused; keep it for the evidence"
		case inRing == "retired":
			verdict = "retired: keep it until the evidence of its live families expires"
		case u.Retirable():
			verdict = "may be retired (ID:base64:retired), not removed: evidence of live families depends on it"
		default:
			verdict = "in use: keep it in the ring"
		}
		out = append(out, pepperStatus{PepperUse: u, InRing: inRing, Verdict: verdict})
	}
	for i, p := range ring {
		state := "accepted"
		switch {
		case i == 0:
			state = "current"
		case p.Retired:
			state = "retired"
		}
		u, ok := byID[p.ID]
		if !ok {
			u = repository.PepperUse{PepperID: p.ID}
		}
		delete(byID, p.ID)
		add(u, state)
	}
	for _, u := range uses {
		if _, left := byID[u.PepperID]; left {
			state := ""
			if ring != nil {
				state = "absent"
			}
			add(u, state)
		}
	}
	return out
}
