-- RefreshTokenGet reads a presented token with its family, without changing anything: the family's
-- live token (named by the family row), or a consumed one (a row of oauth_refresh_tombstone). The token may be presented under any pepper of the ring, hence a digest
-- per pepper. The row carries the family's live token too, for a grace reuse. now is the clock the
-- statement compared with: run after FamilyLock, it is taken after the lock was granted, so that
-- what the caller writes under the lock is never dated before what it waited for.
-- name: RefreshTokenGet :one
SELECT f.id AS family_id, f.client_id, f.user_id, f.scope AS granted_scope,
    f.expires_at AS family_expires_at, f.sender_thumbprint, f.revoked_at, f.revoked_reason,
    coalesce(t.digest, f.token_digest)::bytea AS digest,
    coalesce(t.pepper_id, f.token_pepper_id)::text AS pepper_id,
    (CASE WHEN t.digest IS NULL THEN f.parent_digest ELSE t.parent_digest END)::bytea AS parent_digest,
    (CASE WHEN t.digest IS NULL THEN f.token_scope ELSE coalesce(t.scope, f.scope) END)::text[] AS scope,
    coalesce(t.created_at, f.last_rotated_at, f.created_at)::timestamptz AS created_at,
    coalesce(t.expires_at, f.idle_expires_at)::timestamptz AS expires_at,
    t.consumed_at,
    t.successor_sealed,
    f.token_digest AS live_digest, f.token_pepper_id AS live_pepper_id, f.token_scope AS live_scope,
    f.idle_expires_at AS live_expires_at, f.parent_digest AS live_parent_digest, f.parent_reuses,
    f.audience, f.auth_time, f.acr, f.amr, f.session_id, f.user_agent, f.ip, f.label,
    f.created_at AS family_created_at, f.last_rotated_at,
    coalesce(t.expires_at, f.idle_expires_at) <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS expired,
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())::timestamptz AS now
FROM oauth_family f
LEFT JOIN oauth_refresh_tombstone t ON t.family_id = f.id AND t.digest = ANY(@digests::bytea[])
WHERE f.id = @family_id::uuid
  AND (t.digest IS NOT NULL OR f.token_digest = ANY(@digests::bytea[]));

-- RefreshTokenLegacyFamily finds the family of a token minted before migration 5, which does not
-- carry it.
-- name: RefreshTokenLegacyFamily :one
SELECT family_id
FROM oauth_refresh_token_legacy
WHERE digest = ANY(@digests::bytea[])
LIMIT 1;

-- RefreshTokenRotate consumes the presented token and issues its successor in one statement, so
-- both commit together or not at all (I2): the family row takes the successor as its live token,
-- and the presented token becomes a tombstone. A concurrent rotation of the same token waits for
-- the row's lock and then finds another live token; a revocation that commits first leaves
-- nothing to rotate (I3). The family has one live token by construction (I1). Nothing changes
-- unless the client, the sender key, the lifetimes and the scope all allow the rotation (I5). The
-- successor carries the requested scope, or else the granted one (RFC 6749 §6), and never outlives
-- the family.
--
-- The update changes no indexed column (sweep_day only when the live token's expiry moves to
-- another day), so it is a heap-only update: no index entry. It fires no trigger. The tombstone
-- keeps the successor encrypted under a key only the presented token's holder can derive
-- (successor_sealed), so that a lost response retried within the grace window gets the same
-- successor back.
--
-- The digest is a single value (the current pepper's; the caller finds a token made under an older
-- pepper on the refused path), so that PostgreSQL can keep one generic plan for the statement.
--
-- Returns no row when the token is not the family's live token (unknown, consumed), expired, of
-- another client or sender, asks for scope beyond the grant, or its family is revoked; the caller
-- then finds out which under the family lock.
-- name: RefreshTokenRotate :one
WITH rotated AS (
    UPDATE oauth_family f
    SET token_digest = @successor_digest::bytea,
        token_pepper_id = @pepper_id::text,
        token_scope = coalesce(sqlc.narg('scope')::text[], f.scope),
        parent_digest = f.token_digest,
        parent_reuses = 0,
        last_rotated_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        rotation_count = f.rotation_count + 1,
        -- The family dies when its newest token expires, sooner or later than the one before.
        idle_expires_at = least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
            f.expires_at),
        -- The UTC day of idle_expires_at, the day cleanup finds the family by.
        sweep_day = (least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
            f.expires_at) AT TIME ZONE 'UTC')::date,
        -- Where the token is used from now, for a "your devices" page, when the caller says.
        user_agent = coalesce(sqlc.narg('user_agent')::text, f.user_agent),
        ip = coalesce(sqlc.narg('ip')::text, f.ip),
        access_expires_at = CASE WHEN sqlc.narg('access_key')::bytea IS NULL THEN f.access_expires_at
            ELSE greatest(f.access_expires_at, least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
                + sqlc.narg('access_ttl')::interval, f.expires_at)) END,
        -- The access token issued with the successor, or none: the one issued with the consumed
        -- token (of its scope) is found in oauth_access_token from now on.
        current_access_key = sqlc.narg('access_key')::bytea,
        current_access_type = CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN @access_token_type::text END,
        current_access_audience = sqlc.narg('access_audience')::text[],
        current_access_issued_at = CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL
            THEN coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) END,
        current_access_expires_at = CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL
            THEN least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + sqlc.narg('access_ttl')::interval,
                f.expires_at) END
    -- The consumed token's columns for its tombstone, as the row held them before this update.
    -- The update locks the row; one that waited for a concurrent change of it checks the
    -- conditions again on the row as that change left it. Every change that leaves the presented
    -- token live (a grace reuse counts parent_reuses) leaves these columns as they were.
    FROM oauth_family consumed
    WHERE f.id = @family_id::uuid
      AND consumed.id = @family_id::uuid
      AND f.token_digest = @digest::bytea
      AND f.idle_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
      -- IS TRUE keeps the client out of index selection: the family comes from its primary key,
      -- whatever the statistics say about the client.
      AND (f.client_id = @client_id::text) IS TRUE
      AND (f.sender_thumbprint IS NULL
          OR f.sender_thumbprint = sqlc.narg('sender_thumbprint')::text)
      AND (sqlc.narg('scope')::text[] IS NULL OR sqlc.narg('scope')::text[] <@ f.scope)
      -- An access token's audience is one the grant allows (RFC 8707 §2.2).
      AND (sqlc.narg('access_audience')::text[] IS NULL OR cardinality(f.audience) = 0
          OR sqlc.narg('access_audience')::text[] <@ f.audience)
      -- A DPoP-bound access token only for a family bound to a key.
      AND (@access_token_type::text <> 'DPoP' OR f.sender_thumbprint IS NOT NULL)
      -- The rules of what this statement writes into the live token's columns and the tombstone,
      -- which no trigger or CHECK constraint evaluates on this path (schema 7): a broken one raises
      -- its check_violation and nothing changes. NULL passes, as in a CHECK constraint. The access
      -- token's own row checks its key and audience; the audience is checked here too, as the family
      -- keeps it without a key. The CASE ends in a condition on the row (the family is not
      -- revoked), so that it is evaluated in the family's scan, after the cheaper conditions,
      -- rather than as a filter node of its own that every execution would set up again: a broken
      -- value raises when the row otherwise qualifies (or, where a plan evaluates it first,
      -- whatever the row); an unknown token with one is refused either way.
      AND CASE
          WHEN octet_length(@successor_digest::bytea) <> 32
              THEN oauth_check_violation('oauth_family_token_digest_check', 'oauth_family')
          WHEN @pepper_id::text !~ '^[A-Za-z0-9._-]{1,32}$'
              THEN oauth_check_violation('oauth_family_token_pepper_id_check', 'oauth_family')
          WHEN octet_length(sqlc.narg('user_agent')::text) > 512 OR octet_length(sqlc.narg('ip')::text) > 45
              THEN oauth_check_violation('oauth_family_claims_check', 'oauth_family')
          WHEN cardinality(sqlc.narg('access_audience')::text[]) > 32
              THEN oauth_check_violation('oauth_family_current_access_check', 'oauth_family')
          WHEN octet_length(sqlc.narg('successor_sealed')::bytea) NOT BETWEEN 28 AND 128
              THEN oauth_check_violation('oauth_refresh_tombstone_successor_sealed_check', 'oauth_refresh_tombstone')
          ELSE f.revoked_at IS NULL END
    RETURNING f.id, f.client_id, f.user_id, f.expires_at AS family_expires_at, f.token_scope,
        f.idle_expires_at, f.sender_thumbprint, f.audience, f.auth_time, f.acr, f.amr, f.session_id,
        f.user_agent, f.ip, f.label, f.created_at, f.last_rotated_at, f.current_access_expires_at,
        consumed.token_digest AS consumed_digest,
        consumed.token_pepper_id AS consumed_pepper_id, consumed.parent_digest AS consumed_parent_digest,
        -- A tombstone of the granted scope keeps none (NULL).
        nullif(consumed.token_scope, consumed.scope) AS consumed_scope,
        coalesce(consumed.last_rotated_at, consumed.created_at) AS consumed_created_at,
        consumed.idle_expires_at AS consumed_expires_at
),
tombstone AS (
    INSERT INTO oauth_refresh_tombstone (family_id, digest, pepper_id, parent_digest, scope,
        created_at, expires_at, consumed_at, successor_sealed)
    SELECT r.id, r.consumed_digest, r.consumed_pepper_id, r.consumed_parent_digest, r.consumed_scope,
        r.consumed_created_at, r.consumed_expires_at,
        -- Never before the token was issued, whatever the caller's clock says.
        greatest(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), r.consumed_created_at),
        sqlc.narg('successor_sealed')::bytea
    FROM rotated r
),
access AS (
    INSERT INTO oauth_access_token (family_id, key, jwt, standalone, pepper_id, client_id, subject,
        scope, audience, token_type, sender_thumbprint, issued_at, expires_at)
    SELECT r.id, sqlc.narg('access_key')::bytea, @access_jwt::boolean, false, sqlc.narg('access_pepper_id')::text,
        r.client_id, r.user_id, r.token_scope, coalesce(sqlc.narg('access_audience')::text[], r.audience),
        @access_token_type::text, r.sender_thumbprint, r.last_rotated_at, r.current_access_expires_at
    FROM rotated r
    WHERE sqlc.narg('access_key')::bytea IS NOT NULL
)
SELECT r.id AS family_id, r.client_id, r.user_id, r.family_expires_at, r.token_scope AS scope,
    r.idle_expires_at AS expires_at, r.audience, r.auth_time, r.acr, r.amr, r.session_id,
    r.user_agent, r.ip, r.label, r.created_at, r.last_rotated_at,
    r.current_access_expires_at AS access_expires_at
FROM rotated r;

-- RefreshTokenGraceReplace replaces the family's unused live token with a new one under the same
-- parent, for the parent's holder presenting it again within the grace window when the live token
-- cannot be handed out again (it was minted before sealed copies were kept, or under a pepper
-- retired since). The replaced token becomes a tombstone, the parent's tombstone keeps the new
-- successor sealed for its holder, and the parent's reuse count goes up, so the family never holds
-- two live tokens. The caller holds the family lock and has checked the rest.
-- name: RefreshTokenGraceReplace :one
WITH live AS MATERIALIZED (
    SELECT f.id, f.token_digest, f.token_pepper_id, f.token_scope, f.parent_digest,
        coalesce(f.last_rotated_at, f.created_at) AS token_created_at, f.idle_expires_at,
        nullif(f.token_scope, f.scope) AS tombstone_scope
    FROM oauth_family f
    WHERE f.id = @family_id::uuid
      AND f.parent_digest = @parent_digest::bytea
      AND f.revoked_at IS NULL
      -- What this statement writes into the live token's columns, checked as RefreshTokenRotate
      -- checks it; the scope, which RefreshTokenRotate's condition keeps within the grant, too.
      AND CASE
          WHEN octet_length(@successor_digest::bytea) <> 32
              THEN oauth_check_violation('oauth_family_token_digest_check', 'oauth_family')
          WHEN @pepper_id::text !~ '^[A-Za-z0-9._-]{1,32}$'
              THEN oauth_check_violation('oauth_family_token_pepper_id_check', 'oauth_family')
          WHEN NOT sqlc.narg('scope')::text[] <@ f.scope
              THEN oauth_check_violation('oauth_family_token_scope_check', 'oauth_family')
          WHEN octet_length(sqlc.narg('successor_sealed')::bytea) NOT BETWEEN 28 AND 128
              THEN oauth_check_violation('oauth_refresh_tombstone_successor_sealed_check', 'oauth_refresh_tombstone')
          ELSE true END
    FOR NO KEY UPDATE OF f
),
rotated AS (
    UPDATE oauth_family f
    SET token_digest = @successor_digest::bytea,
        token_pepper_id = @pepper_id::text,
        token_scope = coalesce(sqlc.narg('scope')::text[], f.scope),
        parent_reuses = f.parent_reuses + 1,
        last_rotated_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        rotation_count = f.rotation_count + 1,
        idle_expires_at = least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
            f.expires_at),
        -- The UTC day of idle_expires_at, the day cleanup finds the family by.
        sweep_day = (least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
            f.expires_at) AT TIME ZONE 'UTC')::date,
        current_access_key = NULL
    FROM live l
    -- The family id again as a value, so that a partitioned table prunes to one partition.
    WHERE f.id = @family_id::uuid
      AND f.id = l.id
    RETURNING f.id, f.client_id, f.user_id, f.expires_at AS family_expires_at, f.token_scope,
        f.idle_expires_at, f.audience, f.auth_time, f.acr, f.amr, f.session_id, f.user_agent, f.ip,
        f.label, f.created_at, f.last_rotated_at, f.current_access_expires_at
),
replaced AS (
    INSERT INTO oauth_refresh_tombstone (family_id, digest, pepper_id, parent_digest, scope,
        created_at, expires_at, consumed_at)
    SELECT l.id, l.token_digest, l.token_pepper_id, l.parent_digest, l.tombstone_scope,
        l.token_created_at, l.idle_expires_at,
        greatest(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), l.token_created_at)
    FROM live l
),
resealed AS (
    UPDATE oauth_refresh_tombstone t
    SET successor_sealed = sqlc.narg('successor_sealed')::bytea
    FROM live l
    WHERE t.family_id = @family_id::uuid
      AND t.family_id = l.id
      AND t.digest = l.parent_digest
)
SELECT r.id AS family_id, r.client_id, r.user_id, r.family_expires_at, r.token_scope AS scope,
    r.idle_expires_at AS expires_at, r.audience, r.auth_time, r.acr, r.amr, r.session_id,
    r.user_agent, r.ip, r.label, r.created_at, r.last_rotated_at,
    r.current_access_expires_at AS access_expires_at
FROM rotated r;

-- RefreshTokenGraceReuse counts one more presentation of the live token's consumed parent within
-- the grace window, whose holder gets the unused live token back. The caller holds the family lock.
-- name: RefreshTokenGraceReuse :execrows
UPDATE oauth_family
SET parent_reuses = parent_reuses + 1
WHERE id = @family_id::uuid
  AND parent_digest = @parent_digest::bytea;

-- RefreshTokenClearSealedSuccessors deletes one batch of sealed successors older than the longest
-- grace window: no client can use them any more.
-- name: RefreshTokenClearSealedSuccessors :execrows
UPDATE oauth_refresh_tombstone
SET successor_sealed = NULL
WHERE (family_id, digest) IN (
    SELECT t.family_id, t.digest
    FROM oauth_refresh_tombstone t
    WHERE t.successor_sealed IS NOT NULL
      AND t.consumed_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @grace_window::interval
    ORDER BY t.consumed_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
);

-- RefreshTombstoneDeleteByFamily deletes the tombstones of a family whose row is deleted. Run after
-- that delete, in the same transaction: no rotation can add a tombstone to the family any more,
-- and its own snapshot sees every tombstone a rotation committed before.
-- name: RefreshTombstoneDeleteByFamily :execrows
DELETE FROM oauth_refresh_tombstone
WHERE family_id = @family_id::uuid;

-- RefreshTombstoneDeleteByFamilies deletes the tombstones of families cleanup deleted, in the same
-- transaction, after it.
-- name: RefreshTombstoneDeleteByFamilies :execrows
DELETE FROM oauth_refresh_tombstone
WHERE family_id = ANY(@family_ids::uuid[]);
