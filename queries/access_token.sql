-- Introspection reads an access token in one of three ways, each one statement that probes one
-- primary key, but the last, which probes two:
--
--   - AccessTokenGetCurrent: the access token issued with a family's live refresh token, which
--     the family row names (current_access_*): the family row answers alone. This is the token a
--     client uses until it refreshes.
--   - AccessTokenGetStandalone: a standalone token (its grant id says so), which has no family.
--   - AccessTokenGet: any other token of a family, from its own row and the family's.
--
-- An opaque token is looked up by its digest under one pepper of the ring (the current one first;
-- a single value, so that PostgreSQL keeps one generic plan that probes the primary key), a JWT by
-- the random part of its jti (12 bytes, never the length of a digest). active is the verdict: not
-- revoked itself, not expired, and a token of a family only while the family row is there and not
-- revoked. Revoking a family writes no access token: its tokens turn inactive at once.
--
-- The lists (scope, audience, amr) come as one space-separated string each, which is cheaper to
-- decode than an array: none of their values may hold a space.

-- name: AccessTokenGetCurrent :one
SELECT f.client_id, f.user_id AS subject, array_to_string(f.token_scope, ' ') AS scope,
    array_to_string(coalesce(f.current_access_audience, f.audience), ' ') AS audience,
    f.current_access_type::text AS token_type, f.sender_thumbprint,
    f.current_access_issued_at::timestamptz AS issued_at,
    f.current_access_expires_at::timestamptz AS expires_at, f.auth_time, f.acr,
    coalesce(array_to_string(f.amr, ' '), '')::text AS amr, f.session_id,
    (f.revoked_at IS NULL
        AND f.current_access_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()))::boolean AS active
FROM oauth_family f
WHERE f.id = @family_id::uuid
  AND f.current_access_key = @key::bytea;

-- name: AccessTokenGetStandalone :one
SELECT a.client_id, a.subject, array_to_string(a.scope, ' ') AS scope,
    array_to_string(a.audience, ' ') AS audience, a.token_type, a.sender_thumbprint, a.issued_at,
    a.expires_at, NULL::timestamptz AS auth_time, NULL::text AS acr, ''::text AS amr,
    NULL::text AS session_id,
    (a.revoked_at IS NULL
        AND a.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()))::boolean AS active
FROM oauth_access_token a
WHERE a.family_id = @family_id::uuid
  AND a.key = @key::bytea
  AND a.standalone;

-- name: AccessTokenGet :one
SELECT a.client_id, a.subject, array_to_string(a.scope, ' ') AS scope,
    array_to_string(a.audience, ' ') AS audience, a.token_type, a.sender_thumbprint, a.issued_at,
    a.expires_at, f.auth_time, f.acr, coalesce(array_to_string(f.amr, ' '), '')::text AS amr,
    f.session_id,
    (a.revoked_at IS NULL
        AND a.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
        AND f.revoked_at IS NULL)::boolean AS active
FROM oauth_access_token a
JOIN oauth_family f ON f.id = @family_id::uuid
WHERE a.family_id = @family_id::uuid
  AND a.key = @key::bytea
  AND NOT a.standalone;

-- AccessTokenCreateForFamily issues an access token of a live family, with the scope of its live
-- refresh token and never past the family's absolute lifetime, and makes it the family's current
-- one: for a grace reuse, which hands the live refresh token out again with a new access token. Returns no row when the family is revoked
-- or gone, or the audience is not one the grant allows.
-- name: AccessTokenCreateForFamily :one
WITH family AS (
    UPDATE oauth_family f
    SET access_expires_at = greatest(f.access_expires_at,
            least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval, f.expires_at)),
        current_access_key = @key::bytea,
        current_access_type = @token_type::text,
        current_access_audience = sqlc.narg('audience')::text[],
        current_access_issued_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        current_access_expires_at = least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
            f.expires_at)
    WHERE f.id = @family_id::uuid
      AND f.revoked_at IS NULL
      AND (sqlc.narg('audience')::text[] IS NULL OR cardinality(f.audience) = 0
          OR sqlc.narg('audience')::text[] <@ f.audience)
    RETURNING f.id, f.client_id, f.user_id, f.token_scope, f.audience, f.sender_thumbprint, f.expires_at
)
INSERT INTO oauth_access_token (family_id, key, jwt, standalone, pepper_id, client_id, subject,
    scope, audience, token_type, sender_thumbprint, issued_at, expires_at)
SELECT f.id, @key::bytea, @jwt::boolean, false, sqlc.narg('pepper_id')::text, f.client_id, f.user_id,
    f.token_scope, coalesce(sqlc.narg('audience')::text[], f.audience), @token_type::text,
    f.sender_thumbprint, coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
    least(coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval, f.expires_at)
FROM family f
RETURNING issued_at, expires_at, scope, audience;

-- AccessTokenCreateStandalone issues an access token of a grant without a refresh token
-- (client_credentials, or an authorization without offline access), under a grant id of its own.
-- name: AccessTokenCreateStandalone :one
INSERT INTO oauth_access_token (family_id, key, jwt, standalone, pepper_id, client_id, subject,
    scope, audience, token_type, sender_thumbprint, issued_at, expires_at)
VALUES (@grant_id::uuid, @key::bytea, @jwt::boolean, true, sqlc.narg('pepper_id')::text, @client_id::text,
    @subject::text, @scope::text[], @audience::text[], @token_type::text, sqlc.narg('sender_thumbprint')::text,
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval)
RETURNING issued_at, expires_at;

-- AccessTokenRevoke revokes one access token of a client, durably (as FamilyRevoke), and announces
-- a JWT in the revocation feed until it expires. Returns no row when there is no such token of the
-- client; revoked_now is false when it was revoked before.
-- name: AccessTokenRevoke :one
WITH durable AS MATERIALIZED (
    SELECT set_config('synchronous_commit',
        CASE WHEN current_setting('synchronous_commit') = 'off' THEN 'local'
            ELSE current_setting('synchronous_commit') END, true) AS level
),
token AS MATERIALIZED (
    SELECT a.family_id, a.key, a.jwt, a.revoked_at, a.expires_at
    FROM oauth_access_token a
    CROSS JOIN durable
    WHERE a.family_id = @family_id::uuid
      AND a.key = ANY(@keys::bytea[])
      AND a.jwt = @jwt::boolean
      AND a.client_id = @client_id::text
    FOR NO KEY UPDATE OF a
),
revoked AS (
    UPDATE oauth_access_token a
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
    FROM token t
    WHERE a.family_id = @family_id::uuid
      AND a.family_id = t.family_id
      AND a.key = t.key
      AND t.revoked_at IS NULL
    RETURNING a.family_id, a.key, a.jwt, a.expires_at
),
feed AS (
    INSERT INTO oauth_revocation (family_id, jti, revoked_at, expires_at)
    SELECT r.family_id, rtrim(translate(encode(uuid_send(r.family_id) || r.key, 'base64'), '+/', '-_'), '='),
        coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), r.expires_at
    FROM revoked r
    WHERE r.jwt
      AND r.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
),
-- The family row no longer names it: introspection finds its revoked row.
uncurrent AS (
    UPDATE oauth_family f
    SET current_access_key = NULL
    FROM token t
    WHERE f.id = @family_id::uuid
      AND f.current_access_key = t.key
)
SELECT t.family_id, EXISTS (SELECT 1 FROM revoked) AS revoked_now
FROM token t;

-- AccessTokenRevokeStandalone revokes one batch of the live standalone access tokens of a user, of
-- a client, or of a user at one client, durably, announcing the JWTs in the feed; callers repeat
-- it until a batch comes back short. A family's tokens need no statement of their own: they
-- follow their family. Rows are locked in key order, so that two bulk revocations never deadlock.
-- name: AccessTokenRevokeStandalone :execrows
WITH durable AS MATERIALIZED (
    SELECT set_config('synchronous_commit',
        CASE WHEN current_setting('synchronous_commit') = 'off' THEN 'local'
            ELSE current_setting('synchronous_commit') END, true) AS level
),
batch AS MATERIALIZED (
    SELECT a.family_id, a.key
    FROM oauth_access_token a
    CROSS JOIN durable
    WHERE a.standalone
      AND a.client_id = coalesce(sqlc.narg('client_id')::text, a.client_id)
      AND a.subject = coalesce(sqlc.narg('subject')::text, a.subject)
      AND a.revoked_at IS NULL
      AND a.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
    ORDER BY a.family_id, a.key
    LIMIT @batch_size::integer
    FOR NO KEY UPDATE OF a
),
revoked AS (
    UPDATE oauth_access_token a
    SET revoked_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
    FROM batch b
    WHERE a.family_id = b.family_id
      AND a.key = b.key
    RETURNING a.family_id, a.key, a.jwt, a.expires_at
)
INSERT INTO oauth_revocation (family_id, jti, revoked_at, expires_at)
SELECT r.family_id, CASE WHEN r.jwt
        THEN rtrim(translate(encode(uuid_send(r.family_id) || r.key, 'base64'), '+/', '-_'), '=') END,
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()), r.expires_at
FROM revoked r;

-- AccessTokenDeleteByFamily deletes the access tokens of a family whose row is deleted.
-- name: AccessTokenDeleteByFamily :execrows
DELETE FROM oauth_access_token
WHERE family_id = @family_id::uuid;

-- AccessTokenDeleteExpired deletes one batch of access tokens that expired before the cutoff.
-- name: AccessTokenDeleteExpired :execrows
DELETE FROM oauth_access_token
WHERE (family_id, key) IN (
    SELECT a.family_id, a.key
    FROM oauth_access_token a
    WHERE a.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
    ORDER BY a.expires_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
);

-- RevocationFeed returns the revocations after the cursor (xid, seq) whose transactions have all
-- ended, in order: every transaction with an xid below the oldest one still running has committed
-- or rolled back, so no entry can appear later below the last one returned. Entries whose tokens
-- have expired are left out; cleanup deletes them.
-- name: RevocationFeed :many
SELECT r.xid, r.seq, r.family_id, r.jti, r.revoked_at, r.expires_at
FROM oauth_revocation r
WHERE (r.xid, r.seq) > (@after_xid::bigint, @after_seq::bigint)
  AND r.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
  AND r.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
ORDER BY r.xid, r.seq
LIMIT @max_rows::integer;

-- RevocationFeedNextXID is the xid the server assigns next: a feed cursor at or beyond it was made
-- on another cluster (the database was restored, or replicated logically, there).
-- name: RevocationFeedNextXID :one
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid;

-- RevocationDeleteExpired deletes one batch of feed entries whose tokens have all expired.
-- name: RevocationDeleteExpired :execrows
DELETE FROM oauth_revocation
WHERE (xid, seq) IN (
    SELECT r.xid, r.seq
    FROM oauth_revocation r
    WHERE r.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
    ORDER BY r.expires_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
);
