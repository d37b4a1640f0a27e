package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
)

func runStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("stats", stderr)
	db := databaseFlags(fs, true)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	store, closeDB, err := adminStore(ctx, db, stderr)
	if err != nil {
		return err
	}
	defer closeDB()
	st, err := store.Stats(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, st)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "TABLE\tLIVE\tCONSUMED\tREVOKED\tEXPIRED\t")
	fmt.Fprintf(w, "oauth_family\t%d\t-\t%d\t%d\t\n", st.Families.Live, st.Families.Revoked, st.Families.Expired)
	t := st.RefreshTokens
	fmt.Fprintf(w, "oauth_refresh_token\t%d\t%d\t%d\t%d\t\n", t.Live, t.Consumed, t.Revoked, t.Expired)
	c := st.AuthorizationCodes
	fmt.Fprintf(w, "oauth_authorization_code\t%d\t%d\t-\t%d\t\n", c.Pending, c.Consumed, c.Expired)
	fmt.Fprintf(w, "oauth_state\t%d\t-\t-\t%d\t\n", st.States.Pending, st.States.Expired)
	a := st.AccessTokens
	fmt.Fprintf(w, "oauth_access_token\t%d\t-\t%d\t%d\t\n", a.Active, a.Revoked, a.Expired)
	fmt.Fprintf(w, "oauth_revocation\t%d\t-\t-\t-\t\n", st.Revocations)
	fmt.Fprintln(w, "\t\t\t\t\t")
	fmt.Fprintln(w, "TABLE\tTABLE SIZE\tINDEX SIZE\t\t\t")
	for _, s := range st.Tables {
		fmt.Fprintf(w, "%s\t%s\t%s\t\t\t\n", s.Table, bytesize(s.TableBytes), bytesize(s.IndexBytes))
	}
	return w.Flush()
}

func bytesize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
