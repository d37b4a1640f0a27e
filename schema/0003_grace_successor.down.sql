-- Dropping the ciphertexts ends grace reuse of the successors already handed out: a lost response
-- retried afterwards is treated as before this migration (its successor is replaced).
ALTER TABLE oauth_refresh_token DROP COLUMN IF EXISTS grace_ciphertext;
