// Command soak runs a mixed workload against the store for a while and checks, as it goes, that
// nothing unexpected happens: eight workers issue, rotate, replay, exchange codes, revoke, peek,
// bind states and clean up, each predicting the outcome of every call from its own bookkeeping.
// Every report interval (and at the end) it pauses the workers and prints the operations by kind,
// the unexpected outcomes (expected: none), the rows in the database against what the workers
// expect, and the process's memory. It stops by itself after --duration.
//
//	cd tests && go run ./soak --duration 10m
//
// It runs on a throwaway PostgreSQL started from the server binaries (internal/pgtemp), or on
// $DATABASE_URL, which it migrates and from which it deletes what it created. The counts assume
// no other process runs Cleanup on that database meanwhile. The exit status is 1 when anything
// unexpected happened.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

// The kinds of operation, in report order.
var opKinds = []string{"issue", "rotate", "introspect", "resend", "replay", "wrong-client", "peek", "exchange", "code-replay",
	"revoke-family", "revoke-token", "abandon", "state", "cleanup"}

type config struct {
	duration time.Duration
	workers  int
	every    time.Duration
	ttl      time.Duration
	maxLive  int
}

func main() {
	var cfg config
	flag.DurationVar(&cfg.duration, "duration", 10*time.Minute, "how long to run")
	flag.IntVar(&cfg.workers, "workers", 8, "concurrent workers")
	flag.DurationVar(&cfg.every, "report", 30*time.Second, "report interval")
	flag.DurationVar(&cfg.ttl, "ttl", 30*time.Second, "refresh-token idle lifetime: abandoned families expire and are cleaned up after it")
	flag.IntVar(&cfg.maxLive, "families", 32, "families each worker keeps in use")
	flag.Parse()
	if cfg.workers < 1 || cfg.duration <= 0 || cfg.every <= 0 || cfg.ttl < 10*time.Second || cfg.maxLive < 1 {
		fmt.Fprintln(os.Stderr, "soak: --workers, --duration, --report, --families must be positive and --ttl at least 10s")
		os.Exit(2)
	}
	ok, err := run(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !ok {
		fmt.Println("soak: FAILED")
		os.Exit(1)
	}
	fmt.Println("soak: OK")
}

func run(cfg config) (bool, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	url := os.Getenv("DATABASE_URL")
	source := "$DATABASE_URL"
	if url == "" {
		startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		cluster, err := pgtemp.Start(startCtx, pgtemp.Options{})
		cancel()
		if err != nil {
			return false, err
		}
		defer func() {
			if err := cluster.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "soak: stop cluster:", err)
			}
		}()
		url, source = cluster.URL("postgres"), "a throwaway cluster (internal/pgtemp)"
	}
	poolCfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return false, err
	}
	poolCfg.MaxConns = int32(2*cfg.workers + 2)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return false, err
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}
	pepper := make([]byte, 32)
	_, _ = rand.Read(pepper)
	var events eventCounter
	store, err := repository.New(pool, repository.Config{
		Pepper:          repository.NewKey(pepper),
		RefreshTokenTTL: cfg.ttl,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent:         events.add,
	})
	if err != nil {
		return false, err
	}
	runID := randomHex(4)
	s := &soak{
		cfg: cfg, store: store, pool: pool, runID: runID, prefix: "soak-" + runID + "-",
		ops: map[string]*atomic.Int64{}, events: &events,
	}
	for _, k := range opKinds {
		s.ops[k] = new(atomic.Int64)
	}
	fmt.Printf("soak: %d workers for %v on %s; run %s; token TTL %v; report every %v\n",
		cfg.workers, cfg.duration, source, runID, cfg.ttl, cfg.every)
	if os.Getenv("DATABASE_URL") != "" {
		defer s.deleteRunRows()
	}

	runCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	s.start = time.Now()
	s.workers = make([]*worker, cfg.workers)
	var wg sync.WaitGroup
	for i := range cfg.workers {
		w := &worker{s: s, n: i, client: fmt.Sprintf("%sw%d", s.prefix, i), rng: mrand.New(mrand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))}
		s.workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop(runCtx)
		}()
	}
	ticker := time.NewTicker(cfg.every)
	defer ticker.Stop()
	ok := true
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case <-ticker.C:
			if deadline, _ := runCtx.Deadline(); time.Until(deadline) > time.Second {
				ok = s.report(false) && ok
			}
		}
	}
	wg.Wait()
	ok = s.report(true) && ok
	s.printMemoryHistory()
	return ok, nil
}

type soak struct {
	cfg     config
	store   *repository.Store
	pool    *pgxpool.Pool
	runID   string
	prefix  string
	start   time.Time
	workers []*worker
	ops     map[string]*atomic.Int64
	events  *eventCounter

	// pause: workers hold it shared for each operation; a report holds it exclusively, so that
	// the database and the workers' bookkeeping are compared at rest.
	pause sync.RWMutex

	unexpected atomic.Int64
	errMu      sync.Mutex
	firstErrs  []string

	// Cleanup results, over the whole run.
	cleanedFamilies, cleanedTokens, cleanedCodes atomic.Int64

	memory []memSample
}

type eventCounter struct {
	mu sync.Mutex
	n  map[repository.EventKind]int64
}

func (e *eventCounter) add(_ context.Context, ev repository.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[repository.EventKind]int64{}
	}
	e.n[ev.Kind]++
}

func (e *eventCounter) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys := make([]string, 0, len(e.n))
	for k := range e.n {
		keys = append(keys, string(k))
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, e.n[repository.EventKind(k)])
	}
	return strings.Join(parts, ", ")
}

func (s *soak) unexpectedf(format string, args ...any) {
	s.unexpected.Add(1)
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if len(s.firstErrs) < 20 {
		msg := fmt.Sprintf("[%6s] ", time.Since(s.start).Round(time.Second)) + fmt.Sprintf(format, args...)
		s.firstErrs = append(s.firstErrs, msg)
		fmt.Println("soak: UNEXPECTED", msg)
	}
}

// family is a worker's bookkeeping of one family.
type family struct {
	id       string
	token    string
	previous string    // the last consumed token: a resend within the grace window gets token again
	older    string    // the token consumed before previous: presenting it is a replay
	rotated  time.Time // when previous was consumed
	resends  int       // how often previous was presented again
	expires  time.Time // when the newest token expires (the family's idle_expires_at)
	code     *exchanged
	// The access token issued with the newest rotation, if any: an opaque token or a JWT's jti.
	access        string
	accessJWT     bool
	accessExpires time.Time
}

type exchanged struct{ code, verifier, redirect string }

type worker struct {
	s      *soak
	n      int
	client string
	rng    *mrand.Rand
	live   []*family // in use
	idle   []*family // abandoned: alive until they expire, then cleaned up
	// Totals of this worker's families.
	issued, revoked atomic.Int64
}

const redirectURI = "https://soak.example/callback"

func (w *worker) loop(ctx context.Context) {
	for ctx.Err() == nil {
		w.s.pause.RLock()
		w.step()
		w.s.pause.RUnlock()
	}
}

func (w *worker) count(kind string) { w.s.ops[kind].Add(1) }

// step runs one operation, chosen at random, and checks its outcome against the bookkeeping.
func (w *worker) step() {
	ctx := context.Background() // never cancelled mid-call: a stop takes effect between calls
	w.dropExpired()
	r := w.rng.IntN(1000)
	switch {
	case len(w.live) < w.s.cfg.maxLive/4 || r < 40 && len(w.live) < w.s.cfg.maxLive:
		w.issue(ctx)
	case r < 100 && len(w.live) < w.s.cfg.maxLive:
		w.exchange(ctx)
	case r < 110:
		w.replay(ctx)
	case r < 112:
		w.resend(ctx)
	case r < 115:
		w.codeReplay(ctx)
	case r < 130:
		w.wrongClient(ctx)
	case r < 145:
		w.revokeFamily(ctx)
	case r < 155:
		w.revokeToken(ctx)
	case r < 175:
		w.abandon()
	case r < 200:
		w.peek(ctx)
	case r < 215:
		w.state(ctx)
	case r < 217:
		w.cleanup(ctx)
	case r < 240:
		w.introspect(ctx)
	default:
		w.rotate(ctx)
	}
}

// dropExpired forgets abandoned families well past their expiry (cleanup deletes them), and
// abandons a family in use whose token is about to expire, so that no prediction depends on a
// race with the clock.
func (w *worker) dropExpired() {
	now := time.Now()
	w.idle = slices.DeleteFunc(w.idle, func(f *family) bool { return f.expires.Before(now.Add(-time.Minute)) })
	for i := 0; i < len(w.live); i++ {
		if f := w.live[i]; f.expires.Before(now.Add(5 * time.Second)) {
			w.live = slices.Delete(w.live, i, i+1)
			w.idle = append(w.idle, f)
			i--
		}
	}
}

func (w *worker) pick() (*family, int) {
	if len(w.live) == 0 {
		return nil, -1
	}
	i := w.rng.IntN(len(w.live))
	return w.live[i], i
}

func (w *worker) remove(i int) { w.live = slices.Delete(w.live, i, i+1) }

func (w *worker) issue(ctx context.Context) {
	w.count("issue")
	rt, err := w.s.store.Issue(ctx, repository.IssueRequest{
		ClientID: w.client, UserID: "user-" + strconv.Itoa(w.rng.IntN(100)), Scope: []string{"openid", "offline_access"},
	})
	if err != nil {
		w.s.unexpectedf("worker %d: issue: %v", w.n, err)
		return
	}
	w.issued.Add(1)
	w.live = append(w.live, &family{id: rt.FamilyID, token: rt.Token.Reveal(), expires: rt.ExpiresAt})
}

func (w *worker) rotate(ctx context.Context) {
	f, _ := w.pick()
	if f == nil {
		w.issue(ctx)
		return
	}
	w.count("rotate")
	// Most rotations come with an access token, opaque or a JWT's jti, as a token endpoint's do.
	kind := []repository.AccessKind{repository.AccessNone, repository.AccessOpaque, repository.AccessJWT}[w.rng.IntN(3)]
	rt, err := w.s.store.Rotate(ctx, repository.RotateRequest{Token: f.token, ClientID: w.client, Access: repository.AccessRequest{Kind: kind}})
	if err != nil {
		w.s.unexpectedf("worker %d: rotate family %s: %v", w.n, f.id, err)
		return
	}
	switch {
	case kind == repository.AccessNone && rt.Access != nil:
		w.s.unexpectedf("worker %d: rotation of family %s issued an access token nobody asked for", w.n, f.id)
	case kind != repository.AccessNone && rt.Access == nil:
		w.s.unexpectedf("worker %d: rotation of family %s issued no access token", w.n, f.id)
	case rt.Access != nil:
		f.access, f.accessJWT, f.accessExpires = rt.Access.Token.Reveal(), kind == repository.AccessJWT, rt.Access.ExpiresAt
		if f.accessJWT {
			f.access = rt.Access.JTI
		}
	}
	if rt.FamilyID != f.id {
		w.s.unexpectedf("worker %d: rotation of family %s returned family %s", w.n, f.id, rt.FamilyID)
	}
	f.older, f.previous, f.token = f.previous, f.token, rt.Token.Reveal()
	f.rotated, f.resends = time.Now(), 0
	f.expires = rt.ExpiresAt // the family dies when its newest token expires
}

// resend presents the family's previous token again, as a client whose response was lost does:
// within the grace window it gets the current token back, and nothing changes.
func (w *worker) resend(ctx context.Context) {
	f, _ := w.pick()
	// Well inside the default window and allowance, so that no prediction races the clock.
	if f == nil || f.previous == "" || time.Since(f.rotated) > repository.DefaultGraceWindow/2 || f.resends >= repository.DefaultGraceReuses {
		w.rotate(ctx)
		return
	}
	w.count("resend")
	f.resends++
	rt, err := w.s.store.Rotate(ctx, repository.RotateRequest{Token: f.previous, ClientID: w.client})
	switch {
	case err != nil:
		w.s.unexpectedf("worker %d: resend in family %s: %v, want the current token again", w.n, f.id, err)
	case rt.Token.Reveal() != f.token:
		w.s.unexpectedf("worker %d: resend in family %s returned another token than the current one", w.n, f.id)
	}
}

// replay presents the token from two rotations back: the family must be revoked.
func (w *worker) replay(ctx context.Context) {
	f, i := w.pick()
	if f == nil || f.older == "" {
		w.rotate(ctx)
		return
	}
	w.count("replay")
	_, err := w.s.store.Rotate(ctx, repository.RotateRequest{Token: f.older, ClientID: w.client})
	if !errors.Is(err, repository.ErrReplayDetected) {
		w.s.unexpectedf("worker %d: replay in family %s: %v, want ErrReplayDetected", w.n, f.id, err)
		return
	}
	w.remove(i)
	w.revoked.Add(1)
	if _, err := w.s.store.Rotate(ctx, repository.RotateRequest{Token: f.token, ClientID: w.client}); !errors.Is(err, repository.ErrFamilyRevoked) {
		w.s.unexpectedf("worker %d: current token after a replay in family %s: %v, want ErrFamilyRevoked", w.n, f.id, err)
	}
	w.accessEnded(ctx, f, "a replay")
}

func (w *worker) wrongClient(ctx context.Context) {
	f, _ := w.pick()
	if f == nil {
		w.issue(ctx)
		return
	}
	w.count("wrong-client")
	if _, err := w.s.store.Rotate(ctx, repository.RotateRequest{Token: f.token, ClientID: w.s.prefix + "intruder"}); !errors.Is(err, repository.ErrWrongClient) {
		w.s.unexpectedf("worker %d: wrong client in family %s: %v, want ErrWrongClient", w.n, f.id, err)
	}
}

func (w *worker) peek(ctx context.Context) {
	f, _ := w.pick()
	if f == nil {
		w.issue(ctx)
		return
	}
	w.count("peek")
	if info, err := w.s.store.Peek(ctx, f.token, w.client); err != nil || info.FamilyID != f.id {
		w.s.unexpectedf("worker %d: peek family %s: %v", w.n, f.id, err)
	}
}

func (w *worker) exchange(ctx context.Context) {
	w.count("exchange")
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	verifier := base64.RawURLEncoding.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(verifier))
	code, err := w.s.store.CreateCode(ctx, repository.CodeRequest{
		ClientID: w.client, UserID: "user-" + strconv.Itoa(w.rng.IntN(100)), RedirectURI: redirectURI, Scope: []string{"openid"},
		CodeChallenge: base64.RawURLEncoding.EncodeToString(sum[:]), CodeChallengeMethod: repository.PKCEMethodS256,
		Nonce: "n-" + strconv.Itoa(w.rng.IntN(1e6)), Session: json.RawMessage(`{"auth_time":1700000000}`),
	})
	if err != nil {
		w.s.unexpectedf("worker %d: create code: %v", w.n, err)
		return
	}
	if w.rng.IntN(20) == 0 {
		return // the user never came back: the code expires unused, and cleanup deletes it
	}
	if w.rng.IntN(10) == 0 { // a wrong verifier first: refused, the code survives
		if _, err := w.s.store.Exchange(ctx, repository.ExchangeRequest{Code: code.Code.Reveal(), ClientID: w.client,
			RedirectURI: redirectURI, CodeVerifier: strings.Repeat("x", 43)}); !errors.Is(err, repository.ErrPKCEMismatch) {
			w.s.unexpectedf("worker %d: wrong verifier: %v, want ErrPKCEMismatch", w.n, err)
		}
	}
	got, err := w.s.store.Exchange(ctx, repository.ExchangeRequest{Code: code.Code.Reveal(), ClientID: w.client,
		RedirectURI: redirectURI, CodeVerifier: verifier})
	if err != nil {
		w.s.unexpectedf("worker %d: exchange: %v", w.n, err)
		return
	}
	w.issued.Add(1)
	w.live = append(w.live, &family{id: got.FamilyID, token: got.Token.Reveal(), expires: got.ExpiresAt,
		code: &exchanged{code: code.Code.Reveal(), verifier: verifier, redirect: redirectURI}})
}

// codeReplay presents again the code that produced a family in use: the family must be revoked.
func (w *worker) codeReplay(ctx context.Context) {
	var cands []int
	for i, f := range w.live {
		if f.code != nil {
			cands = append(cands, i)
		}
	}
	if len(cands) == 0 {
		w.exchange(ctx)
		return
	}
	w.count("code-replay")
	i := cands[w.rng.IntN(len(cands))]
	f := w.live[i]
	_, err := w.s.store.Exchange(ctx, repository.ExchangeRequest{Code: f.code.code, ClientID: w.client,
		RedirectURI: f.code.redirect, CodeVerifier: f.code.verifier})
	if !errors.Is(err, repository.ErrCodeReplayDetected) {
		w.s.unexpectedf("worker %d: code replay of family %s: %v, want ErrCodeReplayDetected", w.n, f.id, err)
		return
	}
	w.remove(i)
	w.revoked.Add(1)
}

func (w *worker) revokeFamily(ctx context.Context) {
	f, i := w.pick()
	if f == nil {
		w.issue(ctx)
		return
	}
	w.count("revoke-family")
	if err := w.s.store.RevokeFamily(ctx, f.id, "soak"); err != nil {
		w.s.unexpectedf("worker %d: revoke family %s: %v", w.n, f.id, err)
		return
	}
	w.remove(i)
	w.revoked.Add(1)
	w.accessEnded(ctx, f, "its family's revocation")
}

func (w *worker) revokeToken(ctx context.Context) {
	f, i := w.pick()
	if f == nil {
		w.issue(ctx)
		return
	}
	w.count("revoke-token")
	token := f.token
	if f.previous != "" && w.rng.IntN(2) == 0 {
		token = f.previous // RFC 7009 revokes the family whichever of its tokens is presented
	}
	if err := w.s.store.RevokeToken(ctx, token, w.client); err != nil {
		w.s.unexpectedf("worker %d: revoke token of family %s: %v", w.n, f.id, err)
		return
	}
	w.remove(i)
	w.revoked.Add(1)
	w.accessEnded(ctx, f, "RevokeToken of its refresh token")
}

// introspectAccess asks the store about a family's newest access token.
func (w *worker) introspectAccess(ctx context.Context, f *family) (*repository.Introspection, error) {
	if f.accessJWT {
		return w.s.store.IntrospectJTI(ctx, f.access)
	}
	return w.s.store.Introspect(ctx, f.access)
}

// introspect checks that a live family's newest access token is active (I8's other half: no
// revocation that did not happen).
func (w *worker) introspect(ctx context.Context) {
	f, _ := w.pick()
	if f == nil || f.access == "" || time.Until(f.accessExpires) < 5*time.Second {
		w.rotate(ctx)
		return
	}
	w.count("introspect")
	info, err := w.introspectAccess(ctx, f)
	switch {
	case err != nil:
		w.s.unexpectedf("worker %d: introspect in family %s: %v", w.n, f.id, err)
	case !info.Active || info.FamilyID != f.id:
		w.s.unexpectedf("worker %d: the access token of live family %s introspects as %+v", w.n, f.id, info)
	}
}

// accessEnded checks that a revoked family's newest access token is inactive at once (I8).
func (w *worker) accessEnded(ctx context.Context, f *family, what string) {
	if f.access == "" {
		return
	}
	info, err := w.introspectAccess(ctx, f)
	switch {
	case err != nil:
		w.s.unexpectedf("worker %d: introspect after %s of family %s: %v", w.n, what, f.id, err)
	case info.Active:
		w.s.unexpectedf("worker %d: an access token of family %s is active after %s", w.n, f.id, what)
	}
}

// abandon stops using a family: it stays live until its token expires, then cleanup deletes it.
func (w *worker) abandon() {
	f, i := w.pick()
	if f == nil {
		return
	}
	w.count("abandon")
	w.remove(i)
	w.idle = append(w.idle, f)
}

func (w *worker) state(ctx context.Context) {
	w.count("state")
	st, err := w.s.store.CreateState(ctx, repository.StateRequest{ClientID: w.client, RedirectURI: redirectURI,
		ReturnTo: "https://soak.example/home", TTL: time.Minute})
	if err != nil {
		w.s.unexpectedf("worker %d: create state: %v", w.n, err)
		return
	}
	if w.rng.IntN(4) == 0 {
		return // never consumed: expires, and cleanup deletes it
	}
	if b, err := w.s.store.ConsumeState(ctx, st.State.Reveal()); err != nil || b.ClientID != w.client {
		w.s.unexpectedf("worker %d: consume state: %v", w.n, err)
	}
	if _, err := w.s.store.ConsumeState(ctx, st.State.Reveal()); !errors.Is(err, repository.ErrStateNotFound) {
		w.s.unexpectedf("worker %d: second consume of a state: %v, want ErrStateNotFound", w.n, err)
	}
}

func (w *worker) cleanup(ctx context.Context) {
	w.count("cleanup")
	res, err := w.s.store.Cleanup(ctx, repository.CleanupOptions{BatchSize: 500})
	if err != nil {
		w.s.unexpectedf("worker %d: cleanup: %v", w.n, err)
		return
	}
	w.s.cleanedFamilies.Add(res.Families)
	w.s.cleanedTokens.Add(res.RefreshTokens)
	w.s.cleanedCodes.Add(res.AuthorizationCodes)
}

type memSample struct {
	at                 time.Duration
	heapAlloc, heapSys uint64
	sys                uint64
	rss                uint64
	numGC              uint32
	goroutines         int
}

func readMemory(at time.Duration) memSample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{at: at, heapAlloc: ms.HeapAlloc, heapSys: ms.HeapSys, sys: ms.Sys, rss: rssBytes(), numGC: ms.NumGC,
		goroutines: runtime.NumGoroutine()}
}

// rssBytes reads VmRSS from /proc/self/status (0 where there is none).
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// report pauses the workers, compares the database with their bookkeeping and prints the state
// of the run. It returns false when anything differs.
func (s *soak) report(final bool) bool {
	s.pause.Lock()
	defer s.pause.Unlock()
	elapsed := time.Since(s.start)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var (
		now                                       time.Time
		liveFamilies, families, revokedFamilies   int64
		liveTokens, tokens, twoLive, codes, state int64
	)
	err := s.pool.QueryRow(ctx, `
		WITH f AS (SELECT * FROM oauth_family WHERE client_id LIKE $1 || '%')
		SELECT statement_timestamp(),
			(SELECT count(*) FROM f WHERE revoked_at IS NULL AND idle_expires_at > statement_timestamp()),
			(SELECT count(*) FROM f),
			(SELECT count(*) FROM f WHERE revoked_at IS NOT NULL),
			(SELECT count(*) FROM oauth_refresh_token t JOIN f ON f.id = t.family_id WHERE t.consumed_at IS NULL),
			(SELECT count(*) FROM oauth_refresh_token t JOIN f ON f.id = t.family_id),
			-- A family row names one live token; one that is also a tombstone would be live twice.
			(SELECT count(*) FROM oauth_refresh_tombstone t JOIN f ON f.id = t.family_id AND t.digest = f.token_digest),
			(SELECT count(*) FROM oauth_authorization_code WHERE client_id LIKE $1 || '%'),
			(SELECT count(*) FROM oauth_state WHERE client_id LIKE $1 || '%')`, s.prefix).
		Scan(&now, &liveFamilies, &families, &revokedFamilies, &liveTokens, &tokens, &twoLive, &codes, &state)
	if err != nil {
		s.unexpectedf("report query: %v", err)
		return false
	}
	// What the workers expect: a family is live when it was neither revoked nor cleaned up and its
	// newest token has not expired at the database's instant of the count.
	var expectLive, issued, revoked int64
	for _, w := range s.workers {
		issued += w.issued.Load()
		revoked += w.revoked.Load()
		for _, set := range [][]*family{w.live, w.idle} {
			for _, f := range set {
				if f.expires.After(now) {
					expectLive++
				}
			}
		}
	}
	expectPresent := issued - s.cleanedFamilies.Load()

	ok := true
	check := func(name string, got, want int64) string {
		if got != want {
			ok = false
			return fmt.Sprintf("%s %d (MISMATCH: expected %d)", name, got, want)
		}
		return fmt.Sprintf("%s %d", name, got)
	}
	mem := readMemory(elapsed)
	s.memory = append(s.memory, mem)

	var total int64
	var parts []string
	for _, k := range opKinds {
		n := s.ops[k].Load()
		total += n
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	title := "report"
	if final {
		title = "FINAL"
	}
	fmt.Printf("\n[%s %v] %d operations (%.0f/s): %s\n", title, elapsed.Round(time.Second), total,
		float64(total)/elapsed.Seconds(), strings.Join(parts, ", "))
	fmt.Printf("  unexpected outcomes: %d; events: %s\n", s.unexpected.Load(), s.events)
	fmt.Printf("  families: %s; %s; revoked and not yet cleaned up %d; issued %d, revoked %d, cleaned up %d\n",
		check("live", liveFamilies, expectLive), check("in the database", families, expectPresent),
		revokedFamilies, issued, revoked, s.cleanedFamilies.Load())
	fmt.Printf("  tokens: %s, rows %d; %s; codes %d, states %d; cleaned up: %d tokens, %d unused codes\n",
		check("unconsumed", liveTokens, families), tokens, check("live tokens that are also tombstones (I1)", twoLive, 0),
		codes, state, s.cleanedTokens.Load(), s.cleanedCodes.Load())
	fmt.Printf("  memory: heap %s (heap sys %s), sys %s, RSS %s, %d GCs, %d goroutines; pool %d/%d connections\n",
		mib(mem.heapAlloc), mib(mem.heapSys), mib(mem.sys), mib(mem.rss), mem.numGC, mem.goroutines,
		s.pool.Stat().TotalConns(), s.pool.Stat().MaxConns())
	if s.unexpected.Load() > 0 {
		ok = false
	}
	if final && s.unexpected.Load() > 0 {
		fmt.Println("  first unexpected outcomes:")
		s.errMu.Lock()
		for _, e := range s.firstErrs {
			fmt.Println("   ", e)
		}
		s.errMu.Unlock()
	}
	return ok
}

func (s *soak) printMemoryHistory() {
	fmt.Println("\nmemory over time:")
	fmt.Printf("  %8s %12s %12s %12s %12s %6s %6s\n", "elapsed", "heap", "heap sys", "sys", "RSS", "GCs", "gorout")
	for _, m := range s.memory {
		fmt.Printf("  %8s %12s %12s %12s %12s %6d %6d\n", m.at.Round(time.Second), mib(m.heapAlloc), mib(m.heapSys),
			mib(m.sys), mib(m.rss), m.numGC, m.goroutines)
	}
}

// deleteRunRows removes what this run created from a database it did not create.
func (s *soak) deleteRunRows() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, q := range []string{
		`DELETE FROM oauth_revocation WHERE family_id IN (SELECT id FROM oauth_family WHERE client_id LIKE $1 || '%')`,
		`DELETE FROM oauth_refresh_tombstone WHERE family_id IN (SELECT id FROM oauth_family WHERE client_id LIKE $1 || '%')`,
		`DELETE FROM oauth_access_token WHERE client_id LIKE $1 || '%'`,
		`DELETE FROM oauth_family WHERE client_id LIKE $1 || '%'`, // with their live tokens and codes
		`DELETE FROM oauth_authorization_code WHERE client_id LIKE $1 || '%'`,
		`DELETE FROM oauth_state WHERE client_id LIKE $1 || '%'`,
	} {
		if _, err := s.pool.Exec(ctx, q, s.prefix); err != nil {
			fmt.Fprintln(os.Stderr, "soak: delete this run's rows:", err)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
