-- Access tokens bound to a family, the claims of a grant, and the revocation feed.
--
-- A family row names the access token issued with its live refresh token (current_access_*), as
-- it names that refresh token: introspecting it reads one row, by its primary key. Every access
-- token, that one included, is also a row of oauth_access_token, where introspection finds the
-- earlier ones. access_expires_at is the expiry of the family's newest access token: it bounds how
-- long a revocation of the family must be announced in the feed, and how long cleanup keeps the
-- family. These change with a rotation that issues an access token; the grant's claims come after
-- them and, but for where the session is used from (user_agent, ip), never change, so that the WAL
-- record of a rotation leaves them out as a suffix the old and the new row share.
ALTER TABLE oauth_family
    ADD COLUMN access_expires_at         timestamptz,
    -- The current access token: the keyed digest of an opaque token (32 bytes) or the random part
    -- of a JWT's jti (12 bytes); NULL when the live refresh token came without one, or it was
    -- revoked.
    ADD COLUMN current_access_key        bytea,
    ADD COLUMN current_access_type       text,
    -- NULL: the family's audience.
    ADD COLUMN current_access_audience   text[],
    ADD COLUMN current_access_issued_at  timestamptz,
    ADD COLUMN current_access_expires_at timestamptz,
    ADD COLUMN user_agent                text,
    ADD COLUMN ip                        text,
    ADD COLUMN auth_time                 timestamptz,
    ADD COLUMN acr                       text,
    ADD COLUMN amr                       text[],
    -- The audiences (RFC 8707 resources) the grant's access tokens may be issued for; empty: any.
    ADD COLUMN audience                  text[] NOT NULL DEFAULT '{}',
    -- The OpenID Connect session id (sid), for back-channel logout.
    ADD COLUMN session_id                text,
    ADD COLUMN label                     text,
    ADD CONSTRAINT oauth_family_claims_check CHECK (
        octet_length(acr) <= 255 AND cardinality(amr) <= 16 AND cardinality(audience) <= 32
        AND octet_length(session_id) <= 255 AND octet_length(user_agent) <= 512
        AND octet_length(ip) <= 45 AND octet_length(label) <= 255),
    ADD CONSTRAINT oauth_family_current_access_check CHECK (
        octet_length(current_access_key) IN (12, 32) AND cardinality(current_access_audience) <= 32);

-- The claims of the authorization request, carried by its code into the family of the grant.
ALTER TABLE oauth_authorization_code
    ADD COLUMN auth_time  timestamptz,
    ADD COLUMN acr        text,
    ADD COLUMN amr        text[],
    ADD COLUMN session_id text,
    ADD COLUMN user_agent text,
    ADD COLUMN ip         text,
    ADD COLUMN label      text,
    ADD CONSTRAINT oauth_authorization_code_claims_check CHECK (
        octet_length(acr) <= 255 AND cardinality(amr) <= 16
        AND octet_length(session_id) <= 255 AND octet_length(user_agent) <= 512
        AND octet_length(ip) <= 45 AND octet_length(label) <= 255);

-- An access token: opaque (minted by the package, known by its keyed digest) or a JWT (minted and
-- signed by the service, known by the jti the package gave it). Either begins with the id of the
-- family it was issued with, so that every statement on one names the family. A standalone token
-- (client_credentials, or a grant without a refresh token) has a grant id of its own that names
-- no family.
--
-- A token of a family is active while its family is: revoking the family writes nothing here.
-- It names its family without a foreign key, as a tombstone does; a token whose family row is gone
-- is inactive.
CREATE TABLE oauth_access_token (
    family_id         uuid        NOT NULL,
    -- Opaque: the keyed digest of the token (32 bytes). JWT: the random part of its jti (12 bytes),
    -- which is no secret.
    key               bytea       NOT NULL,
    jwt               boolean     NOT NULL,
    standalone        boolean     NOT NULL,
    pepper_id         text        CHECK (pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    client_id         text        NOT NULL CHECK (client_id <> '' AND octet_length(client_id) <= 255),
    subject           text        NOT NULL CHECK (subject <> '' AND octet_length(subject) <= 255),
    scope             text[]      NOT NULL CHECK (cardinality(scope) <= 256),
    audience          text[]      NOT NULL CHECK (cardinality(audience) <= 32),
    token_type        text        NOT NULL CHECK (token_type IN ('Bearer', 'DPoP')),
    sender_thumbprint text        CHECK (sender_thumbprint ~ '^[A-Za-z0-9_-]{1,128}$'),
    issued_at         timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    revoked_at        timestamptz,
    PRIMARY KEY (family_id, key),
    CHECK (expires_at > issued_at),
    CHECK (CASE WHEN jwt THEN octet_length(key) = 12 AND pepper_id IS NULL
        ELSE octet_length(key) = 32 AND pepper_id IS NOT NULL END)
);

-- Cleanup deletes expired tokens by it.
CREATE INDEX oauth_access_token_expires_at_idx ON oauth_access_token (expires_at);

-- Bulk revocation finds the standalone tokens of a client (or a user at one client), or of a user,
-- by these; a family's tokens follow their family.
CREATE INDEX oauth_access_token_standalone_idx ON oauth_access_token (client_id, subject)
    WHERE standalone;
CREATE INDEX oauth_access_token_standalone_subject_idx ON oauth_access_token (subject)
    WHERE standalone;

-- On a database whose families are partitioned by family id (schema.PartitionByFamily), access
-- tokens are partitioned the same way, with as many partitions.
DO $$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n FROM pg_inherits WHERE inhparent = 'oauth_family'::regclass;
    IF n = 0 THEN
        RETURN;
    END IF;
    ALTER TABLE oauth_access_token RENAME TO oauth_access_token_template;
    ALTER INDEX oauth_access_token_pkey RENAME TO oauth_access_token_template_pkey;
    ALTER INDEX oauth_access_token_expires_at_idx RENAME TO oauth_access_token_template_expires_at_idx;
    ALTER INDEX oauth_access_token_standalone_idx RENAME TO oauth_access_token_template_standalone_idx;
    ALTER INDEX oauth_access_token_standalone_subject_idx RENAME TO oauth_access_token_template_standalone_subject_idx;
    CREATE TABLE oauth_access_token (LIKE oauth_access_token_template INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY HASH (family_id);
    DROP TABLE oauth_access_token_template;
    ALTER TABLE oauth_access_token ADD CONSTRAINT oauth_access_token_pkey PRIMARY KEY (family_id, key);
    CREATE INDEX oauth_access_token_expires_at_idx ON oauth_access_token (expires_at);
    CREATE INDEX oauth_access_token_standalone_idx ON oauth_access_token (client_id, subject) WHERE standalone;
    CREATE INDEX oauth_access_token_standalone_subject_idx ON oauth_access_token (subject) WHERE standalone;
    FOR i IN 0 .. n - 1 LOOP
        EXECUTE format('CREATE TABLE oauth_access_token_p%s PARTITION OF oauth_access_token '
            'FOR VALUES WITH (MODULUS %s, REMAINDER %s)', i, n, i);
    END LOOP;
END $$;

-- The revocation feed: each revoked family that had access tokens which had not expired yet, and
-- each revoked JWT, once, in the order a reader can rely on. A reader asks for the entries of
-- transactions that have all ended (xid below the oldest transaction still running), ordered by
-- (xid, seq); since no later entry can come from a transaction below that bound, a cursor made of
-- the last (xid, seq) read misses none and repeats none. An entry is kept until the tokens it
-- covers have expired (expires_at).
CREATE TABLE oauth_revocation (
    xid        bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq        bigint      GENERATED ALWAYS AS IDENTITY,
    family_id  uuid        NOT NULL,
    -- A revoked JWT's jti; NULL: every token of the family (or standalone grant).
    jti        text        CHECK (octet_length(jti) <= 64),
    revoked_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (xid, seq)
);

CREATE INDEX oauth_revocation_expires_at_idx ON oauth_revocation (expires_at);
