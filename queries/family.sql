-- FamilyCreate starts a grant: a new family with its first refresh token, in one row, and its
-- first access token when access_key is given. The id is chosen by the caller, because the tokens
-- carry it. The token's idle lifetime never reaches past the family's absolute lifetime, and
-- neither does the access token's.
-- name: FamilyCreate :one
WITH clock AS (
    SELECT n.now, least(n.now + @ttl::interval, n.now + sqlc.narg('lifetime')::interval) AS idle_expires_at,
        least(n.now + sqlc.narg('access_ttl')::interval, n.now + sqlc.narg('lifetime')::interval) AS access_expires_at
    FROM (SELECT coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS now) n
),
family AS (
    INSERT INTO oauth_family (id, client_id, user_id, scope, created_at, expires_at, sender_thumbprint,
        idle_expires_at, token_digest, token_pepper_id, token_scope, auth_time, acr, amr, audience,
        session_id, user_agent, ip, label, access_expires_at, current_access_key, current_access_type,
        current_access_audience, current_access_issued_at, current_access_expires_at)
    SELECT @id::uuid, @client_id::text, @user_id::text, @scope::text[], c.now, c.now + sqlc.narg('lifetime')::interval,
        sqlc.narg('sender_thumbprint')::text, c.idle_expires_at,
        @digest::bytea, @pepper_id::text, @scope::text[], sqlc.narg('auth_time')::timestamptz,
        sqlc.narg('acr')::text, sqlc.narg('amr')::text[], @audience::text[], sqlc.narg('session_id')::text,
        sqlc.narg('user_agent')::text, sqlc.narg('ip')::text, sqlc.narg('label')::text,
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN c.access_expires_at END,
        sqlc.narg('access_key')::bytea,
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN @access_token_type::text END,
        sqlc.narg('access_audience')::text[],
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN c.now END,
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN c.access_expires_at END
    FROM clock c
    RETURNING id, client_id, user_id, token_scope, audience, sender_thumbprint, created_at,
        expires_at, idle_expires_at, access_expires_at
),
access AS (
    INSERT INTO oauth_access_token (family_id, key, jwt, standalone, pepper_id, client_id, subject,
        scope, audience, token_type, sender_thumbprint, issued_at, expires_at)
    SELECT f.id, sqlc.narg('access_key')::bytea, @access_jwt::boolean, false, sqlc.narg('access_pepper_id')::text,
        f.client_id, f.user_id, f.token_scope, coalesce(sqlc.narg('access_audience')::text[], f.audience),
        @access_token_type::text, f.sender_thumbprint, f.created_at, f.access_expires_at
    FROM family f
    WHERE sqlc.narg('access_key')::bytea IS NOT NULL
)
SELECT f.id, f.created_at, f.expires_at AS family_expires_at, f.idle_expires_at AS expires_at,
    f.access_expires_at
FROM family f;

-- FamilyDelete erases a family, its live token and the code that produced it (ON DELETE CASCADE),
-- for example when its user's account is deleted; the caller deletes its tombstones and access
-- tokens next (RefreshTombstoneDeleteByFamily, AccessTokenDeleteByFamily). Unlike a revocation it leaves no evidence: a later replay of
-- its tokens is not found.
-- name: FamilyDelete :one
WITH deleted AS (
    DELETE FROM oauth_family
    WHERE id = @id::uuid
    RETURNING id, revoked_at, access_expires_at
),
-- Announced in the revocation feed, as a revocation is, while an access token of the family may
-- still be used (a revoked family was announced when it was revoked).
feed AS (
    INSERT INTO oauth_revocation (family_id, revoked_at, expires_at)
    SELECT d.id, coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), d.access_expires_at
    FROM deleted d
    WHERE d.revoked_at IS NULL
      AND d.access_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
)
SELECT count(*) AS deleted
FROM deleted;

-- FamilyDeleteExpired deletes one batch of families whose newest token expired before the cutoff,
-- with all of their tombstones (one index probe per family, whatever the statistics say about how
-- tokens spread over families) and the code that produced them (ON DELETE CASCADE). Until then a family
-- keeps its tombstones and its revocation mark, so a replay is recognised for as long as any token
-- of the family could be presented (I4).
--
-- A batch is bounded by tokens, not families: a family that rotated for months holds thousands of
-- tombstones. It locks the oldest dead families it can, at most max_families of them, skipping
-- those another transaction holds (SKIP LOCKED: several cleaners run at once, none waits on
-- another or on a rotation), and deletes them in order while their tokens (one per issue, one per
-- rotation: rotation_count + 1) add up to at most max_tokens, and always the first, so that a run
-- makes progress; a family is deleted whole, however many tokens it holds. The rest are unlocked
-- at commit. The same count is the tokens deleted. The caller deletes the families' tombstones
-- (family_ids) in a second statement of the same transaction, whose snapshot sees those of a
-- rotation that committed while this one waited for a family's lock. candidates tells the caller
-- whether more may be left.
-- name: FamilyDeleteExpired :one
WITH candidates AS MATERIALIZED (
    -- sweep_day is the day idle_expires_at falls on: the index finds the families of the days up
    -- to the cutoff's, and the families of the cutoff's own day that have not expired yet are
    -- passed over (a run reads them once, in its last batch).
    SELECT f.id, f.idle_expires_at, f.rotation_count + 1 AS tokens
    FROM oauth_family f
    WHERE f.sweep_day <= ((coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval) AT TIME ZONE 'UTC')::date
      AND f.idle_expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
      -- An access token of the family may outlive its refresh tokens: the family, which its
      -- access tokens are active through, stays until they have expired too.
      AND (f.access_expires_at IS NULL
          OR f.access_expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval)
    ORDER BY f.sweep_day
    LIMIT @max_families::integer
    FOR UPDATE SKIP LOCKED
),
sized AS (
    SELECT c.id, c.tokens, sum(c.tokens) OVER (ORDER BY c.idle_expires_at, c.id) AS running
    FROM candidates c
),
doomed AS MATERIALIZED (
    SELECT s.id, s.tokens
    FROM sized s
    WHERE s.running <= @max_tokens::bigint OR s.running = s.tokens
),
families AS (
    DELETE FROM oauth_family f
    USING doomed d
    WHERE f.id = d.id
    RETURNING f.id
)
SELECT count(*)::bigint AS families_deleted, coalesce(sum(d.tokens), 0)::bigint AS tokens_deleted,
    (SELECT count(*) FROM candidates)::bigint AS candidates,
    coalesce(array_agg(x.id), '{}')::uuid[] AS family_ids
FROM families x
JOIN doomed d ON d.id = x.id;

-- name: FamilyGet :one
SELECT sqlc.embed(f)
FROM oauth_family f
WHERE f.id = @id::uuid;

-- FamilyListActiveByUser lists the families of a user that can still be used, newest first: the
-- rows of a "your sessions" page.
-- name: FamilyListActiveByUser :many
SELECT sqlc.embed(f)
FROM oauth_family f
WHERE f.user_id = @user_id::text
  AND f.revoked_at IS NULL
  AND f.idle_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
ORDER BY f.created_at DESC, f.id
LIMIT @max_rows::integer;

-- FamilyLock locks a family. The statements that follow it in the same transaction see every
-- change committed before the lock was granted, and no rotation or revocation of the family can
-- interleave with them. Its own clock was read before it waited for the lock, so it returns none:
-- the caller takes the time from the next statement.
-- name: FamilyLock :one
SELECT f.id
FROM oauth_family f
WHERE f.id = @id::uuid
FOR NO KEY UPDATE;

-- FamilyRevoke marks a family revoked. The row lock orders it against rotations of the same family
-- (I3); a family that is already revoked keeps its first reason. Returns no row when there is no
-- such family.
-- name: FamilyRevoke :one
WITH durable AS MATERIALIZED (
    -- A revocation is committed durably whatever the session's synchronous_commit says: off is
    -- raised to local, so that the commit waits for its WAL to be flushed and a revocation
    -- reported to the caller, above all a replay's (I7), survives a crash of the server. Other
    -- settings are kept: whether it also waits for a standby is the server's choice.
    SELECT set_config('synchronous_commit',
        CASE WHEN current_setting('synchronous_commit') = 'off' THEN 'local'
            ELSE current_setting('synchronous_commit') END, true) AS level
),
family AS MATERIALIZED (
    SELECT f.id, f.client_id, f.user_id, f.session_id, f.revoked_at
    FROM oauth_family f
    CROSS JOIN durable
    WHERE f.id = @id::uuid
    FOR NO KEY UPDATE OF f
),
revoked AS (
    UPDATE oauth_family f
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        revoked_reason = @reason::text
    FROM family locked
    WHERE f.id = @id::uuid
      AND f.id = locked.id
      AND locked.revoked_at IS NULL
    RETURNING f.id, f.access_expires_at
),
-- Announced in the revocation feed while an access token of the family may still be used.
feed AS (
    INSERT INTO oauth_revocation (family_id, revoked_at, expires_at)
    SELECT r.id, coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), r.access_expires_at
    FROM revoked r
    WHERE r.access_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
)
SELECT f.id, f.client_id, f.user_id, f.session_id, EXISTS (SELECT 1 FROM revoked) AS revoked_now
FROM family f;

-- FamilyRevokeByClient revokes one batch of a client's live families and returns them; callers
-- repeat it until a batch comes back short, so that no statement holds many row locks for long.
-- Rows are locked in id order, so that two bulk revocations over the same families never deadlock.
-- name: FamilyRevokeByClient :many
WITH durable AS MATERIALIZED (
    -- Committed durably, as FamilyRevoke.
    SELECT set_config('synchronous_commit',
        CASE WHEN current_setting('synchronous_commit') = 'off' THEN 'local'
            ELSE current_setting('synchronous_commit') END, true) AS level
),
batch AS MATERIALIZED (
    SELECT f.id
    FROM oauth_family f
    CROSS JOIN durable
    WHERE f.client_id = @client_id::text
      AND f.revoked_at IS NULL
    ORDER BY f.id
    LIMIT @batch_size::integer
    FOR NO KEY UPDATE OF f
),
revoked AS (
    UPDATE oauth_family f
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        revoked_reason = @reason::text
    FROM batch b
    WHERE f.id = b.id
    RETURNING f.id, f.client_id, f.user_id, f.session_id, f.access_expires_at
),
-- Announced in the revocation feed while an access token of the family may still be used.
feed AS (
    INSERT INTO oauth_revocation (family_id, revoked_at, expires_at)
    SELECT r.id, coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), r.access_expires_at
    FROM revoked r
    WHERE r.access_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
    ORDER BY r.id
)
SELECT r.id, r.client_id, r.user_id, r.session_id
FROM revoked r;

-- FamilyRevokeByUser revokes one batch of a user's live families, at every client or at one, and
-- returns them; callers repeat it until a batch comes back short. Rows are locked in id order.
-- name: FamilyRevokeByUser :many
WITH durable AS MATERIALIZED (
    -- Committed durably, as FamilyRevoke.
    SELECT set_config('synchronous_commit',
        CASE WHEN current_setting('synchronous_commit') = 'off' THEN 'local'
            ELSE current_setting('synchronous_commit') END, true) AS level
),
batch AS MATERIALIZED (
    SELECT f.id
    FROM oauth_family f
    CROSS JOIN durable
    WHERE f.user_id = @user_id::text
      AND f.client_id = coalesce(sqlc.narg('client_id')::text, f.client_id)
      AND f.revoked_at IS NULL
    ORDER BY f.id
    LIMIT @batch_size::integer
    FOR NO KEY UPDATE OF f
),
revoked AS (
    UPDATE oauth_family f
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        revoked_reason = @reason::text
    FROM batch b
    WHERE f.id = b.id
    RETURNING f.id, f.client_id, f.user_id, f.session_id, f.access_expires_at
),
-- Announced in the revocation feed while an access token of the family may still be used.
feed AS (
    INSERT INTO oauth_revocation (family_id, revoked_at, expires_at)
    SELECT r.id, coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), r.access_expires_at
    FROM revoked r
    WHERE r.access_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
    ORDER BY r.id
)
SELECT r.id, r.client_id, r.user_id, r.session_id
FROM revoked r;
