package tests

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oauthstore/oauthstore/repository"
)

func TestRevokeToken_RevokesFamilyOnlyForItsClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	if err := b.store.RevokeToken(b.ctx, tok.Token.Reveal(), "client-b"); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("revocation by another client: got %v, want ErrWrongClient", err)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a refused revocation changed the tables")
	}
	if err := b.store.RevokeToken(b.ctx, tok.Token.Reveal(), "client-a"); err != nil {
		t.Fatal(err)
	}
	if f := b.family(t, tok.FamilyID); f.RevokedAt == nil || f.RevokedReason != repository.ReasonTokenRevoked {
		t.Fatalf("family after RFC 7009 revocation: %+v", f)
	}
	// Revocation is idempotent and keeps the first reason.
	if err := b.store.RevokeToken(b.ctx, tok.Token.Reveal(), "client-a"); err != nil {
		t.Fatalf("second revocation: %v", err)
	}
	if err := b.store.RevokeFamily(b.ctx, tok.FamilyID, "admin"); err != nil {
		t.Fatalf("revoking a revoked family: %v", err)
	}
	if f := b.family(t, tok.FamilyID); f.RevokedReason != repository.ReasonTokenRevoked {
		t.Fatalf("reason overwritten: %q", f.RevokedReason)
	}
	if _, err := b.rotate(tok.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("rotation after revocation: got %v, want ErrFamilyRevoked", err)
	}
	if err := b.store.RevokeToken(b.ctx, strings.Repeat("A", 43), "client-a"); !errors.Is(err, repository.ErrTokenNotFound) {
		t.Fatalf("revoking an unknown token: got %v, want ErrTokenNotFound", err)
	}
}

func TestRevokeFamily_UnknownAndInvalidIDs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.store.RevokeFamily(b.ctx, "00000000-0000-4000-8000-000000000000", "x"); !errors.Is(err, repository.ErrFamilyNotFound) {
		t.Fatalf("unknown family: got %v, want ErrFamilyNotFound", err)
	}
	for _, id := range []string{"", "not-a-uuid", "00000000-0000-4000-8000-00000000000\x00", "'; DROP TABLE oauth_family; --"} {
		if err := b.store.RevokeFamily(b.ctx, id, "x"); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("family id %q: got %v, want ErrInvalidInput", id, err)
		}
	}
	tok := b.issue(t)
	for _, reason := range []string{"", strings.Repeat("r", 257), "bad\x00reason", "\xff"} {
		if err := b.store.RevokeFamily(b.ctx, tok.FamilyID, reason); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("reason %q: got %v, want ErrInvalidInput", reason, err)
		}
	}
	if f := b.family(t, tok.FamilyID); f.RevokedAt != nil {
		t.Fatal("an invalid reason revoked the family")
	}
}

func TestPeekAndLookup_ReadWithoutConsuming(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	info, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if info.FamilyID != tok.FamilyID || info.ClientID != "client-a" || info.UserID != "user-1" || !info.ExpiresAt.Equal(tok.ExpiresAt) {
		t.Fatalf("peek: %+v", info)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("peek changed the tables")
	}
	next, err := b.rotate(tok.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	before = b.tableChecksum(t)
	if _, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID); !errors.Is(err, repository.ErrTokenConsumed) {
		t.Fatalf("peek of a consumed token: got %v, want ErrTokenConsumed", err)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("peeking at a consumed token changed the tables (a peek never revokes)")
	}
	info, err = b.store.Lookup(b.ctx, tok.Token.Reveal())
	if err != nil || info.ConsumedAt == nil || info.FamilyID != next.FamilyID {
		t.Fatalf("lookup of a consumed token: %+v, %v", info, err)
	}
	b.clock.Advance(25 * time.Hour)
	if _, err := b.store.Peek(b.ctx, next.Token.Reveal(), next.ClientID); !errors.Is(err, repository.ErrTokenExpired) {
		t.Fatalf("peek of an expired token: got %v, want ErrTokenExpired", err)
	}
}

func TestStore_ComposesWithCallerTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)

	// Rolled back: the rotation never happened.
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := b.store.WithDB(tx).Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Peek(b.ctx, tok.Token.Reveal(), tok.ClientID); err != nil {
		t.Fatalf("token after a rolled-back rotation: %v", err)
	}

	// Committed: the rotation and the caller's own write land together; a refused rotation inside
	// the transaction leaves it usable.
	tx2, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(context.Background())
	s := b.store.WithDB(tx2)
	next, err := s.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(b.ctx, repository.RotateRequest{Token: next.Token.Reveal(), ClientID: "client-b"}); !errors.Is(err, repository.ErrWrongClient) {
		t.Fatalf("wrong client inside a transaction: %v", err)
	}
	if _, err := tx2.Exec(b.ctx, "CREATE TABLE audit (note text)"); err != nil {
		t.Fatalf("the caller's transaction is no longer usable: %v", err)
	}
	if err := tx2.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Peek(b.ctx, next.Token.Reveal(), next.ClientID); err != nil {
		t.Fatalf("successor after commit: %v", err)
	}
}

func TestSecrets_NoRawTokenCodeStateOrPepperInAnyTable(t *testing.T) {
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
	secrets := []string{tok.Token.Reveal(), next.Token.Reveal(), f.code.Code.Reveal(), exchanged.Token.Reveal(),
		pending.code.Code.Reveal(), st.State.Reveal()}
	var forms []string
	for _, secret := range [][]byte{[]byte(tok.Token.Reveal()), []byte(next.Token.Reveal()), []byte(f.code.Code.Reveal()),
		[]byte(exchanged.Token.Reveal()), []byte(pending.code.Code.Reveal()), []byte(st.State.Reveal()), b.pepper} {
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
