package tests

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/oauthstore/oauthstore/repository"
)

func TestSecrets_NoRawTokenCodeStateAccessTokenOrPepperInAnyTable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	next, err := b.rotate(tok.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(tok.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatal(err)
	}
	f := b.createCode(t)
	exchanged, err := b.exchange(f)
	if err != nil {
		t.Fatal(err)
	}
	pending := b.createCode(t)
	st, err := b.store.CreateState(b.ctx, repository.StateRequest{ClientID: "client-a", RedirectURI: redirectURI})
	if err != nil {
		t.Fatal(err)
	}
	// Opaque access tokens: issued with a family, with a rotation, and standalone; one revoked.
	opaque := repository.AccessRequest{Kind: repository.AccessOpaque}
	withAccess, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Access: opaque})
	if err != nil {
		t.Fatal(err)
	}
	rotatedWithAccess, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: withAccess.Token.Reveal(), ClientID: "client-a", Access: opaque})
	if err != nil {
		t.Fatal(err)
	}
	standalone, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "client-a", AccessRequest: opaque})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.store.RevokeToken(b.ctx, standalone.Token.Reveal(), "client-a"); err != nil {
		t.Fatal(err)
	}
	if b.count(t, "SELECT count(*) FROM oauth_access_token") != 3 {
		t.Fatal("the access tokens were not stored")
	}
	secrets := []string{tok.Token.Reveal(), next.Token.Reveal(), f.code.Code.Reveal(), exchanged.Token.Reveal(),
		pending.code.Code.Reveal(), st.State.Reveal(), withAccess.Token.Reveal(), withAccess.Access.Token.Reveal(),
		rotatedWithAccess.Token.Reveal(), rotatedWithAccess.Access.Token.Reveal(), standalone.Token.Reveal()}
	var forms []string
	for _, secret := range append(bytesOf(secrets), b.pepper) {
		forms = append(forms, hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret),
			base64.RawURLEncoding.EncodeToString(secret), string(secret))
	}
	for _, s := range secrets {
		raw, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		forms = append(forms, hex.EncodeToString(raw), base64.StdEncoding.EncodeToString(raw), base64.RawStdEncoding.EncodeToString(raw))
	}
	// Every row of every table in the database, as text; bytea renders as hex.
	rows, err := b.pool.Query(b.ctx, `SELECT table_schema || '.' || table_name FROM information_schema.tables
		WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) < 5 {
		t.Fatalf("found only tables %v", tables)
	}
	var dump strings.Builder
	for _, table := range tables {
		var text string
		if err := b.pool.QueryRow(b.ctx, "SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM "+table+" x").Scan(&text); err != nil {
			t.Fatal(err)
		}
		dump.WriteString(text)
	}
	if dump.Len() < 500 {
		t.Fatalf("table dump is suspiciously small (%d bytes)", dump.Len())
	}
	lower := strings.ToLower(dump.String())
	for _, f := range forms {
		if strings.Contains(dump.String(), f) || strings.Contains(lower, strings.ToLower(f)) {
			t.Fatalf("a secret (form %d bytes long) is stored in a table", len(f))
		}
	}
}

func TestSecret_NeverPrintsItsValue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	raw := tok.Token.Reveal()
	var logs strings.Builder
	for _, s := range []string{tok.Token.String(), tok.Token.GoString()} {
		logs.WriteString(s)
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		logs.WriteString(fmt.Sprintf(format, tok))
		logs.WriteString(fmt.Sprintf(format, tok.Token))
	}
	js, _ := json.Marshal(tok)
	logs.Write(js)
	if strings.Contains(logs.String(), raw) || strings.Contains(logs.String(), hex.EncodeToString([]byte(raw))) {
		t.Fatalf("the raw token was printed: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "[REDACTED]") {
		t.Fatal("no redaction marker printed")
	}
}

func TestEvents_ReplayReachesTheHookWithoutSecrets(t *testing.T) {
	t.Parallel()
	events := &eventLog{}
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.OnEvent = events.add }})
	first := b.issue(t)
	if _, err := b.rotate(first.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(first.Token, "client-a"); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatal(err)
	}
	all := events.all()
	if len(all) != 1 {
		t.Fatalf("events: %+v", all)
	}
	e := all[0]
	if e.Kind != repository.EventReplayDetected || e.FamilyID != first.FamilyID || e.UserID != "user-1" ||
		e.ClientID != "client-a" || e.Reason != repository.ReasonReplayDetected || !e.FamilyRevoked {
		t.Fatalf("replay event: %+v", e)
	}
	if strings.Contains(sprintEvent(e), first.Token.Reveal()) {
		t.Fatal("the event carries the token")
	}
}

func bytesOf(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}
