-- StateConsume deletes a state binding and returns it: a second consume, concurrent or later,
-- finds nothing. An expired binding is left for cleanup and not returned.
-- name: StateConsume :one
DELETE FROM oauth_state
WHERE digest = ANY(@digests::bytea[])
  AND expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())
RETURNING client_id, redirect_uri, return_to, data, created_at, expires_at;

-- name: StateCreate :one
INSERT INTO oauth_state (digest, pepper_id, client_id, redirect_uri, return_to, data, created_at,
    expires_at)
VALUES (
    @digest::bytea,
    @pepper_id::text,
    @client_id::text,
    @redirect_uri::text,
    sqlc.narg('return_to')::text,
    @data::text,
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()),
    coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) + @ttl::interval
)
RETURNING expires_at;

-- name: StateDeleteExpired :execrows
DELETE FROM oauth_state
WHERE digest IN (
    SELECT s.digest
    FROM oauth_state s
    WHERE s.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
    ORDER BY s.expires_at
    LIMIT @batch_size::integer
    FOR UPDATE SKIP LOCKED
);

-- StateGet reads a state binding without consuming it, for an authorization request that is read
-- more than once before it is answered (its sign-in page, then its callback). An expired binding
-- is not returned.
-- name: StateGet :one
SELECT client_id, redirect_uri, return_to, data, created_at, expires_at
FROM oauth_state
WHERE digest = ANY(@digests::bytea[])
  AND expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp());
