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
SET LOCAL lock_timeout = '5s';
ALTER TABLE oauth_refresh_token ADD COLUMN grace_ciphertext bytea;
ALTER TABLE oauth_refresh_token ADD CONSTRAINT oauth_refresh_token_grace_ciphertext_check
    CHECK (octet_length(grace_ciphertext) BETWEEN 28 AND 128) NOT VALID;
