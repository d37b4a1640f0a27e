-- PepperUsage counts, per pepper, what still depends on it: what stops working and what evidence is
-- no longer recognised if it leaves the ring. A family is alive while it is not revoked and its
-- newest token has not expired; a replay of any of its consumed tokens, or of the code that
-- produced it, must still revoke it (I4), so its tombstones and its code depend on their peppers
-- as much as its live token does. It scans the tables: an operator's question, not a hot path.
-- name: PepperUsage :many
WITH clock AS (
    SELECT coalesce(sqlc.narg('now')::timestamptz, statement_timestamp()) AS now
),
uses AS (
    SELECT f.token_pepper_id AS pepper_id,
        count(*) FILTER (WHERE f.idle_expires_at > k.now) AS live_tokens,
        0::bigint AS tombstones,
        0::bigint AS pending_codes, 0::bigint AS used_codes, 0::bigint AS pending_states,
        max(f.idle_expires_at) AS depends_until, 0::bigint AS access_tokens
    FROM oauth_family f
    CROSS JOIN clock k
    WHERE f.revoked_at IS NULL AND f.idle_expires_at > k.now
    GROUP BY f.token_pepper_id
    UNION ALL
    SELECT t.pepper_id, 0, count(*), 0, 0, 0, max(f.idle_expires_at), 0
    FROM oauth_refresh_tombstone t
    JOIN oauth_family f ON f.id = t.family_id
    CROSS JOIN clock k
    WHERE f.revoked_at IS NULL AND f.idle_expires_at > k.now
    GROUP BY t.pepper_id
    UNION ALL
    SELECT c.pepper_id, 0, 0,
        count(*) FILTER (WHERE c.family_id IS NULL),
        count(*) FILTER (WHERE c.family_id IS NOT NULL),
        0, max(coalesce(f.idle_expires_at, c.expires_at)), 0
    FROM oauth_authorization_code c
    LEFT JOIN oauth_family f ON f.id = c.family_id
    CROSS JOIN clock k
    WHERE (c.family_id IS NULL AND c.expires_at > k.now)
       OR (f.revoked_at IS NULL AND f.idle_expires_at > k.now)
    GROUP BY c.pepper_id
    UNION ALL
    SELECT s.pepper_id, 0, 0, 0, 0, count(*), max(s.expires_at), 0
    FROM oauth_state s
    CROSS JOIN clock k
    WHERE s.expires_at > k.now
    GROUP BY s.pepper_id
    UNION ALL
    -- Opaque access tokens that can still be used: a retired pepper ends them.
    SELECT a.pepper_id, 0, 0, 0, 0, 0, max(a.expires_at), count(*)
    FROM oauth_access_token a
    CROSS JOIN clock k
    WHERE NOT a.jwt AND a.revoked_at IS NULL AND a.expires_at > k.now
    GROUP BY a.pepper_id
)
SELECT u.pepper_id::text AS pepper_id,
    sum(u.live_tokens)::bigint AS live_tokens,
    sum(u.access_tokens)::bigint AS access_tokens,
    sum(u.tombstones)::bigint AS tombstones,
    sum(u.pending_codes)::bigint AS pending_codes,
    sum(u.used_codes)::bigint AS used_codes,
    sum(u.pending_states)::bigint AS pending_states,
    max(u.depends_until)::timestamptz AS depends_until
FROM uses u
GROUP BY u.pepper_id
ORDER BY u.pepper_id;
