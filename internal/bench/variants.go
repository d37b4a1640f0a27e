package bench

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oauthstore/oauthstore/db"
	"github.com/oauthstore/oauthstore/repository"
)

// fixture holds the families the workers rotate and the current token of each: worker w of any
// cell rotates families [w*FamiliesPerWorker, (w+1)*FamiliesPerWorker) of its variant in turn, so
// no two workers ever touch the same family.
type fixture struct {
	client     string // the client every rotated family belongs to
	pepper     []byte
	a          []string // variant a: raw tokens, as a client holds them
	b, c, d, p [][]byte // variants b, c, d and p: the current digest of each family
	// ids holds the family ids of variants b and c, which every statement of theirs names.
	ids map[string][]pgtype.UUID
}

func newFixture(ctx context.Context, e *env, workers []int, variants []string) (_ *fixture, err error) {
	n := slices.Max(workers) * FamiliesPerWorker
	fx := &fixture{client: e.opts.Client, pepper: make([]byte, repository.MinPepperBytes), ids: map[string][]pgtype.UUID{}}
	_, _ = crand.Read(fx.pepper)
	fmt.Fprintf(e.opts.Progress, "seeding %d families per variant…\n", n)
	w, err := e.writer(ctx, 1)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, w.close(ctx)) }()
	if slices.Contains(variants, VariantStore) {
		store, err := fx.store(w.pool)
		if err != nil {
			return nil, err
		}
		for i := range n {
			rt, err := store.Issue(ctx, repository.IssueRequest{
				ClientID: e.opts.Client,
				UserID:   fmt.Sprintf("bench-a-%d", i),
				Scope:    benchScope,
			})
			if err != nil {
				return nil, fmt.Errorf("issue: %w", err)
			}
			fx.a = append(fx.a, rt.Token.Reveal())
		}
	}
	seed := func(v string) ([][]byte, error) {
		rows := make([]familyRow, n)
		now := time.Now()
		digests := make([][]byte, n)
		for i := range rows {
			_, _ = crand.Read(rows[i].id[:])
			markUUIDv4(&rows[i].id)
			rows[i].digest = randomDigest()
			rows[i].client = e.opts.Client
			rows[i].user = fmt.Sprintf("bench-%s-%d", v, i)
			rows[i].created = now
			digests[i] = rows[i].digest
			fx.ids[v] = append(fx.ids[v], pgtype.UUID{Bytes: rows[i].id, Valid: true})
		}
		return digests, copyFamilies(ctx, w.pool, tablesOf(v), rows)
	}
	if slices.Contains(variants, VariantRaw) {
		if fx.b, err = seed(VariantRaw); err != nil {
			return nil, err
		}
	}
	if slices.Contains(variants, VariantTransaction) {
		if fx.c, err = seed(VariantTransaction); err != nil {
			return nil, err
		}
	}
	if slices.Contains(variants, VariantFloor) {
		if fx.d, err = seed(VariantFloor); err != nil {
			return nil, err
		}
	}
	if slices.Contains(variants, VariantPrevious) {
		if fx.p, err = seed(VariantPrevious); err != nil {
			return nil, err
		}
	}
	return fx, nil
}

// store is the repository as a service configures it: one pepper, 30-day tokens, 90-day families.
func (fx *fixture) store(dbtx repository.DBTX) (*repository.Store, error) {
	return repository.New(dbtx, repository.Config{
		Pepper:          repository.NewKey(fx.pepper),
		RefreshTokenTTL: tokenTTL,
		FamilyLifetime:  familyLife,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// worker is one worker's loop body: prepare runs outside the timed section, op inside it.
type worker struct {
	prepare func()
	op      func(ctx context.Context) error
}

var errNotRotated = errors.New("rotation returned no row: the chain of the worker's family is broken")

func (fx *fixture) worker(v string, pool *pgxpool.Pool, store *repository.Store, w int) worker {
	lo, hi := w*FamiliesPerWorker, (w+1)*FamiliesPerWorker
	i := lo
	advance := func() {
		if i++; i == hi {
			i = lo
		}
	}
	switch v {
	case VariantStore:
		// Everything a service does per refresh request is inside the timed section: decoding,
		// two HMACs, minting, the statement and the result.
		return worker{prepare: func() {}, op: func(ctx context.Context) error {
			rt, err := store.Rotate(ctx, repository.RotateRequest{Token: fx.a[i], ClientID: fx.client})
			if err != nil {
				return err
			}
			fx.a[i] = rt.Token.Reveal()
			advance()
			return nil
		}}
	case VariantRaw:
		q := db.New()
		ttl := tokenTTL
		var successor, sealed []byte
		return worker{prepare: func() { successor, sealed = randomDigest(), randomSealed() }, op: func(ctx context.Context) error {
			_, err := q.RefreshTokenRotate(ctx, pool, db.RefreshTokenRotateParams{
				FamilyID:        fx.ids[VariantRaw][i],
				Digest:          fx.b[i],
				ClientID:        fx.client,
				TTL:             ttl,
				SuccessorDigest: successor,
				PepperID:        pepperID,
				SuccessorSealed: sealed,
			})
			if errors.Is(err, pgx.ErrNoRows) {
				return errNotRotated
			}
			if err != nil {
				return err
			}
			fx.b[i] = successor
			advance()
			return nil
		}}
	case VariantTransaction:
		ttl := tokenTTL
		var successor, sealed []byte
		return worker{prepare: func() { successor, sealed = randomDigest(), randomSealed() }, op: func(ctx context.Context) error {
			if err := conventionalRotate(ctx, pool, fx.client, fx.ids[VariantTransaction][i], fx.c[i], successor, sealed, ttl); err != nil {
				return err
			}
			fx.c[i] = successor
			advance()
			return nil
		}}
	case VariantFloor:
		ttl := tokenTTL
		var successor []byte
		return worker{prepare: func() { successor = randomDigest() }, op: func(ctx context.Context) error {
			tag, err := pool.Exec(ctx, floorRotate, fx.d[i], successor, ttl)
			if err != nil {
				return err
			}
			if tag.RowsAffected() != 1 {
				return errNotRotated
			}
			fx.d[i] = successor
			advance()
			return nil
		}}
	case VariantPrevious:
		ttl := tokenTTL
		var successor, sealed []byte
		return worker{prepare: func() { successor, sealed = randomDigest(), randomSealed() }, op: func(ctx context.Context) error {
			if err := rotatePrevious(ctx, pool, fx.client, fx.p[i], successor, sealed, ttl); err != nil {
				return err
			}
			fx.p[i] = successor
			advance()
			return nil
		}}
	}
	panic("unknown variant " + v)
}

// The statements of the conventional rotation (variant c) on the same tables: lock the family
// with its live token, give it the successor, insert the consumed token's tombstone with the
// sealed successor, each its own round trip, between BEGIN and COMMIT.
const (
	conventionalSelect = `SELECT f.scope, f.token_digest, f.token_pepper_id, f.token_scope, f.parent_digest,
    coalesce(f.last_rotated_at, f.created_at), f.idle_expires_at
FROM oauth_family f
WHERE f.id = $1
  AND f.token_digest = $2
  AND f.revoked_at IS NULL
  AND f.idle_expires_at > now()
  AND f.client_id = $3
  AND f.sender_thumbprint IS NULL
FOR NO KEY UPDATE`
	conventionalFamily = `UPDATE oauth_family
SET token_digest = $2,
    token_pepper_id = $3,
    token_scope = scope,
    parent_digest = $4,
    parent_reuses = 0,
    last_rotated_at = now(),
    rotation_count = rotation_count + 1,
    idle_expires_at = least(now() + $5::interval, expires_at),
    sweep_day = (least(now() + $5::interval, expires_at) AT TIME ZONE 'UTC')::date
WHERE id = $1`
	conventionalTombstone = `INSERT INTO oauth_refresh_tombstone (family_id, digest, pepper_id, parent_digest, scope, created_at,
    expires_at, consumed_at, successor_sealed)
VALUES ($1, $2, $3, $4, nullif($5::text[], $9::text[]), $6, $7, now(), $8)`
)

func conventionalRotate(ctx context.Context, pool *pgxpool.Pool, client string, family pgtype.UUID, digest, successor, sealed []byte, ttl time.Duration) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var (
			scope, tokenScope []string
			live, parent      []byte
			pepper            string
			created, expires  time.Time
		)
		err := tx.QueryRow(ctx, conventionalSelect, family, digest, client).Scan(&scope, &live, &pepper, &tokenScope, &parent, &created, &expires)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNotRotated
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, conventionalFamily, family, successor, pepperID, live, ttl); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, conventionalTombstone, family, live, pepper, parent, tokenScope, created, expires, sealed, scope)
		return err
	})
}
