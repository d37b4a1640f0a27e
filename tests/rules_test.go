package tests

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/db"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
	"github.com/oauthstore/oauthstore/tests/dbtest"
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
// anything, and raise the rule's name; valid values for a token that is not the live one are the
// usual "no row".
func TestRules_TheRotationStatementsCheckWhatTheyWriteAndChangeNothingWhenItIsBroken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	var family pgtype.UUID
	var digest []byte
	var created time.Time
	if err := b.pool.QueryRow(b.ctx, `SELECT id, token_digest, created_at FROM oauth_family WHERE id = $1`, tok.FamilyID).Scan(&family, &digest, &created); err != nil {
		t.Fatal(err)
	}
	valid := func() db.RefreshTokenRotateParams {
		return db.RefreshTokenRotateParams{
			FamilyID: family, Digest: digest, ClientID: "client-a", TTL: time.Hour, AccessTokenType: "Bearer",
			SuccessorDigest: bytes.Repeat([]byte{1}, 32), PepperID: "default", SuccessorSealed: make([]byte, 60),
		}
	}
	long := func(n int) *string { s := strings.Repeat("x", n); return &s }
	type breaking struct {
		breakIt func(*db.RefreshTokenRotateParams)
		rule    string
	}
	broken := map[string]breaking{
		"a digest of 31 bytes":         {func(p *db.RefreshTokenRotateParams) { p.SuccessorDigest = make([]byte, 31) }, "oauth_family_token_digest_check"},
		"a pepper id with a space":     {func(p *db.RefreshTokenRotateParams) { p.PepperID = "a b" }, "oauth_family_token_pepper_id_check"},
		"a user agent of 513 bytes":    {func(p *db.RefreshTokenRotateParams) { p.UserAgent = long(513) }, "oauth_family_claims_check"},
		"an ip of 46 bytes":            {func(p *db.RefreshTokenRotateParams) { p.IP = long(46) }, "oauth_family_claims_check"},
		"33 audiences and no access":   {func(p *db.RefreshTokenRotateParams) { p.AccessAudience = make([]string, 33) }, "oauth_family_current_access_check"},
		"a sealed successor of 27":     {func(p *db.RefreshTokenRotateParams) { p.SuccessorSealed = make([]byte, 27) }, "oauth_refresh_tombstone_successor_sealed_check"},
		"a sealed successor of 129":    {func(p *db.RefreshTokenRotateParams) { p.SuccessorSealed = make([]byte, 129) }, "oauth_refresh_tombstone_successor_sealed_check"},
		"a scope outside the grant":    {func(p *db.RefreshTokenRotateParams) { p.Scope = []string{"admin"} }, ""},
		"an unknown token, all intact": {func(p *db.RefreshTokenRotateParams) { p.Digest = bytes.Repeat([]byte{2}, 32) }, ""},
		"an unknown token, a broken digest": {func(p *db.RefreshTokenRotateParams) {
			p.Digest, p.SuccessorDigest = bytes.Repeat([]byte{2}, 32), make([]byte, 31)
		}, "oauth_family_token_digest_check"},
	}
	before := b.tableChecksum(t)
	q := db.New()
	for what, x := range broken {
		p := valid()
		x.breakIt(&p)
		switch _, err := q.RefreshTokenRotate(b.ctx, b.pool, p); {
		case what == "a scope outside the grant" || what == "an unknown token, all intact":
			// Refused by the statement's condition, as before: no row, no error.
			if !errors.Is(err, pgx.ErrNoRows) {
				t.Fatalf("rotate with %s: %v, want no row", what, err)
			}
		case what == "an unknown token, a broken digest":
			// Refused either way: the guard is evaluated with the row's conditions, after the
			// cheaper ones, unless the plan evaluates it first; nothing changes.
			if !errors.Is(err, pgx.ErrNoRows) {
				wantRule(t, "rotate with "+what, err, x.rule)
			}
		default:
			wantRule(t, "rotate with "+what, err, x.rule)
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a refused rotation changed the tables")
	}
	// The same statement with the values intact rotates, with a clock before the token was issued:
	// the tombstone is not consumed before it was created.
	p := valid()
	early := created.Add(-time.Hour)
	p.Now = &early
	if _, err := q.RefreshTokenRotate(b.ctx, b.pool, p); err != nil {
		t.Fatalf("valid rotation: %v", err)
	}
	var consumed, tombstoneCreated time.Time
	if err := b.pool.QueryRow(b.ctx, `SELECT consumed_at, created_at FROM oauth_refresh_tombstone WHERE family_id = $1`,
		tok.FamilyID).Scan(&consumed, &tombstoneCreated); err != nil {
		t.Fatalf("the valid rotation's tombstone: %v", err)
	}
	if !consumed.Equal(tombstoneCreated) || !tombstoneCreated.Equal(created) {
		t.Fatalf("tombstone created %v consumed %v, want both %v (the later of the clock and its creation)", tombstoneCreated, consumed, created)
	}
	// The presented token is now the live token's parent: a grace replacement of the live token
	// under it checks what it writes as well.
	before = b.tableChecksum(t)
	grace := func(p db.RefreshTokenRotateParams) error {
		_, err := q.RefreshTokenGraceReplace(b.ctx, b.pool, db.RefreshTokenGraceReplaceParams{
			FamilyID: family, ParentDigest: digest, TTL: time.Hour, Scope: p.Scope,
			SuccessorDigest: bytes.Repeat([]byte{3}, 32), PepperID: p.PepperID, SuccessorSealed: p.SuccessorSealed,
		})
		return err
	}
	for _, what := range []string{"a pepper id with a space", "a sealed successor of 129"} {
		p := valid()
		broken[what].breakIt(&p)
		wantRule(t, "grace replacement with "+what, grace(p), broken[what].rule)
	}
	p = valid()
	p.Scope = []string{"admin"}
	wantRule(t, "grace replacement with a scope outside the grant", grace(p), "oauth_family_token_scope_check")
	if b.tableChecksum(t) != before {
		t.Fatal("a refused grace replacement changed the tables")
	}
	if err := grace(valid()); err != nil {
		t.Fatalf("valid grace replacement: %v", err)
	}
}

// The trigger fires for every column of the family but the live token's, and those are only the
// columns the rotation statements write: a column added later must be put on one side or the
// other. It is enabled ALWAYS, on a partitioned table on every partition too. No CHECK constraint
// is left on the rotation's path, and a rotation does not call the trigger.
func TestRules_TheTriggerCoversEveryColumnButTheLiveTokensAndNoCheckIsEvaluatedByARotation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := []string{"access_expires_at", "current_access_audience", "current_access_expires_at",
		"current_access_issued_at", "current_access_key", "current_access_type", "idle_expires_at", "ip",
		"last_rotated_at", "parent_digest", "parent_reuses", "rotation_count", "sweep_day", "token_digest",
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
	if n := b.count(t, `SELECT count(*) FROM pg_trigger t JOIN pg_inherits i ON i.inhrelid = t.tgrelid
		WHERE i.inhparent = 'oauth_family'::regclass AND t.tgname = 'oauth_family_check' AND t.tgenabled <> 'A'`); n != 0 {
		t.Fatalf("%d partitions with oauth_family_check not enabled ALWAYS", n)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_constraint WHERE contype = 'c'
		AND conrelid IN ('oauth_family'::regclass, 'oauth_refresh_tombstone'::regclass)`); n != 0 {
		t.Fatalf("%d CHECK constraints on the tables a rotation writes, want 0", n)
	}
	// A generated column is prepared again for every UPDATE statement, as a CHECK constraint is.
	if n := b.count(t, `SELECT count(*) FROM pg_attribute WHERE attgenerated <> ''
		AND attrelid IN ('oauth_family'::regclass, 'oauth_refresh_tombstone'::regclass)`); n != 0 {
		t.Fatalf("%d generated columns on the tables a rotation writes, want 0", n)
	}
	// Count the triggers' calls within one transaction: none for rotations (through the store, with
	// claims and an access token), one for an update of the grant's label.
	tok := b.issue(t)
	calls := func(tx pgx.Tx) int {
		var n int
		if err := tx.QueryRow(b.ctx, `SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions
			WHERE funcname IN ('oauth_family_check', 'oauth_family_sweep_day')`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(b.ctx, `SET LOCAL track_functions = 'pl'`); err != nil {
			return err
		}
		store, err := repository.New(tx, repository.Config{Pepper: repository.NewKey(b.pepper), GraceWindow: repository.StrictRotation,
			Clock: b.clock.Now, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		token := tok.Token
		for range 5 {
			next, err := store.Rotate(b.ctx, repository.RotateRequest{Token: token.Reveal(), ClientID: "client-a",
				UserAgent: "agent", IP: "192.0.2.1", Access: opaqueAccess})
			if err != nil {
				return err
			}
			b.remember(next.Token, next.Access.Token)
			token = next.Token
		}
		if n := calls(tx); n != 0 {
			t.Fatalf("5 rotations called oauth_family_check or oauth_family_sweep_day %d times, want 0", n)
		}
		if _, err := tx.Exec(b.ctx, `UPDATE oauth_family SET label = 'phone' WHERE id = $1`, tok.FamilyID); err != nil {
			return err
		}
		if n := calls(tx); n != 1 {
			t.Fatalf("an update of the label called oauth_family_check %d times, want 1", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Migrating down from 7 restores the constraints schema 6 has, by name and definition, over rows
// written under schema 7; up again, the trigger checks them.
func TestRules_MigratingDownRestoresSchemaSixsConstraintsOverRowsWrittenUnderSeven(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	if _, err := b.rotate(tok.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	m, err := schema.NewMigrator(b.pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	constraints := func() map[string]string {
		rows, err := b.pool.Query(b.ctx, `SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
			WHERE contype = 'c' AND conrelid IN ('oauth_family'::regclass, 'oauth_refresh_tombstone'::regclass)`)
		if err != nil {
			t.Fatal(err)
		}
		defs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
			var d [2]string
			return d, r.Scan(&d[0], &d[1])
		})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, d := range defs {
			out[d[0]] = d[1]
		}
		return out
	}
	if err := m.Steps(-1); err != nil {
		t.Fatalf("down to 6: %v", err)
	}
	restored := constraints()
	if n := b.count(t, `SELECT count(*) FROM pg_proc WHERE proname IN ('oauth_family_check', 'oauth_check_violation', 'oauth_family_sweep_day')`); n != 0 {
		t.Fatalf("%d of schema 7's functions left at schema 6", n)
	}
	generated := func() int {
		return b.count(t, `SELECT count(*) FROM pg_attribute WHERE attrelid = 'oauth_family'::regclass
			AND attname = 'sweep_day' AND attgenerated = 's'`)
	}
	if generated() != 1 || b.count(t, `SELECT count(*) FROM pg_indexes WHERE indexname = 'oauth_family_sweep_day_idx'`) != 1 {
		t.Fatal("schema 6 without sweep_day generated from idle_expires_at and its index")
	}
	// Schema 6 as migrating up from 5 makes it.
	if err := m.Steps(-1); err != nil {
		t.Fatalf("down to 5: %v", err)
	}
	if err := m.Steps(1); err != nil {
		t.Fatalf("up to 6: %v", err)
	}
	fresh := constraints()
	if len(fresh) != 18 || !maps.Equal(restored, fresh) {
		t.Fatalf("down from 7 gave constraints %v,\nschema 6 has %v", restored, fresh)
	}
	if err := m.Up(); err != nil {
		t.Fatalf("up to 7: %v", err)
	}
	if generated() != 0 {
		t.Fatal("sweep_day still generated at schema 7")
	}
	b.checkInvariants(t, "up again")
	_, err = b.pool.Exec(b.ctx, `UPDATE oauth_family SET user_id = '' WHERE id = $1`, tok.FamilyID)
	wantRule(t, "an empty user after up again", err, "oauth_family_user_id_check")
}

// PartitionByFamily on a database at schema 7 makes the trigger again on the partitioned table,
// enabled as it was, and it checks the partitions' rows.
func TestRules_PartitioningAtSchemaSevenKeepsTheTrigger(t *testing.T) {
	t.Parallel()
	if n, err := dbtest.Partitions(); err != nil || n > 0 {
		t.Skip("the suite's databases are partitioned already: the other tests of this file run on them")
	}
	b := setup(t)
	tok := b.issue(t)
	if err := schema.PartitionByFamily(b.ctx, b.pool, 4); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM pg_trigger t JOIN pg_inherits i ON i.inhrelid = t.tgrelid
		WHERE i.inhparent = 'oauth_family'::regclass AND t.tgname = 'oauth_family_check' AND t.tgenabled = 'A'`); n != 4 {
		t.Fatalf("%d of 4 partitions have oauth_family_check enabled ALWAYS", n)
	}
	before := b.tableChecksum(t)
	_, err := b.pool.Exec(b.ctx, `UPDATE oauth_family SET sender_thumbprint = '=' WHERE id = $1`, tok.FamilyID)
	wantRule(t, "a bad thumbprint on a partition", err, "oauth_family_sender_thumbprint_check")
	if b.tableChecksum(t) != before {
		t.Fatal("a refused update changed the tables")
	}
	if _, err := b.rotate(tok.Token, "client-a"); err != nil {
		t.Fatalf("rotate on the partitioned tables: %v", err)
	}
}

// An update is checked against the rules over the columns it changes: a revocation goes through
// even when another column holds a value written by hand that the statements would refuse, and
// an update of that column through the grant's columns is refused.
func TestRules_ARevocationIsNeverRefusedForAColumnItDoesNotChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	// ip is a live token's column: an update of it alone does not fire the trigger.
	if _, err := b.pool.Exec(b.ctx, `UPDATE oauth_family SET ip = repeat('1', 46) WHERE id = $1`, tok.FamilyID); err != nil {
		t.Fatal(err)
	}
	_, err := b.pool.Exec(b.ctx, `UPDATE oauth_family SET label = 'x', ip = repeat('2', 46) WHERE id = $1`, tok.FamilyID)
	wantRule(t, "an ip of 46 bytes with the label", err, "oauth_family_claims_check")
	if err := b.store.RevokeFamily(b.ctx, tok.FamilyID, "admin"); err != nil {
		t.Fatalf("revoke a family with a bad ip: %v", err)
	}
	if f := b.family(t, tok.FamilyID); f.RevokedAt == nil {
		t.Fatal("the family is not revoked")
	}
	if _, err := b.rotate(tok.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("rotate after the revocation: %v, want ErrFamilyRevoked", err)
	}
}

// Cleanup finds a family by sweep_day, the UTC day of its idle expiry. An issue, a code exchange
// and an insert by hand (whatever it gives) get it from the insert trigger; a rotation and a grace
// replacement set it with the expiry they move, also across midnight.
func TestRules_SweepDayIsTheUTCDayOfTheIdleExpiryAfterEveryWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The session's time zone is 14 hours ahead of UTC: a day taken in it is another day for most
	// of the times below.
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["timezone"] = "Pacific/Kiritimati"
	pool, err := pgxpool.NewWithConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper), Clock: b.clock.Now,
		RefreshTokenTTL: 24 * time.Hour, GraceWindow: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	day := func(d int) time.Time { return time.Date(2026, 3, d, 0, 0, 0, 0, time.UTC) }
	want := func(what, family string, d time.Time) {
		t.Helper()
		var got time.Time
		var ok bool
		if err := b.pool.QueryRow(b.ctx, `SELECT sweep_day, sweep_day = (idle_expires_at AT TIME ZONE 'UTC')::date
			FROM oauth_family WHERE id = $1`, family).Scan(&got, &ok); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !ok || !got.Equal(d) {
			t.Fatalf("%s: sweep_day %s (the UTC day of idle_expires_at: %v), want %s", what, got.Format(time.DateOnly), ok, d.Format(time.DateOnly))
		}
	}
	b.clock.Set(day(1).Add(23 * time.Hour))
	first, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"mcp"}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(first.Token)
	want("issued at 23:00", first.FamilyID, day(2))
	b.clock.Set(day(2).Add(-10 * time.Second))
	second, err := store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(second.Token)
	want("rotated at 23:59:50", first.FamilyID, day(2))
	// The successor has no sealed copy: presenting its parent again within the grace window, after
	// midnight, replaces it.
	if _, err := b.pool.Exec(b.ctx, `UPDATE oauth_refresh_tombstone SET successor_sealed = NULL WHERE family_id = $1`, first.FamilyID); err != nil {
		t.Fatal(err)
	}
	b.clock.Set(day(2).Add(5 * time.Second))
	replaced, err := store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil || replaced.Token.Reveal() == second.Token.Reveal() {
		t.Fatalf("grace replacement: %v", err)
	}
	b.remember(replaced.Token)
	want("replaced at 00:00:05", first.FamilyID, day(3))
	b.clock.Set(day(3).Add(time.Second))
	third, err := store.Rotate(b.ctx, repository.RotateRequest{Token: replaced.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(third.Token)
	want("rotated at 00:00:01 the next day", first.FamilyID, day(4))
	code := b.createCode(t)
	ex, err := store.Exchange(b.ctx, repository.ExchangeRequest{Code: code.code.Code.Reveal(), ClientID: "client-a",
		RedirectURI: redirectURI, CodeVerifier: code.verifier})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(ex.Token)
	var idle time.Time
	if err := b.pool.QueryRow(b.ctx, `SELECT idle_expires_at FROM oauth_family WHERE id = $1`, ex.FamilyID).Scan(&idle); err != nil {
		t.Fatal(err)
	}
	y, m, d := idle.UTC().Date()
	want("a code exchanged", ex.FamilyID, time.Date(y, m, d, 0, 0, 0, 0, time.UTC))
	var byHand string
	if err := pool.QueryRow(b.ctx, `INSERT INTO oauth_family (client_id, user_id, scope, idle_expires_at, token_digest,
		token_pepper_id, token_scope, expires_at, sweep_day)
		VALUES ('client-a', 'user-1', '{}', '2026-05-05 23:30:00-02', $1, 'default', '{}', '2100-01-01', '2000-01-01')
		RETURNING id::text`, bytes.Repeat([]byte{7}, 32)).Scan(&byHand); err != nil {
		t.Fatal(err)
	}
	want("inserted by hand with another day", byHand, day(6).AddDate(0, 2, 0))
	b.checkInvariants(t, "after the writes")
}
