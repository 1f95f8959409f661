-- An outbox that stays cheap: notifications partitioned by day of created_at (UTC), so
-- the sweeper drops a whole day once it is past NOTIFICATION_RETENTION_SECS and every
-- row in it is done, instead of deleting rows. The sweeper keeps the partitions of the
-- next days made in advance; a row outside every day partition (the sweepers were down
-- for days) lands in the default partition, so an insert never fails for want of one.
-- Columns, defaults, the check and the partial indexes are as before; the primary key
-- takes created_at in, as a partitioned table's must.
--
-- The existing rows move into the new table here, in this migration's transaction.

ALTER TABLE notifications RENAME TO notifications_unpartitioned;
ALTER INDEX notifications_pkey RENAME TO notifications_unpartitioned_pkey;
ALTER INDEX notifications_pending_idx RENAME TO notifications_unpartitioned_pending_idx;
ALTER INDEX notifications_webhook_due_idx RENAME TO notifications_unpartitioned_webhook_due_idx;

CREATE TABLE notifications (
    id               BIGINT      GENERATED ALWAYS AS IDENTITY,
    routing_key      TEXT        NOT NULL,
    object_id        BIGINT,
    payload          JSONB       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at     TIMESTAMPTZ,
    webhook_attempts INT         NOT NULL DEFAULT 0,
    webhook_next_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    webhook_outcome  TEXT        CONSTRAINT notifications_webhook_outcome_check
                                 CHECK (webhook_outcome IN ('delivered', 'failed', 'skipped')),
    webhook_error    TEXT,
    webhook_claim    BIGINT,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- Serves the relay: only the pending rows, in order.
CREATE INDEX notifications_pending_idx ON notifications (id) WHERE published_at IS NULL;
-- Serves the webhook: the rows it still owes, by their next attempt.
CREATE INDEX notifications_webhook_due_idx ON notifications (webhook_next_at)
    WHERE webhook_outcome IS NULL;
CREATE TABLE notifications_default PARTITION OF notifications DEFAULT;

-- A partition per day from the oldest row's day to a week ahead.
DO $$
DECLARE
    first_day DATE := coalesce(
        (SELECT min(created_at AT TIME ZONE 'UTC')::date FROM notifications_unpartitioned),
        (now() AT TIME ZONE 'UTC')::date);
    day DATE;
BEGIN
    FOR day IN SELECT generate_series(first_day, (now() AT TIME ZONE 'UTC')::date + 7, interval '1 day')::date
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF notifications FOR VALUES FROM (%L) TO (%L)',
            'notifications_p' || to_char(day, 'YYYYMMDD'),
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END LOOP;
END
$$;

INSERT INTO notifications (id, routing_key, object_id, payload, created_at, published_at,
                           webhook_attempts, webhook_next_at, webhook_outcome, webhook_error,
                           webhook_claim)
OVERRIDING SYSTEM VALUE
SELECT id, routing_key, object_id, payload, created_at, published_at,
       webhook_attempts, webhook_next_at, webhook_outcome, webhook_error, webhook_claim
FROM notifications_unpartitioned;
SELECT setval(pg_get_serial_sequence('notifications', 'id'),
              coalesce((SELECT max(id) FROM notifications_unpartitioned), 0) + 1, false);

DROP TABLE notifications_unpartitioned;

GRANT SELECT ON notifications TO lastseen_analyst;
