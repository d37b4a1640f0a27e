-- RefreshTokenDetectReplay explains why a rotation did not happen and, when the presented token was
-- already consumed, revokes its family (RFC 6819 §5.2.2.3, RFC 9700 §4.14.2). The family row is
-- locked before the token is read, in the same order as RefreshTokenRotate, and the token row is
-- read under a lock so that the decision sees the latest committed state, not the statement's
-- snapshot. A wrong client changes nothing (I5). Returns no row for an unknown token.
-- name: RefreshTokenDetectReplay :one
WITH presented AS (
    SELECT t.family_id
    FROM oauth_refresh_token t
    WHERE t.digest = @digest::bytea
),
family AS MATERIALIZED (
    SELECT f.id, f.client_id, f.user_id, f.revoked_at, f.revoked_reason
    FROM oauth_family f
    JOIN presented p ON p.family_id = f.id
    FOR NO KEY UPDATE OF f
),
token AS MATERIALIZED (
    SELECT t.family_id, t.consumed_at, t.expires_at
    FROM oauth_refresh_token t
    JOIN family f ON f.id = t.family_id
    WHERE t.digest = @digest::bytea
    FOR KEY SHARE OF t
),
revoked AS (
    UPDATE oauth_family f
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, now()),
        revoked_reason = 'replay_detected'
    FROM family locked
    JOIN token t ON t.family_id = locked.id
    WHERE f.id = locked.id
      AND locked.revoked_at IS NULL
      AND locked.client_id = @client_id::text
      AND t.consumed_at IS NOT NULL
    RETURNING f.id
)
SELECT f.id AS family_id, f.client_id, f.user_id, f.revoked_at, f.revoked_reason,
    t.consumed_at, t.expires_at,
    t.expires_at <= coalesce(sqlc.narg('now')::timestamptz, now()) AS expired,
    EXISTS (SELECT 1 FROM revoked) AS revoked_now
FROM family f
JOIN token t ON t.family_id = f.id;

-- RefreshTokenGet reads a token with its family, without changing anything.
-- name: RefreshTokenGet :one
SELECT t.family_id, t.scope, t.created_at, t.expires_at, t.consumed_at,
    f.client_id, f.user_id, f.scope AS granted_scope, f.created_at AS family_created_at,
    f.revoked_at, f.revoked_reason,
    t.expires_at <= coalesce(sqlc.narg('now')::timestamptz, now()) AS expired
FROM oauth_refresh_token t
JOIN oauth_family f ON f.id = t.family_id
WHERE t.digest = @digest::bytea;

-- RefreshTokenRotate consumes the presented token and inserts its successor in one statement, so
-- both commit together or not at all (I2). The family row is locked first: a concurrent rotation of
-- the same token waits here and then finds the token consumed, and a revocation that commits first
-- leaves nothing to rotate (I3). The successor's insert follows the consume, so the partial unique
-- index never sees two live tokens in the family (I1). Returns no row when the token is unknown,
-- expired, already consumed, of another client, or its family is revoked; the caller then asks
-- RefreshTokenDetectReplay why.
-- name: RefreshTokenRotate :one
WITH presented AS (
    SELECT t.family_id
    FROM oauth_refresh_token t
    WHERE t.digest = @digest::bytea
),
family AS MATERIALIZED (
    SELECT f.id
    FROM oauth_family f
    JOIN presented p ON p.family_id = f.id
    WHERE f.revoked_at IS NULL
      AND f.client_id = @client_id::text
    FOR NO KEY UPDATE OF f
),
consumed AS (
    UPDATE oauth_refresh_token t
    SET consumed_at = coalesce(sqlc.narg('now')::timestamptz, now())
    FROM family f
    WHERE t.digest = @digest::bytea
      AND t.family_id = f.id
      AND t.consumed_at IS NULL
      AND t.expires_at > coalesce(sqlc.narg('now')::timestamptz, now())
    RETURNING t.family_id, t.digest, t.scope
),
rotated AS (
    UPDATE oauth_family f
    SET last_rotated_at = coalesce(sqlc.narg('now')::timestamptz, now()),
        rotation_count = f.rotation_count + 1,
        idle_expires_at = greatest(f.idle_expires_at,
            coalesce(sqlc.narg('now')::timestamptz, now()) + @ttl::interval)
    FROM consumed c
    WHERE f.id = c.family_id
    RETURNING f.id, f.client_id, f.user_id, f.scope, f.created_at, f.rotation_count,
        c.digest AS parent_digest, c.scope AS token_scope
),
successor AS (
    INSERT INTO oauth_refresh_token (digest, family_id, parent_digest, scope, created_at, expires_at)
    SELECT @successor_digest::bytea, r.id, r.parent_digest, r.token_scope,
        coalesce(sqlc.narg('now')::timestamptz, now()),
        coalesce(sqlc.narg('now')::timestamptz, now()) + @ttl::interval
    FROM rotated r
    RETURNING family_id, scope, expires_at
)
SELECT r.id AS family_id, r.client_id, r.user_id, r.scope AS granted_scope, r.created_at,
    r.rotation_count, s.scope, s.expires_at
FROM rotated r
JOIN successor s ON s.family_id = r.id;
