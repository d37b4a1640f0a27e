-- An authorization code (RFC 6749 §4.1), known only by its keyed digest. It is bound to its client
-- and redirect URI, carries the PKCE challenge (RFC 7636), and is consumed exactly once. The
-- exchange that consumes it creates the family of the grant and records it here in the same
-- statement, so a second use can revoke what the first one produced (RFC 6749 §4.1.2,
-- RFC 9700 §4.2.4). A consumed code lives as long as its family (ON DELETE CASCADE), which is as
-- long as a replay of it could still revoke something (I4).
CREATE TABLE oauth_authorization_code (
    digest                bytea       PRIMARY KEY CHECK (octet_length(digest) = 32),
    pepper_id             text        NOT NULL CHECK (pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    client_id             text        NOT NULL CHECK (client_id <> '' AND octet_length(client_id) <= 255),
    user_id               text        NOT NULL CHECK (user_id <> '' AND octet_length(user_id) <= 255),
    redirect_uri          text        NOT NULL CHECK (redirect_uri <> '' AND octet_length(redirect_uri) <= 2048),
    scope                 text[]      NOT NULL CHECK (cardinality(scope) <= 256),
    -- RFC 7636 §4.2: S256 is base64url(SHA-256(verifier)); plain is the verifier itself.
    code_challenge        text        CHECK (code_challenge ~ '^[A-Za-z0-9._~-]{43,128}$'),
    code_challenge_method text        CHECK (code_challenge_method IN ('S256', 'plain')),
    -- OpenID Connect nonce, returned to the service for the ID token.
    nonce                 text        CHECK (octet_length(nonce) <= 512),
    -- RFC 8707 resource indicators of the authorization request.
    resources             text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(resources) <= 32),
    -- RFC 9449 §10: the DPoP key the code is bound to; the exchange must prove the same key.
    dpop_jkt              text        CHECK (dpop_jkt ~ '^[A-Za-z0-9_-]{1,128}$'),
    -- Whatever else the service needs back at the token endpoint (auth_time, acr, amr, claims):
    -- JSON the package checked, kept as text so that the service gets back exactly what it gave.
    session               text        NOT NULL DEFAULT '{}' CHECK (octet_length(session) <= 16384),
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    consumed_at           timestamptz,
    family_id             uuid        REFERENCES oauth_family (id) ON DELETE CASCADE,
    CHECK ((code_challenge IS NULL) = (code_challenge_method IS NULL)),
    CHECK (expires_at > created_at AND expires_at <= created_at + interval '10 minutes'),
    CHECK (family_id IS NULL OR consumed_at IS NOT NULL)
);

-- Cleanup of codes that expired unused.
CREATE INDEX oauth_authorization_code_expires_at_idx ON oauth_authorization_code (expires_at)
    WHERE family_id IS NULL;
-- Deleting a family finds the code that produced it.
CREATE INDEX oauth_authorization_code_family_id_idx ON oauth_authorization_code (family_id);

-- A one-time binding of the state parameter of an authorization request (the CSRF defence of
-- RFC 6749 §10.12) to what its callback needs. Known only by its digest; consuming it deletes it,
-- so it is used at most once.
CREATE TABLE oauth_state (
    digest       bytea       PRIMARY KEY CHECK (octet_length(digest) = 32),
    pepper_id    text        NOT NULL CHECK (pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    client_id    text        NOT NULL CHECK (client_id <> '' AND octet_length(client_id) <= 255),
    redirect_uri text        NOT NULL CHECK (redirect_uri <> '' AND octet_length(redirect_uri) <= 2048),
    return_to    text        CHECK (octet_length(return_to) <= 2048),
    data         text        NOT NULL DEFAULT '{}' CHECK (octet_length(data) <= 16384),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK (expires_at > created_at AND expires_at <= created_at + interval '1 hour')
);

CREATE INDEX oauth_state_expires_at_idx ON oauth_state (expires_at);
