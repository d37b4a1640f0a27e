package pgtemp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// start starts a cluster and stops it when the test ends. A machine without
// server binaries fails the test (with instructions) instead of skipping it.
func start(t *testing.T, opts Options) *Cluster {
	t.Helper()
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return c
}

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connect %q: %v", connString, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func show(t *testing.T, conn *pgx.Conn, name string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(t.Context(), "SHOW "+name).Scan(&v); err != nil {
		t.Fatalf("SHOW %s: %v", name, err)
	}
	return v
}

// alive reports whether pid exists and is not a zombie (an orphaned server
// may not be reaped promptly inside containers).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Format: pid (comm) state ...
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("postmaster pid %d still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()

	c, err := Start(t.Context(), Options{Settings: map[string]string{"work_mem": "8MB"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer c.Stop()
	pid := c.server.cmd.Process.Pid

	// Make the runtime terminate OS threads by letting goroutines exit while
	// locked to them, enough at once to take every idle thread. The server's
	// parent-death signal fires when the thread that forked it exits, so it
	// only survives if pgtemp keeps that thread out of the scheduler's pool.
	// (Best effort: an unpinned implementation fails this only sometimes,
	// because its waiting goroutine often happens to occupy the thread.)
	var churn sync.WaitGroup
	for range 64 {
		churn.Go(func() {
			runtime.LockOSThread()
			time.Sleep(10 * time.Millisecond)
		})
	}
	churn.Wait()
	time.Sleep(100 * time.Millisecond) // give a misdirected SIGKILL time to land

	conn := connect(t, c.ConnString("postgres"))
	var one int
	if err := conn.QueryRow(t.Context(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	for name, want := range map[string]string{
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "200",
		"shared_buffers":     "128MB",
		"work_mem":           "8MB",
		"listen_addresses":   "",
	} {
		if got := show(t, conn, name); got != want {
			t.Errorf("SHOW %s = %q, want %q", name, got, want)
		}
	}

	// Both connection string forms must reach a database whose name needs
	// quoting.
	if _, err := conn.Exec(t.Context(), `CREATE DATABASE "it's a db"`); err != nil {
		t.Fatal(err)
	}
	for cs, want := range map[string]string{
		c.URL("postgres"):         "postgres",
		c.URL("it's a db"):        "it's a db",
		c.ConnString("it's a db"): "it's a db",
	} {
		conn := connect(t, cs)
		var db string
		if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&db); err != nil {
			t.Fatalf("%s: %v", cs, err)
		}
		if db != want {
			t.Errorf("%s: connected to %q, want %q", cs, db, want)
		}
		conn.Close(t.Context())
	}
	conn.Close(t.Context())

	dir := c.Dir()
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster directory %s still exists after Stop (stat: %v)", dir, err)
	}
	if alive(pid) {
		t.Errorf("postmaster pid %d still running after Stop", pid)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestTwoClusters(t *testing.T) {
	t.Parallel()

	var logA syncBuffer
	var a, b *Cluster
	var wg sync.WaitGroup
	wg.Go(func() { a = start(t, Options{Log: &logA}) })
	wg.Go(func() { b = start(t, Options{Fsync: true}) })
	wg.Wait()
	if a == nil || b == nil {
		t.FailNow()
	}
	if a.Dir() == b.Dir() {
		t.Fatalf("both clusters use %s", a.Dir())
	}

	ca, cb := connect(t, a.ConnString("postgres")), connect(t, b.ConnString("postgres"))
	if _, err := ca.Exec(t.Context(), "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(t.Context(), "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'").Scan(&n); err != nil || n != 0 {
		t.Errorf("cluster b sees %d tables named only_in_a (err %v), want 0", n, err)
	}
	if got := show(t, cb, "fsync"); got != "on" {
		t.Errorf("with Fsync: SHOW fsync = %q, want on", got)
	}

	if !strings.Contains(logA.String(), "ready to accept connections") {
		t.Errorf("Options.Log did not receive the server log; got:\n%s", logA.String())
	}
	if _, err := os.Stat(filepath.Join(a.Dir(), "server.log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("server.log created although Options.Log was set (stat: %v)", err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir(), "server.log")); err != nil {
		t.Errorf("default server.log: %v", err)
	}
}

func TestStartFailureReportsLog(t *testing.T) {
	t.Parallel()

	_, err := Start(t.Context(), Options{Settings: map[string]string{"shared_buffers": "lots"}})
	var cerr *CommandError
	if !errors.As(err, &cerr) {
		t.Fatalf("Start with a bad setting: got %v, want a *CommandError", err)
	}
	if filepath.Base(cerr.Path) != "postgres" || !strings.Contains(cerr.Output, "shared_buffers") {
		t.Errorf("error does not name postgres and include the log:\n%v", err)
	}
}

func TestInvalidSettings(t *testing.T) {
	t.Parallel()

	for _, s := range []map[string]string{
		{"unix_socket_directories": "/tmp"},
		{"bad name": "x"},
		{"port": "0"},
	} {
		if _, err := Start(t.Context(), Options{Settings: s}); err == nil {
			t.Errorf("Start with settings %v succeeded", s)
		}
	}
}

func TestNoServerBinaries(t *testing.T) {
	empty := t.TempDir()

	_, err := Start(t.Context(), Options{BinDir: empty})
	if !errors.Is(err, ErrNoServerBinaries) {
		t.Errorf("Start with empty BinDir: got %v, want ErrNoServerBinaries", err)
	}

	t.Setenv("PG_BINDIR", empty)
	_, err = FindBinDir()
	if !errors.Is(err, ErrNoServerBinaries) {
		t.Errorf("FindBinDir with empty PG_BINDIR: got %v, want ErrNoServerBinaries", err)
	}
	if err != nil && !strings.Contains(err.Error(), "PG_BINDIR") {
		t.Errorf("error does not explain the fix: %v", err)
	}
}

func TestFindBinDir(t *testing.T) {
	t.Setenv("PG_BINDIR", "")
	dir, err := FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkBinDir(dir); err != nil {
		t.Error(err)
	}
}

func TestConnString(t *testing.T) {
	c := &Cluster{sockDir: "/tmp/pgt123/sock", port: 5433}
	if got, want := c.ConnString("app"), "host=/tmp/pgt123/sock port=5433 user=postgres dbname=app sslmode=disable"; got != want {
		t.Errorf("ConnString = %q, want %q", got, want)
	}
	if got, want := c.ConnString(`a b'c\`), `host=/tmp/pgt123/sock port=5433 user=postgres dbname='a b\'c\\' sslmode=disable`; got != want {
		t.Errorf("ConnString = %q, want %q", got, want)
	}
	if got, want := c.URL("app"), "postgres://postgres@/app?host=%2Ftmp%2Fpgt123%2Fsock&port=5433&sslmode=disable"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	d := &Cluster{sockDir: "/tmp/pgt456/sock", port: 5432}
	if got, want := MultiHostConnString("app", c, d), "host=/tmp/pgt123/sock,/tmp/pgt456/sock port=5433,5432 user=postgres dbname=app sslmode=disable"; got != want {
		t.Errorf("MultiHostConnString = %q, want %q", got, want)
	}
}

// TestServerDiesWithParent checks that a server is killed when the process
// that started it dies without calling Stop.
func TestServerDiesWithParent(t *testing.T) {
	t.Parallel()

	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperStartAndHang$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PGTEMP_TEST_HELPER=1")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	var dir string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "pgtemp-helper %d %s", &pid, &dir); err == nil {
			break
		}
	}
	if pid == 0 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("helper process did not start a cluster")
	}
	t.Cleanup(func() {
		removeSharedMemory(filepath.Join(dir, "data"))
		if err := removeAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})

	cmd.Process.Kill()
	cmd.Wait()
	waitDead(t, pid)
}

// TestHelperStartAndHang is run as a subprocess by TestServerDiesWithParent.
func TestHelperStartAndHang(t *testing.T) {
	if os.Getenv("PGTEMP_TEST_HELPER") != "1" {
		return
	}
	c, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("pgtemp-helper %d %s\n", c.server.cmd.Process.Pid, c.Dir())
	time.Sleep(time.Minute)
	t.Fatal("helper was not killed")
}

func TestRestart_CrashRecoversCommittedDataOnTheSameSocket(t *testing.T) {
	t.Parallel()
	log := &syncBuffer{}
	c := start(t, Options{Settings: map[string]string{"synchronous_commit": "on"}, Log: log})
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	pid := c.server.cmd.Process.Pid

	if err := c.Restart(ctx, true); err != nil {
		t.Fatalf("Restart(crash): %v", err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("a connection opened before the crash still works")
	}
	conn.Close(context.Background())
	if alive(pid) {
		t.Fatalf("the old postmaster %d is still running", pid)
	}
	after := connect(t, c.ConnString("postgres"))
	var n int
	if err := after.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("after the crash: %d rows, %v; want 1000", n, err)
	}
	text := log.String()
	if !strings.Contains(text, "immediate shutdown request") || !strings.Contains(text, "automatic recovery in progress") {
		t.Fatalf("the server log shows no immediate shutdown followed by crash recovery:\n%s", text)
	}

	// A fast restart keeps the data as well and needs no recovery.
	if err := c.Restart(ctx, false); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	again := connect(t, c.ConnString("postgres"))
	if err := again.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("after the fast restart: %d rows, %v; want 1000", n, err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Restart(ctx, false); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("Restart after Stop: %v, want an error saying the cluster is not running", err)
	}
}
