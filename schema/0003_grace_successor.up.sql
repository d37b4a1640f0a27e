-- A rotation keeps the successor it handed out, encrypted under a key that only the holder of the
-- parent token can derive (AES-256-GCM under a key from HKDF of the raw parent token; the parent's
-- and the successor's digests are the associated data). A client that presents the parent again
-- within the grace window — a lost response, two tabs refreshing at once — gets the same successor
-- back, as long as it is unused: no second live token, no fork (I1). The database alone, or with
-- the pepper, cannot decrypt it: it holds only a keyed digest of the parent. The ciphertext goes
-- when the successor is used (the rotation that consumes it clears it) and, past the longest grace
-- window, with cleanup.
ALTER TABLE oauth_refresh_token
    ADD COLUMN grace_ciphertext bytea CHECK (octet_length(grace_ciphertext) BETWEEN 28 AND 128);

-- Cleanup finds the ciphertexts older than the longest window.
CREATE INDEX oauth_refresh_token_grace_ciphertext_idx ON oauth_refresh_token (created_at)
    WHERE grace_ciphertext IS NOT NULL;
