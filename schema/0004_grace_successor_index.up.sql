-- Cleanup finds the sealed successors older than the longest grace window. Built CONCURRENTLY, so
-- that rotations go on while it is built (a statement of its own: it cannot run in a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS oauth_refresh_token_grace_ciphertext_idx ON oauth_refresh_token (created_at)
    WHERE grace_ciphertext IS NOT NULL;
