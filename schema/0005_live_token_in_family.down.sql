-- Back to one row per token. The tokens minted since migration 5 carry their family's id, a format
-- the earlier version does not read: they are kept, but its clients must sign in again.
SET LOCAL lock_timeout = '5s';

DROP VIEW oauth_refresh_token;

CREATE TABLE oauth_refresh_token (
    digest        bytea       PRIMARY KEY CHECK (octet_length(digest) = 32),
    pepper_id     text        NOT NULL CHECK (pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    family_id     uuid        NOT NULL REFERENCES oauth_family (id) ON DELETE CASCADE,
    parent_digest bytea       CHECK (octet_length(parent_digest) = 32),
    scope         text[]      NOT NULL CHECK (cardinality(scope) <= 256),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    consumed_at   timestamptz,
    grace_uses    integer     NOT NULL DEFAULT 0 CHECK (grace_uses >= 0),
    grace_ciphertext bytea,
    CHECK (expires_at > created_at),
    CHECK (consumed_at IS NULL OR consumed_at >= created_at),
    CHECK (grace_uses = 0 OR consumed_at IS NOT NULL)
);

INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope, created_at,
    expires_at, consumed_at, grace_uses)
SELECT t.digest, t.pepper_id, t.family_id, t.parent_digest, coalesce(t.scope, f.scope), t.created_at,
    t.expires_at, t.consumed_at, CASE WHEN f.parent_digest = t.digest THEN f.parent_reuses ELSE 0 END
FROM oauth_refresh_tombstone t
JOIN oauth_family f ON f.id = t.family_id;

INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope, created_at,
    expires_at, grace_ciphertext)
SELECT f.token_digest, f.token_pepper_id, f.id, f.parent_digest, f.token_scope,
    coalesce(f.last_rotated_at, f.created_at), f.idle_expires_at, t.successor_sealed
FROM oauth_family f
LEFT JOIN oauth_refresh_tombstone t ON t.family_id = f.id AND t.digest = f.parent_digest;

ALTER TABLE oauth_refresh_token ADD CONSTRAINT oauth_refresh_token_grace_ciphertext_check
    CHECK (octet_length(grace_ciphertext) BETWEEN 28 AND 128);
CREATE UNIQUE INDEX oauth_refresh_token_one_live_per_family
    ON oauth_refresh_token (family_id) WHERE consumed_at IS NULL;
CREATE INDEX oauth_refresh_token_family_id_idx ON oauth_refresh_token (family_id);
CREATE INDEX oauth_refresh_token_grace_ciphertext_idx ON oauth_refresh_token (created_at)
    WHERE grace_ciphertext IS NOT NULL;

DROP TABLE oauth_refresh_token_legacy;
DROP TABLE oauth_refresh_tombstone;

DROP INDEX oauth_family_sweep_day_idx;
CREATE INDEX oauth_family_idle_expires_at_idx ON oauth_family (idle_expires_at);
ALTER TABLE oauth_family
    DROP COLUMN token_digest,
    DROP COLUMN token_pepper_id,
    DROP COLUMN token_scope,
    DROP COLUMN parent_digest,
    DROP COLUMN parent_reuses,
    DROP COLUMN sweep_day;
DO $$
DECLARE r regclass;
BEGIN
    FOR r IN SELECT relid FROM pg_partition_tree('oauth_family') WHERE isleaf LOOP
        EXECUTE format('ALTER TABLE %s RESET (fillfactor)', r);
    END LOOP;
END $$;
