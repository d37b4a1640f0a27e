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
