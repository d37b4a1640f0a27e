package pgtemp

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// startStandby starts a standby of primary and stops it when the test ends, before the primary.
func startStandby(t *testing.T, primary *Cluster, opts StandbyOptions) *Cluster {
	t.Helper()
	s, err := primary.StartStandby(t.Context(), opts)
	if err != nil {
		t.Fatalf("StartStandby: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("standby Stop: %v", err)
		}
	})
	return s
}

func count(t *testing.T, conn *pgx.Conn, sql string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(t.Context(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// awaitRows waits until sql counts want rows on conn.
func awaitRows(t *testing.T, conn *pgx.Conn, sql string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for count(t, conn, sql) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not %d after 10 s", sql, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isReadOnlyError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25006" // read_only_sql_transaction
}

func TestStandby_SynchronousStandbyHasEveryCommitAndTakesOverWhenThePrimaryCrashes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	primary := start(t, Options{Settings: map[string]string{"synchronous_commit": "on"}})
	standby := startStandby(t, primary, StandbyOptions{Synchronous: true})

	p := connect(t, primary.ConnString("postgres"))
	if got := show(t, p, "synchronous_standby_names"); got != "FIRST 1 (standby1)" {
		t.Errorf("the primary's synchronous_standby_names = %q", got)
	}
	var name, state string
	if err := p.QueryRow(ctx, "SELECT application_name, sync_state FROM pg_stat_replication").Scan(&name, &state); err != nil {
		t.Fatal(err)
	}
	if name != "standby1" || state != "sync" {
		t.Errorf("pg_stat_replication: %s is %s, want standby1 sync", name, state)
	}
	// remote_apply: the commit returns once the standby has replayed it, so the row is there
	// at once, which shows that commits wait for the standby.
	mustExec(t, p, "CREATE TABLE t (n int)")
	mustExec(t, p, "SET synchronous_commit = remote_apply")
	mustExec(t, p, "INSERT INTO t VALUES (1)")

	s := connect(t, standby.ConnString("postgres"))
	if n := count(t, s, "SELECT count(*) FROM t"); n != 1 {
		t.Fatalf("the standby has %d rows right after a remote_apply commit, want 1", n)
	}
	if _, err := s.Exec(ctx, "INSERT INTO t VALUES (2)"); !isReadOnlyError(err) {
		t.Fatalf("a write on the standby: %v, want a read-only error", err)
	}
	// A promoted standby waits for no standby of its own.
	if got := show(t, s, "synchronous_standby_names"); got != "" {
		t.Errorf("the standby's synchronous_standby_names = %q, want empty", got)
	}

	// The multi-host connection string reaches whichever cluster accepts writes.
	failover := MultiHostConnString("postgres", primary, standby) + " target_session_attrs=read-write"
	before := connect(t, failover)
	if n := count(t, before, "SELECT count(*) FROM pg_stat_replication"); n != 1 {
		t.Fatalf("the failover connection string reaches a server with %d standbys before the failover, want the primary", n)
	}

	mustExec(t, p, "SET synchronous_commit = on")
	mustExec(t, p, "INSERT INTO t VALUES (2)")
	if err := primary.Crash(); err != nil {
		t.Fatalf("Crash: %v", err)
	}
	if err := p.Ping(ctx); err == nil {
		t.Fatal("a connection to the crashed primary still works")
	}
	if _, err := pgx.Connect(ctx, failover); err == nil {
		t.Fatal("the failover connection string connects before the standby is promoted")
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatalf("Promote: %v", err)
	}
	after := connect(t, failover)
	mustExec(t, after, "INSERT INTO t VALUES (3)")
	if n := count(t, after, "SELECT count(*) FROM t"); n != 3 {
		t.Fatalf("the promoted standby has %d rows, want the 2 acknowledged by the primary and 1 of its own", n)
	}
	var recovery bool
	if err := s.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovery); err != nil || recovery {
		t.Fatalf("pg_is_in_recovery() after Promote = %v, %v", recovery, err)
	}

	if err := primary.Restart(ctx, false); err == nil {
		t.Error("Restart after Crash succeeded")
	}
	if err := standby.Promote(ctx); err == nil || !strings.Contains(err.Error(), "recovery is not in progress") {
		t.Errorf("Promote of a primary: %v, want the server's refusal", err)
	}
	dir := primary.Dir()
	if err := primary.Stop(); err != nil {
		t.Errorf("Stop after Crash: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the crashed primary's directory is still there after Stop (stat: %v)", err)
	}
}

func TestStandby_WithoutBaseBackupCopiesTheStoppedPrimary(t *testing.T) {
	t.Parallel()
	primary := start(t, Options{})
	p := connect(t, primary.ConnString("postgres"))
	mustExec(t, p, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")

	standby := startStandby(t, primary, StandbyOptions{Name: "copy", coldCopy: true})
	if err := p.Ping(t.Context()); err == nil {
		t.Error("a connection opened before the copy survived the primary's restart")
	}
	p = connect(t, primary.ConnString("postgres"))
	mustExec(t, p, "INSERT INTO t VALUES (2)")
	s := connect(t, standby.ConnString("postgres"))
	awaitRows(t, s, "SELECT count(*) FROM t", 2)
	if n := count(t, s, "SELECT count(*) FROM pg_replication_slots"); n != 0 {
		t.Errorf("the standby has %d replication slots, want none: the primary's are its own", n)
	}
	var slot string
	if err := p.QueryRow(t.Context(), "SELECT slot_name FROM pg_replication_slots WHERE active").Scan(&slot); err != nil || slot != "copy" {
		t.Errorf("the primary's active slot: %q, %v; want copy", slot, err)
	}
}

func TestStandby_ApplyDelayHoldsBackReplayUntilPromote(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// synchronous_commit=on: a commit's WAL is flushed, and so sent, before the commit returns.
	primary := start(t, Options{Settings: map[string]string{"synchronous_commit": "on"}})
	standby := startStandby(t, primary, StandbyOptions{ApplyDelay: time.Hour})
	p := connect(t, primary.ConnString("postgres"))
	s := connect(t, standby.ConnString("postgres"))

	mustExec(t, p, "CREATE TABLE t (n int)")
	mustExec(t, p, "INSERT INTO t VALUES (1)")
	var lsn string
	if err := p.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	awaitRows(t, s, "SELECT (pg_last_wal_receive_lsn() >= '"+lsn+"')::int", 1)
	if n := count(t, s, "SELECT count(*) FROM pg_class WHERE relname = 't'"); n != 0 {
		t.Fatal("the standby replayed a commit its apply delay holds back")
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatalf("Promote: %v", err)
	}
	if n := count(t, s, "SELECT count(*) FROM t"); n != 1 {
		t.Fatalf("after Promote the standby has %d rows, want the one it had received", n)
	}
}

func TestStartStandby_RefusesWhatCannotWork(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	primary := start(t, Options{})
	for _, tc := range []struct {
		opts StandbyOptions
		want string
	}{
		{StandbyOptions{Synchronous: true}, "synchronous_commit"},
		{StandbyOptions{Name: "Standby-1"}, "invalid standby name"},
		{StandbyOptions{Settings: map[string]string{"data_directory": "/tmp"}}, "managed by pgtemp"},
		{StandbyOptions{Settings: map[string]string{"shared_buffers": "lots"}}, "shared_buffers"},
	} {
		s, err := primary.StartStandby(ctx, tc.opts)
		if err == nil {
			s.Stop()
			t.Errorf("StartStandby(%+v) succeeded", tc.opts)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("StartStandby(%+v): %v, want an error about %s", tc.opts, err, tc.want)
		}
	}
	// A standby that failed to start leaves no slot behind.
	p := connect(t, primary.ConnString("postgres"))
	if n := count(t, p, "SELECT count(*) FROM pg_replication_slots"); n != 0 {
		t.Errorf("%d replication slots left behind by failed standby starts", n)
	}

	_, err := query(ctx, primary.socketPath(), "SELECT 1/0")
	var serr *ServerError
	if !errors.As(err, &serr) || serr.Code != "22012" {
		t.Errorf("query of a division by zero: %v, want a ServerError 22012", err)
	}
	if err := primary.Promote(ctx); err == nil {
		t.Error("Promote of a primary succeeded")
	}
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := primary.StartStandby(context.Background(), StandbyOptions{}); err == nil {
		t.Error("StartStandby of a stopped primary succeeded")
	}
	if err := primary.Crash(); err == nil {
		t.Error("Crash of a stopped cluster succeeded")
	}
}
