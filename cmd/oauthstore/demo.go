package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	db := databaseFlags(fs, false)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	began := time.Now()
	d, err := openDatabase(ctx, db, true, stderr)
	if err != nil {
		return err
	}
	defer d.close()
	if err := schema.Migrate(ctx, d.pool); err != nil {
		return err
	}

	peppers, pepperSource := demoPepper()
	// Replay events go to stderr as structured log lines; stdout tells the story.
	store, err := repository.New(d.pool, repository.Config{
		Peppers: peppers,
		Logger:  slog.New(slog.NewTextHandler(stderr, nil)),
	})
	if err != nil {
		return err
	}

	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	step := func(name, format string, a ...any) {
		fmt.Fprintf(w, "%s\t%s\n", name, fmt.Sprintf(format, a...))
	}
	fmt.Fprintln(stdout, "oauthstore demo: a refresh-token family under rotation and replay")
	step("database", "%s", d.description)
	step("pepper", "%s", pepperSource)

	first, err := store.Issue(ctx, repository.IssueRequest{
		ClientID: "demo-client", UserID: "demo-user", Scope: []string{"openid", "offline_access"},
	})
	if err != nil {
		return err
	}
	// Whatever happens below, the demo's family does not outlive the demo.
	defer func() {
		ctx := context.WithoutCancel(ctx)
		_ = store.DeleteFamily(ctx, first.FamilyID)
		_, _ = d.pool.Exec(ctx, "DELETE FROM oauth_revocation WHERE family_id = $1", first.FamilyID)
	}()
	step("1 issue", "family %s, token T1 (%d characters, shown to the client once), expires %s",
		first.FamilyID, len(first.Token.Reveal()), first.ExpiresAt.Format(time.RFC3339))

	second, err := store.Rotate(ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "demo-client"})
	if err != nil {
		return err
	}
	step("2 rotate T1", "ok → T2; T1 is now a tombstone")
	again, err := store.Rotate(ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "demo-client"})
	if err != nil {
		return fmt.Errorf("resending T1 within the grace window: %w", err)
	}
	if again.Token.Reveal() != second.Token.Reveal() {
		return errors.New("resending T1 within the grace window gave another token than T2")
	}
	step("2b resend T1", "the response was lost: T2 again, the same token (grace window %s); still one live token",
		repository.DefaultGraceWindow)
	third, err := store.Rotate(ctx, repository.RotateRequest{Token: second.Token.Reveal(), ClientID: "demo-client",
		Access: repository.AccessRequest{Kind: repository.AccessOpaque}})
	if err != nil {
		return err
	}
	step("3 rotate T2", "ok → T3 and access token A3 in the same statement; T1 is now a grandparent, which no window excuses")
	info, err := store.Introspect(ctx, third.Access.Token.Reveal())
	if err != nil {
		return err
	}
	if !info.Active {
		return errors.New("the access token issued with T3 introspects as inactive")
	}
	step("3b introspect A3", "active, scope %q, expires %s (RFC 7662)", strings.Join(info.Scope, " "), info.ExpiresAt.Format(time.RFC3339))

	_, err = store.Rotate(ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "demo-client"})
	if !errors.Is(err, repository.ErrReplayDetected) {
		return fmt.Errorf("replaying T1: got %v, want a detected replay", err)
	}
	step("4 replay T1", "refused: %v", err)

	f, err := store.Family(ctx, first.FamilyID)
	if err != nil {
		return err
	}
	step("5 family", "revoked at %s, reason %q, after %d rotations",
		f.RevokedAt.Format(time.RFC3339), f.RevokedReason, f.RotationCount)

	_, err = store.Rotate(ctx, repository.RotateRequest{Token: third.Token.Reveal(), ClientID: "demo-client"})
	if !errors.Is(err, repository.ErrFamilyRevoked) {
		return fmt.Errorf("rotating T3 after the replay: got %v, want a revoked family", err)
	}
	step("6 rotate T3", "refused: %v (the legitimate holder must sign in again)", err)
	if info, err = store.Introspect(ctx, third.Access.Token.Reveal()); err != nil {
		return err
	}
	if info.Active {
		return errors.New("the access token of the revoked family introspects as active")
	}
	step("6b introspect A3", "inactive: the family's access tokens ended with it, without a write to any of them")

	var rows, accessRows, digestBytes int
	if err := d.pool.QueryRow(ctx, `SELECT count(*), coalesce(min(octet_length(digest)), 0),
			(SELECT count(*) FROM oauth_access_token WHERE family_id = $1 AND octet_length(key) = 32)
		FROM oauth_refresh_token WHERE family_id = $1`, first.FamilyID).Scan(&rows, &digestBytes, &accessRows); err != nil {
		return err
	}
	step("7 stored", "%d refresh token rows and %d access token row, each only a %d-byte HMAC-SHA-256 digest; no raw token",
		rows, accessRows, digestBytes)
	left := "the demo family is deleted, the schema it migrated stays"
	if d.throwaway {
		left = "the throwaway cluster is removed"
	}
	step("done", "in %s; %s", time.Since(began).Round(time.Millisecond), left)
	return w.Flush()
}

// demoPepper uses OAUTH_AT_REST_PEPPER when set, and otherwise a random one for this run only.
func demoPepper() ([]repository.Pepper, string) {
	if ring, err := repository.PepperFromEnv(); err == nil {
		return ring, repository.PepperEnv
	}
	p := make([]byte, repository.MinPepperBytes)
	_, _ = rand.Read(p)
	return []repository.Pepper{{ID: repository.DefaultPepperID, Secret: repository.NewKey(p)}},
		"random for this run (" + repository.PepperEnv + " is unset or invalid)"
}
