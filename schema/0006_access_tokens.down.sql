-- Without access tokens: the tokens, the feed and the claims of grants are dropped.
SET LOCAL lock_timeout = '5s';

DROP TABLE oauth_revocation;
DROP TABLE oauth_access_token;

ALTER TABLE oauth_authorization_code
    DROP CONSTRAINT oauth_authorization_code_claims_check,
    DROP COLUMN auth_time,
    DROP COLUMN acr,
    DROP COLUMN amr,
    DROP COLUMN session_id,
    DROP COLUMN user_agent,
    DROP COLUMN ip,
    DROP COLUMN label;

ALTER TABLE oauth_family
    DROP CONSTRAINT oauth_family_claims_check,
    DROP CONSTRAINT oauth_family_current_access_check,
    DROP COLUMN current_access_key,
    DROP COLUMN current_access_type,
    DROP COLUMN current_access_audience,
    DROP COLUMN current_access_issued_at,
    DROP COLUMN current_access_expires_at,
    DROP COLUMN auth_time,
    DROP COLUMN acr,
    DROP COLUMN amr,
    DROP COLUMN audience,
    DROP COLUMN session_id,
    DROP COLUMN user_agent,
    DROP COLUMN ip,
    DROP COLUMN label,
    DROP COLUMN access_expires_at;
