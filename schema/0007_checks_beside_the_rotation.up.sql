-- The rules a family row and a tombstone must keep, checked where it costs a rotation nothing, and
-- the day a family is swept on, computed where a rotation already computes its expiry.
--
-- PostgreSQL evaluates every CHECK constraint of a table on every UPDATE of a row, and prepares each
-- again for every statement (it reads the stored expression, plans it and compiles it), whatever
-- the UPDATE changes. The family table's sixteen constraints and the tombstone's two took about
-- half the server time of a rotation, which changes none of the columns most of them check.
--
-- From this version:
--  * a row trigger, oauth_family_check, checks the rules of a family row when a row is inserted
--    (all of them), and when an UPDATE sets any column other than the live token's (those a
--    rotation, a grace replacement, an access token of the family or a reuse count set), the
--    rules over a column it changed: a client, user, scope, lifetime, sender key, revocation or
--    claim of the grant is never written unchecked. It is enabled ALWAYS, so
--    session_replication_role does not turn it off.
--  * the statements that set the live token's columns from their parameters (RefreshTokenRotate,
--    RefreshTokenGraceReplace) check them before they change anything (the successor's digest,
--    pepper id and scope, where it is used from, the audience of the access token issued with it,
--    the tombstone's sealed successor) and raise the error of the rule they break. The other
--    values they write are derived from the row: a parent digest is the former live digest, an
--    expiry is capped by the family's, a reuse or rotation count goes up by one.
--  * the tombstone table has no rule left to check at the database: its rows are written only
--    by those statements, from the family row's values; a tombstone's consumed_at is the later of
--    the statement's clock and its created_at.
--
--  * sweep_day, the UTC day of idle_expires_at that cleanup finds dead families by, is no longer a
--    generated column, which PostgreSQL prepares again for every UPDATE statement as it does a
--    CHECK constraint, and computes again for every updated row. The statements that move
--    idle_expires_at set it with it; a trigger sets it on every insert.
--
-- Deploy this version's code after this migration (its statements call oauth_check_violation),
-- and before migrating down, the previous version's code. The role the application connects as
-- needs EXECUTE on oauth_check_violation (every role has it unless it was revoked from PUBLIC).
--
-- A violation raises SQLSTATE 23514 (check_violation) with the rule's name as its constraint,
-- as the CHECK constraints did; the message names the rule, never the value.
SET LOCAL lock_timeout = '5s';

-- STABLE, not IMMUTABLE: the planner must not call it ahead of time with its constant arguments;
-- the statements call it only where a rule is broken.
CREATE FUNCTION oauth_check_violation(rule text, relation text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RAISE EXCEPTION 'new row for relation "%" violates check constraint "%"', relation, rule
        USING ERRCODE = 'check_violation', CONSTRAINT = rule, TABLE = relation;
END
$$;

-- On an insert every rule is checked; on an update, every rule over a column the update changed.
-- So a revocation, which changes revoked_at and revoked_reason, is never refused because of some
-- other column (one written by hand with a value the statements would refuse).
CREATE FUNCTION oauth_family_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fresh boolean := TG_OP = 'INSERT';
    o record;
BEGIN
    IF fresh THEN
        o := NEW;
    ELSE
        o := OLD;
    END IF;
    -- A rule holds unless its expression is false, as for a CHECK constraint: NULL passes.
    IF (fresh OR NEW.client_id IS DISTINCT FROM o.client_id)
        AND NOT (NEW.client_id <> '' AND octet_length(NEW.client_id) <= 255) THEN
        PERFORM oauth_check_violation('oauth_family_client_id_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.user_id IS DISTINCT FROM o.user_id)
        AND NOT (NEW.user_id <> '' AND octet_length(NEW.user_id) <= 255) THEN
        PERFORM oauth_check_violation('oauth_family_user_id_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.scope IS DISTINCT FROM o.scope) AND NOT (cardinality(NEW.scope) <= 256) THEN
        PERFORM oauth_check_violation('oauth_family_scope_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.expires_at IS DISTINCT FROM o.expires_at OR NEW.created_at IS DISTINCT FROM o.created_at)
        AND NOT (NEW.expires_at > NEW.created_at) THEN
        PERFORM oauth_check_violation('oauth_family_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.sender_thumbprint IS DISTINCT FROM o.sender_thumbprint)
        AND NOT (NEW.sender_thumbprint ~ '^[A-Za-z0-9_-]{1,128}$') THEN
        PERFORM oauth_check_violation('oauth_family_sender_thumbprint_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.revoked_reason IS DISTINCT FROM o.revoked_reason)
        AND NOT (octet_length(NEW.revoked_reason) <= 256) THEN
        PERFORM oauth_check_violation('oauth_family_revoked_reason_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.revoked_at IS DISTINCT FROM o.revoked_at OR NEW.revoked_reason IS DISTINCT FROM o.revoked_reason)
        AND NOT ((NEW.revoked_at IS NULL) = (NEW.revoked_reason IS NULL)) THEN
        PERFORM oauth_check_violation('oauth_family_check1', 'oauth_family');
    END IF;
    IF (fresh OR NEW.token_pepper_id IS DISTINCT FROM o.token_pepper_id)
        AND NOT (NEW.token_pepper_id ~ '^[A-Za-z0-9._-]{1,32}$') THEN
        PERFORM oauth_check_violation('oauth_family_token_pepper_id_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.token_scope IS DISTINCT FROM o.token_scope OR NEW.scope IS DISTINCT FROM o.scope)
        AND NOT (NEW.token_scope <@ NEW.scope) THEN
        PERFORM oauth_check_violation('oauth_family_token_scope_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.parent_reuses IS DISTINCT FROM o.parent_reuses) AND NOT (NEW.parent_reuses >= 0) THEN
        PERFORM oauth_check_violation('oauth_family_parent_reuses_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.rotation_count IS DISTINCT FROM o.rotation_count) AND NOT (NEW.rotation_count >= 0) THEN
        PERFORM oauth_check_violation('oauth_family_rotation_count_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.token_digest IS DISTINCT FROM o.token_digest) AND NOT (octet_length(NEW.token_digest) = 32) THEN
        PERFORM oauth_check_violation('oauth_family_token_digest_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.parent_digest IS DISTINCT FROM o.parent_digest) AND NOT (octet_length(NEW.parent_digest) = 32) THEN
        PERFORM oauth_check_violation('oauth_family_parent_digest_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.idle_expires_at IS DISTINCT FROM o.idle_expires_at OR NEW.expires_at IS DISTINCT FROM o.expires_at)
        AND NOT (NEW.idle_expires_at <= NEW.expires_at) THEN
        PERFORM oauth_check_violation('oauth_family_check2', 'oauth_family');
    END IF;
    IF (fresh OR NEW.acr IS DISTINCT FROM o.acr OR NEW.amr IS DISTINCT FROM o.amr
            OR NEW.audience IS DISTINCT FROM o.audience OR NEW.session_id IS DISTINCT FROM o.session_id
            OR NEW.user_agent IS DISTINCT FROM o.user_agent OR NEW.ip IS DISTINCT FROM o.ip
            OR NEW.label IS DISTINCT FROM o.label)
        AND NOT (octet_length(NEW.acr) <= 255 AND cardinality(NEW.amr) <= 16 AND cardinality(NEW.audience) <= 32
            AND octet_length(NEW.session_id) <= 255 AND octet_length(NEW.user_agent) <= 512
            AND octet_length(NEW.ip) <= 45 AND octet_length(NEW.label) <= 255) THEN
        PERFORM oauth_check_violation('oauth_family_claims_check', 'oauth_family');
    END IF;
    IF (fresh OR NEW.current_access_key IS DISTINCT FROM o.current_access_key
            OR NEW.current_access_audience IS DISTINCT FROM o.current_access_audience)
        AND NOT (octet_length(NEW.current_access_key) IN (12, 32) AND cardinality(NEW.current_access_audience) <= 32) THEN
        PERFORM oauth_check_violation('oauth_family_current_access_check', 'oauth_family');
    END IF;
    RETURN NULL;
END
$$;

ALTER TABLE oauth_family
    DROP CONSTRAINT oauth_family_check,
    DROP CONSTRAINT oauth_family_check1,
    DROP CONSTRAINT oauth_family_check2,
    DROP CONSTRAINT oauth_family_claims_check,
    DROP CONSTRAINT oauth_family_client_id_check,
    DROP CONSTRAINT oauth_family_current_access_check,
    DROP CONSTRAINT oauth_family_parent_digest_check,
    DROP CONSTRAINT oauth_family_parent_reuses_check,
    DROP CONSTRAINT oauth_family_revoked_reason_check,
    DROP CONSTRAINT oauth_family_rotation_count_check,
    DROP CONSTRAINT oauth_family_scope_check,
    DROP CONSTRAINT oauth_family_sender_thumbprint_check,
    DROP CONSTRAINT oauth_family_token_digest_check,
    DROP CONSTRAINT oauth_family_token_pepper_id_check,
    DROP CONSTRAINT oauth_family_token_scope_check,
    DROP CONSTRAINT oauth_family_user_id_check;

-- Every column but the live token's: token_digest, token_pepper_id, token_scope, parent_digest,
-- parent_reuses, rotation_count, last_rotated_at, idle_expires_at, user_agent, ip,
-- access_expires_at and current_access_*. AFTER, not BEFORE: a table with a BEFORE UPDATE row
-- trigger has every UPDATE lock the old row first (a WAL record of its own), whether the trigger
-- then fires or not; an AFTER trigger that does not fire costs an UPDATE no lock and no WAL (the
-- old row is read, and the updated columns compared with its list). Its error still ends the
-- statement, and nothing it wrote remains.
CREATE TRIGGER oauth_family_check
    AFTER INSERT OR UPDATE OF id, client_id, user_id, scope, created_at, expires_at, sender_thumbprint,
        revoked_at, revoked_reason, auth_time, acr, amr, audience, session_id, label
    ON oauth_family FOR EACH ROW EXECUTE FUNCTION oauth_family_check();
ALTER TABLE oauth_family ENABLE ALWAYS TRIGGER oauth_family_check;

ALTER TABLE oauth_refresh_tombstone
    DROP CONSTRAINT oauth_refresh_tombstone_check,
    DROP CONSTRAINT oauth_refresh_tombstone_successor_sealed_check;

-- The day cleanup finds a family by, from its idle expiry. An insert gets it from this trigger,
-- whatever the statement gave; an UPDATE that moves idle_expires_at sets it with it, as
-- RefreshTokenRotate and RefreshTokenGraceReplace do (no trigger is fired by a rotation). A value
-- left behind by a hand-written UPDATE delays or hastens only when cleanup looks at the family:
-- what it deletes is decided by idle_expires_at.
ALTER TABLE oauth_family ALTER COLUMN sweep_day DROP EXPRESSION;

CREATE FUNCTION oauth_family_sweep_day() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.sweep_day := (NEW.idle_expires_at AT TIME ZONE 'UTC')::date;
    RETURN NEW;
END
$$;

-- BEFORE INSERT only: a BEFORE UPDATE row trigger would have every UPDATE lock its row first.
CREATE TRIGGER oauth_family_sweep_day
    BEFORE INSERT ON oauth_family FOR EACH ROW EXECUTE FUNCTION oauth_family_sweep_day();
ALTER TABLE oauth_family ENABLE ALWAYS TRIGGER oauth_family_sweep_day;
