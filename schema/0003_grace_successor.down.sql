-- Dropping the ciphertexts ends grace reuse of the successors already handed out: a lost response
-- retried afterwards is treated as before this migration (its successor is replaced).
DROP INDEX IF EXISTS oauth_refresh_token_grace_ciphertext_idx;
ALTER TABLE oauth_refresh_token DROP COLUMN IF EXISTS grace_ciphertext;
