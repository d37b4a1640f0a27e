package bench

import (
	"context"
	_ "embed"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Variant p, the previous design: the package's refresh-token tables and rotating statement at
// schema version 4 (commit ae44542b6c264914a15f73bfc775ed7cd318fe1c), frozen here, in a schema of
// their own, so that the design of schema 5 is measured against them in the same run: b/p is the
// new design over the previous one. Nothing here may follow schema/, queries/ or the generated db
// package.

// PrevSchemaName is the schema of the previous design's tables, created next to SchemaName and
// dropped with it.
const PrevSchemaName = "oauthstore_bench_prev"

// previousDDL is schema/0001 (the two tables), 0003 and 0004 up, as of that commit.
//
//go:embed previous_schema.sql
var previousDDL string

// previousRotate is RefreshTokenRotate as sqlc generated it from queries/refresh_token.sql at that
// commit (db/refresh_token.sql.go), byte for byte. Its parameters: $1 digest, $2 now, $3
// client_id, $4 sender_thumbprint, $5 scope, $6 grace_parent, $7 ttl, $8 successor_digest,
// $9 pepper_id, $10 grace_ciphertext.
const previousRotate = `-- name: RefreshTokenRotate :one
WITH presented AS (
    -- A token already consumed or expired locks nothing: the refusal that follows does not keep
    -- the family locked in a caller's transaction.
    SELECT t.family_id
    FROM oauth_refresh_token t
    WHERE t.digest = $1::bytea
      AND t.consumed_at IS NULL
      AND t.expires_at > coalesce($2::timestamptz, statement_timestamp())
),
family AS MATERIALIZED (
    SELECT f.id
    FROM oauth_family f
    JOIN presented p ON p.family_id = f.id
    WHERE f.revoked_at IS NULL
      -- IS TRUE keeps the client out of index selection: the family comes from the presented
      -- token's primary key, whatever the statistics say about the client.
      AND (f.client_id = $3::text) IS TRUE
      AND (f.sender_thumbprint IS NULL
          OR f.sender_thumbprint = $4::text)
      AND ($5::text[] IS NULL OR $5::text[] <@ f.scope)
    FOR NO KEY UPDATE OF f
),
grace AS (
    UPDATE oauth_refresh_token t
    SET grace_uses = t.grace_uses + 1
    FROM family f
    WHERE t.digest = $6::bytea
      AND t.family_id = f.id
      AND t.consumed_at IS NOT NULL
    RETURNING t.digest
),
consumed AS (
    UPDATE oauth_refresh_token t
    SET consumed_at = coalesce($2::timestamptz, statement_timestamp()),
        grace_ciphertext = NULL
    FROM family f
    WHERE t.digest = $1::bytea
      AND t.family_id = f.id
      AND t.consumed_at IS NULL
      AND t.expires_at > coalesce($2::timestamptz, statement_timestamp())
      AND ($6::bytea IS NULL OR t.parent_digest = (SELECT digest FROM grace))
    RETURNING t.family_id, t.digest
),
rotated AS (
    UPDATE oauth_family f
    SET last_rotated_at = coalesce($2::timestamptz, statement_timestamp()),
        rotation_count = f.rotation_count + 1,
        -- The family dies when its newest token expires, sooner or later than the one before.
        idle_expires_at = least(coalesce($2::timestamptz, statement_timestamp()) + $7::interval,
            f.expires_at)
    FROM consumed c
    WHERE f.id = c.family_id
    RETURNING f.id, f.client_id, f.user_id, f.scope AS granted_scope, f.expires_at AS family_expires_at,
        coalesce($6::bytea, c.digest) AS parent_digest
),
successor AS (
    INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope, created_at,
        expires_at, grace_ciphertext)
    SELECT $8::bytea, $9::text, r.id, r.parent_digest,
        coalesce($5::text[], r.granted_scope),
        coalesce($2::timestamptz, statement_timestamp()),
        least(coalesce($2::timestamptz, statement_timestamp()) + $7::interval, r.family_expires_at),
        $10::bytea
    FROM rotated r
    RETURNING family_id, scope, expires_at
)
SELECT r.id AS family_id, r.client_id, r.user_id, r.family_expires_at, s.scope, s.expires_at
FROM rotated r
JOIN successor s ON s.family_id = r.id
`

// previousTables is where variant p rotates, loaded and seeded with the same rows as the package's
// tables.
var previousTables = tableSet{
	schema:        PrevSchemaName,
	family:        "oauth_family",
	token:         "oauth_refresh_token",
	familyColumns: []string{"id", "client_id", "user_id", "scope", "created_at", "expires_at", "idle_expires_at"},
	familyValues: func(r *familyRow) []any {
		return []any{pgtype.UUID{Bytes: r.id, Valid: true}, r.client, r.user, benchScope,
			r.created, r.created.Add(familyLife), r.created.Add(tokenTTL)}
	},
	tokenColumns: []string{"digest", "pepper_id", "family_id", "scope", "created_at", "expires_at"},
	tokenValues: func(r *familyRow) []any {
		return []any{r.digest, pepperID, pgtype.UUID{Bytes: r.id, Valid: true}, benchScope,
			r.created, r.created.Add(tokenTTL)}
	},
}

// createPrevious creates the previous design's tables in PrevSchemaName, which must exist.
func (e *env) createPrevious(ctx context.Context) error {
	return pgx.BeginFunc(ctx, e.admin, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path = "+PrevSchemaName); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, previousDDL)
		return err
	})
}

// rotatePrevious rotates as variant b does, with the previous design's statement: the same kinds
// of argument (a presented digest, the TTL, a successor digest and a sealed successor; no clock,
// sender, scope or grace parent) and the same result row, scanned as the generated code scans it.
func rotatePrevious(ctx context.Context, pool *pgxpool.Pool, client string, digest, successor, sealed []byte, ttl time.Duration) error {
	var (
		family        pgtype.UUID
		clientID      string
		userID        string
		familyExpires *time.Time
		scope         []string
		expires       time.Time
	)
	err := pool.QueryRow(ctx, previousRotate,
		digest, (*time.Time)(nil), client, (*string)(nil), []string(nil), []byte(nil),
		ttl, successor, pepperID, sealed,
	).Scan(&family, &clientID, &userID, &familyExpires, &scope, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotRotated
	}
	return err
}
