package repository

import (
	"context"
	"time"

	"github.com/oauthstore/oauthstore/db"
)

// Stats is the operator's view of the package's tables. Its counts scan the tables: gather it on
// demand, not in a hot path.
type Stats struct {
	Families struct {
		Live    int64 `json:"live"`
		Revoked int64 `json:"revoked"`
		Expired int64 `json:"expired"`
	} `json:"families"`
	// RefreshTokens: Live can be rotated now; Consumed are tombstones; Revoked are unconsumed in a
	// revoked family; Expired are unconsumed past their idle lifetime.
	RefreshTokens struct {
		Live     int64 `json:"live"`
		Consumed int64 `json:"consumed"`
		Revoked  int64 `json:"revoked"`
		Expired  int64 `json:"expired"`
	} `json:"refresh_tokens"`
	AuthorizationCodes struct {
		Pending  int64 `json:"pending"`
		Consumed int64 `json:"consumed"`
		Expired  int64 `json:"expired"`
	} `json:"authorization_codes"`
	States struct {
		Pending int64 `json:"pending"`
		Expired int64 `json:"expired"`
	} `json:"states"`
	// AccessTokens: Active can be used now; Revoked were revoked themselves or with their family;
	// Expired are past their lifetime, waiting for cleanup. JWTs counts those of every state that
	// are JWTs (known by their jti).
	AccessTokens struct {
		Active  int64 `json:"active"`
		Revoked int64 `json:"revoked"`
		Expired int64 `json:"expired"`
		JWTs    int64 `json:"jwts"`
	} `json:"access_tokens"`
	// Revocations counts the entries of the revocation feed.
	Revocations int64       `json:"revocations"`
	Tables      []TableSize `json:"tables"`
}

// TableSize is the size on disk of one table and of its indexes.
type TableSize struct {
	Table      string `json:"table"`
	TableBytes int64  `json:"table_bytes"`
	IndexBytes int64  `json:"index_bytes"`
}

// Stats counts the rows of every table by state and reports the tables' sizes. With
// Config.ReadReplica it may run on the replica, and then lag behind the primary by up to
// Config.MaxReplicaStaleness.
func (a *Admin) Stats(ctx context.Context) (*Stats, error) {
	var st *Stats
	err := a.boundedStaleRead(ctx, "stats", func(q DBTX) (err error) {
		st, err = a.stats(ctx, q)
		return err
	})
	return st, err
}

func (a *Admin) stats(ctx context.Context, q DBTX) (*Stats, error) {
	var st Stats
	now := a.now()
	f, err := a.q.StatsFamilies(ctx, q, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.Families.Live, st.Families.Revoked, st.Families.Expired = f.Live, f.Revoked, f.Expired
	t, err := a.q.StatsRefreshTokens(ctx, q, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.RefreshTokens.Live, st.RefreshTokens.Consumed, st.RefreshTokens.Revoked, st.RefreshTokens.Expired = t.Live, t.Consumed, t.Revoked, t.Expired
	c, err := a.q.StatsAuthorizationCodes(ctx, q, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.AuthorizationCodes.Pending, st.AuthorizationCodes.Consumed, st.AuthorizationCodes.Expired = c.Pending, c.Consumed, c.Expired
	sb, err := a.q.StatsStates(ctx, q, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.States.Pending, st.States.Expired = sb.Pending, sb.Expired
	at, err := a.q.StatsAccessTokens(ctx, q, now)
	if err != nil {
		return nil, dbError("stats", err)
	}
	st.AccessTokens.Active, st.AccessTokens.Revoked, st.AccessTokens.Expired, st.AccessTokens.JWTs = at.Active, at.Revoked, at.Expired, at.Jwts
	st.Revocations = at.Revocations
	sizes, err := a.q.StatsTableSizes(ctx, q)
	if err != nil {
		return nil, dbError("stats", err)
	}
	for _, r := range sizes {
		st.Tables = append(st.Tables, TableSize{Table: r.TableName, TableBytes: r.TableBytes, IndexBytes: r.IndexBytes})
	}
	return &st, nil
}

// CleanupBacklog counts what Cleanup with opts.Retain would delete now, without deleting anything.
// With Config.ReadReplica it may run on the replica, and then lag behind the primary by up to
// Config.MaxReplicaStaleness; Cleanup itself decides on the primary.
func (a *Admin) CleanupBacklog(ctx context.Context, opts CleanupOptions) (CleanupResult, error) {
	if err := opts.withDefaults().validate(); err != nil {
		return CleanupResult{}, err
	}
	var r db.StatsCleanupBacklogRow
	err := a.boundedStaleRead(ctx, "cleanup backlog", func(q DBTX) (err error) {
		r, err = a.q.StatsCleanupBacklog(ctx, q, db.StatsCleanupBacklogParams{Now: a.now(), Retain: opts.Retain, GraceWindow: MaxGraceWindow})
		return err
	})
	if err != nil {
		return CleanupResult{}, dbError("cleanup backlog", err)
	}
	return CleanupResult{Families: r.Families, RefreshTokens: r.RefreshTokens, AuthorizationCodes: r.AuthorizationCodes, States: r.States,
		GraceCiphertexts: r.GraceCiphertexts, AccessTokens: r.AccessTokens, Revocations: r.Revocations}, nil
}

// PepperUse is what still depends on one pepper of the ring, by the database clock.
type PepperUse struct {
	PepperID string `json:"pepper_id"`
	// LiveTokens are unused, unexpired refresh tokens of live families: their sessions end if the
	// pepper is retired or leaves the ring.
	LiveTokens int64 `json:"live_tokens"`
	// AccessTokens are opaque access tokens that can still be used: they become inactive if the
	// pepper is retired or leaves the ring.
	AccessTokens int64 `json:"access_tokens"`
	// Tombstones are consumed refresh tokens of live families (not revoked, newest token not
	// expired): a replay of one revokes its family only while the pepper is in the ring, if
	// only as retired.
	Tombstones int64 `json:"tombstones"`
	// PendingCodes are authorization codes not exchanged yet and unexpired.
	PendingCodes int64 `json:"pending_codes"`
	// UsedCodes are exchanged codes whose family lives: a replay of one revokes the family only
	// while the pepper is in the ring.
	UsedCodes int64 `json:"used_codes"`
	// PendingStates are unexpired state bindings.
	PendingStates int64 `json:"pending_states"`
	// DependsUntil is when the last of these stops depending on the pepper unless something
	// changes: the latest expiry among them and their families. A rotation moves it later.
	DependsUntil *time.Time `json:"depends_until,omitempty"`
}

// Retirable reports whether the pepper can be retired (kept in the ring as recognise-only)
// without ending a session or refusing a pending code or state.
func (u PepperUse) Retirable() bool {
	return u.LiveTokens == 0 && u.AccessTokens == 0 && u.PendingCodes == 0 && u.PendingStates == 0
}

// Removable reports whether the pepper can leave the ring without losing anything: no session, no
// pending code or state, and no evidence of a live family (I4).
func (u PepperUse) Removable() bool {
	return u.Retirable() && u.Tombstones == 0 && u.UsedCodes == 0
}

// PepperUsage answers "may I retire or remove this pepper?": for every pepper ID that anything in
// the database still depends on, what depends on it. A pepper ID it does not list has nothing
// left and may leave the ring. It scans the tables: an operator's question, not a hot path. It
// always reads the primary, never Config.ReadReplica: a lagging answer could miss a session or a
// code minted under the pepper moments ago, and let the pepper leave the ring too early.
func (a *Admin) PepperUsage(ctx context.Context) ([]PepperUse, error) {
	rows, err := a.q.PepperUsage(ctx, a.dbtx, a.now())
	if err != nil {
		return nil, dbError("pepper usage", err)
	}
	out := make([]PepperUse, len(rows))
	for i, r := range rows {
		out[i] = PepperUse{
			PepperID: r.PepperID, LiveTokens: r.LiveTokens, AccessTokens: r.AccessTokens, Tombstones: r.Tombstones, PendingCodes: r.PendingCodes,
			UsedCodes: r.UsedCodes, PendingStates: r.PendingStates, DependsUntil: utcPtr(&r.DependsUntil),
		}
	}
	return out, nil
}
