-- The rules as CHECK constraints again, evaluated on every change of a row, and sweep_day
-- generated from idle_expires_at again.
SET LOCAL lock_timeout = '5s';

-- sweep_day a generated column again: the table is rewritten.
DROP TRIGGER oauth_family_sweep_day ON oauth_family;
DROP FUNCTION oauth_family_sweep_day();
DROP INDEX oauth_family_sweep_day_idx;
ALTER TABLE oauth_family DROP COLUMN sweep_day;
ALTER TABLE oauth_family ADD COLUMN sweep_day date NOT NULL
    GENERATED ALWAYS AS ((idle_expires_at AT TIME ZONE 'UTC')::date) STORED;
CREATE INDEX oauth_family_sweep_day_idx ON oauth_family (sweep_day);

DROP TRIGGER oauth_family_check ON oauth_family;
DROP FUNCTION oauth_family_check();
DROP FUNCTION oauth_check_violation(text, text);

ALTER TABLE oauth_family
    ADD CONSTRAINT oauth_family_client_id_check CHECK (client_id <> '' AND octet_length(client_id) <= 255),
    ADD CONSTRAINT oauth_family_user_id_check CHECK (user_id <> '' AND octet_length(user_id) <= 255),
    ADD CONSTRAINT oauth_family_scope_check CHECK (cardinality(scope) <= 256),
    ADD CONSTRAINT oauth_family_check CHECK (expires_at > created_at),
    ADD CONSTRAINT oauth_family_sender_thumbprint_check CHECK (sender_thumbprint ~ '^[A-Za-z0-9_-]{1,128}$'),
    ADD CONSTRAINT oauth_family_revoked_reason_check CHECK (octet_length(revoked_reason) <= 256),
    ADD CONSTRAINT oauth_family_token_pepper_id_check CHECK (token_pepper_id ~ '^[A-Za-z0-9._-]{1,32}$'),
    ADD CONSTRAINT oauth_family_token_scope_check CHECK (token_scope <@ scope),
    ADD CONSTRAINT oauth_family_parent_reuses_check CHECK (parent_reuses >= 0),
    ADD CONSTRAINT oauth_family_rotation_count_check CHECK (rotation_count >= 0),
    ADD CONSTRAINT oauth_family_token_digest_check CHECK (octet_length(token_digest) = 32),
    ADD CONSTRAINT oauth_family_parent_digest_check CHECK (octet_length(parent_digest) = 32),
    ADD CONSTRAINT oauth_family_check1 CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    ADD CONSTRAINT oauth_family_check2 CHECK (idle_expires_at <= expires_at),
    ADD CONSTRAINT oauth_family_claims_check CHECK (
        octet_length(acr) <= 255 AND cardinality(amr) <= 16 AND cardinality(audience) <= 32
        AND octet_length(session_id) <= 255 AND octet_length(user_agent) <= 512
        AND octet_length(ip) <= 45 AND octet_length(label) <= 255),
    ADD CONSTRAINT oauth_family_current_access_check CHECK (
        octet_length(current_access_key) IN (12, 32) AND cardinality(current_access_audience) <= 32);

ALTER TABLE oauth_refresh_tombstone
    ADD CONSTRAINT oauth_refresh_tombstone_check CHECK (consumed_at >= created_at),
    ADD CONSTRAINT oauth_refresh_tombstone_successor_sealed_check
        CHECK (octet_length(successor_sealed) BETWEEN 28 AND 128);
