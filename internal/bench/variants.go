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
}

func newFixture(ctx context.Context, e *env, workers []int, variants []string) (_ *fixture, err error) {
	n := slices.Max(workers) * FamiliesPerWorker
	fx := &fixture{client: e.opts.Client, pepper: make([]byte, repository.MinPepperBytes)}
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
				Digest:          fx.b[i],
				ClientID:        fx.client,
				TTL:             ttl,
				SuccessorDigest: successor,
				PepperID:        pepperID,
				GraceCiphertext: sealed,
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
			if err := conventionalRotate(ctx, pool, fx.client, fx.c[i], successor, sealed, ttl); err != nil {
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

// The statements of the conventional rotation (variant c): lock, consume, bump the family, insert
// the successor with its sealed copy, each its own round trip, between BEGIN and COMMIT.
const (
	conventionalSelect = `SELECT t.family_id, f.scope, f.expires_at
FROM oauth_refresh_token t
JOIN oauth_family f ON f.id = t.family_id
WHERE t.digest = $1
  AND t.consumed_at IS NULL
  AND t.expires_at > now()
  AND f.revoked_at IS NULL
  AND f.client_id = $2
  AND f.sender_thumbprint IS NULL
FOR UPDATE`
	conventionalConsume = `UPDATE oauth_refresh_token SET consumed_at = now(), grace_ciphertext = NULL WHERE digest = $1`
	conventionalFamily  = `UPDATE oauth_family
SET last_rotated_at = now(),
    rotation_count = rotation_count + 1,
    idle_expires_at = least(now() + $2::interval, expires_at)
WHERE id = $1`
	conventionalInsert = `INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope, created_at, expires_at, grace_ciphertext)
VALUES ($1, $2, $3, $4, $5, now(), least(now() + $6::interval, $7::timestamptz), $8)
RETURNING expires_at`
)

func conventionalRotate(ctx context.Context, pool *pgxpool.Pool, client string, digest, successor, sealed []byte, ttl time.Duration) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var (
			family        pgtype.UUID
			scope         []string
			familyExpires *time.Time
		)
		err := tx.QueryRow(ctx, conventionalSelect, digest, client).Scan(&family, &scope, &familyExpires)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNotRotated
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, conventionalConsume, digest); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, conventionalFamily, family, ttl); err != nil {
			return err
		}
		var expires time.Time
		return tx.QueryRow(ctx, conventionalInsert, successor, pepperID, family, digest, scope, ttl, familyExpires, sealed).Scan(&expires)
	})
}
