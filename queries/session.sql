-- SessionSetLockTimeout bounds how long the statements of the current transaction wait for a lock.
-- name: SessionSetLockTimeout :exec
SELECT set_config('lock_timeout', @timeout::text, true);

-- SessionBlocks reports whether this session holds a lock that the session with the given backend
-- pid is waiting for.
-- name: SessionBlocks :one
SELECT pg_backend_pid() = ANY(pg_blocking_pids(@pid::integer)) AS blocks;

-- SessionIsolation returns the isolation level of the current transaction.
-- name: SessionIsolation :one
SELECT current_setting('transaction_isolation')::text AS isolation;
