-- Questions to the hot standby given as Config.ReadReplica about how far it lags behind its
-- primary. They read the server's replication state, never the package's tables, and always use
-- the database clock, whatever Config.Clock says: they measure replication, not lifetimes.

-- ReplicaStaleness reports whether the server is a standby (in recovery), and a bound on how
-- stale what it shows is: every transaction that the primary committed more than staleness before
-- this statement ran is visible on it. bounded is false when it cannot show a bound (staleness is
-- then 0 and means nothing). Of two bounds, the smaller:
--
-- 1. The age of the last transaction replayed, by its commit timestamp. A transaction visible on
--    the primary before that instant wrote its commit record earlier in the WAL, so it is
--    replayed too. Always sound, and pessimistic when the primary is idle; NULL until the
--    standby has replayed a transaction since it started.
-- 2. When the standby has replayed the WAL up to the end that the primary reported in its last
--    message, the age of that message: the standby then has every commit that the primary had
--    flushed when it sent it. The primary sends a message with every piece of WAL; when idle, a
--    keepalive only when the standby asks, having heard nothing for wal_receiver_timeout/2 (30 s
--    by default), or has not reported for wal_sender_timeout/2 (it reports every
--    wal_receiver_status_interval, 10 s). So an idle primary makes this bound grow and the reads
--    fall back, which is safe. It needs a walreceiver that is streaming and has heard from
--    the primary since it (re)started: until then its times are all the walreceiver's start, not
--    a message's, which is what equal send and receipt times show. The earlier of the send time
--    (the primary's clock) and the receipt time (the standby's) is taken, so that a standby clock
--    running behind the primary's understates the age by at most the message's transit time.
--    pg_stat_get_wal_receiver(), the function behind the view pg_stat_wal_receiver (which sqlc
--    does not know), shows them only to roles with the privileges of pg_read_all_stats; for
--    other roles only the first bound applies. Two limits: a commit made
--    with synchronous_commit off is visible on the primary before it is flushed (by the WAL
--    writer, within three wal_writer_delay), and a cascading standby hears from its upstream
--    standby, not from the primary; the bound does not count either delay.
--
-- The commit and send timestamps come from the primary's clock and are compared with the
-- standby's clock_timestamp(): a bound is off by as much as the two clocks disagree.
-- name: ReplicaStaleness :one
SELECT s.in_recovery, (s.staleness IS NOT NULL)::boolean AS bounded,
    coalesce(s.staleness, interval '0')::interval AS staleness
FROM (
    SELECT pg_is_in_recovery() AS in_recovery,
        least(
            clock_timestamp() - pg_last_xact_replay_timestamp(),
            (SELECT clock_timestamp() - least(w.last_msg_send_time, w.last_msg_receipt_time)
                FROM pg_catalog.pg_stat_get_wal_receiver() w
                WHERE w.status = 'streaming'
                  AND w.last_msg_send_time <> w.last_msg_receipt_time
                  AND pg_last_wal_replay_lsn() >= w.latest_end_lsn)
        ) AS staleness
) s;
