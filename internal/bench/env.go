package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/schema"
)

// env is the database under test: where it is, how to make pools on it, and how to let go of it.
type env struct {
	opts    Options
	url     string
	cluster *pgtemp.Cluster // nil on a database given by URL
	admin   *pgxpool.Pool   // DDL, VACUUM, CHECKPOINT, the counters, EXPLAIN (load and seeding use writer)
	info    Environment
	created bool // this run created SchemaName and PrevSchemaName, so it drops them
	// serverPID is the postmaster's PID when the server runs on this machine and its data
	// directory is readable; 0 otherwise. It lets the report tell server CPU from other load.
	serverPID int
	// dialServer opens a connection to the server's TCP port (or, on a database given by a URL
	// that names a unix socket, to that socket), for the delaying proxy of the RTT series; nil
	// when the run has no RTT series.
	dialServer func(ctx context.Context) (net.Conn, error)
}

// Environment describes the machine and the server, for the report.
type Environment struct {
	Database      string `json:"database"`
	ServerVersion string `json:"server_version"`
	// ServerVersionNum is server_version_num, e.g. 150004: the statistics flush differently
	// before 15.
	ServerVersionNum int               `json:"server_version_num"`
	Settings         map[string]string `json:"settings"`
	GoVersion        string            `json:"go_version"`
	GOOS             string            `json:"goos"`
	GOARCH           string            `json:"goarch"`
	NumCPU           int               `json:"num_cpu"`
	GOMAXPROCS       int               `json:"gomaxprocs"`
}

// throwawaySettings are the server settings of the cluster the benchmark starts itself.
var throwawaySettings = map[string]string{
	"max_connections": "200",
	"shared_buffers":  "512MB",
}

func openEnv(ctx context.Context, opts Options) (_ *env, err error) {
	e := &env{opts: opts, url: opts.DatabaseURL}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close(context.WithoutCancel(ctx)))
		}
	}()
	e.info.Database = "DATABASE_URL / --database-url, schemas " + SchemaName + " and " + PrevSchemaName
	if e.url == "" {
		began := time.Now()
		fmt.Fprintln(opts.Progress, "starting a throwaway PostgreSQL…")
		settings := maps.Clone(throwawaySettings)
		tcp := ""
		if len(opts.RTTs) > 0 {
			// The RTT series' proxy connects over TCP, as a client across a network would; every
			// other cell uses the unix socket.
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			settings["listen_addresses"] = "127.0.0.1"
			settings["port"] = strconv.Itoa(port)
			tcp = net.JoinHostPort("127.0.0.1", settings["port"])
			e.dialServer = dialer("tcp", tcp)
		}
		c, err := pgtemp.Start(ctx, pgtemp.Options{Fsync: opts.Durability != DurabilityOff, Settings: settings})
		if err != nil {
			return nil, err
		}
		e.cluster, e.url = c, c.URL("postgres")
		e.info.Database = fmt.Sprintf("throwaway cluster (pgtemp, unix socket), started in %s",
			time.Since(began).Round(time.Millisecond))
		if tcp != "" {
			e.info.Database += "; the RTT series connects to TCP " + tcp
		}
	} else if len(opts.RTTs) > 0 {
		e.dialServer, err = urlDialer(e.url)
		if err != nil {
			return nil, err
		}
	}
	// The schemas are created on a connection without the search path, then every pool uses one.
	boot, err := pgx.Connect(ctx, e.url)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer boot.Close(context.WithoutCancel(ctx))
	var existing []string
	if err := boot.QueryRow(ctx, `SELECT coalesce(array_agg(nspname::text), '{}') FROM pg_namespace WHERE nspname = ANY($1)`,
		[]string{SchemaName, PrevSchemaName}).Scan(&existing); err != nil {
		return nil, err
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("schema %s already exists (left by an interrupted run?); drop it or use another database",
			strings.Join(existing, " and "))
	}
	// One simple-protocol query: both schemas or neither.
	if _, err := boot.Exec(ctx, "CREATE SCHEMA "+SchemaName+"; CREATE SCHEMA "+PrevSchemaName); err != nil {
		return nil, fmt.Errorf("create schemas %s and %s: %w", SchemaName, PrevSchemaName, err)
	}
	e.created = true
	e.admin, err = e.pool(ctx, poolSpec{maxConns: 4, app: adminApp, searchPath: SchemaName})
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(opts.Progress, "migrating…")
	if err := schema.Migrate(ctx, e.admin); err != nil {
		return nil, err
	}
	if err := e.createFloor(ctx); err != nil {
		return nil, fmt.Errorf("create the floor's table: %w", err)
	}
	if err := e.createPrevious(ctx); err != nil {
		return nil, fmt.Errorf("create the previous design's tables: %w", err)
	}
	if err := e.describe(ctx); err != nil {
		return nil, err
	}
	var dataDir string
	if e.admin.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir) == nil {
		e.serverPID = postmasterPID(dataDir)
	}
	return e, nil
}

// The application names of the benchmark's connections. Cells and writers are told apart from the
// coordinator's own connections, so that the run can wait until they are gone (their table
// statistics are flushed when they exit); the process ID keeps two runs on one server apart.
var (
	adminApp  = "oauthstore-bench"
	cellApp   = fmt.Sprintf("oauthstore-bench-cell-%d", os.Getpid())
	writerApp = fmt.Sprintf("oauthstore-bench-writer-%d", os.Getpid())
)

// poolSpec is what differs between the benchmark's pools.
type poolSpec struct {
	maxConns, minConns int
	app                string
	searchPath         string
	proxy              string // when set, every connection goes to this address instead
}

// pool returns a pool on the database under test. Every variant uses the same settings.
func (e *env) pool(ctx context.Context, spec poolSpec) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(spec.maxConns)
	cfg.MinConns = int32(spec.minConns)
	cfg.ConnConfig.RuntimeParams["search_path"] = spec.searchPath
	cfg.ConnConfig.RuntimeParams["application_name"] = spec.app
	if spec.proxy != "" {
		// The proxy stands for the server: every attempt goes there, over TCP. TLS, if the
		// connection string asks for it, still checks the server's own name.
		dial := dialer("tcp", spec.proxy)
		cfg.ConnConfig.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }
		cfg.ConnConfig.Fallbacks = nil
	}
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Ping(ctx); err != nil {
		p.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return p, nil
}

func (e *env) describe(ctx context.Context) error {
	e.info.GoVersion = runtime.Version()
	e.info.GOOS, e.info.GOARCH = runtime.GOOS, runtime.GOARCH
	e.info.NumCPU = runtime.NumCPU()
	e.info.GOMAXPROCS = runtime.GOMAXPROCS(0)
	if err := e.admin.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int`).
		Scan(&e.info.ServerVersion, &e.info.ServerVersionNum); err != nil {
		return err
	}
	e.info.Settings = map[string]string{}
	rows, err := e.admin.Query(ctx, `SELECT name, setting || coalesce(unit, '') FROM pg_settings
		WHERE name = ANY($1) ORDER BY name`, []string{
		"fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_connections",
		"max_wal_size", "work_mem", "autovacuum", "jit", "plan_cache_mode", "wal_level",
	})
	if err != nil {
		return err
	}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		e.info.Settings[k] = v
	}
	return rows.Err()
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func dialer(network, addr string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// urlDialer returns a dialer to the server a connection string names first: its TCP host and
// port, or its unix socket.
func urlDialer(url string) (func(ctx context.Context) (net.Conn, error), error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(int(cfg.Port))
	if strings.HasPrefix(cfg.Host, "/") {
		return dialer("unix", filepath.Join(cfg.Host, ".s.PGSQL."+port)), nil
	}
	return dialer("tcp", net.JoinHostPort(cfg.Host, port)), nil
}

// writerPool is a pool that writes outside the measured cells (load, seeding). Its connections
// are closed, and gone from the server, before any cell starts: a backend flushes its table
// statistics lazily, and the writes of one still open could land in a cell's counters.
type writerPool struct {
	pool *pgxpool.Pool
	e    *env
}

func (e *env) writer(ctx context.Context, maxConns int) (*writerPool, error) {
	p, err := e.pool(ctx, poolSpec{maxConns: maxConns, app: writerApp, searchPath: SchemaName})
	if err != nil {
		return nil, err
	}
	return &writerPool{pool: p, e: e}, nil
}

// close closes the pool and waits until its backends have exited.
func (w *writerPool) close(ctx context.Context) error {
	w.pool.Close()
	return w.e.waitGone(ctx, writerApp)
}

// waitGone waits until no backend of this database has application name app any more.
func (e *env) waitGone(ctx context.Context, app string) error {
	deadline := time.Now().Add(goneTimeout)
	for {
		var n int
		err := e.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = $1 AND datname = current_database()`, app).Scan(&n)
		if err != nil || n == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d connections of %s still open %s after they were closed", n, app, goneTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

const goneTimeout = 30 * time.Second

// close drops the benchmark's schemas on a database it was given, and stops a throwaway cluster.
func (e *env) close(ctx context.Context) error {
	var errs []error
	if e.admin != nil {
		e.admin.Close()
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.Stop())
	} else if e.created {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if conn, err := pgx.Connect(ctx, e.url); err != nil {
			errs = append(errs, fmt.Errorf("drop schemas %s and %s: %w", SchemaName, PrevSchemaName, err))
		} else {
			for _, s := range []string{SchemaName, PrevSchemaName} {
				if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+s+" CASCADE"); err != nil {
					errs = append(errs, fmt.Errorf("drop schema %s: %w", s, err))
				}
			}
			errs = append(errs, conn.Close(ctx))
		}
	}
	return errors.Join(errs...)
}
