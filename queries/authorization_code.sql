-- name: AuthorizationCodeCreate :one
INSERT INTO oauth_authorization_code (digest, pepper_id, client_id, user_id, redirect_uri, scope,
    code_challenge, code_challenge_method, nonce, resources, dpop_jkt, session, created_at, expires_at,
    auth_time, acr, amr, session_id, user_agent, ip, label)
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
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval,
    sqlc.narg('auth_time')::timestamptz,
    sqlc.narg('acr')::text,
    sqlc.narg('amr')::text[],
    sqlc.narg('session_id')::text,
    sqlc.narg('user_agent')::text,
    sqlc.narg('ip')::text,
    sqlc.narg('label')::text
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
-- refresh token, and the first access token when access_key is given, recording the family on the
-- code, all in one statement: either all of it happens or none of it. The family takes the claims
-- the authorization request carried, and the code's resources as its audience. The code's row lock
-- makes concurrent exchanges of one code wait here and then find it consumed, so exactly one
-- succeeds. The caller has verified PKCE against the stored challenge; client, redirect URI and
-- expiry are checked again here, atomically with the consume. The caller passes the digest under
-- which AuthorizationCodeGet found the code. Returns no row when the code is unknown, consumed,
-- expired or not the client's.
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
      AND (sqlc.narg('access_audience')::text[] IS NULL OR cardinality(c.resources) = 0
          OR sqlc.narg('access_audience')::text[] <@ c.resources)
    RETURNING c.family_id, c.client_id, c.user_id, c.scope, c.resources, c.auth_time, c.acr, c.amr,
        c.session_id, c.user_agent, c.ip, c.label
),
clock AS (
    SELECT n.now, least(n.now + @ttl::interval, n.now + sqlc.narg('lifetime')::interval) AS idle_expires_at,
        least(n.now + sqlc.narg('access_ttl')::interval, n.now + sqlc.narg('lifetime')::interval) AS access_expires_at
    FROM (SELECT coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS now) n
),
family AS (
    INSERT INTO oauth_family (id, client_id, user_id, scope, created_at, expires_at, sender_thumbprint,
        idle_expires_at, token_digest, token_pepper_id, token_scope, auth_time, acr, amr, audience,
        session_id, user_agent, ip, label, access_expires_at, current_access_key, current_access_type,
        current_access_audience, current_access_issued_at, current_access_expires_at)
    SELECT c.family_id, c.client_id, c.user_id, c.scope, k.now, k.now + sqlc.narg('lifetime')::interval,
        sqlc.narg('sender_thumbprint')::text, k.idle_expires_at,
        @refresh_digest::bytea, @refresh_pepper_id::text, c.scope, c.auth_time, c.acr, c.amr,
        c.resources, c.session_id, c.user_agent, c.ip, c.label,
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN k.access_expires_at END,
        sqlc.narg('access_key')::bytea,
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN @access_token_type::text END,
        sqlc.narg('access_audience')::text[],
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN k.now END,
        CASE WHEN sqlc.narg('access_key')::bytea IS NOT NULL THEN k.access_expires_at END
    FROM code c
    CROSS JOIN clock k
    RETURNING id, client_id, user_id, token_scope, audience, sender_thumbprint, created_at,
        expires_at, idle_expires_at, access_expires_at, auth_time, acr, amr, session_id, user_agent,
        ip, label
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
SELECT f.id AS family_id, f.expires_at AS family_expires_at, f.idle_expires_at AS expires_at,
    f.created_at, f.access_expires_at, f.audience, f.auth_time, f.acr, f.amr, f.session_id,
    f.user_agent, f.ip, f.label
FROM family f;

-- AuthorizationCodeGet reads a code, whatever its state, with the claims of its grant and the
-- state of the family it produced.
-- name: AuthorizationCodeGet :one
SELECT c.digest, c.pepper_id, c.client_id, c.user_id, c.redirect_uri, c.scope, c.code_challenge,
    c.code_challenge_method, c.nonce, c.resources, c.dpop_jkt, c.session, c.created_at, c.expires_at,
    c.consumed_at, c.family_id, c.auth_time, c.acr, c.amr, c.session_id, c.user_agent, c.ip, c.label,
    -- A lookup by the code's family id, whatever the statistics say: one partition of a table
    -- partitioned by family.
    (SELECT f.revoked_at FROM oauth_family f WHERE f.id = c.family_id) AS family_revoked_at,
    c.expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS expired
FROM oauth_authorization_code c
WHERE c.digest = ANY(@digests::bytea[]);
