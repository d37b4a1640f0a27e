package tests

// Failover. A primary streams its WAL to a standby. Four workers, each the client of a few
// families, rotate refresh tokens, exchange authorization codes, revoke families, replay a token
// from two rotations back (a thief) and resend the previous token (a client whose response was
// lost), through a pool whose connection string lists both servers with
// target_session_attrs=read-write. Once enough of it has been acknowledged, the primary crashes
// (immediate shutdown), the standby is promoted, and the workers reconnect to it and go on until
// as much again has been acknowledged there. A worker whose call failed for a reason other than a
// verdict on the request does what a client does: it presents the same request again. Then the
// new primary is held to everything the workers were told, through the store's API alone.
//
// With synchronous replication (synchronous_standby_names naming the standby, and
// synchronous_commit=on) no acknowledged write may be lost, and a client whose rotation response
// the failover lost keeps its session: presenting its previous token again within the grace
// window gets a working token, never a replay verdict. Three clients have their response dropped
// just before the crash, after the commit, so that this case is always there.
//
// With asynchronous replication acknowledged writes may be lost. On one machine the standby is
// hardly ever behind, so the test makes it lag: its replication connection goes through a relay
// that, for the last operations before the crash, stops passing on what the primary sends. The
// test counts what was lost (everything acknowledged during the stall, at least), and holds the
// store to what asynchronous replication still guarantees for what survived: a prefix of each
// family's history, one live token per family, replays detected, surviving revocations in force.
//
// The tests need two PostgreSQL clusters of their own, from the server binaries (pgtemp, with
// pg_basebackup when the bin dir has it), whatever server the rest of the suite uses. `make
// test-ha` runs them, and CI runs that as a stage; `make test` runs them as well. They skip, and
// say why, only when the suite runs against another provider (TEST_DATABASE_URL,
// testcontainers) on a machine without the server binaries.

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	be "encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/internal/pgtemp"
	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
	"github.com/oauthstore/oauthstore/tests/dbtest"
)

func TestHA_SynchronousReplicationFailoverLosesNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	runFailover(t, true)
}

func TestHA_AsynchronousReplicationFailoverKeepsReplayDetectionForWhatSurvived(t *testing.T) {
	t.Parallel()
	runFailover(t, false)
}

const (
	haClient  = "client-ha"
	haWorkers = 4
	// haResendAge bounds the age of the token whose parent a worker resends, well inside the
	// default grace window (30 s), so that a slow run never turns a resend into a replay.
	haResendAge = 20 * time.Second
)

// The phases of a run; an operation belongs to the phase in which its acknowledged attempt began.
const (
	haBefore      int32 = iota // the primary is up
	haStalled                  // asynchronous runs: the link to the standby has stalled, and the primary is up
	haFailingOver              // the primary has crashed (or is crashing); the standby is not known to be promoted
	haAfter                    // the standby is promoted
	haPhases
)

type haToken struct {
	secret repository.Secret
	phase  int32
	at     time.Time // when it was acknowledged
}

type haRevocation struct {
	how   string // RevokeFamily, RevokeToken or replay
	phase int32
}

// haSession is a family as its client knows it. While the workload runs only the worker holding
// it touches it.
type haSession struct {
	familyID string
	origin   string // issue, exchange or dropped response
	tokens   []haToken
	resends  int // resends of the current token's parent
	revoked  *haRevocation
	// With asynchronous replication, a verdict can show that an acknowledged write of the family
	// did not survive the failover; the client then gives up on the family (gaveUp says why), and
	// minted is the token that verdict handed out, if it did.
	gaveUp  string
	minted  *repository.Secret
	audited bool // the family has been seen as acknowledged on the new primary
}

func (s *haSession) last() repository.Secret { return s.tokens[len(s.tokens)-1].secret }

// acknowledgedByOldPrimary reports whether an acknowledged write of the family may have come from
// the old primary.
func (s *haSession) acknowledgedByOldPrimary() bool {
	return s.tokens[0].phase != haAfter
}

func (s *haSession) String() string {
	return fmt.Sprintf("family %s (from %s; %d acknowledged tokens)", s.familyID, s.origin, len(s.tokens))
}

type haCounts struct {
	issues, rotations, exchanges, revocations, replays, resends atomic.Int64
}

type haRun struct {
	synchronous bool
	b           *bundle
	store       *repository.Store
	phase       atomic.Int32
	stop        atomic.Bool
	counts      [haPhases]haCounts
	faults      struct {
		ops, errors atomic.Int64 // operations that met at least one fault, and the faults
		rotations   atomic.Int64 // rotations that met a fault, and so presented their token again
		answered    atomic.Int64 // ... that got a token then
		byGrace     atomic.Int64 // ... by a grace reuse: the faulted attempt had committed
		exchanges   atomic.Int64 // exchanges hit by a fault, whose outcome the client never learns
	}
	gaveUp atomic.Int64

	mu       sync.Mutex
	sessions []*haSession
	errs     []error
}

// graceKey keys the flag an operation's context carries, which the store's OnEvent sets when the
// operation was answered by a grace reuse.
type graceKey struct{}

func newHARun(t *testing.T, b *bundle, synchronous bool) *haRun {
	r := &haRun{synchronous: synchronous, b: b}
	store, err := repository.New(b.pool, r.config())
	if err != nil {
		t.Fatal(err)
	}
	r.store = store
	return r
}

// config is the store's configuration: the defaults (a 30 s grace window among them), the run's
// pepper, and an OnEvent that flags grace reuses.
func (r *haRun) config() repository.Config {
	return repository.Config{
		Pepper: repository.NewKey(r.b.pepper),
		Logger: slog.New(slog.NewJSONHandler(r.b.logs, nil)),
		OnEvent: func(ctx context.Context, e repository.Event) {
			if f, ok := ctx.Value(graceKey{}).(*atomic.Bool); ok && e.Kind == repository.EventGraceReuse {
				f.Store(true)
			}
		},
	}
}

func (r *haRun) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
	r.stop.Store(true)
}

func (r *haRun) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs) > 0
}

func (r *haRun) track(s *haSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions = append(r.sessions, s)
}

func (r *haRun) add(s *haSession, token repository.Secret, phase int32) {
	r.b.remember(token)
	s.tokens = append(s.tokens, haToken{secret: token, phase: phase, at: time.Now()})
	s.resends = 0
	if phase == haAfter {
		s.audited = true
	}
}

// call runs op until it returns anything but a fault, and returns that, with the phase in which
// the last attempt began. It gives up after a minute of faults.
func (r *haRun) call(what string, op func(ctx context.Context) error) (phase int32, err error) {
	deadline := time.Now().Add(time.Minute)
	for faulted := false; ; faulted = true {
		phase = r.phase.Load()
		ctx, cancel := context.WithTimeout(r.b.ctx, 10*time.Second)
		err = op(ctx)
		cancel()
		if err == nil || !isFault(err) {
			return phase, err
		}
		if !faulted {
			r.faults.ops.Add(1)
		}
		r.faults.errors.Add(1)
		if time.Now().After(deadline) {
			return phase, fmt.Errorf("%s: still failing after a minute: %w", what, err)
		}
		time.Sleep(time.Duration(5+rand.IntN(10)) * time.Millisecond)
	}
}

// unexpected handles an answer the client did not expect: a refusal, or (refusal nil) a token
// minted where it expected a refusal or another token. With asynchronous replication, once the
// failover has begun, on a family the old primary acknowledged writes of, an invalid grant, an
// unknown family or such a token is how a lost write shows: the client gives up on the family,
// and the checks afterwards hold the answer to a write that is indeed missing. Anything else
// fails the test.
func (r *haRun) unexpected(s *haSession, what string, refusal error, minted *repository.RefreshToken) error {
	verdict := refusal == nil || errors.Is(refusal, repository.ErrInvalidGrant) || errors.Is(refusal, repository.ErrFamilyNotFound)
	if !r.synchronous && verdict && r.phase.Load() >= haFailingOver && s.acknowledgedByOldPrimary() {
		s.gaveUp = fmt.Sprintf("%s: %v", what, refusal)
		if minted != nil {
			r.b.remember(minted.Token)
			s.minted = &minted.Token
			s.gaveUp = what + ": a token it did not expect"
		}
		r.gaveUp.Add(1)
		return nil
	}
	if refusal == nil {
		return fmt.Errorf("%s: %s: a token it did not expect", s, what)
	}
	return fmt.Errorf("%s: %s: %w", s, what, refusal)
}

// worker is one client's loop: it keeps a few families, and works on them until the run stops.
func (r *haRun) worker() error {
	var own []*haSession
	for !r.stop.Load() {
		if len(own) < 4 {
			s, err := r.issue()
			if err != nil {
				return err
			}
			own = append(own, s)
			continue
		}
		i := rand.IntN(len(own))
		s := own[i]
		if !s.audited && r.phase.Load() == haAfter {
			if err := r.audit(s); err != nil {
				return err
			}
			if s.gaveUp != "" {
				own = append(own[:i], own[i+1:]...)
				continue
			}
		}
		var (
			err   error
			ended bool
		)
		switch n := rand.IntN(20); {
		case n < 3:
			var ns *haSession
			if ns, err = r.exchange(); ns != nil && len(own) < 8 {
				own = append(own, ns)
			}
		case n < 5:
			err = r.revoke(s)
			ended = true
		case n < 7 && len(s.tokens) >= 3:
			err = r.replay(s)
			ended = true
		case n < 10 && len(s.tokens) >= 2 && s.resends < 5 && time.Since(s.tokens[len(s.tokens)-1].at) < haResendAge:
			err = r.resend(s)
		default:
			err = r.rotate(s)
		}
		if err != nil {
			return err
		}
		if ended || s.gaveUp != "" {
			own = append(own[:i], own[i+1:]...)
		}
	}
	return nil
}

// issue starts a family. An attempt that met a fault may have created one the client never
// learns of; the next attempt makes another.
func (r *haRun) issue() (*haSession, error) {
	var tok *repository.RefreshToken
	phase, err := r.call("issue", func(ctx context.Context) (err error) {
		tok, err = r.store.Issue(ctx, repository.IssueRequest{ClientID: haClient, UserID: "user-ha", Scope: []string{"openid", "offline_access"}})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	s := &haSession{familyID: tok.FamilyID, origin: "issue"}
	r.add(s, tok.Token, phase)
	r.track(s)
	r.counts[phase].issues.Add(1)
	return s, nil
}

// audit is the first thing a client does with a family on the new primary: it looks its last
// token up, which must be there, live, whatever the replication (with asynchronous replication,
// unless it was lost).
func (r *haRun) audit(s *haSession) error {
	var info *repository.TokenInfo
	_, err := r.call("look the last token up", func(ctx context.Context) (err error) {
		info, err = r.store.Lookup(ctx, s.last().Reveal())
		return err
	})
	switch {
	case err == nil && info.ConsumedAt == nil && info.FamilyRevokedAt == nil:
		s.audited = true
		return nil
	case err == nil:
		return fmt.Errorf("%s: after the failover its last acknowledged token is consumed (%v) or its family revoked (%v)", s, info.ConsumedAt, info.FamilyRevokedAt)
	}
	return r.unexpected(s, "its last acknowledged token looked up after the failover", err, nil)
}

// rotate rotates the family's last token, presenting it again after every fault until the store
// answers. Whether the faulted attempt committed or not, the answer must be a token: the one it
// committed (a grace reuse) or a new one.
func (r *haRun) rotate(s *haSession) error {
	grace := new(atomic.Bool)
	var next *repository.RefreshToken
	faulted := false
	phase, err := r.call("rotate", func(ctx context.Context) (err error) {
		grace.Store(false)
		next, err = r.store.Rotate(context.WithValue(ctx, graceKey{}, grace), repository.RotateRequest{Token: s.last().Reveal(), ClientID: haClient})
		if isFault(err) && !faulted {
			faulted = true
			r.faults.rotations.Add(1)
		}
		return err
	})
	switch {
	case faulted && errors.Is(err, repository.ErrReplayDetected):
		return fmt.Errorf("%s: a client whose rotation met the failover presented its token again and was told it was a replay: %w", s, err)
	case err != nil:
		return r.unexpected(s, "rotation of its last token", err, nil)
	}
	r.add(s, next.Token, phase)
	r.counts[phase].rotations.Add(1)
	if faulted {
		r.faults.answered.Add(1)
		if grace.Load() {
			r.faults.byGrace.Add(1)
		}
	}
	return nil
}

// resend presents the parent of the family's last token again, as a client whose response was
// lost does: within the grace window it gets that same last token back.
func (r *haRun) resend(s *haSession) error {
	var got *repository.RefreshToken
	phase, err := r.call("resend", func(ctx context.Context) (err error) {
		got, err = r.store.Rotate(ctx, repository.RotateRequest{Token: s.tokens[len(s.tokens)-2].secret.Reveal(), ClientID: haClient})
		return err
	})
	switch {
	case err != nil:
		return r.unexpected(s, "resend of the previous token", err, nil)
	case got.Token.Reveal() != s.last().Reveal():
		return r.unexpected(s, "resend of the previous token", nil, got)
	}
	s.resends++
	if phase == haAfter {
		s.audited = true
	}
	r.counts[phase].resends.Add(1)
	return nil
}

// replay presents the token from two rotations back, as a thief does: a replay, which revokes
// the family. Presented again after a fault, it is still a replay (of a revoked family, if the
// faulted attempt committed).
func (r *haRun) replay(s *haSession) error {
	var got *repository.RefreshToken
	phase, err := r.call("replay", func(ctx context.Context) (err error) {
		got, err = r.store.Rotate(ctx, repository.RotateRequest{Token: s.tokens[len(s.tokens)-3].secret.Reveal(), ClientID: haClient})
		return err
	})
	if !errors.Is(err, repository.ErrReplayDetected) {
		return r.unexpected(s, "replay of the token from two rotations back", err, got)
	}
	s.revoked = &haRevocation{how: "replay", phase: phase}
	r.counts[phase].replays.Add(1)
	return nil
}

// revoke revokes the family, by its ID or by its token (RFC 7009), again after every fault:
// revoking a revoked family succeeds.
func (r *haRun) revoke(s *haSession) error {
	how := "RevokeFamily"
	if rand.IntN(2) == 0 {
		how = "RevokeToken"
	}
	phase, err := r.call(how, func(ctx context.Context) error {
		if how == "RevokeFamily" {
			return r.store.RevokeFamily(ctx, s.familyID, "signed_out")
		}
		return r.store.RevokeToken(ctx, s.last().Reveal(), haClient)
	})
	if err != nil {
		return r.unexpected(s, how, err, nil)
	}
	s.revoked = &haRevocation{how: how, phase: phase}
	r.counts[phase].revocations.Add(1)
	return nil
}

// exchange creates a code and exchanges it once. A fault during the exchange leaves its outcome
// unknown to the client, which does not present the code again: that would be a replay.
func (r *haRun) exchange() (*haSession, error) {
	verifier, challenge := haPKCE()
	var code *repository.AuthorizationCode
	codePhase, err := r.call("create code", func(ctx context.Context) (err error) {
		code, err = r.store.CreateCode(ctx, repository.CodeRequest{
			ClientID: haClient, UserID: "user-ha", RedirectURI: redirectURI, Scope: []string{"openid"},
			CodeChallenge: challenge, CodeChallengeMethod: repository.PKCEMethodS256,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create code: %w", err)
	}
	r.b.remember(code.Code)
	phase := r.phase.Load()
	ctx, cancel := context.WithTimeout(r.b.ctx, 10*time.Second)
	got, err := r.store.Exchange(ctx, repository.ExchangeRequest{Code: code.Code.Reveal(), ClientID: haClient, RedirectURI: redirectURI, CodeVerifier: verifier})
	cancel()
	switch {
	case err == nil:
	case isFault(err):
		r.faults.ops.Add(1)
		r.faults.errors.Add(1)
		r.faults.exchanges.Add(1)
		return nil, nil
	case !r.synchronous && codePhase != haAfter && phase >= haFailingOver && errors.Is(err, repository.ErrCodeNotFound):
		r.gaveUp.Add(1) // the code was lost with the old primary
		return nil, nil
	default:
		return nil, fmt.Errorf("exchange: %w", err)
	}
	s := &haSession{familyID: got.FamilyID, origin: "exchange"}
	r.add(s, got.Token, phase)
	r.track(s)
	r.counts[phase].exchanges.Add(1)
	return s, nil
}

func haPKCE() (verifier, challenge string) {
	b := make([]byte, 32)
	_, _ = crand.Read(b)
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// dropConn is a client connection that, once armed, reads the server's next reply to its end —
// the ReadyForQuery that follows the commit — and throws it away, as if the network had lost it.
type dropConn struct {
	net.Conn
	armed atomic.Bool
}

var errResponseDropped = errors.New("the test dropped the response")

func (c *dropConn) Read(p []byte) (int, error) {
	if !c.armed.Load() {
		return c.Conn.Read(p)
	}
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(c.Conn, hdr[:]); err != nil {
			return 0, err
		}
		if _, err := io.CopyN(io.Discard, c.Conn, int64(be.BigEndian.Uint32(hdr[1:]))-4); err != nil {
			return 0, err
		}
		if hdr[0] == 'Z' {
			_ = c.Conn.Close()
			return 0, errResponseDropped
		}
	}
}

// haDropped is a client whose rotation response the test drops just before the crash.
type haDropped struct {
	s     *haSession
	conn  *pgx.Conn
	drop  *dropConn
	store *repository.Store
}

// prepareDropped issues n families and rotates each once on a connection of its own to the
// primary, which prepares the rotating statement there, so that the next rotation is a single
// exchange of messages ending in the commit's ReadyForQuery.
func (r *haRun) prepareDropped(t *testing.T, primary *pgtemp.Cluster, n int) []*haDropped {
	t.Helper()
	var out []*haDropped
	for range n {
		cfg, err := pgx.ParseConfig(primary.ConnString("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		d := &haDropped{}
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			d.drop = &dropConn{Conn: c}
			return d.drop, nil
		}
		if d.conn, err = pgx.ConnectConfig(r.b.ctx, cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.conn.Close(context.Background()) })
		if d.store, err = repository.New(d.conn, r.config()); err != nil {
			t.Fatal(err)
		}
		tok, err := r.store.Issue(r.b.ctx, repository.IssueRequest{ClientID: haClient, UserID: "user-dropped"})
		if err != nil {
			t.Fatal(err)
		}
		d.s = &haSession{familyID: tok.FamilyID, origin: "dropped response"}
		r.add(d.s, tok.Token, haBefore)
		next, err := d.store.Rotate(r.b.ctx, repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: haClient})
		if err != nil {
			t.Fatal(err)
		}
		r.add(d.s, next.Token, haBefore)
		r.track(d.s)
		out = append(out, d)
	}
	return out
}

// dropResponse rotates the family's last token and drops the response: the rotation commits
// (and, with synchronous replication, is on the standby) but the client is told nothing.
func (d *haDropped) dropResponse(t *testing.T) {
	t.Helper()
	d.drop.armed.Store(true)
	_, err := d.store.Rotate(context.Background(), repository.RotateRequest{Token: d.s.last().Reveal(), ClientID: haClient})
	if !errors.Is(err, errResponseDropped) {
		t.Fatalf("%s: a rotation whose response the test drops: %v, want the dropped response", d.s, err)
	}
}

// resendDropped presents, on the new primary, the token whose rotation response was dropped: the
// client keeps its session. With synchronous replication the rotation is there, and the answer
// is the successor it committed.
func (r *haRun) resendDropped(t *testing.T, d *haDropped) (byGrace bool) {
	t.Helper()
	grace := new(atomic.Bool)
	var next *repository.RefreshToken
	phase, err := r.call("resend after a dropped response", func(ctx context.Context) (err error) {
		grace.Store(false)
		next, err = r.store.Rotate(context.WithValue(ctx, graceKey{}, grace), repository.RotateRequest{Token: d.s.last().Reveal(), ClientID: haClient})
		return err
	})
	if errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("%s: a client whose rotation response was lost presented its token again after the failover and was told it was a replay: %v", d.s, err)
	}
	if err != nil {
		if err := r.unexpected(d.s, "resend after a dropped response", err, nil); err != nil {
			t.Fatalf("a client whose rotation response was lost in the failover loses its session: %v", err)
		}
		return false
	}
	if r.synchronous && !grace.Load() {
		t.Fatalf("%s: the rotation whose response was dropped had committed, but presenting its token again on the new primary rotated it afresh", d.s)
	}
	r.add(d.s, next.Token, phase)
	return grace.Load()
}

// phaseQuota is what a phase of the run must acknowledge.
func (r *haRun) phaseQuota(q *quota, phase int32, when string) {
	c := &r.counts[phase]
	q.need("rotations acknowledged "+when, 150, c.rotations.Load)
	q.need("exchanges acknowledged "+when, 15, c.exchanges.Load)
	q.need("revocations acknowledged "+when, 8, c.revocations.Load)
	q.need("replays detected "+when, 8, c.replays.Load)
	q.need("resends answered with the same token "+when, 8, c.resends.Load)
}

// await waits until q is met, the run fails, or limit passes.
func (r *haRun) await(q quota, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for !q.met() {
		if r.failed() || time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// haLink relays the standby's replication connection to the primary, and can stall: from then on
// nothing the primary sends reaches the standby, as when the link to a standby lags behind.
type haLink struct {
	dir     string
	ln      net.Listener
	target  string // the primary's socket
	stalled atomic.Bool

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

// startLink listens on a unix socket in a directory of its own, which the server's OS user can
// reach, and relays every connection to target.
func startLink(t *testing.T, target string) *haLink {
	t.Helper()
	// In /tmp, not $TMPDIR: the server's OS user must reach it, and a socket's path is short.
	dir, err := os.MkdirTemp("/tmp", "ha-link")
	if err != nil {
		t.Fatal(err)
	}
	l := &haLink{dir: dir, target: target}
	t.Cleanup(func() {
		l.close()
		os.RemoveAll(dir)
	})
	sock := filepath.Join(dir, ".s.PGSQL.5432")
	if l.ln, err = net.Listen("unix", sock); err != nil {
		t.Fatal(err)
	}
	// The server may run as another OS user (pgtemp runs it as postgres under root).
	for _, p := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o755}, {sock, 0o777}} {
		if err := os.Chmod(p.path, p.mode); err != nil {
			t.Fatal(err)
		}
	}
	go l.accept()
	return l
}

func (l *haLink) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		p, err := net.Dial("unix", l.target)
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			p.Close()
			return
		}
		l.conns = append(l.conns, c, p)
		l.mu.Unlock()
		go io.Copy(p, c) //nolint:errcheck // ends when either side closes
		go l.relay(c, p)
	}
}

// relay copies what the primary sends to the standby until the link stalls; what it reads after
// that never arrives. It keeps reading, so that the primary's walsender never blocks on the link
// (a walsender blocked in a write holds up an immediate shutdown for seconds).
func (l *haLink) relay(to, from net.Conn) {
	defer to.Close()
	defer from.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !l.stalled.Load() {
			if _, err := to.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// connInfo is the standby's primary_conninfo through the link.
func (l *haLink) connInfo(name string) string {
	return fmt.Sprintf("host=%s port=5432 user=%s application_name=%s", l.dir, pgtemp.SuperUser, name)
}

func (l *haLink) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	if l.ln != nil {
		l.ln.Close()
	}
	for _, c := range l.conns {
		c.Close()
	}
}

// startHAPair starts a primary, whose commits wait for their WAL to be flushed, and a standby
// streaming from it: directly when synchronous, otherwise through a link the test can stall.
func startHAPair(t *testing.T, synchronous bool) (primary, standby *pgtemp.Cluster, link *haLink) {
	t.Helper()
	primary = startPrimary(t, "a failover test")
	opts := pgtemp.StandbyOptions{Name: "standby", Synchronous: synchronous}
	if !synchronous {
		link = startLink(t, primary.SocketPath())
		opts.Settings = map[string]string{"primary_conninfo": link.connInfo(opts.Name)}
	}
	return primary, startStandby(t, primary, opts), link
}

// startPrimary starts a cluster of the test's own from the server binaries, whose commits wait
// for their WAL to be flushed, to be the primary of a standby; it is stopped when the test ends.
// When the suite runs against another provider on a machine without the binaries, it skips the
// test and says why; what names the test in that message.
func startPrimary(t *testing.T, what string, extra ...map[string]string) *pgtemp.Cluster {
	t.Helper()
	settings := map[string]string{"synchronous_commit": "on", "max_connections": "50"}
	for _, e := range extra {
		maps.Copy(settings, e)
	}
	primary, err := pgtemp.Start(t.Context(), pgtemp.Options{Settings: settings})
	if errors.Is(err, pgtemp.ErrNoServerBinaries) && dbtest.Current().Provider != "binaries" {
		t.Skipf("%s needs two PostgreSQL clusters of its own, from the server binaries, besides the suite's %q server; "+
			"install the binaries to run it (make test-ha): %v", what, dbtest.Current().Provider, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := primary.Stop(); err != nil {
			t.Errorf("stop the primary: %v", err)
		}
	})
	return primary
}

// startStandby starts a standby of primary, stopped when the test ends.
func startStandby(t *testing.T, primary *pgtemp.Cluster, opts pgtemp.StandbyOptions) *pgtemp.Cluster {
	t.Helper()
	standby, err := primary.StartStandby(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := standby.Stop(); err != nil {
			t.Errorf("stop the standby: %v", err)
		}
	})
	return standby
}

// openHA opens the clients' pool, which follows the primary, migrates the schema through it, and
// starts the run's store on it.
func openHA(t *testing.T, primary, standby *pgtemp.Cluster, synchronous bool) *haRun {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtemp.MultiHostConnString("postgres", primary, standby) + " target_session_attrs=read-write connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	b := &bundle{ctx: ctx, pool: pool, logs: &syncBuffer{}, pepper: make([]byte, 32)}
	_, _ = crand.Read(b.pepper)
	t.Cleanup(func() { b.checkSecretHygiene(t) })
	r := newHARun(t, b, synchronous)
	b.store = r.store
	return r
}

func runFailover(t *testing.T, synchronous bool) {
	begun := time.Now()
	primary, standby, link := startHAPair(t, synchronous)
	started := time.Since(begun)
	r := openHA(t, primary, standby, synchronous)
	ctx := r.b.ctx
	dropped := r.prepareDropped(t, primary, 3)
	// A client that starts a rotation once the primary has crashed: its attempts fail until the
	// standby is promoted, so that there always is a rotation that met the failover.
	inFailover, err := r.issue()
	if err != nil {
		t.Fatal(err)
	}
	setup := time.Since(begun)

	var workers sync.WaitGroup
	for w := range haWorkers {
		workers.Go(func() {
			if err := r.worker(); err != nil {
				r.fail(fmt.Errorf("worker %d: %w", w, err))
			}
		})
	}
	// However the test ends, the clients stop before the servers do.
	defer workers.Wait()
	defer r.stop.Store(true)
	var q quota
	r.phaseQuota(&q, haBefore, "before the failover")
	start := time.Now()
	if !r.await(q, 2*time.Minute) {
		r.stop.Store(true)
		workers.Wait()
		r.report(t, 0, 0)
		q.check(t, "before the failover")
		t.Fatalf("the workload failed before the failover: %v", errors.Join(r.errs...))
	}
	before := time.Since(start)

	if link != nil {
		// The standby falls behind: what the primary acknowledges from now on never reaches it.
		link.stalled.Store(true)
		r.phase.Store(haStalled)
		var stalled quota
		stalled.need("rotations acknowledged with the standby's link stalled", 20, r.counts[haStalled].rotations.Load)
		if !r.await(stalled, time.Minute) {
			t.Fatalf("the workload failed with the standby's link stalled: %v", errors.Join(r.errs...))
		}
	}
	for _, d := range dropped {
		d.dropResponse(t)
	}
	crashed := time.Now()
	r.phase.Store(haFailingOver)
	if err := primary.Crash(); err != nil {
		t.Fatalf("crash the primary: %v", err)
	}
	if link != nil {
		link.close()
	}
	workers.Go(func() {
		if err := r.rotate(inFailover); err != nil {
			r.fail(fmt.Errorf("a rotation that began once the primary had crashed: %w", err))
		}
	})
	var faulted quota
	faulted.need("rotations that met the crash", 1, r.faults.rotations.Load)
	if !r.await(faulted, 30*time.Second) {
		t.Fatalf("no rotation met the crash: %v", errors.Join(r.errs...))
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatalf("promote the standby: %v", err)
	}
	r.phase.Store(haAfter)
	failover := time.Since(crashed)

	var droppedByGrace int
	for _, d := range dropped {
		if r.resendDropped(t, d) {
			droppedByGrace++
		}
	}
	if age := time.Since(crashed); age > 25*time.Second {
		t.Fatalf("the dropped responses were resent %v after their rotation, too close to the grace window (%v) to tell a grace reuse from a replay", age, repository.DefaultGraceWindow)
	}

	r.phaseQuota(&q, haAfter, "after the failover")
	start = time.Now()
	r.await(q, 2*time.Minute)
	after := time.Since(start)
	r.stop.Store(true)
	workers.Wait()
	if r.failed() {
		for _, err := range r.errs {
			t.Error(err)
		}
		t.FailNow()
	}

	checked := time.Now()
	loss := r.check(t)
	t.Logf("%s replication; %d workers; %v to start the clusters (%v) and migrate, %v to the quota before the failover, %v from the crash to the promoted standby, %v to the quota after it, %v to check",
		map[bool]string{true: "synchronous", false: "asynchronous"}[synchronous], haWorkers, setup.Round(time.Millisecond), started.Round(time.Millisecond),
		before.Round(time.Millisecond), failover.Round(time.Millisecond), after.Round(time.Millisecond), time.Since(checked).Round(time.Millisecond))
	r.report(t, len(dropped), droppedByGrace)
	t.Logf("lost acknowledged writes: %d (%s replication): %s; families a client gave up on: %d",
		loss.total(), map[bool]string{true: "synchronous", false: "asynchronous"}[synchronous], loss, r.gaveUp.Load())
	q.need("operations that met the crash", 1, r.faults.ops.Load)
	q.need("rotations that met the crash and presented their token again", 1, r.faults.rotations.Load)
	q.check(t, "failover")
}

// report logs what the workers were told, phase by phase, and the faults.
func (r *haRun) report(t *testing.T, dropped, droppedByGrace int) {
	t.Helper()
	phases := func(f func(c *haCounts) *atomic.Int64) string {
		n := make([]string, haPhases)
		for p := range haPhases {
			n[p] = strconv.FormatInt(f(&r.counts[p]).Load(), 10)
		}
		return strings.Join(n, "/")
	}
	t.Logf("acknowledged before the failover/with the standby's link stalled/during the failover/after it: rotations %s, exchanges %s, revocations %s, replays detected %s, resends %s, issues %s",
		phases(func(c *haCounts) *atomic.Int64 { return &c.rotations }),
		phases(func(c *haCounts) *atomic.Int64 { return &c.exchanges }),
		phases(func(c *haCounts) *atomic.Int64 { return &c.revocations }),
		phases(func(c *haCounts) *atomic.Int64 { return &c.replays }),
		phases(func(c *haCounts) *atomic.Int64 { return &c.resends }),
		phases(func(c *haCounts) *atomic.Int64 { return &c.issues }))
	f := &r.faults
	t.Logf("faulted: %d operations met the crash (%d failed attempts); %d rotations met it and presented their token again: %d got a token, %d of them by a grace reuse (the faulted attempt had committed); "+
		"%d exchanges met it (outcome unknown to the client); %d rotations whose response the test dropped before the crash, presented again after it: %d answered by a grace reuse",
		f.ops.Load(), f.errors.Load(), f.rotations.Load(), f.answered.Load(), f.byGrace.Load(),
		f.exchanges.Load(), dropped, droppedByGrace)
}

// haLoss counts acknowledged writes the new primary does not have.
type haLoss struct{ families, rotations, revocations int }

func (l haLoss) total() int { return l.families + l.rotations + l.revocations }

func (l haLoss) String() string {
	return fmt.Sprintf("%d families issued or exchanged, %d rotations, %d revocations", l.families, l.rotations, l.revocations)
}

// haFate is what survived of a session on the new primary.
type haFate struct {
	survivors          int // its tokens that are there: a prefix of them
	revocationSurvived bool
}

// check holds the new primary to what the workers were told, and counts what it lost.
func (r *haRun) check(t *testing.T) haLoss {
	t.Helper()
	ctx, cancel := context.WithTimeout(r.b.ctx, 2*time.Minute)
	defer cancel()
	// Connections to the old primary may still sit idle in the pool; let it find them dead now.
	for _, c := range r.b.pool.AcquireAllIdle(ctx) {
		if err := c.Ping(ctx); err != nil {
			_ = c.Conn().Close(ctx)
		}
		c.Release()
	}

	var loss haLoss
	fates := make(map[*haSession]haFate, len(r.sessions))
	for _, s := range r.sessions {
		fates[s] = r.fate(t, ctx, s, &loss)
	}

	// I1 over every family, including those of faulted calls no client knows of: each live family
	// holds exactly one live token (none would mean a consumed token without its successor, I2).
	st, err := r.store.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.RefreshTokens.Live != st.Families.Live {
		t.Errorf("I1: %d live refresh tokens in %d live families", st.RefreshTokens.Live, st.Families.Live)
	}

	// Every family the clients know, as it survived: a revoked one refuses its tokens, a live one
	// rotates its last token exactly once and detects the replay of an older one.
	work := make(chan *haSession)
	var wg sync.WaitGroup
	for range haWorkers {
		wg.Go(func() {
			for s := range work {
				fate := fates[s]
				switch {
				case fate.survivors == 0:
				case fate.revocationSurvived:
					r.checkRevoked(t, ctx, s, fate)
				default:
					live := s.tokens[fate.survivors-1].secret
					if s.minted != nil {
						live = *s.minted
					}
					r.checkLive(t, ctx, s, live)
				}
			}
		})
	}
	for _, s := range r.sessions {
		work <- s
	}
	close(work)
	wg.Wait()
	return loss
}

// fate looks up every token and the revocation acknowledged for s, and counts what is missing.
// Missing is an error with synchronous replication, and for anything acknowledged after the
// failover; and what survived of a family is a prefix of what was acknowledged.
func (r *haRun) fate(t *testing.T, ctx context.Context, s *haSession, loss *haLoss) haFate {
	var fate haFate
	missing := -1
	for i, tok := range s.tokens {
		_, err := r.store.Lookup(ctx, tok.secret.Reveal())
		switch {
		case err != nil && !errors.Is(err, repository.ErrTokenNotFound):
			t.Fatalf("%s: look up token %d: %v", s, i, err)
		case err == nil && missing >= 0:
			t.Errorf("%s: token %d survived the failover but token %d, acknowledged before it, did not", s, i, missing)
		case err == nil && tok.phase == haStalled:
			t.Errorf("%s: token %d, acknowledged with the standby's link stalled, is on the new primary: the test's stall did not hold", s, i)
		case err == nil:
			fate.survivors = i + 1
		case r.synchronous || tok.phase == haAfter:
			t.Errorf("%s: token %d, acknowledged (phase %d), is not on the new primary", s, i, tok.phase)
		default:
			if missing < 0 {
				missing = i
			}
			if i == 0 {
				loss.families++
			} else {
				loss.rotations++
			}
		}
	}
	revocationLost := false
	if s.revoked != nil {
		f, err := r.store.Family(ctx, s.familyID)
		switch {
		case err != nil && !errors.Is(err, repository.ErrFamilyNotFound):
			t.Fatalf("%s: %v", s, err)
		case err == nil && f.RevokedAt != nil && s.revoked.phase == haStalled:
			t.Errorf("%s: its revocation, acknowledged with the standby's link stalled, is on the new primary: the test's stall did not hold", s)
		case err == nil && f.RevokedAt != nil:
			fate.revocationSurvived = true
		case r.synchronous || s.revoked.phase == haAfter:
			t.Errorf("%s: its revocation (%s, phase %d) was acknowledged but the family is not revoked on the new primary", s, s.revoked.how, s.revoked.phase)
		default:
			revocationLost = true
			loss.revocations++
		}
	}
	if s.gaveUp != "" && missing < 0 && !revocationLost {
		t.Errorf("%s: its client gave up on it after the failover (%s), but every write acknowledged for it is there", s, s.gaveUp)
	}
	return fate
}

// checkRevoked: the last token of a revoked family is refused, and an older one is a replay.
func (r *haRun) checkRevoked(t *testing.T, ctx context.Context, s *haSession, fate haFate) {
	last := s.tokens[fate.survivors-1].secret
	if _, err := r.store.Rotate(ctx, repository.RotateRequest{Token: last.Reveal(), ClientID: haClient}); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Errorf("%s, revoked (%s): its last token: %v, want ErrFamilyRevoked", s, s.revoked.how, err)
	}
	if fate.survivors >= 2 {
		older := s.tokens[fate.survivors-2].secret
		if _, err := r.store.Rotate(ctx, repository.RotateRequest{Token: older.Reveal(), ClientID: haClient}); !errors.Is(err, repository.ErrReplayDetected) {
			t.Errorf("%s, revoked (%s): a consumed token: %v, want ErrReplayDetected", s, s.revoked.how, err)
		}
	}
}

// checkLive: the family's live token rotates exactly once — presented again, it gets the same
// successor back (the grace window), never a second live token — and then, two rotations back,
// it is a replay that revokes the family.
func (r *haRun) checkLive(t *testing.T, ctx context.Context, s *haSession, live repository.Secret) {
	rotate := func(tok repository.Secret) (*repository.RefreshToken, error) {
		next, err := r.store.Rotate(ctx, repository.RotateRequest{Token: tok.Reveal(), ClientID: haClient})
		if err == nil {
			r.b.remember(next.Token)
		}
		return next, err
	}
	if _, err := r.store.Peek(ctx, live.Reveal(), haClient); err != nil {
		t.Errorf("%s: its last acknowledged token is not the family's live token on the new primary: %v", s, err)
		return
	}
	a, err := rotate(live)
	if err != nil {
		t.Errorf("%s: its last acknowledged token does not rotate on the new primary: %v", s, err)
		return
	}
	again, err := rotate(live)
	if err != nil || again.Token.Reveal() != a.Token.Reveal() {
		t.Errorf("%s: its last token presented a second time: %v, want the same successor back (one live token)", s, err)
		return
	}
	c, err := rotate(a.Token)
	if err != nil {
		t.Errorf("%s: the successor does not rotate: %v", s, err)
		return
	}
	if _, err := rotate(live); !errors.Is(err, repository.ErrReplayDetected) {
		t.Errorf("%s: a token from two rotations back: %v, want ErrReplayDetected", s, err)
		return
	}
	if f, err := r.store.Family(ctx, s.familyID); err != nil || f.RevokedAt == nil || f.RevokedReason != repository.ReasonReplayDetected {
		t.Errorf("%s: after the replay: %+v, %v; want the family revoked for the replay", s, f, err)
	}
	if _, err := rotate(c.Token); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Errorf("%s: the live token after the replay: %v, want ErrFamilyRevoked", s, err)
	}
}
