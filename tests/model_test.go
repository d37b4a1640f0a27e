package tests

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"pgregory.net/rapid"

	"github.com/oauthstore/oauthstore/repository"
)

// The model test runs random sequences of operations against the real store and against a small
// in-memory reference model of what each operation must do, and compares them after every step:
// which calls succeed, which error each refused call returns, which families are revoked and
// why, how many tokens each family holds. After every step it also checks the invariants in SQL.
//
// Two stores share the database: one strict, one with a grace window, so that the same family can
// meet both policies. The test clock drives every expiry. A rotation may also run in a caller's
// transaction (Store.WithDB) on a pool of two connections, one of which another request holds,
// that commits or rolls back: a rollback undoes everything the rotation did except a replay's
// revocation (I7).
//
// Reproduce a failure with the -rapid.seed or -rapid.failfile the output names; -rapid.steps sets
// the average sequence length (default here 45), -rapid.checks the number of sequences (default
// here 300, about 10-20 s), -rapid.shrinktime how long a failure is minimised (30 s).

const (
	modelTTL         = time.Hour
	modelGraceWindow = 30 * time.Second
	modelGraceReuses = 2
	modelRedirect    = "https://app.example/callback"
	modelKeyA        = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	modelKeyB        = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

	reasonModelRevoke = "model-revoke"
	reasonLogoutAll   = "logout-everywhere"
)

var (
	modelClients = []string{"client-a", "client-b"}
	modelUsers   = []string{"u1", "u2", "u3"}
	modelStart   = time.Date(2030, 1, 1, 23, 0, 0, 0, time.UTC) // expiries cross midnight UTC
)

type mToken struct {
	n          int // index in the family
	secret     string
	parent     int // index of the parent, -1 for the first
	created    time.Time
	expires    time.Time
	consumed   bool
	consumedAt time.Time
	graceUses  int
	scope      string
	// sealed: a rotation by a store with a grace window made it, and kept a copy of it sealed for
	// its parent's holder, who gets this same token back on a grace reuse.
	sealed bool
}

type mFamily struct {
	n         int
	id        string
	client    string
	user      string
	key       string    // sender thumbprint, "" when unbound
	granted   string    // the granted scope, space-separated
	expires   time.Time // the absolute end; zero when none
	tokens    []*mToken
	rotations int
	revoked   bool
	reason    string
	// tokensAtRevoke is how many tokens the family held when the model revoked it; none may be
	// added after that step.
	tokensAtRevoke int
	revokedStep    int
	deleted        bool
	code           *mCode // the code that produced it, if any
}

func (f *mFamily) String() string {
	s := fmt.Sprintf("F%d(%s/%s", f.n, f.client, f.user)
	if f.key != "" {
		s += ",bound"
	}
	if !f.expires.IsZero() {
		s += ",lifetime"
	}
	return s + ")"
}

func (f *mFamily) live() *mToken {
	var live *mToken
	for _, t := range f.tokens {
		if !t.consumed {
			live = t
		}
	}
	return live
}

func (f *mFamily) latest() *mToken { return f.tokens[len(f.tokens)-1] }

// idleExpires is the expiry of the family's newest token (the family's idle_expires_at), sooner
// or later than the ones before it.
func (f *mFamily) idleExpires() time.Time { return f.latest().expires }

func (f *mFamily) liveCount() int {
	n := 0
	for _, t := range f.tokens {
		if !t.consumed {
			n++
		}
	}
	return n
}

type mCode struct {
	n        int
	secret   string
	verifier string
	client   string
	user     string
	key      string // DPoP key the code is bound to
	expires  time.Time
	consumed bool
	family   *mFamily
	deleted  bool
}

type modelRun struct {
	rt     *rapid.T
	b      *bundle
	strict *repository.Store
	grace  *repository.Store
	fams   []*mFamily
	codes  []*mCode
	step   int
	steps  *atomic.Int64
	stats  *outcomeStats
	// txPool is a pool of two connections, one of which another request holds for the whole
	// run; txStores are the strict and grace stores on it, for calls in a caller's transaction.
	txPool   *pgxpool.Pool
	txStores map[string]*repository.Store
}

// outcomeStats counts the outcomes of the steps, to show what the sequences exercised.
type outcomeStats struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *outcomeStats) add(kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[kind]++
}

func (s *outcomeStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := slices.Sorted(maps.Keys(s.n))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, s.n[k])
	}
	return strings.Join(parts, ", ")
}

func (m *modelRun) now() time.Time { return m.b.clock.Now() }

func (m *modelRun) store(grace bool) (*repository.Store, string) {
	if grace {
		return m.grace, "grace"
	}
	return m.strict, "strict"
}

// How a call reaches the store.
type via int

const (
	viaPool via = iota
	viaTxCommit
	viaTxRollback
)

// drawVia draws how a call reaches the store: mostly on the pool, sometimes in a caller's
// transaction that then commits or rolls back.
func (m *modelRun) drawVia() via {
	switch rapid.IntRange(0, 7).Draw(m.rt, "via (0-5 the pool, 6 a transaction that commits, 7 one that rolls back)") {
	case 6:
		return viaTxCommit
	case 7:
		return viaTxRollback
	}
	return viaPool
}

// inTx runs call on store, or in a caller's transaction on the nearly exhausted pool which then
// commits or rolls back as v says.
func (m *modelRun) inTx(v via, store *repository.Store, call func(*repository.Store) error) error {
	if v == viaPool {
		return call(store)
	}
	tx, err := m.txPool.Begin(m.b.ctx)
	if err != nil {
		m.rt.Fatalf("begin the caller's transaction: %v", err)
	}
	callErr := call(store.WithDB(tx))
	if v == viaTxCommit {
		err = tx.Commit(m.b.ctx)
	} else {
		err = tx.Rollback(m.b.ctx)
	}
	if err != nil {
		m.rt.Fatalf("end the caller's transaction: %v", err)
	}
	return callErr
}

// outcome compares a real call's error with the model's expectation and logs the step.
func (m *modelRun) outcome(label string, got, want error) {
	m.rt.Helper()
	m.step++
	m.steps.Add(1)
	m.rt.Logf("#%d %s → %s", m.step, label, errName(got))
	m.stats.add(strings.SplitN(label, " ", 2)[0] + " " + errName(got))
	switch {
	case want == nil && got != nil:
		m.rt.Fatalf("#%d %s: got %v, the model expects success", m.step, label, got)
	case want != nil && got == nil:
		m.rt.Fatalf("#%d %s: succeeded, the model expects %s", m.step, label, errName(want))
	case want != nil && !errors.Is(got, want):
		m.rt.Fatalf("#%d %s: got %v (%s), the model expects %s", m.step, label, got, errName(got), errName(want))
	}
}

var modelErrNames = []struct {
	err  error
	name string
}{
	{repository.ErrReplayDetected, "ErrReplayDetected"},
	{repository.ErrCodeReplayDetected, "ErrCodeReplayDetected"},
	{repository.ErrTokenNotFound, "ErrTokenNotFound"},
	{repository.ErrWrongClient, "ErrWrongClient"},
	{repository.ErrTokenExpired, "ErrTokenExpired"},
	{repository.ErrTokenConsumed, "ErrTokenConsumed"},
	{repository.ErrSenderMismatch, "ErrSenderMismatch"},
	{repository.ErrFamilyRevoked, "ErrFamilyRevoked"},
	{repository.ErrCodeNotFound, "ErrCodeNotFound"},
	{repository.ErrCodeExpired, "ErrCodeExpired"},
	{repository.ErrRedirectMismatch, "ErrRedirectMismatch"},
	{repository.ErrPKCEMismatch, "ErrPKCEMismatch"},
	{repository.ErrFamilyNotFound, "ErrFamilyNotFound"},
	{repository.ErrInvalidScope, "ErrInvalidScope"},
	{repository.ErrInvalidInput, "ErrInvalidInput"},
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	for _, e := range modelErrNames {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	return "unexpected error: " + err.Error()
}

func (m *modelRun) revoke(f *mFamily, reason string) {
	if f.revoked {
		return
	}
	f.revoked, f.reason, f.tokensAtRevoke, f.revokedStep = true, reason, len(f.tokens), m.step
}

// tokenExpiry is when a token minted now with the requested TTL (zero: the store's) expires: never
// after its family's end.
func (m *modelRun) tokenExpiry(f *mFamily, ttl time.Duration) time.Time {
	if ttl == 0 {
		ttl = modelTTL
	}
	e := m.now().Add(ttl)
	if !f.expires.IsZero() && f.expires.Before(e) {
		e = f.expires
	}
	return e
}

func (m *modelRun) addToken(f *mFamily, secret string, parent int, ttl time.Duration, scope string) *mToken {
	t := &mToken{n: len(f.tokens), secret: secret, parent: parent, created: m.now(), expires: m.tokenExpiry(f, ttl), scope: scope}
	if f.revoked {
		m.rt.Fatalf("#%d model error: a token added to %v, revoked at step #%d", m.step, f, f.revokedStep)
	}
	f.tokens = append(f.tokens, t)
	return t
}

// checkToken compares a returned refresh token with what the model expects of it.
func (m *modelRun) checkToken(label string, got *repository.RefreshToken, f *mFamily, ttl time.Duration, scope string) {
	m.rt.Helper()
	want := m.tokenExpiry(f, ttl)
	famEnd := got.FamilyExpiresAt != nil && f.expires.Equal(*got.FamilyExpiresAt) || got.FamilyExpiresAt == nil && f.expires.IsZero()
	if got.FamilyID != f.id || got.ClientID != f.client || got.UserID != f.user || !got.ExpiresAt.Equal(want) ||
		strings.Join(got.Scope, " ") != scope || !famEnd || got.Token.IsZero() {
		m.rt.Fatalf("#%d %s: returned %+v (expires %v, family ends %v), want family %s of %s/%s, scope %q, expiring %v (family ends %v)",
			m.step, label, got.Grant, got.ExpiresAt, got.FamilyExpiresAt, f.id, f.client, f.user, scope, want, f.expires)
	}
}

// drawTTL draws a requested idle lifetime: mostly the store's, sometimes a short one that the
// clock steps can reach exactly.
func drawTTL(rt *rapid.T, label string) time.Duration {
	return [...]time.Duration{0, 0, 0, 0, 10 * time.Second, 45 * time.Second}[rapid.IntRange(0, 5).Draw(rt, label+" (0-3 default, 4 10s, 5 45s)")]
}

// drawLifetime draws a family's absolute lifetime: mostly none.
func drawLifetime(rt *rapid.T) time.Duration {
	return [...]time.Duration{0, 0, 0, 2 * time.Minute}[rapid.IntRange(0, 3).Draw(rt, "lifetime (3: 2m)")]
}

// --- actions -----------------------------------------------------------------------------------

func (m *modelRun) issue(rt *rapid.T) {
	client := rapid.SampledFrom(modelClients).Draw(rt, "client")
	user := rapid.SampledFrom(modelUsers).Draw(rt, "user")
	key := rapid.SampledFrom([]string{"", "", modelKeyA}).Draw(rt, "key")
	ttl := drawTTL(rt, "ttl")
	lifetime := drawLifetime(rt)
	got, err := m.strict.Issue(m.b.ctx, repository.IssueRequest{
		ClientID: client, UserID: user, Scope: []string{"openid", "offline_access"}, SenderThumbprint: key,
		TTL: ttl, Lifetime: lifetime,
	})
	f := &mFamily{n: len(m.fams), client: client, user: user, key: key, granted: "openid offline_access"}
	if lifetime != 0 {
		f.expires = m.now().Add(lifetime)
	}
	label := fmt.Sprintf("issue %v", f)
	if ttl != 0 {
		label += fmt.Sprintf(" ttl %v", ttl)
	}
	m.outcome(label, err, nil)
	f.id = got.FamilyID
	m.checkToken("issue", got, f, ttl, f.granted)
	m.addToken(f, got.Token.Reveal(), -1, ttl, f.granted)
	m.fams = append(m.fams, f)
}

// pickFamily draws a family. With preferLive it draws, four times in five, among the families
// that are neither revoked nor cleaned up, so that most sequences keep a family going.
func (m *modelRun) pickFamily(rt *rapid.T, preferLive bool, ok func(*mFamily) bool) *mFamily {
	var cands, live []*mFamily
	for _, f := range m.fams {
		if ok == nil || ok(f) {
			cands = append(cands, f)
			if !f.revoked && !f.deleted {
				live = append(live, f)
			}
		}
	}
	if len(cands) == 0 {
		rt.Skip("no family to act on")
	}
	if preferLive && len(live) > 0 && rapid.IntRange(0, 4).Draw(rt, "any family (4) or a live one") != 4 {
		cands = live
	}
	return cands[rapid.IntRange(0, len(cands)-1).Draw(rt, "family")]
}

// predictRotate is the reference: what Rotate must return, and what it must change.
type rotation int

const (
	rotRefused rotation = iota
	rotSuccess
	rotGraceReuse
	rotReplayRevokes
)

func (m *modelRun) predictRotate(f *mFamily, t *mToken, client, key string, grace bool, scope []string) (rotation, error) {
	now := m.now()
	wider := false
	for _, s := range scope {
		wider = wider || !slices.Contains(strings.Fields(f.granted), s)
	}
	switch {
	case f.deleted:
		return rotRefused, repository.ErrTokenNotFound
	case client != f.client:
		return rotRefused, repository.ErrWrongClient
	case f.key != "" && key != f.key:
		return rotRefused, repository.ErrSenderMismatch
	case t.consumed:
		// A grace reuse needs the parent within the window and within its own lifetime.
		if grace && !f.revoked && t.graceUses < modelGraceReuses && now.Before(t.consumedAt.Add(modelGraceWindow)) &&
			now.Before(t.expires) {
			if live := f.live(); live != nil && live.parent == t.n && now.Before(live.expires) {
				if wider {
					return rotRefused, repository.ErrInvalidScope
				}
				return rotGraceReuse, nil
			}
		}
		if f.revoked {
			return rotRefused, repository.ErrReplayDetected
		}
		return rotReplayRevokes, repository.ErrReplayDetected
	case f.revoked:
		return rotRefused, repository.ErrFamilyRevoked
	case !now.Before(t.expires):
		return rotRefused, repository.ErrTokenExpired
	case wider:
		return rotRefused, repository.ErrInvalidScope
	}
	return rotSuccess, nil
}

func (m *modelRun) rotate(f *mFamily, t *mToken, client, key string, grace bool, what string) {
	store, storeName := m.store(grace)
	if m.txStores != nil {
		store = m.txStores[storeName]
	}
	v := m.drawVia()
	ttl := drawTTL(m.rt, "rotation ttl")
	scope := [...][]string{nil, nil, nil, nil, {"openid"}, {"openid", "admin"}}[rapid.IntRange(0, 5).Draw(m.rt, "scope (0-3 granted, 4 narrower, 5 wider)")]
	kind, want := m.predictRotate(f, t, client, key, grace, scope)
	label := fmt.Sprintf("rotate %v t%d (%s) by %s", f, t.n, what, client)
	if key != f.key {
		label += fmt.Sprintf(" with key %q", keyName(key))
	}
	if ttl != 0 {
		label += fmt.Sprintf(" ttl %v", ttl)
	}
	if scope != nil {
		label += fmt.Sprintf(" scope %q", strings.Join(scope, " "))
	}
	label += " via " + storeName + " store"
	label += [...]string{"", " in a caller's transaction that commits", " in a caller's transaction that rolls back"}[v]
	var got *repository.RefreshToken
	err := m.inTx(v, store, func(s *repository.Store) (err error) {
		got, err = s.Rotate(m.b.ctx, repository.RotateRequest{Token: t.secret, ClientID: client, SenderThumbprint: key, TTL: ttl, Scope: scope})
		return err
	})
	m.outcome(label, err, want)
	now := m.now()
	successorScope := f.granted
	if scope != nil {
		successorScope = strings.Join(scope, " ")
	}
	if v != viaPool && kind == rotReplayRevokes {
		m.stats.add([...]string{"", "replay revoked in a transaction that committed", "replay revoked in a transaction that rolled back"}[v])
	}
	if v == viaTxRollback && (kind == rotSuccess || kind == rotGraceReuse) {
		// The rollback undid the rotation: a new token handed out never existed, and a grace
		// reuse was not counted.
		if live := f.live(); kind == rotGraceReuse && live.sealed {
			if got.Token.Reveal() != live.secret {
				m.rt.Fatalf("#%d %s: a grace reuse returned another token than the live t%d", m.step, label, live.n)
			}
		} else {
			m.checkToken(label, got, f, ttl, successorScope)
		}
		m.stats.add("rotate ok, rolled back")
		return
	}
	switch kind {
	case rotSuccess:
		m.checkToken(label, got, f, ttl, successorScope)
		t.consumed, t.consumedAt = true, now
		m.addToken(f, got.Token.Reveal(), t.n, ttl, successorScope).sealed = grace
		f.rotations++
	case rotGraceReuse:
		live := f.live()
		t.graceUses++
		if live.sealed {
			// The same live token, as it was handed out.
			m.stats.add("rotate ok (grace reuse, the same token)")
			if got.Token.Reveal() != live.secret || !got.ExpiresAt.Equal(live.expires) || strings.Join(got.Scope, " ") != live.scope ||
				got.FamilyID != f.id {
				m.rt.Fatalf("#%d %s: a grace reuse returned %+v expiring %v, want the live token t%d (scope %q, expiring %v) again",
					m.step, label, got.Grant, got.ExpiresAt, live.n, live.scope, live.expires)
			}
			break
		}
		// A live token made without a sealed copy (by a strict store) is replaced.
		m.stats.add("rotate ok (grace reuse, replaced)")
		m.checkToken(label, got, f, ttl, successorScope)
		live.consumed, live.consumedAt = true, now
		m.addToken(f, got.Token.Reveal(), t.n, ttl, successorScope).sealed = grace
		f.rotations++
	case rotReplayRevokes:
		m.revoke(f, repository.ReasonReplayDetected)
	}
}

func keyName(k string) string {
	switch k {
	case "":
		return "none"
	case modelKeyA:
		return "A"
	case modelKeyB:
		return "B"
	}
	return k
}

// rotateLatest: the family's client presents the latest token it received.
func (m *modelRun) rotateLatest(grace bool) func(*rapid.T) {
	return func(rt *rapid.T) {
		f := m.pickFamily(rt, true, nil)
		m.rotate(f, f.latest(), f.client, f.key, grace, "latest")
	}
}

// rotateParent: the response to the latest rotation was lost, and the client presents the token
// it holds, the parent of the latest one.
func (m *modelRun) rotateParent(grace bool) func(*rapid.T) {
	return func(rt *rapid.T) {
		f := m.pickFamily(rt, true, func(f *mFamily) bool { return f.latest().parent >= 0 })
		m.rotate(f, f.tokens[f.latest().parent], f.client, f.key, grace, "parent of latest")
	}
}

// rotateOlder: the client (or a thief) presents an older token of the family, consumed or not.
func (m *modelRun) rotateOlder(rt *rapid.T) {
	f := m.pickFamily(rt, true, func(f *mFamily) bool { return len(f.tokens) > 1 })
	t := f.tokens[rapid.IntRange(0, len(f.tokens)-2).Draw(rt, "older token")]
	m.rotate(f, t, f.client, f.key, rapid.Bool().Draw(rt, "grace store"), "older")
}

// rotateForeign: a token presented by the wrong client or with the wrong sender key.
func (m *modelRun) rotateForeign(rt *rapid.T) {
	f := m.pickFamily(rt, true, nil)
	t := f.tokens[rapid.IntRange(0, len(f.tokens)-1).Draw(rt, "token")]
	grace := rapid.Bool().Draw(rt, "grace store")
	if rapid.Bool().Draw(rt, "wrong key (else wrong client)") {
		key := rapid.SampledFrom([]string{"", modelKeyB}).Draw(rt, "presented key")
		if f.key == "" {
			key = modelKeyB // an unbound family accepts any key
		}
		m.rotate(f, t, f.client, key, grace, "another key")
		return
	}
	other := modelClients[0]
	if other == f.client {
		other = modelClients[1]
	}
	m.rotate(f, t, other, f.key, grace, "wrong client")
}

func (m *modelRun) revokeAction(rt *rapid.T) {
	switch rapid.IntRange(0, 2).Draw(rt, "revoke: 0 family, 1 token, 2 user") {
	case 0:
		m.revokeFamily(rt)
	case 1:
		m.revokeToken(rt)
	default:
		m.revokeUser(rt)
	}
}

func (m *modelRun) revokeFamily(rt *rapid.T) {
	f := m.pickFamily(rt, true, nil)
	err := m.strict.RevokeFamily(m.b.ctx, f.id, reasonModelRevoke)
	var want error
	if f.deleted {
		want = repository.ErrFamilyNotFound
	}
	m.outcome(fmt.Sprintf("revoke family %v", f), err, want)
	if !f.deleted {
		m.revoke(f, reasonModelRevoke)
	}
}

func (m *modelRun) revokeToken(rt *rapid.T) {
	f := m.pickFamily(rt, true, nil)
	t := f.tokens[rapid.IntRange(0, len(f.tokens)-1).Draw(rt, "token")]
	client := f.client
	if rapid.IntRange(0, 3).Draw(rt, "wrong client (3)") == 3 {
		client = modelClients[0]
		if client == f.client {
			client = modelClients[1]
		}
	}
	err := m.grace.RevokeToken(m.b.ctx, t.secret, client)
	var want error
	switch {
	case f.deleted:
		want = repository.ErrTokenNotFound
	case client != f.client:
		want = repository.ErrWrongClient
	}
	m.outcome(fmt.Sprintf("revoke token %v t%d by %s", f, t.n, client), err, want)
	if want == nil {
		m.revoke(f, repository.ReasonTokenRevoked)
	}
}

func (m *modelRun) revokeUser(rt *rapid.T) {
	user := rapid.SampledFrom(modelUsers).Draw(rt, "user")
	var want []*mFamily
	for _, f := range m.fams {
		if !f.deleted && !f.revoked && f.user == user {
			want = append(want, f)
		}
	}
	r, err := m.strict.RevokeFamilies(m.b.ctx, repository.FamilyFilter{UserID: user}, reasonLogoutAll)
	n := r.Families
	label := fmt.Sprintf("revoke every family of %s", user)
	m.outcome(label, err, nil)
	if n != int64(len(want)) {
		m.rt.Fatalf("#%d %s: revoked %d families, the model expects %d", m.step, label, n, len(want))
	}
	for _, f := range want {
		m.revoke(f, reasonLogoutAll)
	}
	// It also ends the user's codes that could still be exchanged.
	for _, c := range m.codes {
		if c.user == user && !c.consumed && !c.deleted && m.now().Before(c.expires) {
			c.deleted = true
		}
	}
}

func (m *modelRun) advanceClock(rt *rapid.T) {
	d := rapid.SampledFrom([]time.Duration{time.Second, 10 * time.Second, 29 * time.Second, 31 * time.Second,
		59 * time.Second, 5 * time.Minute, 30 * time.Minute, 61 * time.Minute}).Draw(rt, "advance")
	m.b.clock.Advance(d)
	m.step++
	m.steps.Add(1)
	m.stats.add("clock +" + d.String())
	rt.Logf("#%d clock +%v (now %s)", m.step, d, m.now().Sub(modelStart))
}

func (m *modelRun) cleanup(rt *rapid.T) {
	now := m.now()
	var wantFamilies, wantTokens, wantCodes int64
	for _, f := range m.fams {
		if !f.deleted && f.idleExpires().Before(now) {
			wantFamilies++
			wantTokens += int64(len(f.tokens))
		}
	}
	for _, c := range m.codes {
		if !c.deleted && !c.consumed && c.expires.Before(now) {
			wantCodes++
		}
	}
	batch := rapid.SampledFrom([]int{0, 1, 3}).Draw(rt, "batch size")
	res, err := m.strict.Cleanup(m.b.ctx, repository.CleanupOptions{BatchSize: batch})
	label := fmt.Sprintf("cleanup (batch %d)", batch)
	m.outcome(label, err, nil)
	if res.Families != wantFamilies || res.RefreshTokens != wantTokens || res.AuthorizationCodes != wantCodes {
		m.rt.Fatalf("#%d %s: deleted %d families, %d tokens, %d codes; the model expects %d, %d, %d",
			m.step, label, res.Families, res.RefreshTokens, res.AuthorizationCodes, wantFamilies, wantTokens, wantCodes)
	}
	for _, f := range m.fams {
		if !f.deleted && f.idleExpires().Before(now) {
			f.deleted = true
			if f.code != nil {
				f.code.deleted = true // the exchanged code goes with its family
			}
		}
	}
	for _, c := range m.codes {
		if !c.consumed && c.expires.Before(now) {
			c.deleted = true
		}
	}
}

func (m *modelRun) createCode(rt *rapid.T) {
	client := rapid.SampledFrom(modelClients).Draw(rt, "client")
	user := rapid.SampledFrom(modelUsers).Draw(rt, "user")
	key := rapid.SampledFrom([]string{"", "", modelKeyA}).Draw(rt, "DPoP key of the code")
	c := &mCode{n: len(m.codes), client: client, user: user, key: key}
	sum := sha256.Sum256([]byte(fmt.Sprintf("verifier-%d-%d", c.n, m.now().UnixNano())))
	c.verifier = base64.RawURLEncoding.EncodeToString(sum[:]) + "-verifier"
	challenge := sha256.Sum256([]byte(c.verifier))
	got, err := m.strict.CreateCode(m.b.ctx, repository.CodeRequest{
		ClientID: client, UserID: user, RedirectURI: modelRedirect, Scope: []string{"openid"},
		CodeChallenge: base64.RawURLEncoding.EncodeToString(challenge[:]), CodeChallengeMethod: repository.PKCEMethodS256,
		DPoPJKT: key,
	})
	label := fmt.Sprintf("create code C%d for %s/%s", c.n, client, user)
	if key != "" {
		label += " bound to key A"
	}
	m.outcome(label, err, nil)
	c.secret = got.Code.Reveal()
	c.expires = m.now().Add(repository.DefaultCodeTTL)
	if !got.ExpiresAt.Equal(c.expires) {
		m.rt.Fatalf("#%d code expires %v, want %v", m.step, got.ExpiresAt, c.expires)
	}
	m.codes = append(m.codes, c)
}

// exchangeAction presents a code: mostly one that can still be exchanged, with the right
// parameters; sometimes any code (a replay, an expired or cleaned-up one), or a wrong parameter.
func (m *modelRun) exchangeAction(rt *rapid.T) {
	if len(m.codes) == 0 {
		rt.Skip("no code")
	}
	var fresh []*mCode
	for _, c := range m.codes {
		if !c.consumed && !c.deleted && m.now().Before(c.expires) {
			fresh = append(fresh, c)
		}
	}
	cands := m.codes
	if len(fresh) > 0 && rapid.IntRange(0, 3).Draw(rt, "any code (3) or a fresh one") != 3 {
		cands = fresh
	}
	c := cands[rapid.IntRange(0, len(cands)-1).Draw(rt, "code")]
	v := exRight
	if rapid.IntRange(0, 3).Draw(rt, "wrong parameter (3)") == 3 {
		v = rapid.SampledFrom([]exchangeVariant{exWrongVerifier, exWrongClient, exWrongRedirect}).Draw(rt, "which parameter")
	}
	what := "fresh"
	switch {
	case c.deleted:
		what = "cleaned up"
	case c.consumed:
		what = "already exchanged"
	case !m.now().Before(c.expires):
		what = "expired"
	}
	m.exchange(rt, c, v, what)
}

type exchangeVariant int

const (
	exRight exchangeVariant = iota
	exWrongVerifier
	exWrongClient
	exWrongRedirect
)

func (v exchangeVariant) String() string {
	return [...]string{"", " with a wrong verifier", " by the wrong client", " with another redirect URI"}[v]
}

func (m *modelRun) exchange(rt *rapid.T, c *mCode, v exchangeVariant, what string) {
	req := repository.ExchangeRequest{Code: c.secret, ClientID: c.client, RedirectURI: modelRedirect, CodeVerifier: c.verifier}
	switch v {
	case exWrongVerifier:
		req.CodeVerifier = strings.Repeat("w", 43)
	case exWrongClient:
		req.ClientID = modelClients[0]
		if req.ClientID == c.client {
			req.ClientID = modelClients[1]
		}
	case exWrongRedirect:
		req.RedirectURI = modelRedirect + "/other"
	}
	key := rapid.SampledFrom([]string{"", modelKeyA, modelKeyB}).Draw(rt, "exchange key")
	req.SenderThumbprint = key
	lifetime := drawLifetime(rt)
	req.Lifetime = lifetime
	var want error
	switch {
	case c.deleted:
		want = repository.ErrCodeNotFound
	case req.ClientID != c.client:
		want = repository.ErrWrongClient
	case req.RedirectURI != modelRedirect:
		want = repository.ErrRedirectMismatch
	case req.CodeVerifier != c.verifier:
		want = repository.ErrPKCEMismatch
	case c.key != "" && key != c.key:
		want = repository.ErrSenderMismatch
	case c.consumed:
		want = repository.ErrCodeReplayDetected
	case !m.now().Before(c.expires):
		want = repository.ErrCodeExpired
	}
	label := fmt.Sprintf("exchange C%d%s (%s)", c.n, v, what)
	if key != "" {
		label += " with key " + keyName(key)
	}
	if lifetime != 0 {
		label += fmt.Sprintf(" lifetime %v", lifetime)
	}
	got, err := m.grace.Exchange(m.b.ctx, req)
	m.outcome(label, err, want)
	switch {
	case want == nil:
		f := &mFamily{n: len(m.fams), id: got.FamilyID, client: c.client, user: c.user, key: key, code: c, granted: "openid"}
		if lifetime != 0 {
			f.expires = m.now().Add(lifetime)
		}
		m.checkToken(label, got.RefreshToken, f, 0, f.granted)
		m.addToken(f, got.Token.Reveal(), -1, 0, f.granted)
		m.fams = append(m.fams, f)
		c.consumed, c.family = true, f
		rt.Logf("    C%d produced %v", c.n, f)
	case errors.Is(want, repository.ErrCodeReplayDetected):
		m.revoke(c.family, repository.ReasonCodeReplayDetected)
	}
}

// --- invariants --------------------------------------------------------------------------------

// check runs after every step: it compares every family and code in the database with the model
// and checks the invariants in SQL.
func (m *modelRun) check(rt *rapid.T) {
	ctx := m.b.ctx
	m.b.checkInvariants(rt, fmt.Sprintf("after #%d", m.step))
	rows, err := m.b.pool.Query(ctx, `SELECT f.id::text, f.client_id, f.user_id, coalesce(f.sender_thumbprint, ''),
			f.revoked_at IS NOT NULL, coalesce(f.revoked_reason, ''), f.rotation_count, f.idle_expires_at,
			f.expires_at,
			count(t.digest),
			count(t.digest) FILTER (WHERE t.consumed_at IS NULL),
			count(t.digest) FILTER (WHERE t.created_at > f.revoked_at),
			count(t.digest) FILTER (WHERE t.parent_digest IS NULL)
		FROM oauth_family f
		LEFT JOIN oauth_refresh_token t ON t.family_id = f.id
		GROUP BY f.id, f.client_id, f.user_id, f.sender_thumbprint, f.revoked_at, f.revoked_reason, f.rotation_count,
			f.idle_expires_at, f.expires_at`)
	if err != nil {
		rt.Fatal(err)
	}
	type dbFamily struct {
		client, user, key, reason                  string
		revoked                                    bool
		rotations                                  int
		idle                                       time.Time
		end                                        *time.Time
		tokens, live, afterRevocation, firstTokens int
	}
	seen := map[string]dbFamily{}
	for rows.Next() {
		var id string
		var d dbFamily
		if err := rows.Scan(&id, &d.client, &d.user, &d.key, &d.revoked, &d.reason, &d.rotations, &d.idle, &d.end,
			&d.tokens, &d.live, &d.afterRevocation, &d.firstTokens); err != nil {
			rt.Fatal(err)
		}
		seen[id] = d
	}
	if err := rows.Err(); err != nil {
		rt.Fatal(err)
	}
	present := 0
	for _, f := range m.fams {
		d, ok := seen[f.id]
		if f.deleted {
			if ok {
				rt.Fatalf("after #%d: %v should have been cleaned up but is in the database", m.step, f)
			}
			continue
		}
		present++
		if !ok {
			rt.Fatalf("after #%d: %v is missing from the database", m.step, f)
		}
		want := dbFamily{client: f.client, user: f.user, key: f.key, revoked: f.revoked, reason: f.reason,
			rotations: f.rotations, tokens: len(f.tokens), live: f.liveCount(), firstTokens: 1}
		d.idle = d.idle.UTC()
		if !d.idle.Equal(f.idleExpires()) {
			rt.Fatalf("after #%d: %v idle expiry %v, the model says %v", m.step, f, d.idle, f.idleExpires())
		}
		if (d.end == nil) != f.expires.IsZero() || d.end != nil && !d.end.Equal(f.expires) {
			rt.Fatalf("after #%d: %v ends %v, the model says %v", m.step, f, d.end, f.expires)
		}
		got := d
		got.idle, got.end, got.afterRevocation = time.Time{}, nil, 0
		if got != want {
			rt.Fatalf("after #%d: %v in the database: %+v; the model: %+v", m.step, f, got, want)
		}
		if want.live != 1 {
			rt.Fatalf("after #%d: model error: %v has %d live tokens", m.step, f, want.live)
		}
		// A family revoked in the model has no successor issued after the revocation step (I3).
		if f.revoked && (d.tokens != f.tokensAtRevoke || d.afterRevocation != 0) {
			rt.Fatalf("after #%d: %v, revoked at step #%d with %d tokens, now holds %d (%d created after revoked_at)",
				m.step, f, f.revokedStep, f.tokensAtRevoke, d.tokens, d.afterRevocation)
		}
	}
	if len(seen) != present {
		rt.Fatalf("after #%d: the database holds %d families, the model %d", m.step, len(seen), present)
	}
	// Every consumed code has its family and that family's first token; codes match the model.
	var codes, consumed, orphaned int
	if err := m.b.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE c.consumed_at IS NOT NULL),
			count(*) FILTER (WHERE c.consumed_at IS NOT NULL AND NOT EXISTS (
				SELECT 1 FROM oauth_family f JOIN oauth_refresh_token t ON t.family_id = f.id
				WHERE f.id = c.family_id AND t.parent_digest IS NULL))
		FROM oauth_authorization_code c`).Scan(&codes, &consumed, &orphaned); err != nil {
		rt.Fatal(err)
	}
	wantCodes, wantConsumed := 0, 0
	var producedIDs []string
	for _, c := range m.codes {
		if c.deleted {
			continue
		}
		wantCodes++
		if c.consumed {
			wantConsumed++
			producedIDs = append(producedIDs, c.family.id)
		}
	}
	if orphaned != 0 || codes != wantCodes || consumed != wantConsumed {
		rt.Fatalf("after #%d: codes in the database: %d (%d consumed, %d without family or first token); the model: %d (%d consumed)",
			m.step, codes, consumed, orphaned, wantCodes, wantConsumed)
	}
	if len(producedIDs) > 0 {
		var matched int
		if err := m.b.pool.QueryRow(ctx, `SELECT count(*) FROM oauth_authorization_code WHERE family_id::text = ANY($1)`,
			producedIDs).Scan(&matched); err != nil {
			rt.Fatal(err)
		}
		if matched != len(producedIDs) {
			rt.Fatalf("after #%d: %d of %d exchanged codes record the family the model says they produced", m.step, matched, len(producedIDs))
		}
	}
}

// finalCheck looks every token of the sequence up, and spot-checks that no raw token, code or
// verifier is stored in any table.
func (m *modelRun) finalCheck(rt *rapid.T) {
	now := m.now()
	for _, f := range m.fams {
		for _, t := range f.tokens {
			info, err := m.strict.Lookup(m.b.ctx, t.secret)
			if f.deleted {
				if !errors.Is(err, repository.ErrTokenNotFound) {
					rt.Fatalf("lookup of %v t%d (cleaned up): %v, want ErrTokenNotFound", f, t.n, err)
				}
				continue
			}
			if err != nil {
				rt.Fatalf("lookup of %v t%d: %v", f, t.n, err)
			}
			if info.FamilyID != f.id || (info.ConsumedAt != nil) != t.consumed || (info.FamilyRevokedAt != nil) != f.revoked ||
				strings.Join(info.Scope, " ") != t.scope || strings.Join(info.GrantedScope, " ") != f.granted ||
				!info.ExpiresAt.Equal(t.expires) || info.Expired != !now.Before(t.expires) ||
				(t.consumed && !info.ConsumedAt.Equal(t.consumedAt)) {
				rt.Fatalf("lookup of %v t%d: %+v; the model: %+v (revoked %v)", f, t.n, info, *t, f.revoked)
			}
		}
	}
	var forms []string
	addForms := func(secret string) {
		forms = append(forms, secret)
		if raw, err := base64.RawURLEncoding.DecodeString(secret); err == nil && len(raw) >= 16 {
			forms = append(forms, hex.EncodeToString(raw), base64.StdEncoding.EncodeToString(raw)[:20])
		}
	}
	for _, f := range m.fams {
		for _, t := range f.tokens {
			addForms(t.secret)
		}
	}
	for _, c := range m.codes {
		addForms(c.secret)
		forms = append(forms, c.verifier)
	}
	forms = append(forms, hex.EncodeToString(m.b.pepper))
	var dump string
	if err := m.b.pool.QueryRow(m.b.ctx, `SELECT
			coalesce((SELECT string_agg(x::text, E'\n') FROM oauth_family x), '') ||
			coalesce((SELECT string_agg(x::text, E'\n') FROM oauth_refresh_token x), '') ||
			coalesce((SELECT string_agg(x::text, E'\n') FROM oauth_authorization_code x), '') ||
			coalesce((SELECT string_agg(x::text, E'\n') FROM oauth_state x), '')`).Scan(&dump); err != nil {
		rt.Fatal(err)
	}
	lower := strings.ToLower(dump)
	for _, s := range forms {
		if strings.Contains(dump, s) || strings.Contains(lower, strings.ToLower(s)) {
			rt.Fatalf("a raw secret (a %d-character form) is stored in a table", len(s))
		}
	}
}

func TestModel_RandomSequencesMatchTheReferenceModel(t *testing.T) {
	t.Parallel()
	setRapidDefault("rapid.steps", "RAPID_STEPS", 45)
	setRapidDefault("rapid.checks", "RAPID_CHECKS", 300)
	var base repository.Config
	b := setup(t, setupOptions{configure: func(c *repository.Config) {
		c.RefreshTokenTTL = modelTTL
		c.Logger = slog.New(slog.DiscardHandler)
		base = *c
	}})
	graceCfg := base
	graceCfg.GraceWindow, graceCfg.GraceMaxReuses = modelGraceWindow, modelGraceReuses
	grace, err := repository.New(b.pool, graceCfg)
	if err != nil {
		t.Fatal(err)
	}
	// The pool of the callers' transactions: two connections, one of them busy throughout, so
	// that a replay's revocation that needed a pooled connection would stall.
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	txPool, err := pgxpool.NewWithConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer txPool.Close()
	busy, err := txPool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Release()
	txStores := map[string]*repository.Store{}
	for name, c := range map[string]repository.Config{"strict": base, "grace": graceCfg} {
		if txStores[name], err = repository.New(txPool, c); err != nil {
			t.Fatal(err)
		}
	}
	var cases, steps atomic.Int64
	stats := &outcomeStats{n: map[string]int{}}
	start := time.Now()
	rapid.Check(t, func(rt *rapid.T) {
		cases.Add(1)
		if _, err := b.pool.Exec(b.ctx, `TRUNCATE oauth_state, oauth_authorization_code, oauth_refresh_tombstone, oauth_refresh_token_legacy, oauth_family CASCADE`); err != nil {
			rt.Fatal(err)
		}
		b.clock.Set(modelStart)
		m := &modelRun{rt: rt, b: b, strict: b.store, grace: grace, steps: &steps, stats: stats, txPool: txPool, txStores: txStores}
		// Repeat draws the actions in the order of their names, the first ones more often (rapid
		// biases its draws toward small indices): hence the numbers.
		rt.Repeat(map[string]func(*rapid.T){
			"01 rotate the latest token (strict store)": m.rotateLatest(false),
			"02 rotate the latest token (grace store)":  m.rotateLatest(true),
			"03 issue": m.issue,
			"04 lost response: present the parent (grace store)":  m.rotateParent(true),
			"05 lost response: present the parent (strict store)": m.rotateParent(false),
			"06 exchange a code":                               m.exchangeAction,
			"07 create a code":                                 m.createCode,
			"08 advance the clock":                             m.advanceClock,
			"09 present an older token":                        m.rotateOlder,
			"10 present a token with the wrong client or key":  m.rotateForeign,
			"11 revoke a family, a token or a user's families": m.revokeAction,
			"12 cleanup":                                       m.cleanup,
			"":                                                 m.check,
		})
		m.finalCheck(rt)
	})
	t.Logf("%d cases, %d steps in %v", cases.Load(), steps.Load(), time.Since(start).Round(time.Millisecond))
	t.Logf("outcomes: %v", stats)
}

// setRapidDefault sets a rapid flag unless the command line or its environment variable chose it.
func setRapidDefault(name, env string, value int) {
	if _, ok := os.LookupEnv(env); ok {
		return
	}
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if !set {
		_ = flag.Set(name, fmt.Sprint(value))
	}
}
