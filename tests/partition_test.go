package tests

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
	"github.com/oauthstore/oauthstore/tests/dbtest"
)

// statementRecorder is a pgx tracer that keeps each statement the store sends, with its arguments.
type statementRecorder struct {
	mu    sync.Mutex
	sent  []recordedStatement
	names map[string]bool
}

type recordedStatement struct {
	name string // sqlc's name of the query
	sql  string
	args []any
}

var queryName = regexp.MustCompile(`^-- name: (\w+)`)

func (r *statementRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	m := queryName.FindStringSubmatch(d.SQL)
	if m == nil {
		return ctx
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.names[m[1]] {
		r.names[m[1]] = true
		r.sent = append(r.sent, recordedStatement{name: m[1], sql: d.SQL, args: slices.Clone(d.Args)})
	}
	return ctx
}

func (r *statementRecorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// familyScoped are the statements that act on the credentials of one family (a presented token,
// a code's exchange, one family by id): on tables partitioned by family each must touch one
// partition. The others act on many families by design (a user's or a client's, cleanup, stats)
// or find the family of a token minted before schema 5 (oauth_refresh_token_legacy). FamilyCreate
// is a plain INSERT, which reads nothing and whose row PostgreSQL routes to its partition (and
// which could not run twice with the same id).
var familyScoped = []string{
	"RefreshTokenRotate", "RefreshTokenGet", "FamilyLock", "RefreshTokenGraceReuse",
	"RefreshTokenGraceReplace", "FamilyRevoke", "FamilyGet", "FamilyDelete", "RefreshTombstoneDeleteByFamily",
	"AuthorizationCodeExchange",
	"AuthorizationCodeGet",
	"AccessTokenGet", "AccessTokenGetCurrent", "AccessTokenGetStandalone", "AccessTokenCreateForFamily",
	"AccessTokenRevoke", "AccessTokenDeleteByFamily",
}

func TestPartitioning_EveryFamilyStatementTouchesOnePartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if n, err := dbtest.Partitions(); err != nil || n == 0 {
		if err := schema.PartitionByFamily(b.ctx, b.pool, 8); err != nil {
			t.Fatal(err)
		}
	}
	rec := &statementRecorder{names: map[string]bool{}}
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = rec
	pool, err := pgxpool.NewWithConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := repository.New(pool, repository.Config{Pepper: repository.NewKey(b.pepper), Clock: b.clock.Now,
		GraceWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// Every family-scoped statement, run once through the store.
	first, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"openid"}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(first.Token)
	second, err := store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(second.Token, second.Access.Token)
	again, err := store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a", Access: opaqueAccess})
	if err != nil || again.Token.Reveal() != second.Token.Reveal() || again.Access == nil {
		t.Fatalf("grace reuse: %v", err)
	}
	b.remember(again.Access.Token)
	// The current access token (named by the family row), an earlier one (its own row), and a
	// standalone one.
	standalone, err := store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc", AccessRequest: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(standalone.Token)
	for _, tok := range []repository.Secret{again.Access.Token, second.Access.Token, standalone.Token} {
		if info, err := store.Introspect(b.ctx, tok.Reveal()); err != nil || !info.Active {
			t.Fatalf("introspect: %+v, %v", info, err)
		}
	}
	if err := store.RevokeToken(b.ctx, second.Access.Token.Reveal(), "client-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(b.ctx, "UPDATE oauth_refresh_tombstone SET successor_sealed = NULL WHERE family_id = $1", first.FamilyID); err != nil {
		t.Fatal(err)
	}
	replaced, err := store.Rotate(b.ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "client-a"})
	if err != nil {
		t.Fatalf("grace replacement: %v", err)
	}
	b.remember(replaced.Token)
	if _, err := store.Family(b.ctx, first.FamilyID); err != nil {
		t.Fatal(err)
	}
	if err := store.RevokeFamily(b.ctx, first.FamilyID, "test"); err != nil {
		t.Fatal(err)
	}
	code := b.createCode(t)
	if _, err := store.Exchange(b.ctx, repository.ExchangeRequest{Code: code.code.Code.Reveal(), ClientID: "client-a",
		RedirectURI: redirectURI, CodeVerifier: code.verifier}); err != nil {
		t.Fatal(err)
	}
	doomed, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-2", Access: jwtAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(doomed.Token)
	if err := store.DeleteFamily(b.ctx, doomed.FamilyID); err != nil {
		t.Fatal(err)
	}

	var version int
	if err := b.pool.QueryRow(b.ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	for _, name := range familyScoped {
		i := slices.IndexFunc(rec.sent, func(s recordedStatement) bool { return s.name == name })
		if i < 0 {
			t.Errorf("%s was never sent: the workload above does not cover it", name)
			continue
		}
		for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
			touched, err := partitionsTouched(b.ctx, b.db.URL, rec.sent[i], mode)
			if err != nil {
				t.Fatalf("%s (%s): %v", name, mode, err)
			}
			for table, parts := range touched {
				if len(parts) <= 1 {
					continue
				}
				// Before PostgreSQL 14 an UPDATE or DELETE of a partitioned table prunes its targets
				// while planning only: a generic plan visits each partition's primary key.
				if mode == "force_generic_plan" && version < 140000 && isModifying(rec.sent[i].sql) {
					t.Logf("%s (%s, PostgreSQL %d): %s partitions %v (no run-time pruning of UPDATE/DELETE before 14)", name, mode, version, table, parts)
					continue
				}
				t.Errorf("%s (%s): touched %d partitions of %s: %v", name, mode, len(parts), table, parts)
			}
			// The check is not vacuous: the statement did read the family's partition (the exchange
			// only inserts the family it creates).
			table := "oauth_family"
			switch name {
			case "RefreshTombstoneDeleteByFamily":
				table = "oauth_refresh_tombstone"
			case "AccessTokenGet", "AccessTokenGetStandalone", "AccessTokenRevoke", "AccessTokenDeleteByFamily":
				table = "oauth_access_token"
			}
			if name != "AuthorizationCodeExchange" && len(touched[table]) == 0 {
				t.Errorf("%s (%s): read no partition of %s, want its family's", name, mode, table)
			}
			t.Logf("%s (%s): %v", name, mode, touched)
		}
	}
}

func isModifying(sql string) bool {
	for _, table := range []string{"oauth_family", "oauth_refresh_tombstone", "oauth_access_token"} {
		if strings.Contains(sql, "UPDATE "+table) || strings.Contains(sql, "DELETE FROM "+table) {
			return true
		}
	}
	return false
}

// partitionsTouched runs a recorded statement once more, in a transaction rolled back, under the
// given plan_cache_mode, with auto_explain reporting the plan it executed (ANALYZE), and returns
// the partitions of each partitioned table that the executed plan read or wrote: those pruned
// while planning or at executor start-up are not in the plan, and those pruned during execution
// were never executed.
func partitionsTouched(ctx context.Context, url string, st recordedStatement, mode string) (map[string][]string, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	var plans []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if strings.Contains(n.Message, "\"Plan\"") {
			plans = append(plans, n.Message[strings.Index(n.Message, "{"):])
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, s := range []string{"LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
		"SET auto_explain.log_analyze = on", "SET auto_explain.log_format = json", "SET auto_explain.log_level = notice",
		"SET plan_cache_mode = " + mode} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, err
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	rows, err := tx.Query(ctx, st.sql, st.args...)
	if err != nil {
		return nil, err
	}
	rows.Close()
	if err := rows.Err(); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	// A query's portal, and with it its executor, ends when the next statement begins: only then
	// does auto_explain report it.
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		return nil, err
	}
	if len(plans) == 0 {
		return nil, errors.New("auto_explain reported no plan")
	}
	touched := map[string][]string{}
	for _, p := range plans {
		var doc struct{ Plan json.RawMessage }
		if err := json.Unmarshal([]byte(p), &doc); err != nil {
			return nil, err
		}
		collectPartitions(doc.Plan, touched)
	}
	return touched, nil
}

var partitionName = regexp.MustCompile(`^(oauth_family|oauth_refresh_tombstone|oauth_access_token)_p\d+$`)

// collectPartitions walks a JSON plan and adds to touched each partition a node that ran reads
// (an UPDATE or DELETE writes only rows its scans found; an INSERT routes each row to its
// partition).
func collectPartitions(raw json.RawMessage, touched map[string][]string) {
	var n struct {
		Relation string            `json:"Relation Name"`
		Loops    *float64          `json:"Actual Loops"`
		Plans    []json.RawMessage `json:"Plans"`
	}
	if json.Unmarshal(raw, &n) != nil {
		return
	}
	add := func(rel string) {
		if m := partitionName.FindStringSubmatch(rel); m != nil && !slices.Contains(touched[m[1]], rel) {
			touched[m[1]] = append(touched[m[1]], rel)
		}
	}
	if n.Loops == nil || *n.Loops > 0 {
		add(n.Relation)
	}
	for _, c := range n.Plans {
		collectPartitions(c, touched)
	}
}

// A database partitioned at schema 5 gets its access tokens partitioned the same way by
// migration 6, which adds them, and migration 7's rule trigger on the partitioned family table;
// both migrate down again.
func TestPartitioning_MigrationsSixAndSevenApplyToPartitionedFamilies(t *testing.T) {
	t.Parallel()
	if n, err := dbtest.Partitions(); err != nil || n > 0 {
		t.Skip("the suite's databases are partitioned already; this test partitions its own at schema 5")
	}
	b := setup(t)
	m, err := schema.NewMigrator(b.pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Migrate.Migrate(5); err != nil {
		t.Fatal(err)
	}
	if err := schema.PartitionByFamily(b.ctx, b.pool, 4); err != nil {
		t.Fatalf("partition at schema 5: %v", err)
	}
	if err := m.Up(); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	if n := b.count(t, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'oauth_access_token'::regclass"); n != 4 {
		t.Fatalf("oauth_access_token has %d partitions, want 4", n)
	}
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token, tok.Access.Token)
	if info, err := b.store.Introspect(b.ctx, tok.Access.Token.Reveal()); err != nil || !info.Active {
		t.Fatalf("introspect on the partitioned tables: %+v, %v", info, err)
	}
	// Migration 7's trigger, made on the partitioned family table, checks the partitions' rows.
	_, err = b.pool.Exec(b.ctx, `UPDATE oauth_family SET client_id = '' WHERE id = $1`, tok.FamilyID)
	wantRule(t, "an empty client on a partition", err, "oauth_family_client_id_check")
	if err := m.Migrate.Migrate(5); err != nil {
		t.Fatalf("migrate down: %v", err)
	}
}
