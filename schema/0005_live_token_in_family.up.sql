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

ALTER TABLE oauth_authorization_code DROP CONSTRAINT oauth_authorization_code_family_id_fkey;
ALTER TABLE oauth_refresh_token DROP CONSTRAINT oauth_refresh_token_family_id_fkey;
ALTER TABLE oauth_family RENAME TO oauth_family_v4;
ALTER INDEX oauth_family_pkey RENAME TO oauth_family_v4_pkey;
DROP INDEX oauth_family_idle_expires_at_idx, oauth_family_user_id_client_id_idx, oauth_family_client_id_idx;

-- The columns a rotation changes come last, so that the WAL record of the update, which leaves
-- out what the old and the new row share at their start, holds little more than them.
CREATE TABLE oauth_family (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id         text        NOT NULL CONSTRAINT oauth_family_client_id_check
                                  CHECK (client_id <> '' AND octet_length(client_id) <= 255),
    user_id           text        NOT NULL CONSTRAINT oauth_family_user_id_check
                                  CHECK (user_id <> '' AND octet_length(user_id) <= 255),
    -- The scope the resource owner granted; a rotation may narrow a token's scope, never widen it
    -- (RFC 6749 §6).
    scope             text[]      NOT NULL DEFAULT '{}' CONSTRAINT oauth_family_scope_check
                                  CHECK (cardinality(scope) <= 256),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The absolute lifetime: no token of the family outlives it, and rotation never extends it.
    -- NULL: the family lives as long as it is rotated within each token's idle lifetime.
    expires_at        timestamptz CONSTRAINT oauth_family_check CHECK (expires_at > created_at),
    -- The key thumbprint the family is bound to (RFC 9449 DPoP jkt, or RFC 8705 x5t#S256); a
    -- rotation must present the same one. NULL: not sender-constrained.
    sender_thumbprint text        CONSTRAINT oauth_family_sender_thumbprint_check
                                  CHECK (sender_thumbprint ~ '^[A-Za-z0-9_-]{1,128}$'),
    revoked_at        timestamptz,
    revoked_reason    text        CONSTRAINT oauth_family_revoked_reason_check
                                  CHECK (octet_length(revoked_reason) <= 256),
    -- The live token's pepper and scope (a rotation may narrow it).
    token_pepper_id   text        NOT NULL CONSTRAINT oauth_family_token_pepper_id_check
                                  CHECK (token_pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    token_scope       text[]      NOT NULL CONSTRAINT oauth_family_token_scope_check
                                  CHECK (token_scope <@ scope),
    -- The UTC day idle_expires_at falls on: cleanup finds dead families by it. It changes once a
    -- day at most however often the family rotates, so it keeps rotations heap-only.
    sweep_day         date        NOT NULL GENERATED ALWAYS AS ((idle_expires_at AT TIME ZONE 'UTC')::date) STORED,
    -- How often the holder of the live token's parent was handed the live token again within the
    -- grace window.
    parent_reuses     integer     NOT NULL DEFAULT 0 CONSTRAINT oauth_family_parent_reuses_check
                                  CHECK (parent_reuses >= 0),
    rotation_count    integer     NOT NULL DEFAULT 0 CONSTRAINT oauth_family_rotation_count_check
                                  CHECK (rotation_count >= 0),
    last_rotated_at   timestamptz,
    -- The expiry of the family's newest token, the live one: once it has passed, no token of the
    -- family can be used, and the family with all its tombstones may be cleaned up.
    idle_expires_at   timestamptz NOT NULL,
    -- The live token, known only by its keyed digest; it was issued at
    -- coalesce(last_rotated_at, created_at).
    token_digest      bytea       NOT NULL CONSTRAINT oauth_family_token_digest_check
                                  CHECK (octet_length(token_digest) = 32),
    -- The consumed token the live one replaced.
    parent_digest     bytea       CONSTRAINT oauth_family_parent_digest_check
                                  CHECK (octet_length(parent_digest) = 32),
    CONSTRAINT oauth_family_check1 CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    CONSTRAINT oauth_family_check2 CHECK (idle_expires_at <= expires_at)
) WITH (fillfactor = 80); -- room on each page for the new version of a rotated row

INSERT INTO oauth_family (id, client_id, user_id, scope, created_at, expires_at, sender_thumbprint,
    revoked_at, revoked_reason, token_pepper_id, token_scope, parent_reuses, rotation_count,
    last_rotated_at, idle_expires_at, token_digest, parent_digest)
SELECT f.id, f.client_id, f.user_id, f.scope, f.created_at, f.expires_at, f.sender_thumbprint,
    f.revoked_at, f.revoked_reason, t.pepper_id, t.scope, coalesce(p.grace_uses, 0), f.rotation_count,
    f.last_rotated_at, f.idle_expires_at, t.digest, t.parent_digest
FROM oauth_family_v4 f
JOIN oauth_refresh_token t ON t.family_id = f.id AND t.consumed_at IS NULL
LEFT JOIN oauth_refresh_token p ON p.digest = t.parent_digest;

-- Every family of schema 4 has its one live token (its first token is inserted with it, and each
-- rotation inserts the successor of the token it consumes): none may be left behind.
DO $$
BEGIN
    IF (SELECT count(*) FROM oauth_family) <> (SELECT count(*) FROM oauth_family_v4) THEN
        RAISE EXCEPTION 'oauthstore migration 5: a family without a live refresh token';
    END IF;
END $$;

CREATE INDEX oauth_family_sweep_day_idx ON oauth_family (sweep_day);
CREATE INDEX oauth_family_user_id_client_id_idx ON oauth_family (user_id, client_id);
CREATE INDEX oauth_family_client_id_idx ON oauth_family (client_id);

-- A consumed refresh token, kept so that presenting it again is recognised as a replay for as long
-- as its family lives (I4). Written once, when the rotation that consumes it commits; only cleanup
-- changes it afterwards (it clears successor_sealed).
--
-- It names its family without a foreign key: checking one would lock the family row a second time
-- in every rotation, a WAL record of its own. The statements that delete families delete their
-- tombstones (Admin.DeleteFamily in a second statement, after the family row is gone and no
-- rotation can add one).
--
-- Its columns but consumed_at and successor_sealed are copied from the family row, whose
-- constraints checked them when they were written there; the tombstone checks what it adds.
CREATE TABLE oauth_refresh_tombstone (
    family_id        uuid        NOT NULL,
    digest           bytea       NOT NULL,
    pepper_id        text        NOT NULL,
    parent_digest    bytea,
    -- NULL: the family's granted scope, as most tokens have.
    scope            text[],
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    consumed_at      timestamptz NOT NULL CHECK (consumed_at >= created_at),
    -- The successor this token was rotated into, encrypted under a key that only this token's
    -- holder can derive (AES-256-GCM under HKDF of the raw token, salted with a key derived from
    -- the pepper; this token's and the successor's digests are the associated data), so that a lost
    -- response retried within the grace window gets the same successor back. Neither the database
    -- nor the database with the pepper can decrypt it. Cleanup clears it past the longest grace
    -- window.
    successor_sealed bytea       CHECK (octet_length(successor_sealed) BETWEEN 28 AND 128),
    PRIMARY KEY (family_id, digest)
);

-- Cleanup finds the sealed successors older than the longest grace window.
CREATE INDEX oauth_refresh_tombstone_sealed_idx ON oauth_refresh_tombstone (consumed_at)
    WHERE successor_sealed IS NOT NULL;

INSERT INTO oauth_refresh_tombstone (family_id, digest, pepper_id, parent_digest, scope, created_at,
    expires_at, consumed_at, successor_sealed)
SELECT t.family_id, t.digest, t.pepper_id, t.parent_digest, nullif(t.scope, f.scope), t.created_at,
    t.expires_at, t.consumed_at, s.grace_ciphertext
FROM oauth_refresh_token t
JOIN oauth_family f ON f.id = t.family_id
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
DROP TABLE oauth_family_v4;

ALTER TABLE oauth_authorization_code ADD CONSTRAINT oauth_authorization_code_family_id_fkey
    FOREIGN KEY (family_id) REFERENCES oauth_family (id) ON DELETE CASCADE;

-- Every refresh token, one row each, as one table held them before: the live token of each family
-- (consumed_at NULL) and the tombstones. For operators' queries; the package writes the tables.
CREATE VIEW oauth_refresh_token AS
SELECT f.token_digest AS digest, f.token_pepper_id AS pepper_id, f.id AS family_id,
    f.parent_digest, f.token_scope AS scope, coalesce(f.last_rotated_at, f.created_at) AS created_at,
    f.idle_expires_at AS expires_at, NULL::timestamptz AS consumed_at, NULL::bytea AS successor_sealed
FROM oauth_family f
UNION ALL
SELECT t.digest, t.pepper_id, t.family_id, t.parent_digest, coalesce(t.scope, f.scope), t.created_at,
    t.expires_at, t.consumed_at, t.successor_sealed
FROM oauth_refresh_tombstone t
JOIN oauth_family f ON f.id = t.family_id;
