-- FamilyCreate starts a grant: a new family and its first refresh token, in one statement.
-- name: FamilyCreate :one
WITH family AS (
    INSERT INTO oauth_family (client_id, user_id, scope, created_at, idle_expires_at)
    VALUES (
        @client_id::text,
        @user_id::text,
        @scope::text[],
        coalesce(sqlc.narg('now')::timestamptz, now()),
        coalesce(sqlc.narg('now')::timestamptz, now()) + @ttl::interval
    )
    RETURNING id, created_at, idle_expires_at, scope
),
token AS (
    INSERT INTO oauth_refresh_token (digest, family_id, scope, created_at, expires_at)
    SELECT @digest::bytea, f.id, f.scope, f.created_at, f.idle_expires_at
    FROM family f
    RETURNING expires_at
)
SELECT f.id, f.created_at, t.expires_at
FROM family f
CROSS JOIN token t;

-- FamilyDelete erases a family and all its tokens at once, for example when its user's account is
-- deleted. Unlike a revocation it leaves no evidence: a later replay of its tokens is not found.
-- name: FamilyDelete :execrows
DELETE FROM oauth_family
WHERE id = @id::uuid;

-- FamilyDeleteExpired deletes one batch of families whose newest token expired before the cutoff,
-- with all of their tokens. Until then a family keeps its tombstones and its revocation mark, so a
-- replay is recognised for as long as any token of the family could be presented (I4). SKIP LOCKED
-- lets several cleaners run at once without waiting on each other or on a rotation.
-- name: FamilyDeleteExpired :one
WITH doomed AS MATERIALIZED (
    SELECT f.id
    FROM oauth_family f
    WHERE f.idle_expires_at < coalesce(sqlc.narg('now')::timestamptz, now()) - @retain::interval
    ORDER BY f.idle_expires_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
),
tokens AS (
    DELETE FROM oauth_refresh_token t
    USING doomed d
    WHERE t.family_id = d.id
    RETURNING 1
),
families AS (
    DELETE FROM oauth_family f
    USING doomed d
    WHERE f.id = d.id
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM families)::bigint AS families_deleted,
    (SELECT count(*) FROM tokens)::bigint AS tokens_deleted;

-- name: FamilyGet :one
SELECT id, client_id, user_id, scope, created_at, last_rotated_at, rotation_count,
    idle_expires_at, revoked_at, revoked_reason
FROM oauth_family
WHERE id = @id::uuid;

-- FamilyRevoke marks a family revoked. The row lock orders it against rotations of the same family
-- (I3); a family that is already revoked keeps its first reason. Returns no row when there is no
-- such family.
-- name: FamilyRevoke :one
WITH family AS MATERIALIZED (
    SELECT f.id, f.revoked_at
    FROM oauth_family f
    WHERE f.id = @id::uuid
    FOR NO KEY UPDATE
),
revoked AS (
    UPDATE oauth_family f
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, now()),
        revoked_reason = @reason::text
    FROM family locked
    WHERE f.id = locked.id
      AND locked.revoked_at IS NULL
    RETURNING f.id
)
SELECT f.id, EXISTS (SELECT 1 FROM revoked) AS revoked_now
FROM family f;
