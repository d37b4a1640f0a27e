// Package pgtemp runs a throwaway PostgreSQL cluster from the machine's
// PostgreSQL server binaries, for integration tests and demos.
//
// Each cluster gets its own temporary directory (data directory, unix socket
// directory and server log) and listens only on a unix socket inside it, so
// any number of clusters can run side by side without port conflicts or
// passwords. Durability is switched off by default because the data is
// thrown away anyway, which makes the server noticeably faster.
//
// For failover tests a cluster can have streaming standbys ([Cluster.StartStandby]), synchronous
// or not, which [Cluster.Promote] turns into a primary once [Cluster.Crash] has taken the primary
// down; [MultiHostConnString] lists them all for a client that follows the primary.
//
// The server is tied to the lifetime of the calling process: on Linux it is
// started with a parent-death signal, so it is killed even if the process
// crashes before [Cluster.Stop] runs. In that case the temporary directory is
// left behind; it lives under the system temp directory and is named pgt*.
//
// When the calling process runs as root, initdb and postgres (which refuse
// to run as root), and pg_basebackup with them, are run as the "postgres" OS
// user.
package pgtemp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// SuperUser is the bootstrap superuser created by initdb. Authentication
	// is "trust", so no password is needed.
	SuperUser = "postgres"

	defaultPort         = 5432
	defaultStartTimeout = 30 * time.Second

	// stopGrace is how long Stop waits for a fast shutdown before it kills
	// the server's whole process group.
	stopGrace = 10 * time.Second

	// serverUserName is the OS account initdb and postgres run as when the
	// calling process is root.
	serverUserName = "postgres"

	// maxSocketPath is the usable length of sockaddr_un.sun_path on Linux
	// (108 bytes including the terminating NUL).
	maxSocketPath = 107

	logTailLines = 30
)

// ErrNoServerBinaries is returned (wrapped, with the places that were
// searched) when initdb and postgres cannot be found.
var ErrNoServerBinaries = errors.New("pgtemp: PostgreSQL server binaries (initdb, postgres) not found; " +
	"install the PostgreSQL server package (e.g. apt-get install postgresql, dnf install postgresql-server, " +
	"brew install postgresql) or set PG_BINDIR to the directory containing initdb and postgres")

// ErrNoServerUser is returned when the calling process runs as root, which
// initdb and postgres refuse, and there is no "postgres" OS user to run them
// as instead.
var ErrNoServerUser = errors.New(`pgtemp: running as root, but there is no "postgres" OS user to run the server as; ` +
	`create one (e.g. useradd --system postgres) or run as an unprivileged user`)

// CommandError reports that initdb or postgres failed: it could not be
// started, exited unsuccessfully, or the server did not accept connections in
// time.
type CommandError struct {
	Path   string // the program, e.g. "/usr/lib/postgresql/15/bin/initdb"
	Err    error  // the cause, e.g. an *exec.ExitError or a context error
	Output string // initdb's output, or the last lines of the server log
}

func (e *CommandError) Error() string {
	var b strings.Builder
	b.WriteString("pgtemp: ")
	b.WriteString(e.Path)
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if out := strings.TrimSpace(e.Output); out != "" {
		b.WriteString("\noutput:")
		for line := range strings.SplitSeq(out, "\n") {
			b.WriteString("\n    ")
			b.WriteString(line)
		}
	}
	return b.String()
}

func (e *CommandError) Unwrap() error { return e.Err }

// Options configure a cluster. The zero value is ready to use.
type Options struct {
	// BinDir is the directory holding initdb and postgres. If empty, it is
	// found with FindBinDir.
	BinDir string

	// Fsync keeps the server's durability settings. By default fsync,
	// synchronous_commit and full_page_writes are off: the data is
	// throwaway, and syncing only slows tests down.
	Fsync bool

	// Settings are extra postgresql.conf settings passed to the server as
	// "-c name=value"; they override the package defaults
	// (max_connections=200, shared_buffers=128MB, listen_addresses='').
	// "port" chooses the socket's port number (default 5432; it only names
	// the socket file unless listen_addresses is set).
	// unix_socket_directories and data_directory are managed by the
	// package and cannot be set.
	Settings map[string]string

	// Log receives the server's stdout and stderr. If nil, they go to
	// server.log in the cluster directory.
	Log io.Writer

	// StartTimeout bounds the whole of Start, including initdb.
	// Default 30s.
	StartTimeout time.Duration
}

// Cluster is a running throwaway PostgreSQL cluster. Call Stop when done.
// Its methods may be called concurrently.
type Cluster struct {
	dir     string // temporary directory holding everything below
	dataDir string
	sockDir string
	port    int
	binDir  string
	logPath string  // "" when Options.Log was set
	tail    *tailer // nil when the log goes to logPath

	// What Restart needs to start the server again.
	cred     *syscall.Credential
	settings map[string]string
	logw     io.Writer

	mu      sync.Mutex // guards server and stopped
	server  *process
	stopped bool // Stop (or a failed Start) has shut the cluster down

	// What StartStandby keeps about this cluster's standbys.
	replMu       sync.Mutex // serialises changes of synchronous_standby_names
	standbys     int        // standbys started, for their default names
	syncStandbys []string   // names of the synchronous ones, in synchronous_standby_names

	stopOnce sync.Once
	stopErr  error
}

// Start creates a new cluster with initdb, starts postgres on it and waits
// until it accepts connections. On error nothing is left running and the
// temporary directory has been removed.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout,
		fmt.Errorf("start timeout (%s) exceeded: %w", timeout, context.DeadlineExceeded))
	defer cancel()

	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	} else if err := checkBinDir(binDir); err != nil {
		return nil, fmt.Errorf("%w (Options.BinDir: %v)", ErrNoServerBinaries, err)
	}

	settings, port, err := serverSettings(opts)
	if err != nil {
		return nil, err
	}

	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}

	c := &Cluster{port: port, binDir: binDir, cred: cred, settings: settings, logw: opts.Log}
	if err := c.makeDirs(cred); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// Best effort: the start error is what the caller needs to see.
			_ = c.shutdown(2 * time.Second)
		}
	}()

	if err := c.initdb(ctx, cred); err != nil {
		return nil, err
	}
	if err := c.startServer(cred, settings, opts.Log); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Restart stops the server and starts it again on the same data directory and socket, and waits
// until it accepts connections. Open connections are broken either way.
//
// With crash set, the stop is PostgreSQL's immediate shutdown (SIGQUIT to the postmaster): every
// backend exits at once, nothing is checkpointed and the next start recovers from the WAL, as
// after a crash of the server. A commit survives it once its WAL has been written, which with the
// default settings (synchronous_commit off) happens only within a few wal_writer_delay periods
// after the commit returned; set synchronous_commit=on in Options.Settings to test what a client
// was told. Otherwise the stop is a fast shutdown, as in Stop. Restart after Stop is an error.
func (c *Cluster) Restart(ctx context.Context, crash bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	path := filepath.Join(c.binDir, "postgres")
	p := c.server
	if p == nil || c.stopped {
		return errors.New("pgtemp: Restart: the cluster is not running")
	}
	select {
	case <-p.done:
		return &CommandError{Path: path, Err: exitedUnexpectedly(p.err), Output: c.logTail()}
	default:
	}
	sig := syscall.SIGINT
	if crash {
		sig = syscall.SIGQUIT
	}
	if err := c.signalAndWait(sig, stopGrace); err != nil {
		return &CommandError{Path: path, Err: err, Output: c.logTail()}
	}
	c.server = nil
	if err := c.startServer(c.cred, c.settings, c.logw); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, defaultStartTimeout,
		fmt.Errorf("restart timeout (%s) exceeded: %w", defaultStartTimeout, context.DeadlineExceeded))
	defer cancel()
	return c.waitReady(ctx)
}

// Crash stops the server as a crash would, with PostgreSQL's immediate shutdown (SIGQUIT to the
// postmaster: every backend exits at once, nothing is checkpointed, and a walsender sends nothing
// more to its standby), and leaves it stopped, as the primary of a failover test. What survives
// is what Restart(ctx, true) documents. Stop still removes the cluster's directory; Restart and
// StartStandby after Crash are errors.
func (c *Cluster) Crash() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	path := filepath.Join(c.binDir, "postgres")
	p := c.server
	if p == nil || c.stopped {
		return errors.New("pgtemp: Crash: the cluster is not running")
	}
	select {
	case <-p.done:
		return &CommandError{Path: path, Err: exitedUnexpectedly(p.err), Output: c.logTail()}
	default:
	}
	err := c.signalAndWait(syscall.SIGQUIT, stopGrace)
	c.server = nil
	removeSharedMemory(c.dataDir)
	if err != nil {
		return &CommandError{Path: path, Err: err, Output: c.logTail()}
	}
	return nil
}

// serverSettings merges the package defaults with opts.Settings and returns
// them with the port number the socket will use.
func serverSettings(opts Options) (map[string]string, int, error) {
	s := map[string]string{
		"listen_addresses": "",
		"max_connections":  "200",
		"shared_buffers":   "128MB",
		"port":             strconv.Itoa(defaultPort),
	}
	if !opts.Fsync {
		s["fsync"] = "off"
		s["synchronous_commit"] = "off"
		s["full_page_writes"] = "off"
	}
	if err := overrideSettings(s, opts.Settings); err != nil {
		return nil, 0, err
	}
	port, err := strconv.Atoi(s["port"])
	if err != nil || port < 1 || port > 65535 {
		return nil, 0, fmt.Errorf("pgtemp: invalid port setting %q", s["port"])
	}
	return s, port, nil
}

// overrideSettings sets the settings of extra in s, refusing invalid names and the ones the
// package manages.
func overrideSettings(s, extra map[string]string) error {
	for name, value := range extra {
		if !validSettingName(name) {
			return fmt.Errorf("pgtemp: invalid setting name %q", name)
		}
		switch strings.ToLower(name) {
		case "unix_socket_directories", "data_directory":
			return fmt.Errorf("pgtemp: setting %q is managed by pgtemp and cannot be overridden", name)
		}
		s[strings.ToLower(name)] = value
	}
	return nil
}

func validSettingName(name string) bool {
	if name == "" {
		return false
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '_':
		case (r >= '0' && r <= '9') || r == '.':
			if i == 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// serverCredential returns the OS user to run initdb and postgres as, or nil
// to run them as the current user. Both programs refuse to run as root.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(serverUserName)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, ErrNoServerUser
		}
		return nil, fmt.Errorf("pgtemp: looking up OS user %q: %w", serverUserName, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtemp: OS user %q: %w", serverUserName, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// makeDirs creates the cluster's temporary directory with its data and
// socket directories, owned by the server user.
func (c *Cluster) makeDirs(cred *syscall.Credential) error {
	base := tempBase(cred, c.port)
	dir, err := os.MkdirTemp(base, "pgt")
	if err != nil {
		return fmt.Errorf("pgtemp: creating cluster directory: %w", err)
	}
	c.dir = dir
	c.dataDir = filepath.Join(dir, "data")
	c.sockDir = filepath.Join(dir, "sock")
	for _, d := range []string{c.dataDir, c.sockDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			os.RemoveAll(dir)
			return fmt.Errorf("pgtemp: creating cluster directory: %w", err)
		}
	}
	if cred != nil {
		for _, d := range []string{dir, c.dataDir, c.sockDir} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				os.RemoveAll(dir)
				return fmt.Errorf("pgtemp: giving cluster directory to OS user %q: %w", serverUserName, err)
			}
		}
	}
	return nil
}

// tempBase picks the parent for the cluster directory: os.TempDir(), unless
// the socket path would be too long there or, when the server runs as
// another user, that user cannot reach it; then /tmp.
func tempBase(cred *syscall.Credential, port int) string {
	base := os.TempDir()
	// <base>/pgtNNNNNNNNNN/sock/.s.PGSQL.<port>
	sockLen := len(base) + len("/pgt0123456789/sock/.s.PGSQL.") + len(strconv.Itoa(port))
	if sockLen > maxSocketPath {
		return "/tmp"
	}
	if cred != nil && !searchableByOthers(base) {
		return "/tmp"
	}
	return base
}

// searchableByOthers reports whether every directory from dir up to the
// root grants search permission to other users.
func searchableByOthers(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

func (c *Cluster) initdb(ctx context.Context, cred *syscall.Credential) error {
	err := c.runTool(ctx, cred, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir,
		"-U", SuperUser,
		"--auth=trust",
		"--encoding=UTF8",
		"--locale=C",
		"--no-sync", // the cluster is throwaway; syncing makes initdb several times slower
	)
	if err != nil {
		// A killed initdb leaves its single-user backend's segment behind.
		removeSharedMemory(c.dataDir)
	}
	return err
}

// runTool runs one of the server's command-line tools (initdb, pg_basebackup) as the server's
// user, in the cluster's directory (the server user may not be able to access our working
// directory), to its end, and returns a *CommandError with its output if it failed. Cancelling
// ctx kills its whole process group, so that nothing it started (initdb runs postgres in
// single-user mode as a child) outlives it.
func (c *Cluster) runTool(ctx context.Context, cred *syscall.Credential, path string, args ...string) error {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = c.dir
	cmd.SysProcAttr = sysProcAttr(cred)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	p, err := startProcess(cmd)
	if err != nil {
		return &CommandError{Path: path, Err: err}
	}
	<-p.done
	if p.err != nil {
		if ctx.Err() != nil {
			return &CommandError{Path: path, Err: context.Cause(ctx), Output: out.String()}
		}
		return &CommandError{Path: path, Err: p.err, Output: out.String()}
	}
	return nil
}

func (c *Cluster) startServer(cred *syscall.Credential, settings map[string]string, logw io.Writer) error {
	path := filepath.Join(c.binDir, "postgres")
	args := []string{"-D", c.dataDir, "-k", c.sockDir}
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", name+"="+settings[name])
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = c.dir
	cmd.SysProcAttr = sysProcAttr(cred)

	if logw == nil {
		c.logPath = filepath.Join(c.dir, "server.log")
		f, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("pgtemp: creating server log: %w", err)
		}
		defer f.Close() // the server has its own descriptor once started
		cmd.Stdout = f
		cmd.Stderr = f
	} else {
		// Keep the end of the log ourselves: it is the only useful
		// diagnostic when the server fails to start.
		c.tail = &tailer{}
		w := io.MultiWriter(logw, c.tail)
		cmd.Stdout = w
		cmd.Stderr = w
		// Backends inherit the output pipe; do not let one that is slow to
		// notice the postmaster's death hold up Wait.
		cmd.WaitDelay = 2 * time.Second
	}

	p, err := startProcess(cmd)
	if err != nil {
		return &CommandError{Path: path, Err: err}
	}
	c.server = p
	return nil
}

// waitReady polls the socket until the server accepts a connection, the
// server exits, or ctx is done.
func (c *Cluster) waitReady(ctx context.Context) error {
	path := filepath.Join(c.binDir, "postgres")
	sock := c.socketPath()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ready, err := probe(ctx, sock)
		if ready {
			return nil
		}
		lastErr = err
		select {
		case <-c.server.done:
			return &CommandError{Path: path, Err: exitedEarly(c.server.err), Output: c.logTail()}
		case <-ctx.Done():
			err := context.Cause(ctx)
			if lastErr != nil {
				err = fmt.Errorf("%w (last connection attempt: %v)", err, lastErr)
			}
			return &CommandError{Path: path, Err: err, Output: c.logTail()}
		case <-tick.C:
		}
	}
}

func exitedEarly(err error) error {
	if err == nil {
		return errors.New("exited before accepting connections")
	}
	return fmt.Errorf("exited before accepting connections: %w", err)
}

// SocketPath returns the path of the server's unix socket, for a client that dials it itself.
func (c *Cluster) SocketPath() string { return c.socketPath() }

func (c *Cluster) socketPath() string {
	return filepath.Join(c.sockDir, ".s.PGSQL."+strconv.Itoa(c.port))
}

// Dir returns the cluster's temporary directory, which holds the data
// directory ("data"), the socket directory ("sock") and, unless Options.Log
// was set, the server log ("server.log").
func (c *Cluster) Dir() string { return c.dir }

// ConnString returns a libpq key/value connection string for the superuser
// and database dbname, connecting over the cluster's unix socket.
func (c *Cluster) ConnString(dbname string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable",
		quoteConnValue(c.sockDir), c.port, quoteConnValue(SuperUser), quoteConnValue(dbname))
}

// URL is like ConnString but returns a postgres:// URL; the socket directory
// is given by the host query parameter.
func (c *Cluster) URL(dbname string) string {
	u := url.URL{
		Scheme: "postgres",
		User:   url.User(SuperUser),
		Path:   "/" + dbname,
		RawQuery: url.Values{
			"host":    {c.sockDir},
			"port":    {strconv.Itoa(c.port)},
			"sslmode": {"disable"},
		}.Encode(),
	}
	return u.String()
}

// quoteConnValue quotes v for a libpq key/value connection string if needed.
func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}

// Stop shuts the server down (fast shutdown: open transactions are rolled
// back), killing it if it has not exited within 10s, and removes the
// cluster's temporary directory. It reports an error if the server had
// already died, did not exit cleanly, or the directory could not be removed;
// the cleanup is done in any case. Calling Stop again returns the same
// result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.shutdown(stopGrace) })
	return c.stopErr
}

func (c *Cluster) shutdown(grace time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	var errs []error
	if p := c.server; p != nil {
		path := filepath.Join(c.binDir, "postgres")
		select {
		case <-p.done:
			errs = append(errs, &CommandError{Path: path, Err: exitedUnexpectedly(p.err), Output: c.logTail()})
			removeSharedMemory(c.dataDir)
		default:
			if err := c.stopServer(grace); err != nil {
				errs = append(errs, &CommandError{Path: path, Err: err, Output: c.logTail()})
			}
		}
	}
	if err := removeAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtemp: removing cluster directory: %w", err))
	}
	return errors.Join(errs...)
}

func exitedUnexpectedly(err error) error {
	if err == nil {
		return errors.New("server exited before Stop")
	}
	return fmt.Errorf("server exited before Stop: %w", err)
}

// stopServer requests a fast shutdown and falls back to killing the
// server's process group after grace.
func (c *Cluster) stopServer(grace time.Duration) error {
	err := c.signalAndWait(syscall.SIGINT, grace)
	if err != nil {
		return err
	}
	if p := c.server; p.err != nil {
		return fmt.Errorf("shutting down: %w", p.err)
	}
	return nil
}

// signalAndWait sends sig to the postmaster (SIGINT: fast shutdown, roll back transactions,
// disconnect clients, checkpoint and exit; SIGQUIT: immediate shutdown) and waits until it has
// exited, killing its process group after grace.
func (c *Cluster) signalAndWait(sig syscall.Signal, grace time.Duration) error {
	p := c.server
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling server: %w", err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}

	// The postmaster leads its own process group (Setpgid), so this also
	// kills any backends that would otherwise linger until they notice.
	_ = p.cmd.Process.Kill()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("server did not shut down within %s and is still running after SIGKILL", grace)
	}
	removeSharedMemory(c.dataDir)
	return fmt.Errorf("server did not shut down within %s; killed", grace)
}

// removeAll removes dir, retrying briefly: backends of a killed server may
// still be writing into it while they exit.
func removeAll(dir string) error {
	var err error
	for range 10 {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// logTail returns the last lines of the server log.
func (c *Cluster) logTail() string {
	var data []byte
	switch {
	case c.tail != nil:
		data = c.tail.bytes()
	case c.logPath != "":
		data = readTail(c.logPath, tailBytes)
	}
	return lastLines(data, logTailLines)
}

const tailBytes = 16 << 10

func readTail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		if _, err := f.Seek(fi.Size()-n, io.SeekStart); err != nil {
			return nil
		}
	}
	data, _ := io.ReadAll(io.LimitReader(f, n))
	return data
}

func lastLines(data []byte, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), len(data)+1)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailer is an io.Writer that keeps the last tailBytes bytes written to it.
type tailer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - tailBytes; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailer) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.buf)
}
