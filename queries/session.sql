-- SessionBackendPID returns the server process of this session, as the server knows it (a
-- connection pooler in front of it may report another in the connection handshake).
-- name: SessionBackendPID :one
SELECT pg_backend_pid()::integer AS pid;

-- SessionBlocks reports whether this session holds a lock that the session with the given backend
-- pid waits for, directly or through sessions queued before it: the first session to wait for a
-- row lock takes a lock on the tuple, and later ones wait for that session, not the row's holder.
-- name: SessionBlocks :one
WITH RECURSIVE waits (pid, depth) AS (
    SELECT @pid::integer, 0
    UNION ALL
    SELECT b.pid, w.depth + 1
    FROM waits w
    CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS b (pid)
    WHERE w.depth < 8
)
SELECT EXISTS (SELECT 1 FROM waits WHERE depth > 0 AND pid = pg_backend_pid()) AS blocks;

-- SessionIsolation returns the isolation level of the current transaction.
-- name: SessionIsolation :one
SELECT current_setting('transaction_isolation')::text AS isolation;

-- SessionReadCommitted sets the current transaction's isolation level, before its first statement.
-- name: SessionReadCommitted :exec
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
