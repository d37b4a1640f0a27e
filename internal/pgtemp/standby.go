package pgtemp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// StandbyOptions configure a standby started by [Cluster.StartStandby]. The zero value is an
// asynchronous standby with a default name.
type StandbyOptions struct {
	// Name is the standby's application_name towards the primary and the name of its replication
	// slot there: lower-case letters, digits and underscores, starting with a letter, at most 63
	// characters. Default "standby<n>", where n counts the primary's standbys.
	Name string

	// Synchronous makes the primary wait for this standby at every commit: the standby joins the
	// primary's synchronous_standby_names (set with ALTER SYSTEM; every synchronous standby of the
	// primary must confirm a commit), and StartStandby returns only once the primary reports it as
	// synchronous. From then on a commit is acknowledged only after the standby has written its
	// WAL (synchronous_commit=on; with remote_apply, after it has also replayed it), so that it
	// survives a crash of the primary followed by Promote. The primary must have been started
	// with synchronous_commit on, remote_write or remote_apply (Options.Fsync, or
	// Options.Settings; the package default, off, waits for no standby) and without
	// synchronous_standby_names in Options.Settings.
	Synchronous bool

	// ApplyDelay holds back the replay of each commit on the standby for this long
	// (recovery_min_apply_delay); the WAL is still received, and written, at once. Promote replays
	// everything received without waiting.
	ApplyDelay time.Duration

	// Settings are extra postgresql.conf settings of the standby. It starts with the primary's
	// settings, as hot standby needs (max_connections and the like at least as high as the
	// primary's), and the replication ones the package sets: primary_conninfo,
	// primary_slot_name, recovery_min_apply_delay, and an empty synchronous_standby_names, so that
	// once promoted it waits for no standby of its own. Settings override all of them.
	//
	// The standby keeps the primary's durability settings: with the package defaults (fsync off)
	// the WAL it has written survives a crash of any server process, which is what a failover
	// test needs, but not a crash of the machine. And with the package default
	// synchronous_commit=off on the primary, a commit is sent to an asynchronous standby only
	// once the primary's WAL writer has flushed it, some time after it was acknowledged.
	Settings map[string]string

	// Log receives the standby's server log, as Options.Log does for a cluster.
	Log io.Writer

	// StartTimeout bounds the whole of StartStandby. Default 30s.
	StartTimeout time.Duration

	// coldCopy copies the stopped primary even when pg_basebackup is there (for tests).
	coldCopy bool
}

var standbyName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// StartStandby starts a streaming replica of c, a hot standby that accepts read-only
// connections, as a new Cluster with a directory of its own. It creates a physical replication
// slot on c named after the standby, so that c keeps whatever WAL the standby has not received
// yet, takes a base backup of c with pg_basebackup from c's bin dir, and starts the standby on
// it, streaming from c over c's unix socket. It returns once the standby streams and, with
// Synchronous, once c counts it as synchronous. Stop the standby like any cluster; its slot stays
// on c until c is stopped, and c's commits wait for a stopped synchronous standby.
//
// Where the bin dir has no pg_basebackup (some builds of the server binaries ship only initdb,
// pg_ctl and postgres), the base backup is a copy of c's data directory taken while c is shut
// down: c is stopped (fast shutdown) and started again, which breaks its open connections.
//
// The standby uses c's port number on its own socket directory. If c listens on TCP
// (listen_addresses), give the standby another port in Settings.
func (c *Cluster) StartStandby(ctx context.Context, opts StandbyOptions) (_ *Cluster, err error) {
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout,
		fmt.Errorf("standby start timeout (%s) exceeded: %w", timeout, context.DeadlineExceeded))
	defer cancel()

	if !c.running() {
		return nil, errors.New("pgtemp: StartStandby: the primary is not running")
	}
	name, err := c.standbyName(opts.Name)
	if err != nil {
		return nil, err
	}
	if opts.Synchronous {
		if err := c.canWaitForStandby(); err != nil {
			return nil, err
		}
	}
	settings, port, err := c.standbySettings(name, opts)
	if err != nil {
		return nil, err
	}

	s := &Cluster{port: port, binDir: c.binDir, cred: c.cred, settings: settings, logw: opts.Log}
	if err := s.makeDirs(c.cred); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = s.shutdown(2 * time.Second)
		}
	}()

	if _, err := query(ctx, c.socketPath(), "SELECT pg_create_physical_replication_slot('"+name+"', true)"); err != nil {
		return nil, fmt.Errorf("pgtemp: creating replication slot %s on the primary: %w", name, err)
	}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = query(ctx, c.socketPath(), "SELECT pg_drop_replication_slot('"+name+"')")
		}
	}()

	basebackup := filepath.Join(c.binDir, "pg_basebackup")
	if isExecutable(basebackup) && !opts.coldCopy {
		err = s.baseBackup(ctx, basebackup, c, name)
	} else {
		err = c.copyWhileStopped(ctx, s.dataDir)
	}
	if err != nil {
		return nil, err
	}
	if err := writeOwned(filepath.Join(s.dataDir, "standby.signal"), nil, c.cred); err != nil {
		return nil, fmt.Errorf("pgtemp: %w", err)
	}

	if err := s.startServer(c.cred, settings, opts.Log); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := s.await(ctx, "the standby to stream from the primary", func() (bool, error) {
		rows, err := query(ctx, s.socketPath(), "SELECT status FROM pg_stat_wal_receiver")
		return err == nil && len(rows) == 1 && rows[0][0] == "streaming", err
	}); err != nil {
		return nil, err
	}
	if opts.Synchronous {
		if err := c.addSynchronousStandby(ctx, name); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// running reports whether the server is up as far as the cluster knows.
func (c *Cluster) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server != nil && !c.stopped
}

// serverDone is closed when the current server process exits; nil (never ready) when there is none.
func (c *Cluster) serverDone() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server == nil {
		return nil
	}
	return c.server.done
}

// standbyName checks a standby's name or makes up the next default one.
func (c *Cluster) standbyName(name string) (string, error) {
	c.replMu.Lock()
	defer c.replMu.Unlock()
	c.standbys++
	if name == "" {
		return "standby" + strconv.Itoa(c.standbys), nil
	}
	if !standbyName.MatchString(name) {
		return "", fmt.Errorf("pgtemp: invalid standby name %q: want lower-case letters, digits and underscores, starting with a letter, at most 63", name)
	}
	return name, nil
}

// canWaitForStandby reports why commits on c could not wait for a synchronous standby.
func (c *Cluster) canWaitForStandby() error {
	if _, ok := c.settings["synchronous_standby_names"]; ok {
		return errors.New("pgtemp: StartStandby: Synchronous needs the primary started without synchronous_standby_names in Options.Settings; the package sets it")
	}
	switch v := c.settings["synchronous_commit"]; strings.ToLower(v) {
	case "", "on", "true", "yes", "1", "remote_write", "remote_apply":
		return nil
	default:
		return fmt.Errorf("pgtemp: StartStandby: Synchronous needs the primary's synchronous_commit on, remote_write or remote_apply (Options.Fsync or Options.Settings), not %q: "+
			"with %[1]q no commit waits for a standby", v)
	}
}

// standbySettings are c's settings with the standby's replication settings and opts.Settings
// over them, and the port number its socket will use.
func (c *Cluster) standbySettings(name string, opts StandbyOptions) (map[string]string, int, error) {
	s := maps.Clone(c.settings)
	s["primary_conninfo"] = fmt.Sprintf("host=%s port=%d user=%s application_name=%s",
		quoteConnValue(c.sockDir), c.port, quoteConnValue(SuperUser), name)
	s["primary_slot_name"] = name
	s["synchronous_standby_names"] = ""
	if opts.ApplyDelay > 0 {
		s["recovery_min_apply_delay"] = strconv.FormatInt(opts.ApplyDelay.Milliseconds(), 10) + "ms"
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

// isExecutable reports whether path is an executable regular file.
func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// baseBackup fills the standby's empty data directory with pg_basebackup from primary, streaming
// the WAL of the backup through the slot.
func (c *Cluster) baseBackup(ctx context.Context, path string, primary *Cluster, slot string) error {
	args := []string{
		"--pgdata", c.dataDir,
		"--host", primary.sockDir,
		"--port", strconv.Itoa(primary.port),
		"--username", SuperUser,
		"--no-password",
		"--wal-method", "stream",
		"--slot", slot,
		"--checkpoint", "fast",
	}
	if c.settings["fsync"] == "off" {
		args = append(args, "--no-sync") // as initdb: the standby does not sync either
	}
	return c.runTool(ctx, c.cred, path, args...)
}

// copyWhileStopped shuts the server down (fast shutdown, which ends with a checkpoint), copies its
// data directory to dst, and starts it again: a base backup without pg_basebackup.
func (c *Cluster) copyWhileStopped(ctx context.Context, dst string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	path := filepath.Join(c.binDir, "postgres")
	if c.server == nil || c.stopped {
		return errors.New("pgtemp: StartStandby: the primary is not running")
	}
	if err := c.stopServer(stopGrace); err != nil {
		return &CommandError{Path: path, Err: err, Output: c.logTail()}
	}
	c.server = nil
	copyErr := copyDataDir(c.dataDir, dst, c.cred)
	if err := c.startServer(c.cred, c.settings, c.logw); err != nil {
		return errors.Join(copyErr, err)
	}
	if err := c.waitReady(ctx); err != nil {
		return errors.Join(copyErr, err)
	}
	if copyErr != nil {
		return fmt.Errorf("pgtemp: copying the primary's data directory: %w", copyErr)
	}
	return nil
}

// copyDataDir copies the data directory of a stopped server, owned by cred, leaving out what
// belongs to that server alone: its lock file and options, and its replication slots.
func copyDataDir(src, dst string, cred *syscall.Credential) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		switch rel {
		case ".":
			return nil // dst exists
		case "postmaster.pid", "postmaster.opts":
			return nil
		}
		if filepath.Dir(rel) == "pg_replslot" {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			if cred != nil {
				return os.Lchown(target, int(cred.Uid), int(cred.Gid))
			}
			return nil
		case info.Mode().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: not a regular file, directory or symbolic link", path)
		}
		if cred != nil {
			return os.Chown(target, int(cred.Uid), int(cred.Gid))
		}
		return nil
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writeOwned writes a new file, owned by cred when set.
func writeOwned(path string, data []byte, cred *syscall.Credential) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	if cred != nil {
		return os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	return nil
}

// addSynchronousStandby adds the standby name to c's synchronous_standby_names and waits until
// every commit on c waits for it. On error the setting is put back, so that c's commits do not
// wait for a standby that is not coming.
func (c *Cluster) addSynchronousStandby(ctx context.Context, name string) (err error) {
	c.replMu.Lock()
	defer c.replMu.Unlock()
	names := append(slices.Clone(c.syncStandbys), name)
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = c.setSynchronousStandbys(ctx, c.syncStandbys)
		}
	}()
	if err := c.setSynchronousStandbys(ctx, names); err != nil {
		return fmt.Errorf("pgtemp: making standby %s synchronous: %w", name, err)
	}
	value := synchronousStandbyNames(names)
	sock := c.socketPath()
	// Whether a commit waits at all is decided by a flag in shared memory that the checkpointer
	// sets when it reloads the configuration. The postmaster signals the checkpointer when it
	// reloads, which a new session shows; the checkpointer then reloads before it performs a
	// checkpoint requested after that. Hence: the setting in a new session, then CHECKPOINT.
	if err := c.await(ctx, "the primary to reload synchronous_standby_names", func() (bool, error) {
		rows, err := query(ctx, sock, "SHOW synchronous_standby_names")
		return err == nil && len(rows) == 1 && rows[0][0] == value, err
	}); err != nil {
		return err
	}
	if _, err := query(ctx, sock, "CHECKPOINT"); err != nil {
		return fmt.Errorf("pgtemp: making standby %s synchronous: CHECKPOINT: %w", name, err)
	}
	if err := c.await(ctx, "the primary to count standby "+name+" as synchronous", func() (bool, error) {
		rows, err := query(ctx, sock, "SELECT sync_state FROM pg_stat_replication WHERE application_name = '"+name+"'")
		return err == nil && len(rows) == 1 && rows[0][0] == "sync", err
	}); err != nil {
		return err
	}
	c.syncStandbys = names
	return nil
}

// synchronousStandbyNames is the setting that makes every one of the named standbys synchronous.
func synchronousStandbyNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return fmt.Sprintf("FIRST %d (%s)", len(names), strings.Join(names, ", "))
}

// setSynchronousStandbys sets c's synchronous_standby_names to the named standbys and asks it to
// reload its configuration.
func (c *Cluster) setSynchronousStandbys(ctx context.Context, names []string) error {
	for _, sql := range []string{
		"ALTER SYSTEM SET synchronous_standby_names = '" + synchronousStandbyNames(names) + "'",
		"SELECT pg_reload_conf()",
	} {
		if _, err := query(ctx, c.socketPath(), sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	return nil
}

// await calls check every 10 ms until it reports done, the server exits, or ctx ends.
func (c *Cluster) await(ctx context.Context, what string, check func() (bool, error)) error {
	path := filepath.Join(c.binDir, "postgres")
	done := c.serverDone()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := check()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-done:
			return &CommandError{Path: path, Err: fmt.Errorf("exited while waiting for %s", what), Output: c.logTail()}
		case <-ctx.Done():
			err := fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
			if last != nil {
				err = fmt.Errorf("%w (last check: %v)", err, last)
			}
			return &CommandError{Path: path, Err: err, Output: c.logTail()}
		case <-tick.C:
		}
	}
}

// Promote turns a standby into a primary, as a failover does: it replays all the WAL it has
// received (an ApplyDelay no longer holds it back), leaves recovery on a new timeline and accepts
// writes. It returns once it does. Promoting a cluster that is not a standby is an error.
func (c *Cluster) Promote(ctx context.Context) error {
	if !c.running() {
		return errors.New("pgtemp: Promote: the cluster is not running")
	}
	// pg_promote(wait => true) looks every 100 ms; polling ourselves returns sooner.
	if _, err := query(ctx, c.socketPath(), "SELECT pg_promote(false)"); err != nil {
		return fmt.Errorf("pgtemp: Promote: %w", err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, time.Minute,
		fmt.Errorf("promotion timeout (1m0s) exceeded: %w", context.DeadlineExceeded))
	defer cancel()
	return c.await(ctx, "the promotion to complete", func() (bool, error) {
		rows, err := query(ctx, c.socketPath(), "SELECT pg_is_in_recovery()")
		return err == nil && len(rows) == 1 && rows[0][0] == "f", err
	})
}

// MultiHostConnString returns a libpq key/value connection string for the superuser and database
// dbname that lists the clusters' unix sockets as hosts, in order; pgx and libpq try them in
// turn. Append target_session_attrs=read-write to reach whichever accepts writes: the primary,
// or after a failover the promoted standby.
func MultiHostConnString(dbname string, clusters ...*Cluster) string {
	hosts := make([]string, len(clusters))
	ports := make([]string, len(clusters))
	for i, c := range clusters {
		hosts[i], ports[i] = c.sockDir, strconv.Itoa(c.port)
	}
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable",
		quoteConnValue(strings.Join(hosts, ",")), strings.Join(ports, ","), quoteConnValue(SuperUser), quoteConnValue(dbname))
}
