-- Statements about the PostgreSQL session itself, not about the package's tables.

-- PgBackendPID returns the server process of this session, as the server knows it (a
-- connection pooler in front of it may report another in the connection handshake).
-- name: PgBackendPID :one
SELECT pg_backend_pid()::integer AS pid;

-- PgBlocksBackend reports whether this session holds a lock that the session with the given backend
-- pid waits for, directly or through sessions queued before it: the first session to wait for a
-- row lock takes a lock on the tuple, and later ones wait for that session, not the row's holder.
-- name: PgBlocksBackend :one
WITH RECURSIVE waits (pid, depth) AS (
    SELECT @pid::integer, 0
    UNION ALL
    SELECT b.pid, w.depth + 1
    FROM waits w
    CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS b (pid)
    WHERE w.depth < 8
)
SELECT EXISTS (SELECT 1 FROM waits WHERE depth > 0 AND pid = pg_backend_pid()) AS blocks;

-- PgTransactionIsolation returns the isolation level of the current transaction.
-- name: PgTransactionIsolation :one
SELECT current_setting('transaction_isolation')::text AS isolation;

-- PgSetReadCommitted sets the current transaction's isolation level, before its first statement.
-- name: PgSetReadCommitted :exec
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
