package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func runSessions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sessions", stderr)
	db := databaseFlags(fs, true)
	user := fs.String("user", "", "the user whose active families to list (required)")
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", 100, fmt.Sprintf("list at most this many, newest first (at most %d)", repository.MaxListedFamilies))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *user == "" {
		return usageError{msg: "sessions: --user is required"}
	}
	if *limit < 1 || *limit > repository.MaxListedFamilies {
		return usageError{msg: fmt.Sprintf("sessions: --limit must be 1..%d", repository.MaxListedFamilies)}
	}
	store, closeDB, err := adminStore(ctx, db, stderr)
	if err != nil {
		return err
	}
	defer closeDB()
	families, err := store.ActiveFamilies(ctx, *user)
	if err != nil {
		return err
	}
	// ActiveFamilies lists at most MaxListedFamilies: as many means there may be more.
	truncated := len(families) > *limit || len(families) == repository.MaxListedFamilies
	families = families[:min(len(families), *limit)]
	if *asJSON {
		type session struct {
			FamilyID      string     `json:"family_id"`
			ClientID      string     `json:"client_id"`
			Scope         []string   `json:"scope"`
			CreatedAt     time.Time  `json:"created_at"`
			LastRotatedAt *time.Time `json:"last_rotated_at"`
			RotationCount int        `json:"rotation_count"`
			IdleExpiresAt time.Time  `json:"idle_expires_at"`
			ExpiresAt     *time.Time `json:"expires_at"`
			SenderBound   bool       `json:"sender_bound"`
			SessionID     string     `json:"sid,omitempty"`
			AuthTime      *time.Time `json:"auth_time,omitempty"`
			ACR           string     `json:"acr,omitempty"`
			AMR           []string   `json:"amr,omitempty"`
			Audience      []string   `json:"audience,omitempty"`
			UserAgent     string     `json:"user_agent,omitempty"`
			IP            string     `json:"ip,omitempty"`
			Label         string     `json:"label,omitempty"`
		}
		out := make([]session, 0, len(families))
		for _, f := range families {
			c := f.Claims
			out = append(out, session{f.ID, f.ClientID, f.Scope, f.CreatedAt, f.LastRotatedAt, f.RotationCount,
				f.IdleExpiresAt, f.ExpiresAt, f.SenderThumbprint != "", c.SessionID, c.AuthTime, c.ACR, c.AMR,
				f.Audience, c.UserAgent, c.IP, c.Label})
		}
		return writeJSON(stdout, map[string]any{"sessions": out, "truncated": truncated})
	}
	if truncated {
		defer fmt.Fprintf(stdout, "(the %d newest; the user may have more: --limit)\n", len(families))
	}
	if len(families) == 0 {
		_, err := fmt.Fprintf(stdout, "no active sessions for user %s\n", *user)
		return err
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "FAMILY\tCLIENT\tCREATED\tLAST ROTATED\tROTATIONS\tIDLE EXPIRY\tEXPIRES\tLABEL\tIP\tSCOPE")
	for _, f := range families {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", f.ID, f.ClientID, stamp(&f.CreatedAt), stamp(f.LastRotatedAt),
			f.RotationCount, stamp(&f.IdleExpiresAt), stamp(f.ExpiresAt), orDash(f.Claims.Label), orDash(f.Claims.IP),
			strings.Join(f.Scope, " "))
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}
