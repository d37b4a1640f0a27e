package tests

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// wantRule fails unless err is a check_violation of the named rule, without any value in it.
func wantRule(t *testing.T, what string, err error, rule string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != rule {
		t.Fatalf("%s: got %v, want a check_violation of %s", what, err, rule)
	}
	if want := `violates check constraint "` + rule + `"`; !strings.Contains(pgErr.Message, want) {
		t.Fatalf("%s: message %q, want one naming the rule", what, pgErr.Message)
	}
}

// Every rule a family row keeps is checked on an insert and on every update that sets a column
// other than the live token's, whoever writes the row: SQL that bypasses the repository gets the
// rule's check_violation and changes nothing.
func TestRules_AFamilyRowIsCheckedOnEveryWriteOutsideTheLiveTokensColumns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	updates := []struct{ set, rule string }{
		{`client_id = ''`, "oauth_family_client_id_check"},
		{`user_id = repeat('u', 256)`, "oauth_family_user_id_check"},
		{`scope = ARRAY(SELECT 's' || g FROM generate_series(1, 257) g)`, "oauth_family_scope_check"},
		{`expires_at = created_at`, "oauth_family_check"},
		{`sender_thumbprint = 'not a thumbprint'`, "oauth_family_sender_thumbprint_check"},
		{`revoked_at = now()`, "oauth_family_check1"},
		{`revoked_at = now(), revoked_reason = repeat('r', 257)`, "oauth_family_revoked_reason_check"},
		{`scope = '{}'`, "oauth_family_token_scope_check"},
		{`expires_at = idle_expires_at - interval '1 second'`, "oauth_family_check2"},
		{`label = repeat('l', 256)`, "oauth_family_claims_check"},
		{`audience = ARRAY(SELECT 'a' || g FROM generate_series(1, 33) g)`, "oauth_family_claims_check"},
		// A live token's column set together with any other is checked too.
		{`label = label, token_digest = '\x00'`, "oauth_family_token_digest_check"},
		{`label = label, token_pepper_id = 'no spaces'`, "oauth_family_token_pepper_id_check"},
		{`label = label, parent_digest = '\x00'`, "oauth_family_parent_digest_check"},
		{`label = label, rotation_count = -1`, "oauth_family_rotation_count_check"},
		{`label = label, parent_reuses = -1`, "oauth_family_parent_reuses_check"},
		{`label = label, current_access_key = '\x0102'`, "oauth_family_current_access_check"},
		{`label = label, ip = repeat('1', 46)`, "oauth_family_claims_check"},
	}
	for _, u := range updates {
		_, err := b.pool.Exec(b.ctx, `UPDATE oauth_family SET `+u.set+` WHERE id = $1`, tok.FamilyID)
		wantRule(t, u.set, err, u.rule)
	}
	// An insert is checked whole.
	inserts := []struct{ values, rule string }{
		{`'\x00', 'p1'`, "oauth_family_token_digest_check"},
		{`decode(repeat('ab', 32), 'hex'), 'bad pepper'`, "oauth_family_token_pepper_id_check"},
	}
	for _, in := range inserts {
		_, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_family (client_id, user_id, scope, idle_expires_at, token_digest,
				token_pepper_id, token_scope)
			VALUES ('client-a', 'user-x', '{openid}', now() + interval '1 hour', `+in.values+`, '{openid}')`)
		wantRule(t, in.values, err, in.rule)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a refused write changed the tables")
	}
	// The workload ran: valid writes of the same columns succeed.
	if _, err := b.pool.Exec(b.ctx, `UPDATE oauth_family SET label = 'laptop', user_agent = 'ua' WHERE id = $1`, tok.FamilyID); err != nil {
		t.Fatal(err)
	}
	if b.tableChecksum(t) == before {
		t.Fatal("a valid update changed nothing")
	}
}

// The statements that write the live token's columns, which the trigger leaves alone so that a
// rotation pays for no rule it cannot break, check the values they are given before they change
// anything.
func TestRules_TheRotationStatementsCheckWhatTheyWriteAndChangeNothingWhenItIsBroken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	var family pgtype.UUID
	var digest []byte
	if err := b.pool.QueryRow(b.ctx, `SELECT id, token_digest FROM oauth_family WHERE id = $1`, tok.FamilyID).Scan(&family, &digest); err != nil {
		t.Fatal(err)
	}
	valid := func() db.RefreshTokenRotateParams {
		return db.RefreshTokenRotateParams{
			FamilyID: family, Digest: digest, ClientID: "client-a", TTL: time.Hour, AccessTokenType: "Bearer",
			SuccessorDigest: make([]byte, 32), PepperID: "default", SuccessorSealed: make([]byte, 60),
		}
	}
	long := func(n int) *string { s := strings.Repeat("x", n); return &s }
	broken := map[string]func(*db.RefreshTokenRotateParams){
		"a digest of 31 bytes":      func(p *db.RefreshTokenRotateParams) { p.SuccessorDigest = make([]byte, 31) },
		"a pepper id with a space":  func(p *db.RefreshTokenRotateParams) { p.PepperID = "a b" },
		"a user agent of 513 bytes": func(p *db.RefreshTokenRotateParams) { p.UserAgent = long(513) },
		"an ip of 46 bytes":         func(p *db.RefreshTokenRotateParams) { p.IP = long(46) },
		"a sealed successor of 27":  func(p *db.RefreshTokenRotateParams) { p.SuccessorSealed = make([]byte, 27) },
		"a sealed successor of 129": func(p *db.RefreshTokenRotateParams) { p.SuccessorSealed = make([]byte, 129) },
	}
	before := b.tableChecksum(t)
	q := db.New()
	for what, breakIt := range broken {
		p := valid()
		breakIt(&p)
		_, err := q.RefreshTokenRotate(b.ctx, b.pool, p)
		wantRule(t, "rotate with "+what, err, "oauth_family_live_token_check")
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a refused rotation changed the tables")
	}
	// The same statement with the values intact rotates.
	if _, err := q.RefreshTokenRotate(b.ctx, b.pool, valid()); err != nil {
		t.Fatalf("valid rotation: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM oauth_refresh_tombstone WHERE family_id = $1`, tok.FamilyID); n != 1 {
		t.Fatalf("%d tombstones after the valid rotation, want 1", n)
	}
	// The presented token is now the live token's parent: a grace replacement of the live token
	// under it checks what it writes as well.
	before = b.tableChecksum(t)
	for _, what := range []string{"a digest of 31 bytes", "a pepper id with a space", "a sealed successor of 129"} {
		p := valid()
		broken[what](&p)
		_, err := q.RefreshTokenGraceReplace(b.ctx, b.pool, db.RefreshTokenGraceReplaceParams{
			FamilyID: family, ParentDigest: digest, TTL: time.Hour,
			SuccessorDigest: p.SuccessorDigest, PepperID: p.PepperID, SuccessorSealed: p.SuccessorSealed,
		})
		wantRule(t, "grace replacement with "+what, err, "oauth_family_live_token_check")
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a refused grace replacement changed the tables")
	}
	if _, err := q.RefreshTokenGraceReplace(b.ctx, b.pool, db.RefreshTokenGraceReplaceParams{
		FamilyID: family, ParentDigest: digest, TTL: time.Hour, SuccessorDigest: bytes.Repeat([]byte{1}, 32), PepperID: "default",
		SuccessorSealed: make([]byte, 60),
	}); err != nil {
		t.Fatalf("valid grace replacement: %v", err)
	}
}

// The trigger fires for every column of the family but the live token's, and those are only the
// columns the rotation statements write: a column added later must be put on one side or the
// other. No CHECK constraint is left on the rotation's path.
func TestRules_TheTriggerCoversEveryColumnButTheLiveTokensAndNoCheckIsEvaluatedByARotation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := []string{"access_expires_at", "current_access_audience", "current_access_expires_at",
		"current_access_issued_at", "current_access_key", "current_access_type", "idle_expires_at", "ip",
		"last_rotated_at", "parent_digest", "parent_reuses", "rotation_count", "token_digest",
		"token_pepper_id", "token_scope", "user_agent"}
	var columns, checked []string
	var enabled string
	if err := b.pool.QueryRow(b.ctx, `SELECT array_agg(attname::text ORDER BY attname) FROM pg_attribute
		WHERE attrelid = 'oauth_family'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''`).Scan(&columns); err != nil {
		t.Fatal(err)
	}
	if err := b.pool.QueryRow(b.ctx, `SELECT t.tgenabled::text, array_agg(a.attname::text ORDER BY a.attname)
		FROM pg_trigger t JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = ANY(t.tgattr)
		WHERE t.tgrelid = 'oauth_family'::regclass AND t.tgname = 'oauth_family_check'
		GROUP BY t.tgenabled`).Scan(&enabled, &checked); err != nil {
		t.Fatal(err)
	}
	if enabled != "A" {
		t.Fatalf("oauth_family_check is enabled %q, want ALWAYS (A)", enabled)
	}
	for _, c := range columns {
		if slices.Contains(live, c) == slices.Contains(checked, c) {
			t.Errorf("column %s: in the trigger's list %v, a live token's column %v: want exactly one", c,
				slices.Contains(checked, c), slices.Contains(live, c))
		}
	}
	if n := b.count(t, `SELECT count(*) FROM pg_constraint WHERE contype = 'c'
		AND conrelid IN ('oauth_family'::regclass, 'oauth_refresh_tombstone'::regclass)`); n != 0 {
		t.Fatalf("%d CHECK constraints on the tables a rotation writes, want 0", n)
	}
}
