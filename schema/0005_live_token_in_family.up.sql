-- The family row names its live token, and token rows are written once.
--
-- A rotation is then one update of the family row that touches no indexed column, so PostgreSQL
-- makes it a heap-only (HOT) update with no index entry, and one insert: the tombstone of the
-- consumed token. I1 (at most one live token per family) holds by construction: a family has one
-- column for its live token. Every refresh token minted from now on carries its family's id, so
-- that every statement on a presented token names the family, the key a sharded or partitioned
-- deployment routes by (`WHERE family_id = $1 AND digest = $2`).
--
-- Tokens minted before this migration keep working until they expire: their digests stay known,
-- with their family, in oauth_refresh_token_legacy.
--
-- The migration rewrites every family row and copies every token row, holding the tables'
-- locks until it commits: on a large database, run it when a pause of the token endpoint is
-- acceptable (docs/SCALING.md gives the time it took on a million families).
SET LOCAL lock_timeout = '5s';

ALTER TABLE oauth_family
    -- The live token: its keyed digest, the pepper it was made with, its scope. It was issued at
    -- coalesce(last_rotated_at, created_at) and expires at idle_expires_at.
    ADD COLUMN token_digest    bytea,
    ADD COLUMN token_pepper_id text,
    ADD COLUMN token_scope     text[],
    -- The consumed token the live one replaced, and how often its holder was handed the live token
    -- again within the grace window.
    ADD COLUMN parent_digest   bytea,
    ADD COLUMN parent_reuses   integer NOT NULL DEFAULT 0,
    -- The UTC day idle_expires_at falls on: cleanup finds dead families by it. It changes once a
    -- day at most however often the family rotates, so it keeps rotations heap-only.
    ADD COLUMN sweep_day       date;

UPDATE oauth_family f
SET token_digest = t.digest,
    token_pepper_id = t.pepper_id,
    token_scope = t.scope,
    parent_digest = t.parent_digest,
    parent_reuses = coalesce(p.grace_uses, 0),
    sweep_day = (f.idle_expires_at AT TIME ZONE 'UTC')::date
FROM oauth_refresh_token t
LEFT JOIN oauth_refresh_token p ON p.digest = t.parent_digest
WHERE t.family_id = f.id
  AND t.consumed_at IS NULL;

ALTER TABLE oauth_family
    ALTER COLUMN token_digest SET NOT NULL,
    ALTER COLUMN token_pepper_id SET NOT NULL,
    ALTER COLUMN token_scope SET NOT NULL,
    ALTER COLUMN sweep_day SET NOT NULL,
    ADD CONSTRAINT oauth_family_token_digest_check CHECK (octet_length(token_digest) = 32),
    ADD CONSTRAINT oauth_family_token_pepper_id_check CHECK (token_pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    ADD CONSTRAINT oauth_family_token_scope_check CHECK (token_scope <@ scope),
    ADD CONSTRAINT oauth_family_parent_digest_check CHECK (octet_length(parent_digest) = 32),
    ADD CONSTRAINT oauth_family_parent_reuses_check CHECK (parent_reuses >= 0),
    ADD CONSTRAINT oauth_family_sweep_day_check CHECK (sweep_day = (idle_expires_at AT TIME ZONE 'UTC')::date);

-- Room on each page for the new version of a rotated row, so that the update stays on its page:
-- on the table, or on each partition of a table partitioned by schema.PartitionByFamily.
DO $$
DECLARE r regclass;
BEGIN
    FOR r IN SELECT relid FROM pg_partition_tree('oauth_family') WHERE isleaf LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 80)', r);
    END LOOP;
END $$;

DROP INDEX oauth_family_idle_expires_at_idx;
CREATE INDEX oauth_family_sweep_day_idx ON oauth_family (sweep_day);

-- A consumed refresh token, kept so that presenting it again is recognised as a replay for as long
-- as its family lives (I4). Written once, when the rotation that consumes it commits; only cleanup
-- changes it afterwards (it clears successor_sealed).
CREATE TABLE oauth_refresh_tombstone (
    family_id        uuid        NOT NULL REFERENCES oauth_family (id) ON DELETE CASCADE,
    digest           bytea       NOT NULL CHECK (octet_length(digest) = 32),
    pepper_id        text        NOT NULL CHECK (pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    parent_digest    bytea       CHECK (octet_length(parent_digest) = 32),
    scope            text[]      NOT NULL CHECK (cardinality(scope) <= 256),
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    consumed_at      timestamptz NOT NULL,
    -- The successor this token was rotated into, encrypted under a key that only this token's
    -- holder can derive (AES-256-GCM under HKDF of the raw token, salted with a key derived from
    -- the pepper; this token's and the successor's digests are the associated data), so that a lost
    -- response retried within the grace window gets the same successor back. Neither the database
    -- nor the database with the pepper can decrypt it. Cleanup clears it past the longest grace
    -- window.
    successor_sealed bytea       CHECK (octet_length(successor_sealed) BETWEEN 28 AND 128),
    PRIMARY KEY (family_id, digest),
    CHECK (expires_at > created_at),
    CHECK (consumed_at >= created_at)
);

-- Cleanup finds the sealed successors older than the longest grace window.
CREATE INDEX oauth_refresh_tombstone_sealed_idx ON oauth_refresh_tombstone (consumed_at)
    WHERE successor_sealed IS NOT NULL;

INSERT INTO oauth_refresh_tombstone (family_id, digest, pepper_id, parent_digest, scope, created_at,
    expires_at, consumed_at, successor_sealed)
SELECT t.family_id, t.digest, t.pepper_id, t.parent_digest, t.scope, t.created_at, t.expires_at,
    t.consumed_at, s.grace_ciphertext
FROM oauth_refresh_token t
LEFT JOIN oauth_refresh_token s ON s.parent_digest = t.digest
    AND s.family_id = t.family_id
    AND s.consumed_at IS NULL
WHERE t.consumed_at IS NOT NULL;

-- The tokens minted before this migration carry no family id: this maps their digests to their
-- families, live and consumed alike, until cleanup deletes the families.
CREATE TABLE oauth_refresh_token_legacy (
    digest    bytea PRIMARY KEY CHECK (octet_length(digest) = 32),
    family_id uuid  NOT NULL REFERENCES oauth_family (id) ON DELETE CASCADE
);

CREATE INDEX oauth_refresh_token_legacy_family_id_idx ON oauth_refresh_token_legacy (family_id);

INSERT INTO oauth_refresh_token_legacy (digest, family_id)
SELECT digest, family_id
FROM oauth_refresh_token;

DROP TABLE oauth_refresh_token;

-- Every refresh token, one row each, as one table held them before: the live token of each family
-- (consumed_at NULL) and the tombstones. For operators' queries; the package writes the tables.
CREATE VIEW oauth_refresh_token AS
SELECT f.token_digest AS digest, f.token_pepper_id AS pepper_id, f.id AS family_id,
    f.parent_digest, f.token_scope AS scope, coalesce(f.last_rotated_at, f.created_at) AS created_at,
    f.idle_expires_at AS expires_at, NULL::timestamptz AS consumed_at, NULL::bytea AS successor_sealed
FROM oauth_family f
UNION ALL
SELECT t.digest, t.pepper_id, t.family_id, t.parent_digest, t.scope, t.created_at, t.expires_at,
    t.consumed_at, t.successor_sealed
FROM oauth_refresh_tombstone t;
