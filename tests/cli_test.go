package tests

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// oauthstore builds the command once per test run and returns its path.
func oauthstoreBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "oauthstore-cli")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "oauthstore")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/oauthstore/oauthstore/cmd/oauthstore").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build oauthstore: %v", buildErr)
	}
	return binary
}

type cliResult struct {
	stdout, stderr string
	code           int
}

// cli runs the built command against the test's database.
func (b *bundle) cli(t *testing.T, args ...string) cliResult {
	t.Helper()
	return runCLI(t, []string{"DATABASE_URL=" + b.db.URL}, args...)
}

// runCLI runs the built command with env added to the environment.
func runCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(oauthstoreBinary(t), args...)
	cmd.Env = append(append(os.Environ(), "DATABASE_URL=", "OAUTH_AT_REST_PEPPER="), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return cliResult{stdout.String(), stderr.String(), code}
}

func (r cliResult) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("output is not JSON (%v):\n%s\n%s", err, r.stdout, r.stderr)
	}
}

func TestCLI_MigrateUpDownVersionForce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var v struct {
		Version int  `json:"version"`
		Dirty   bool `json:"dirty"`
	}
	r := b.cli(t, "migrate", "version", "--json")
	r.json(t, &v)
	if r.code != 0 || v.Version != 7 || v.Dirty {
		t.Fatalf("version: %+v %+v", r, v)
	}
	if r = b.cli(t, "migrate", "down", "6", "--yes"); r.code != 0 || !strings.Contains(r.stdout, "schema version 1") {
		t.Fatalf("down 6: %+v", r)
	}
	if n := b.count(t, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'oauth_authorization_code'"); n != 0 {
		t.Fatal("down 6 left the codes table")
	}
	if r = b.cli(t, "migrate", "up"); r.code != 0 || !strings.Contains(r.stdout, "schema version 7") {
		t.Fatalf("up: %+v", r)
	}
	if r = b.cli(t, "migrate", "force", "7"); r.code != 0 {
		t.Fatalf("force: %+v", r)
	}
	for _, args := range [][]string{{"migrate"}, {"migrate", "sideways"}, {"migrate", "down"}, {"migrate", "down", "0"}, {"migrate", "force", "x"}} {
		if r = b.cli(t, args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)", args, r.code)
		}
	}
	if r = b.cli(t, "migrate", "--help"); r.code != 0 || !strings.Contains(r.stderr, "usage") {
		t.Errorf("--help: %+v", r)
	}
}

// pastStore issues with a clock two days in the past, so that what it issues for an hour is
// expired by the database's clock.
func (b *bundle) pastStore(t *testing.T) *repository.Store {
	t.Helper()
	past := func() time.Time { return time.Now().Add(-48 * time.Hour) }
	s, err := repository.New(b.pool, repository.Config{Pepper: repository.NewKey(b.pepper), RefreshTokenTTL: time.Hour, Clock: past})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCLI_JanitorDeletesInBatchesAndDryRunDeletesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	old := b.pastStore(t)
	for range 7 {
		tok, err := old.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := old.Rotate(b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	live := b.issue(t)
	before := b.tableChecksum(t)
	type summary struct {
		Families      int64 `json:"families"`
		RefreshTokens int64 `json:"refresh_tokens"`
		Batches       int   `json:"batches"`
		DryRun        bool  `json:"dry_run"`
	}
	var dry summary
	r := b.cli(t, "janitor", "--dry-run", "--json")
	r.json(t, &dry)
	if r.code != 0 || dry.Families != 7 || dry.RefreshTokens != 14 || !dry.DryRun {
		t.Fatalf("dry run: %+v %+v", r, dry)
	}
	if b.tableChecksum(t) != before {
		t.Fatal("a dry run deleted something")
	}
	var done summary
	r = b.cli(t, "janitor", "--batch-size", "3", "--json")
	r.json(t, &done)
	if r.code != 0 || done.Families != 7 || done.RefreshTokens != 14 || done.Batches != 7+1+1+1+1+1 {
		t.Fatalf("janitor: %+v %+v", r, done)
	}
	if _, err := b.store.Peek(b.ctx, live.Token.Reveal(), "client-a"); err != nil {
		t.Fatalf("the janitor touched a live family: %v", err)
	}
	r = b.cli(t, "janitor")
	if r.code != 0 || !strings.Contains(r.stdout, "janitor: deleted 0 families") {
		t.Fatalf("summary line: %+v", r)
	}
	if r = b.cli(t, "janitor", "--batch-size", "-1"); r.code != 2 || !strings.Contains(r.stderr, "batch_size") {
		t.Fatalf("bad batch size: %+v", r)
	}
}

func TestCLI_RevokeByFamilyUserAndClient(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	one := b.issue(t)
	for _, u := range []string{"u1", "u1", "u2"} {
		if _, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "app", UserID: u}); err != nil {
			t.Fatal(err)
		}
	}
	if r := b.cli(t, "revoke", "--family", one.FamilyID, "--reason", "incident 42"); r.code != 0 {
		t.Fatalf("revoke family: %+v", r)
	}
	if f := b.family(t, one.FamilyID); f.RevokedReason != "incident 42" {
		t.Fatalf("family: %+v", f)
	}
	if r := b.cli(t, "revoke", "--family", "00000000-0000-4000-8000-000000000000", "--reason", "x"); r.code != 3 {
		t.Fatalf("unknown family: exit %d, want 3", r.code)
	}
	var n struct {
		Revoked int64 `json:"revoked"`
	}
	r := b.cli(t, "revoke", "--user", "u1", "--client", "app", "--reason", "logout", "--json")
	r.json(t, &n)
	if r.code != 0 || n.Revoked != 2 {
		t.Fatalf("revoke user at client: %+v %+v", r, n)
	}
	if r = b.cli(t, "revoke", "--client", "app", "--reason", "client deleted"); r.code != 0 || !strings.Contains(r.stdout, "revoked 1 families") {
		t.Fatalf("revoke client: %+v", r)
	}
	for _, args := range [][]string{{"revoke", "--user", "u1"}, {"revoke", "--reason", "x"}, {"revoke", "--family", one.FamilyID, "--user", "u", "--reason", "x"}} {
		if r = b.cli(t, args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2", args, r.code)
		}
	}
	// An invalid value is a usage error, said once, with one prefix.
	if r = b.cli(t, "revoke", "--family", "not-a-uuid", "--reason", "x"); r.code != 2 || !strings.Contains(r.stderr, "invalid input") ||
		strings.Count(r.stderr, "oauthstore:") != 1 {
		t.Errorf("malformed id: %+v", r)
	}
	// A family revoked before is counted as nothing changed.
	var again struct {
		Revoked int64 `json:"revoked"`
	}
	r = b.cli(t, "revoke", "--family", one.FamilyID, "--reason", "again", "--json")
	r.json(t, &again)
	if r.code != 0 || again.Revoked != 0 {
		t.Errorf("revoking a revoked family: %+v %+v, want 0 revoked", r, again)
	}
}

func TestCLI_SessionsListsAUsersActiveFamilies(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	a := b.issue(t)
	c := b.issue(t)
	if err := b.store.RevokeFamily(b.ctx, c.FamilyID, "gone"); err != nil {
		t.Fatal(err)
	}
	var sessions []struct {
		FamilyID string   `json:"family_id"`
		ClientID string   `json:"client_id"`
		Scope    []string `json:"scope"`
	}
	r := b.cli(t, "sessions", "--user", "user-1", "--json")
	var out struct {
		Sessions  json.RawMessage `json:"sessions"`
		Truncated bool            `json:"truncated"`
	}
	r.json(t, &out)
	if err := json.Unmarshal(out.Sessions, &sessions); err != nil || out.Truncated {
		t.Fatalf("sessions JSON: %v, truncated %v", err, out.Truncated)
	}
	if r.code != 0 || len(sessions) != 1 || sessions[0].FamilyID != a.FamilyID || sessions[0].ClientID != "client-a" {
		t.Fatalf("sessions: %+v %+v", r, sessions)
	}
	if r = b.cli(t, "sessions", "--user", "user-1"); r.code != 0 || !strings.Contains(r.stdout, a.FamilyID) || strings.Contains(r.stdout, c.FamilyID) {
		t.Fatalf("sessions table: %+v", r)
	}
	if r = b.cli(t, "sessions"); r.code != 2 {
		t.Fatalf("no --user: exit %d", r.code)
	}
}

func TestCLI_StatsCountsRowsByState(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	tok := b.issue(t)
	if _, err := b.rotate(tok.Token, "client-a"); err != nil {
		t.Fatal(err)
	}
	revoked := b.issue(t)
	if err := b.store.RevokeFamily(b.ctx, revoked.FamilyID, "x"); err != nil {
		t.Fatal(err)
	}
	b.createCode(t)
	var st repository.Stats
	r := b.cli(t, "stats", "--json")
	r.json(t, &st)
	if r.code != 0 || st.Families.Live != 1 || st.Families.Revoked != 1 || st.RefreshTokens.Live != 1 ||
		st.RefreshTokens.Consumed != 1 || st.RefreshTokens.Revoked != 1 || st.AuthorizationCodes.Pending != 1 || len(st.Tables) != 7 {
		t.Fatalf("stats: %+v %+v", r, st)
	}
	if r = b.cli(t, "stats"); r.code != 0 || !strings.Contains(r.stdout, "oauth_refresh_token") || !strings.Contains(r.stdout, "INDEX SIZE") {
		t.Fatalf("stats table: %+v", r)
	}
}

func TestCLI_PepperGenerateWritesAValidRingEntry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r1, r2 := b.cli(t, "pepper", "generate", "--id", "k2"), b.cli(t, "pepper", "generate", "--id", "k2")
	if r1.code != 0 || r1.stdout == r2.stdout {
		t.Fatalf("pepper generate: %+v / %+v", r1, r2)
	}
	ring, err := repository.ParsePepperRing(r1.stdout)
	if err != nil || len(ring) != 1 || ring[0].ID != "k2" || ring[0].Secret.Len() != 32 {
		t.Fatalf("generated entry: %v %+v", err, ring)
	}
	if r := b.cli(t, "pepper", "generate", "--id", "bad id"); r.code != 2 {
		t.Fatalf("bad id: %+v", r)
	}
}

func TestCLI_DemoRunsAgainstDatabaseURLAndCleansUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.cli(t, "demo")
	if r.code != 0 || !strings.Contains(r.stdout, "replay detected") || !strings.Contains(r.stdout, "family revoked") ||
		!strings.Contains(r.stdout, "3b introspect A3  active") || !strings.Contains(r.stdout, "6b introspect A3  inactive") {
		t.Fatalf("demo: %+v", r)
	}
	if !strings.Contains(r.stderr, `replay_detected`) {
		t.Fatalf("demo's replay event missing from stderr: %s", r.stderr)
	}
	if !strings.Contains(r.stdout, "the demo family is deleted, the schema it migrated stays") || strings.Contains(r.stdout, "throwaway") {
		t.Fatalf("the demo on a given database does not say what it left: %s", r.stdout)
	}
	if n := b.count(t, "SELECT (SELECT count(*) FROM oauth_family) + (SELECT count(*) FROM oauth_refresh_tombstone) + (SELECT count(*) FROM oauth_access_token) + (SELECT count(*) FROM oauth_revocation)"); n != 0 {
		t.Fatalf("the demo left %d rows of families, tombstones, access tokens and feed entries", n)
	}
}

func TestCLI_PepperStatusSaysWhatDependsOnEachPepperAndNeverPrintsOne(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.replayed(t) // a tombstone and a live token under "default"
	fresh := "new:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	ring := fresh + ",default:" + base64.StdEncoding.EncodeToString(b.pepper) + ",gone:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32)) + ":retired"
	cmd := exec.Command(oauthstoreBinary(t), "pepper", "status", "--json")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+b.db.URL, "OAUTH_AT_REST_PEPPER="+ring)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pepper status: %v\n%s", err, stderr.String())
	}
	var got []struct {
		PepperID   string `json:"pepper_id"`
		LiveTokens int64  `json:"live_tokens"`
		Tombstones int64  `json:"tombstones"`
		InRing     string `json:"in_ring"`
		Verdict    string `json:"verdict"`
	}
	cliResult{stdout: stdout.String()}.json(t, &got)
	want := map[string]string{"new": "current", "default": "accepted", "gone": "retired"}
	if len(got) != 3 {
		t.Fatalf("pepper status lists %+v, want the three peppers of the ring", got)
	}
	for _, p := range got {
		if want[p.PepperID] != p.InRing {
			t.Fatalf("%s: in ring %q, want %q", p.PepperID, p.InRing, want[p.PepperID])
		}
		switch p.PepperID {
		case "default":
			if p.LiveTokens != 1 || p.Tombstones != 1 || !strings.HasPrefix(p.Verdict, "in use") {
				t.Fatalf("default: %+v, want one live token and one tombstone, in use", p)
			}
		case "gone":
			if !strings.HasPrefix(p.Verdict, "may be removed") {
				t.Fatalf("gone: %+v, want removable", p)
			}
		}
	}
	out := stdout.String() + stderr.String()
	for _, secret := range []string{base64.StdEncoding.EncodeToString(b.pepper), strings.TrimPrefix(fresh, "new:")} {
		if strings.Contains(out, secret) {
			t.Fatal("pepper status printed a pepper")
		}
	}
}

func TestCLI_MigrateDownAsksFirstAndRefusesWhatItCannotDo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.issue(t)
	before := b.tableChecksum(t)
	r := b.cli(t, "migrate", "down", "1")
	if r.code != 2 || !strings.Contains(r.stderr, "1 live families") || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("down without --yes: %+v, want a refusal that says what would be lost", r)
	}
	for _, args := range [][]string{{"migrate", "down", "9", "--yes"}, {"migrate", "force", "99"}} {
		if r = b.cli(t, args...); r.code != 2 {
			t.Fatalf("%v: %+v, want a usage error", args, r)
		}
	}
	if b.tableChecksum(t) != before || b.count(t, "SELECT version FROM oauthstore_schema_migrations") != 7 {
		t.Fatal("a refused migrate changed the database")
	}
	if r = b.cli(t, "migrate", "down", "1", "--yes"); r.code != 0 || !strings.Contains(r.stdout, "schema version 6") {
		t.Fatalf("down 1 --yes: %+v", r)
	}
	// A database behind this build is refused by the other commands, with the way out.
	if r = b.cli(t, "stats"); r.code != 1 || !strings.Contains(r.stderr, "run `oauthstore migrate up`") {
		t.Fatalf("stats on schema version 6: %+v", r)
	}
}

func TestCLI_UsageErrorsExitTwoAndAreSaidOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, args := range [][]string{
		{"janitor", "--batch-size", "-5"}, {"janitor", "--retain", "-1h"}, {"stats", "extra"},
		{"sessions", "--user", "u", "--limit", "0"}, {"stats", "--no-such-flag"}, {"bench", "--workers", "0"},
		{"stats", "--connect-timeout", "-1s"}, {"stats", "--statement-timeout", "1us"},
	} {
		r := b.cli(t, args...)
		if r.code != 2 {
			t.Errorf("%v: exit %d, want 2: %+v", args, r.code, r)
		}
		if n := strings.Count(r.stderr, "oauthstore: oauthstore:") + strings.Count(r.stderr, "flag provided but not defined: -no-such-flag"); n > 1 ||
			strings.Count(r.stderr, "invalid input") > 1 {
			t.Errorf("%v: the error is said more than once: %s", args, r.stderr)
		}
	}
}

func TestCLI_AnUnmigratedDatabaseSaysToMigrate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.pool.Exec(b.ctx, "DROP TABLE oauthstore_schema_migrations"); err != nil {
		t.Fatal(err)
	}
	if r := b.cli(t, "sessions", "--user", "u"); r.code != 1 || !strings.Contains(r.stderr, "no oauthstore schema: run `oauthstore migrate up`") {
		t.Fatalf("sessions on an unmigrated database: %+v", r)
	}
}

func TestCLI_NeverPrintsThePasswordOfTheConnectionString(t *testing.T) {
	t.Parallel()
	const password = "Sup3rSecretPassw0rd"
	url := "postgres://someone:" + password + "@127.0.0.1:1/db?connect_timeout=2"
	var out strings.Builder
	for _, args := range [][]string{
		{"stats", "--help"}, {"janitor", "--help"}, {"revoke", "--help"}, {"sessions", "--help"}, {"migrate", "up", "--help"},
		{"demo", "--help"}, {"pepper", "status", "--help"}, {"stats"}, {"migrate", "version"}, {"janitor", "--batch-size", "-5"},
		{"stats", "--nope"},
	} {
		r := runCLI(t, []string{"DATABASE_URL=" + url}, args...)
		out.WriteString(r.stdout + r.stderr)
	}
	r := runCLI(t, nil, "stats", "--database-url", "postgres://someone:"+password+"@127.0.0.1:1/db?sslmode=nonsense")
	out.WriteString(r.stdout + r.stderr)
	if r.code == 0 {
		t.Fatal("stats on an unparsable connection string succeeded")
	}
	if strings.Contains(out.String(), password) {
		t.Fatalf("a command printed the password:\n%s", out.String())
	}
}

func TestCLI_GivesUpOnAServerThatNeverAnswers(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts, and never says a word
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	url := "postgres://u@" + ln.Addr().String() + "/db"
	for _, args := range [][]string{{"stats"}, {"migrate", "up"}, {"janitor"}} {
		start := time.Now()
		r := runCLI(t, []string{"DATABASE_URL=" + url}, append(args, "--connect-timeout", "1s")...)
		if took := time.Since(start); r.code != 1 || took > 20*time.Second {
			t.Errorf("%v against a silent server: exit %d after %v: %+v", args, r.code, took, r)
		}
	}
}

func TestCLI_ReadOnlyCommandsGiveUpOnAStatementThatWaitsTooLong(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tx := b.begin(t)
	if _, err := tx.Exec(b.ctx, "LOCK TABLE oauth_family IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := b.cli(t, "stats", "--statement-timeout", "500ms")
	if took := time.Since(start); r.code != 1 || took > 15*time.Second || !strings.Contains(r.stderr, "statement timeout") {
		t.Fatalf("stats behind a lock with --statement-timeout 500ms: exit %d after %v: %+v", r.code, took, r)
	}
}

func TestCLI_JanitorStopsOnInterruptAndSaysWhatItDid(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	old := b.pastStore(t)
	for range 5 {
		tok, err := old.Issue(b.ctx, repository.IssueRequest{ClientID: "c", UserID: "u"})
		if err != nil {
			t.Fatal(err)
		}
		b.remember(tok.Token)
	}
	cmd := exec.Command(oauthstoreBinary(t), "janitor", "--batch-size", "2", "--pause", "1m")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+b.db.URL, "OAUTH_AT_REST_PEPPER=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The first batch deletes two families, then the janitor pauses a minute: interrupt it there.
	deadline := time.Now().Add(30 * time.Second)
	for b.count(t, "SELECT count(*) FROM oauth_family") > 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// The batch's commit is visible once the server has committed it; give the janitor the time to
	// read the server's answer too, so that the signal lands in its pause and not in the commit.
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || time.Since(start) > 10*time.Second ||
		!strings.Contains(stderr.String(), "deleted before the error 2 families") {
		t.Fatalf("janitor interrupted in its pause: %v after %v; stderr %s", err, time.Since(start), stderr.String())
	}
}

func TestCLI_SessionsSaysWhenItShowsFewerThanThereAre(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	for range 3 {
		b.issue(t)
	}
	var out struct {
		Sessions  []json.RawMessage `json:"sessions"`
		Truncated bool              `json:"truncated"`
	}
	r := b.cli(t, "sessions", "--user", "user-1", "--limit", "2", "--json")
	r.json(t, &out)
	if r.code != 0 || len(out.Sessions) != 2 || !out.Truncated {
		t.Fatalf("sessions --limit 2 of 3: %+v %+v", r, out)
	}
	if r = b.cli(t, "sessions", "--user", "user-1", "--limit", "2"); r.code != 0 || !strings.Contains(r.stdout, "the user may have more") {
		t.Fatalf("sessions table --limit 2 of 3: %+v", r)
	}
}

func TestCLI_IntrospectReadsTheTokenFromStdinNeverArguments(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"mcp"},
		Claims: repository.Claims{SessionID: "sid-9"}, Access: opaqueAccess})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token, tok.Access.Token)
	jwt, err := b.store.IssueAccessToken(b.ctx, repository.StandaloneAccessRequest{ClientID: "svc", AccessRequest: jwtAccess})
	if err != nil {
		t.Fatal(err)
	}
	introspect := func(stdin string, args ...string) cliResult {
		cmd := exec.Command(oauthstoreBinary(t), append([]string{"introspect"}, args...)...)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+b.db.URL, "OAUTH_AT_REST_PEPPER=default:"+base64.StdEncoding.EncodeToString(b.pepper))
		cmd.Stdin = strings.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		code := 0
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return cliResult{stdout.String(), stderr.String(), code}
	}
	var got map[string]any
	r := introspect(tok.Access.Token.Reveal() + "\n")
	r.json(t, &got)
	if r.code != 0 || got["active"] != true || got["sub"] != "user-1" || got["sid"] != "sid-9" || got["token_use"] != "access_token" {
		t.Fatalf("introspect an access token: %+v", r)
	}
	if strings.Contains(r.stdout+r.stderr, tok.Access.Token.Reveal()) {
		t.Fatal("introspect printed the token")
	}
	r = introspect(tok.Token.Reveal())
	r.json(t, &got)
	if r.code != 0 || got["active"] != true || got["token_use"] != "refresh_token" {
		t.Fatalf("introspect a refresh token: %+v", r)
	}
	r = introspect("", "--jti", jwt.JTI)
	r.json(t, &got)
	if r.code != 0 || got["active"] != true || got["client_id"] != "svc" || got["jti"] != jwt.JTI {
		t.Fatalf("introspect a jti: %+v", r)
	}
	if err := b.store.RevokeFamily(b.ctx, tok.FamilyID, "x"); err != nil {
		t.Fatal(err)
	}
	r = introspect(tok.Access.Token.Reveal())
	if r.code != 0 || strings.TrimSpace(r.stdout) != "{\n  \"active\": false\n}" {
		t.Fatalf("introspect after revocation: %+v", r)
	}
	// A token on the command line is refused, and so is no token at all.
	if r = introspect("", tok.Access.Token.Reveal()); r.code != 2 || strings.Contains(r.stderr, tok.Access.Token.Reveal()) {
		t.Fatalf("a token as an argument: %+v", r)
	}
	if r = introspect(""); r.code != 2 {
		t.Fatalf("no token: %+v", r)
	}
	if r = introspect("", "--jti", "nope"); r.code != 2 {
		t.Fatalf("a malformed jti: %+v", r)
	}
}

// A secret pasted where a flag, a value or a command belongs is refused without being printed:
// a token is base64url, and one in 64 begins with a dash, which the flag package takes for a flag
// and would name in its error.
func TestCLI_NeverEchoesAnArgumentThatMayBeASecret(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok, err := b.store.Issue(b.ctx, repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"mcp"}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(tok.Token)
	secret := tok.Token.Reveal()
	pepper := base64.StdEncoding.EncodeToString(b.pepper)
	env := []string{"DATABASE_URL=" + b.db.URL, "OAUTH_AT_REST_PEPPER=default:" + pepper}
	for _, args := range [][]string{
		{"introspect", "-" + secret},
		{"introspect", "--" + secret},
		{"introspect", "--" + secret + "=x"},
		{"introspect", "--jti=x", "-" + secret},
		{"introspect", "--connect-timeout", secret},
		{"introspect", "--connect-timeout=" + secret},
		{"introspect", secret},
		{"revoke", "-" + secret},
		{"revoke", "--family", "f", secret},
		{"stats", "--statement-timeout=-" + secret},
		{"janitor", "--dry-run=" + secret},
		{"pepper", "status", "-" + pepper},
		{"pepper", pepper},
		{"bench", "--variants=" + secret},
		{"bench", "--durability", secret},
		{secret},
		{"-" + secret},
	} {
		what := strings.NewReplacer(secret, "<token>", pepper, "<pepper>").Replace(strings.Join(args, " "))
		r := runCLI(t, env, args...)
		said := strings.NewReplacer(secret, "<token>", pepper, "<pepper>").Replace(r.stderr)
		if r.code != 2 {
			t.Errorf("%s: exit %d, want 2: %s", what, r.code, said)
		}
		for _, s := range []string{secret, secret[:12], secret[len(secret)-12:], pepper, pepper[:12], pepper[len(pepper)-12:]} {
			if strings.Contains(r.stdout+r.stderr, s) {
				t.Errorf("%s: the secret was printed: %s", what, said)
			}
		}
		if !strings.Contains(r.stderr, "not shown") {
			t.Errorf("%s: the refusal does not say that an argument was left out: %s", what, said)
		}
	}
	// What is plainly a flag name or a value is still named, so that a typo is easy to find.
	for args, want := range map[string]string{
		"stats --no-such-flag":           "-no-such-flag",
		"stats --connect-timeout=10x":    `"10x"`,
		"stats extra":                    `"extra"`,
		"no-such-command":                `"no-such-command"`,
		"revoke --family f --user u x-1": `"x-1"`,
	} {
		r := runCLI(t, env, strings.Fields(args)...)
		if r.code != 2 || !strings.Contains(r.stderr, want) || strings.Contains(r.stderr, "not shown") {
			t.Errorf("%s: exit %d, want 2 and %s named: %s", args, r.code, want, r.stderr)
		}
	}
}
