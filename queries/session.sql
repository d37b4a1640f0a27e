-- SessionSetLockTimeout bounds how long the statements of the current transaction wait for a lock.
-- name: SessionSetLockTimeout :exec
SELECT set_config('lock_timeout', @timeout::text, true);
