package main

import (
	"context"
	"fmt"
	"io"

	"github.com/oauthstore/oauthstore/repository"
)

func runRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("revoke", stderr)
	db := databaseFlags(fs, false)
	family := fs.String("family", "", "revoke this family (UUID)")
	user := fs.String("user", "", "revoke every live family of this user (with --client: at that client only)")
	client := fs.String("client", "", "revoke every live family of this client")
	reason := fs.String("reason", "", "why (recorded on each family; required)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *reason == "":
		return usageError{msg: "revoke: --reason is required"}
	case *family != "" && (*user != "" || *client != ""):
		return usageError{msg: "revoke: --family goes alone"}
	case *family == "" && *user == "" && *client == "":
		return usageError{msg: "revoke: name --family, --user or --client"}
	}
	store, closeDB, err := adminStore(ctx, db, stderr)
	if err != nil {
		return err
	}
	defer closeDB()
	// n counts the families this call revoked; one revoked before stays as it was.
	var n int64
	var bulk repository.RevokedFamilies
	if *family != "" {
		f, err := store.Family(ctx, *family)
		if err != nil {
			return err
		}
		if err := store.RevokeFamily(ctx, *family, *reason); err != nil {
			return err
		}
		if f.RevokedAt == nil {
			n = 1
		}
	} else {
		bulk, err = store.RevokeFamilies(ctx, repository.FamilyFilter{UserID: *user, ClientID: *client}, *reason)
		if err != nil {
			return err
		}
		n = bulk.Families
	}
	if *asJSON {
		sids := bulk.SessionIDs
		if sids == nil {
			sids = []string{}
		}
		return writeJSON(stdout, map[string]any{"revoked": n, "standalone_access_tokens": bulk.StandaloneAccessTokens, "session_ids": sids})
	}
	if *family != "" && n == 0 {
		_, err = fmt.Fprintf(stdout, "family %s was already revoked; nothing changed\n", *family)
		return err
	}
	if _, err = fmt.Fprintf(stdout, "revoked %d families (with their access tokens)\n", n); err != nil || *family != "" {
		return err
	}
	_, err = fmt.Fprintf(stdout, "revoked %d standalone access tokens; %d OpenID Connect sessions ended\n",
		bulk.StandaloneAccessTokens, len(bulk.SessionIDs))
	return err
}
