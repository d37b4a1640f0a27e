-- name: AuthorizationCodeCreate :one
INSERT INTO oauth_authorization_code (digest, pepper_id, client_id, user_id, redirect_uri, scope,
    code_challenge, code_challenge_method, nonce, resources, dpop_jkt, session, created_at, expires_at)
VALUES (
    @digest::bytea,
    @pepper_id::text,
    @client_id::text,
    @user_id::text,
    @redirect_uri::text,
    @scope::text[],
    sqlc.narg('code_challenge')::text,
    sqlc.narg('code_challenge_method')::text,
    sqlc.narg('nonce')::text,
    @resources::text[],
    sqlc.narg('dpop_jkt')::text,
    @session::text,
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval
)
RETURNING expires_at;

-- AuthorizationCodeDeleteExpired deletes one batch of codes that expired unused (or whose exchange
-- was refused). A consumed code goes with the family it produced, not here.
-- name: AuthorizationCodeDeleteExpired :execrows
DELETE FROM oauth_authorization_code
WHERE digest IN (
    SELECT c.digest
    FROM oauth_authorization_code c
    WHERE c.family_id IS NULL
      AND c.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
    ORDER BY c.expires_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
);

-- AuthorizationCodeEndPending deletes the codes of a user, of a client, or of a user at one
-- client, that could still be exchanged: a bulk revocation runs it before it revokes families, so
-- that no code minted before it yields a new live family after it. A code being exchanged
-- meanwhile either commits first, and its family is then revoked by the revocation that follows, or
-- finds nothing to exchange. Consumed codes stay: they are the evidence of their families.
-- The rows are locked in digest order, so that two overlapping bulk revocations never deadlock.
-- name: AuthorizationCodeEndPending :execrows
DELETE FROM oauth_authorization_code
WHERE digest IN (
    SELECT c.digest
    FROM oauth_authorization_code c
    WHERE c.family_id IS NULL
      AND c.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
      AND (sqlc.narg('user_id')::text IS NULL OR c.user_id = sqlc.narg('user_id')::text)
      AND (sqlc.narg('client_id')::text IS NULL OR c.client_id = sqlc.narg('client_id')::text)
    ORDER BY c.digest
    FOR UPDATE
)
  AND family_id IS NULL;

-- AuthorizationCodeExchange consumes a code and creates the family of its grant with the first
-- refresh token, recording the family on the code, all in one statement: either all of it
-- happens or none of it. The code's row lock makes concurrent exchanges of one code wait here and
-- then find it consumed, so exactly one succeeds. The caller has verified PKCE against the stored
-- challenge; client, redirect URI and expiry are checked again here, atomically with the consume.
-- The caller passes the digest under which AuthorizationCodeGet found the code. Returns no row when
-- the code is unknown, consumed, expired or not the client's.
-- name: AuthorizationCodeExchange :one
WITH code AS (
    UPDATE oauth_authorization_code c
    SET consumed_at = coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
        family_id = @family_id::uuid
    WHERE c.digest = @digest::bytea
      AND c.consumed_at IS NULL
      AND c.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
      AND c.client_id = @client_id::text
      AND c.redirect_uri = @redirect_uri::text
    RETURNING c.family_id, c.client_id, c.user_id, c.scope
),
clock AS (
    SELECT n.now, least(n.now + @ttl::interval, n.now + sqlc.narg('lifetime')::interval) AS idle_expires_at
    FROM (SELECT coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS now) n
)
INSERT INTO oauth_family (id, client_id, user_id, scope, created_at, expires_at, sender_thumbprint,
    idle_expires_at, token_digest, token_pepper_id, token_scope)
SELECT c.family_id, c.client_id, c.user_id, c.scope, k.now, k.now + sqlc.narg('lifetime')::interval,
    sqlc.narg('sender_thumbprint')::text, k.idle_expires_at,
    @refresh_digest::bytea, @refresh_pepper_id::text, c.scope
FROM code c
CROSS JOIN clock k
RETURNING id AS family_id, expires_at AS family_expires_at, idle_expires_at AS expires_at;

-- AuthorizationCodeGet reads a code, whatever its state, with the state of the family it produced.
-- name: AuthorizationCodeGet :one
SELECT c.digest, c.pepper_id, c.client_id, c.user_id, c.redirect_uri, c.scope, c.code_challenge,
    c.code_challenge_method, c.nonce, c.resources, c.dpop_jkt, c.session, c.expires_at,
    c.consumed_at, c.family_id,
    -- A lookup by the code's family id, whatever the statistics say: one partition of a table
    -- partitioned by family.
    (SELECT f.revoked_at FROM oauth_family f WHERE f.id = c.family_id) AS family_revoked_at,
    c.expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS expired
FROM oauth_authorization_code c
WHERE c.digest = ANY(@digests::bytea[]);
