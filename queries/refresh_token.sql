-- RefreshTokenGet reads a token with its family, without changing anything. The token may be
-- presented under any pepper of the ring, hence a digest per pepper. now is the clock the statement
-- compared with: run after FamilyLockByToken, it is taken after the lock was granted, so that what
-- the caller writes under the lock is never dated before what it waited for.
-- name: RefreshTokenGet :one
SELECT t.digest, t.pepper_id, t.family_id, t.parent_digest, t.scope, t.created_at, t.expires_at,
    t.consumed_at, t.grace_uses,
    f.client_id, f.user_id, f.scope AS granted_scope, f.expires_at AS family_expires_at,
    f.sender_thumbprint, f.revoked_at, f.revoked_reason,
    t.expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS expired,
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())::timestamptz AS now
FROM oauth_refresh_token t
JOIN oauth_family f ON f.id = t.family_id
WHERE t.digest = ANY(@digests::bytea[]);

-- RefreshTokenGetLive returns the family's one live token, if any, with the encrypted copy of it
-- that its parent's holder can open.
-- name: RefreshTokenGetLive :one
SELECT digest, pepper_id, parent_digest, scope, expires_at, grace_ciphertext
FROM oauth_refresh_token
WHERE family_id = @family_id::uuid
  AND consumed_at IS NULL;

-- RefreshTokenRotate consumes the presented token and inserts its successor in one statement, so
-- both commit together or not at all (I2). The family row is locked first: a concurrent rotation of
-- the same token waits here and then finds the token consumed, and a revocation that commits first
-- leaves nothing to rotate (I3). The successor's insert follows the consume, so the partial unique
-- index never sees two live tokens in the family (I1). Nothing changes unless the client, the sender
-- key, the lifetimes and the scope all allow the rotation (I5). The successor carries the requested
-- scope, or else the granted one (RFC 6749 §6), and never outlives the family.
--
-- The successor row keeps grace_ciphertext, the successor encrypted under a key only the presented
-- token's holder can derive, so that a lost response retried within the grace window gets the
-- same successor back (RefreshTokenGraceReuse). Consuming a token clears its own ciphertext.
--
-- For a successor made before grace_ciphertext existed, a grace reuse (a lost response) is the
-- same rotation of the family's live token: the caller, holding the family lock, presents the live
-- token's digest and names its consumed parent, which the client presented, as grace_parent. The
-- parent's grace count goes up and the successor takes the live token's place under the same
-- parent, so the family never holds two live tokens. The live token is consumed only if it is that
-- parent's child.
--
-- The digest is a single value (the current pepper's; the caller finds a token made under an older
-- pepper on the refused path), so that PostgreSQL can keep one generic plan for the statement
-- instead of planning it on every call.
--
-- Returns no row when the token is unknown, expired, already consumed, of another client or sender,
-- asks for scope beyond the grant, or its family is revoked; the caller then finds out which under
-- the family lock. A token never outlives its family, so a family past its absolute lifetime has no
-- unexpired token left to rotate.
-- name: RefreshTokenRotate :one
WITH presented AS (
    -- A token already consumed or expired locks nothing: the refusal that follows does not keep
    -- the family locked in a caller's transaction.
    SELECT t.family_id
    FROM oauth_refresh_token t
    WHERE t.digest = @digest::bytea
      AND t.consumed_at IS NULL
      AND t.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
),
family AS MATERIALIZED (
    SELECT f.id
    FROM oauth_family f
    JOIN presented p ON p.family_id = f.id
    WHERE f.revoked_at IS NULL
      -- IS TRUE keeps the client out of index selection: the family comes from the presented
      -- token's primary key, whatever the statistics say about the client.
      AND (f.client_id = @client_id::text) IS TRUE
      AND (f.sender_thumbprint IS NULL
          OR f.sender_thumbprint = sqlc.narg('sender_thumbprint')::text)
      AND (sqlc.narg('scope')::text[] IS NULL OR sqlc.narg('scope')::text[] <@ f.scope)
    FOR NO KEY UPDATE OF f
),
grace AS (
    UPDATE oauth_refresh_token t
    SET grace_uses = t.grace_uses + 1
    FROM family f
    WHERE t.digest = sqlc.narg('grace_parent')::bytea
      AND t.family_id = f.id
      AND t.consumed_at IS NOT NULL
    RETURNING t.digest
),
consumed AS (
    UPDATE oauth_refresh_token t
    SET consumed_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        grace_ciphertext = NULL
    FROM family f
    WHERE t.digest = @digest::bytea
      AND t.family_id = f.id
      AND t.consumed_at IS NULL
      AND t.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
      AND (sqlc.narg('grace_parent')::bytea IS NULL OR t.parent_digest = (SELECT digest FROM grace))
    RETURNING t.family_id, t.digest
),
rotated AS (
    UPDATE oauth_family f
    SET last_rotated_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        rotation_count = f.rotation_count + 1,
        -- The family dies when its newest token expires, sooner or later than the one before.
        idle_expires_at = least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
            f.expires_at)
    FROM consumed c
    WHERE f.id = c.family_id
    RETURNING f.id, f.client_id, f.user_id, f.scope AS granted_scope, f.expires_at AS family_expires_at,
        coalesce(sqlc.narg('grace_parent')::bytea, c.digest) AS parent_digest
),
successor AS (
    INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope, created_at,
        expires_at, grace_ciphertext)
    SELECT @successor_digest::bytea, @pepper_id::text, r.id, r.parent_digest,
        coalesce(sqlc.narg('scope')::text[], r.granted_scope),
        coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval, r.family_expires_at),
        sqlc.narg('grace_ciphertext')::bytea
    FROM rotated r
    RETURNING family_id, scope, expires_at
)
SELECT r.id AS family_id, r.client_id, r.user_id, r.family_expires_at, s.scope, s.expires_at
FROM rotated r
JOIN successor s ON s.family_id = r.id;

-- RefreshTokenGraceReuse counts one more presentation of a consumed parent within the grace window,
-- whose holder gets the family's unused live token back. The caller holds the family lock.
-- name: RefreshTokenGraceReuse :execrows
UPDATE oauth_refresh_token
SET grace_uses = grace_uses + 1
WHERE digest = @digest::bytea
  AND consumed_at IS NOT NULL;

-- RefreshTokenClearGraceCiphertexts deletes one batch of ciphertexts older than the longest grace
-- window: no client can use them any more.
-- name: RefreshTokenClearGraceCiphertexts :execrows
UPDATE oauth_refresh_token
SET grace_ciphertext = NULL
WHERE digest IN (
    SELECT t.digest
    FROM oauth_refresh_token t
    WHERE t.grace_ciphertext IS NOT NULL
      AND t.created_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @grace_window::interval
    ORDER BY t.created_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
);
