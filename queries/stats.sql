-- Counts by state for the operator's view. They scan their tables: run them on demand, not in a
-- hot path.

-- name: StatsAuthorizationCodes :one
SELECT
    count(*) FILTER (WHERE consumed_at IS NULL
        AND expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS pending,
    count(*) FILTER (WHERE consumed_at IS NOT NULL) AS consumed,
    count(*) FILTER (WHERE consumed_at IS NULL
        AND expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS expired
FROM oauth_authorization_code;

-- name: StatsFamilies :one
SELECT
    count(*) FILTER (WHERE revoked_at IS NULL
        AND idle_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS live,
    count(*) FILTER (WHERE revoked_at IS NOT NULL) AS revoked,
    count(*) FILTER (WHERE revoked_at IS NULL
        AND idle_expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS expired
FROM oauth_family;

-- A family holds one unconsumed token: live, revoked with its family, or expired.
-- name: StatsRefreshTokens :one
SELECT
    count(*) FILTER (WHERE f.revoked_at IS NULL
        AND f.idle_expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS live,
    (SELECT count(*) FROM oauth_refresh_tombstone) AS consumed,
    count(*) FILTER (WHERE f.revoked_at IS NOT NULL) AS revoked,
    count(*) FILTER (WHERE f.revoked_at IS NULL
        AND f.idle_expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS expired
FROM oauth_family f;

-- name: StatsStates :one
SELECT
    count(*) FILTER (WHERE expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS pending,
    count(*) FILTER (WHERE expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS expired
FROM oauth_state;

-- An access token of a family is revoked when the family is.
-- name: StatsAccessTokens :one
SELECT
    count(*) FILTER (WHERE a.revoked_at IS NULL AND f.revoked_at IS NULL AND (a.standalone OR f.id IS NOT NULL)
        AND a.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS active,
    count(*) FILTER (WHERE (a.revoked_at IS NOT NULL OR f.revoked_at IS NOT NULL)
        AND a.expires_at > coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS revoked,
    count(*) FILTER (WHERE a.expires_at <= coalesce(sqlc.narg('now')::timestamptz, statement_timestamp())) AS expired,
    count(*) FILTER (WHERE a.jwt) AS jwts,
    (SELECT count(*) FROM oauth_revocation) AS revocations
FROM oauth_access_token a
LEFT JOIN oauth_family f ON f.id = a.family_id AND NOT a.standalone;

-- StatsTableSizes reports the size on disk of the package's tables and their indexes (of all
-- its partitions, for a partitioned table).
-- name: StatsTableSizes :many
SELECT c.relname::text AS table_name,
    (SELECT coalesce(sum(pg_table_size(p.relid)), 0) FROM pg_partition_tree(c.oid) p)::bigint AS table_bytes,
    (SELECT coalesce(sum(pg_indexes_size(p.relid)), 0) FROM pg_partition_tree(c.oid) p)::bigint AS index_bytes
FROM pg_catalog.pg_class c
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND c.relnamespace = to_regnamespace(current_schema())
  AND c.relname IN ('oauth_family', 'oauth_refresh_tombstone', 'oauth_refresh_token_legacy',
      'oauth_authorization_code', 'oauth_state', 'oauth_access_token', 'oauth_revocation')
ORDER BY c.relname;

-- StatsCleanupBacklog counts what a cleanup with this retention would delete now.
-- name: StatsCleanupBacklog :one
SELECT
    (SELECT count(*) FROM oauth_family f
        WHERE f.idle_expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
          AND (f.access_expires_at IS NULL
              OR f.access_expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval)) AS families,
    (SELECT coalesce(sum(f.rotation_count + 1), 0) FROM oauth_family f
        WHERE f.idle_expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval
          AND (f.access_expires_at IS NULL
              OR f.access_expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval))::bigint AS refresh_tokens,
    (SELECT count(*) FROM oauth_authorization_code c
        WHERE c.family_id IS NULL
          AND c.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval) AS authorization_codes,
    (SELECT count(*) FROM oauth_state s
        WHERE s.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval) AS states,
    (SELECT count(*) FROM oauth_refresh_tombstone t
        WHERE t.successor_sealed IS NOT NULL
          AND t.consumed_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @grace_window::interval) AS grace_ciphertexts,
    (SELECT count(*) FROM oauth_access_token a
        WHERE a.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval) AS access_tokens,
    (SELECT count(*) FROM oauth_revocation r
        WHERE r.expires_at < coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) - @retain::interval) AS revocations;
