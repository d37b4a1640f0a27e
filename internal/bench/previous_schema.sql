-- Variant p, the previous design: a frozen copy of the package's refresh-token tables as of commit
-- ae44542b6c264914a15f73bfc775ed7cd318fe1c, with all their columns, checks and indexes, created
-- in a schema of their own (search_path names it). Do not edit it along with schema/: it is what
-- a redesign is measured against.
--
-- schema/0001_refresh_token_family.up.sql, the two tables and their indexes:

-- A family is one grant: the chain of refresh tokens that descends from one authorization. Rotation
-- and revocation serialize on its row, so a family revoked before a rotation commits never gains a
-- successor (invariant I3). Revocation is a durable mark, never a delete, so the evidence survives
-- the race it ends (RFC 6819 §5.2.2.3).
CREATE TABLE oauth_family (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id         text        NOT NULL CHECK (client_id <> '' AND octet_length(client_id) <= 255),
    user_id           text        NOT NULL CHECK (user_id <> '' AND octet_length(user_id) <= 255),
    -- The scope the resource owner granted; a rotation may narrow a token's scope, never widen it
    -- (RFC 6749 §6).
    scope             text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(scope) <= 256),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The absolute lifetime: no token of the family outlives it, and rotation never extends it.
    -- NULL: the family lives as long as it is rotated within each token's idle lifetime.
    expires_at        timestamptz CHECK (expires_at > created_at),
    -- The key thumbprint the family is bound to (RFC 9449 DPoP jkt, or RFC 8705 x5t#S256); a
    -- rotation must present the same one. NULL: not sender-constrained.
    sender_thumbprint text        CHECK (sender_thumbprint ~ '^[A-Za-z0-9_-]{1,128}$'),
    last_rotated_at   timestamptz,
    rotation_count    integer     NOT NULL DEFAULT 0 CHECK (rotation_count >= 0),
    -- The expiry of the family's newest token: once it has passed, no token of the family can be
    -- used, and the family with all its tombstones may be cleaned up.
    idle_expires_at   timestamptz NOT NULL,
    revoked_at        timestamptz,
    revoked_reason    text        CHECK (octet_length(revoked_reason) <= 256),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    CHECK (idle_expires_at <= expires_at)
);

CREATE INDEX oauth_family_idle_expires_at_idx ON oauth_family (idle_expires_at);
CREATE INDEX oauth_family_user_id_client_id_idx ON oauth_family (user_id, client_id);
CREATE INDEX oauth_family_client_id_idx ON oauth_family (client_id);

-- A refresh token, known only by its keyed digest: HMAC-SHA-256 under a pepper that never reaches
-- the database. A consumed token stays as a tombstone, so presenting it again is recognised as a
-- replay for as long as its family lives (I4).
CREATE TABLE oauth_refresh_token (
    digest        bytea       PRIMARY KEY CHECK (octet_length(digest) = 32),
    -- The id of the pepper the digest was made with, so that an operator can tell when no live
    -- token depends on a retired pepper any more.
    pepper_id     text        NOT NULL CHECK (pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    family_id     uuid        NOT NULL REFERENCES oauth_family (id) ON DELETE CASCADE,
    parent_digest bytea       CHECK (octet_length(parent_digest) = 32),
    scope         text[]      NOT NULL CHECK (cardinality(scope) <= 256),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    consumed_at   timestamptz,
    -- How often this consumed token was presented again within the grace window, each time
    -- replacing its unused successor.
    grace_uses    integer     NOT NULL DEFAULT 0 CHECK (grace_uses >= 0),
    CHECK (expires_at > created_at),
    CHECK (consumed_at IS NULL OR consumed_at >= created_at),
    CHECK (grace_uses = 0 OR consumed_at IS NOT NULL)
);

-- I1: at most one live (unconsumed) token per family, held by PostgreSQL itself.
CREATE UNIQUE INDEX oauth_refresh_token_one_live_per_family
    ON oauth_refresh_token (family_id) WHERE consumed_at IS NULL;

-- Deleting a family (cleanup, ON DELETE CASCADE) finds all of its tokens through this index.
CREATE INDEX oauth_refresh_token_family_id_idx ON oauth_refresh_token (family_id);

-- schema/0003_grace_successor.up.sql (without its SET LOCAL lock_timeout):

-- A rotation keeps the successor it handed out, encrypted under a key that only the holder of the
-- parent token can derive (AES-256-GCM under a key from HKDF of the raw parent token, salted with
-- a key derived from the pepper; the parent's and the successor's digests are the associated
-- data). A client that presents the parent again within the grace window — a lost response, two
-- tabs refreshing at once — gets the same successor back, as long as it is unused: no second live
-- token, no fork (I1). Neither the database nor the database with the pepper can decrypt it: it
-- holds only a keyed digest of the parent. The ciphertext goes when the successor is used (the
-- rotation that consumes it clears it) and, past the longest grace window, with cleanup.
--
-- Adding a nullable column without a default changes no row; the check is added NOT VALID so that
-- it holds for every new row without a scan of the table under its lock (every existing row is
-- NULL). A migration that would wait behind a long transaction gives up instead of queueing every
-- rotation behind it.
ALTER TABLE oauth_refresh_token ADD COLUMN grace_ciphertext bytea;
ALTER TABLE oauth_refresh_token ADD CONSTRAINT oauth_refresh_token_grace_ciphertext_check
    CHECK (octet_length(grace_ciphertext) BETWEEN 28 AND 128) NOT VALID;

-- schema/0004_grace_successor_index.up.sql, built at once rather than CONCURRENTLY (which cannot
-- run in the transaction this file runs in) on the empty table:

-- Cleanup finds the sealed successors older than the longest grace window. Built CONCURRENTLY, so
-- that rotations go on while it is built (a statement of its own: it cannot run in a transaction).
CREATE INDEX oauth_refresh_token_grace_ciphertext_idx ON oauth_refresh_token (created_at)
    WHERE grace_ciphertext IS NOT NULL;
