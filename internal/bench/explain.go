package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oauthstore/oauthstore/db"
)

// ExplainResult holds the plans PostgreSQL executed for the rotating statement, as auto_explain
// reports them with ANALYZE and BUFFERS, and the server's execution time of each run.
type ExplainResult struct {
	Rows int `json:"preloaded_families"`
	// Tombstones is the number of consumed tokens of the family the plans were taken on.
	Tombstones int `json:"tombstones"`
	// StatementSHA256 identifies the text of the statement that was measured (the query is being
	// developed; this tells which version the numbers are for).
	StatementSHA256 string `json:"statement_sha256"`
	Runs            int    `json:"runs"`
	Custom          string `json:"custom_plan"`
	Generic         string `json:"generic_plan"`
	// Median execution time on the server (auto_explain's duration: executor only, no parse,
	// plan, network or client).
	CustomMedian  time.Duration `json:"custom_median_ns"`
	GenericMedian time.Duration `json:"generic_median_ns"`
}

const explainRuns = 20

// explainRotate runs the generated RefreshTokenRotate, exactly as the variants send it (same text,
// parameters and prepared-statement cache), on the first family variant b (else c) rotated, with
// its tombstones, or else on a new family, with auto_explain reporting each
// execution to the client: explainRuns rotations under a forced custom plan, then as many under a
// forced generic plan, each set in a transaction that is rolled back. auto_explain is loaded into
// the session, which needs a superuser (the throwaway cluster's user is one).
func explainRotate(ctx context.Context, e *env, fx *fixture, rows int) (*ExplainResult, error) {
	var (
		digest []byte
		family pgtype.UUID
	)
	switch {
	case len(fx.b) > 0:
		digest, family = fx.b[0], fx.ids[VariantRaw][0]
	case len(fx.c) > 0:
		digest, family = fx.c[0], fx.ids[VariantTransaction][0]
	default:
		digest = randomDigest()
		var id [16]byte
		copy(id[:], randomDigest())
		markUUIDv4(&id)
		family = pgtype.UUID{Bytes: id, Valid: true}
		if err := copyFamilies(ctx, e.admin, packageTables, []familyRow{{id: id, digest: digest, client: e.opts.Client, user: "bench-explain", created: time.Now()}}); err != nil {
			return nil, err
		}
	}
	res := &ExplainResult{Rows: rows, Runs: explainRuns}
	if err := e.admin.QueryRow(ctx, `SELECT count(*) FROM oauth_refresh_tombstone WHERE family_id = $1`, family).Scan(&res.Tombstones); err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(e.url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["search_path"] = SchemaName
	var (
		mu      sync.Mutex
		notices []string
	)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if strings.Contains(n.Message, "RefreshTokenRotate") {
			mu.Lock()
			notices = append(notices, n.Message)
			mu.Unlock()
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, s := range []string{
		"LOAD 'auto_explain'",
		"SET auto_explain.log_min_duration = 0",
		"SET auto_explain.log_analyze = on",
		"SET auto_explain.log_buffers = on",
		"SET auto_explain.log_level = notice",
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("%s (auto_explain needs a superuser): %w", s, err)
		}
	}
	ttl := tokenTTL
	q := db.New()
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			return nil, err
		}
		mu.Lock()
		notices = nil
		mu.Unlock()
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			cur := digest
			for range explainRuns {
				next := randomDigest()
				_, err := q.RefreshTokenRotate(ctx, tx, db.RefreshTokenRotateParams{
					FamilyID: family, Digest: cur, ClientID: e.opts.Client, TTL: ttl,
					SuccessorDigest: next, PepperID: pepperID,
				})
				if err != nil {
					return err
				}
				cur = next
			}
			return errRollback
		})
		if err != nil && !errors.Is(err, errRollback) {
			return nil, err
		}
		mu.Lock()
		got := slices.Clone(notices)
		mu.Unlock()
		if len(got) == 0 {
			return nil, errors.New("auto_explain reported nothing")
		}
		var durs []time.Duration
		for _, n := range got {
			var ms float64
			if _, err := fmt.Sscanf(n, "duration: %f ms", &ms); err == nil {
				durs = append(durs, time.Duration(ms*float64(time.Millisecond)))
			}
		}
		slices.Sort(durs)
		plan := got[len(got)-1] // the last run: warm caches, settled plan
		if res.StatementSHA256 == "" {
			res.StatementSHA256 = statementHash(plan)
		}
		plan = trimQueryText(plan)
		med := time.Duration(0)
		if len(durs) > 0 {
			med = durs[len(durs)/2]
		}
		if mode == "force_custom_plan" {
			res.Custom, res.CustomMedian = plan, med
		} else {
			res.Generic, res.GenericMedian = plan, med
		}
	}
	_, _ = conn.Exec(ctx, "RESET plan_cache_mode")
	return res, nil
}

var errRollback = errors.New("rollback")

// statementHash is the SHA-256 (first 12 hex digits) of the query text in an auto_explain message.
func statementHash(msg string) string {
	_, q, ok := strings.Cut(msg, "Query Text: ")
	if !ok {
		return ""
	}
	if i := strings.Index(q, "\n"+planStart(q)); i >= 0 {
		q = q[:i]
	}
	sum := sha256.Sum256([]byte(q))
	return hex.EncodeToString(sum[:6])
}

// planStart returns the first line of the plan that follows a query text.
func planStart(q string) string {
	for l := range strings.SplitSeq(q, "\n") {
		if strings.Contains(l, "(cost=") {
			return l
		}
	}
	return "\x00"
}

// trimQueryText removes the "Query Text: …" block auto_explain puts between its duration line
// and the plan, whose first line is the first one with a cost estimate.
func trimQueryText(msg string) string {
	lines := strings.Split(msg, "\n")
	q := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "Query Text:") })
	if q < 0 {
		return msg
	}
	p := slices.IndexFunc(lines[q:], func(l string) bool { return strings.Contains(l, "(cost=") })
	if p < 0 {
		return msg
	}
	return strings.Join(append(lines[:q:q], lines[q+p:]...), "\n")
}
