-- History that stays cheap: object_expiries partitioned by day of expired_at (UTC), so
-- the sweeper drops a whole day past HISTORY_RETENTION_DAYS instead of deleting rows.
-- The sweeper keeps the partitions of the next days made in advance; a row outside
-- every day partition (the sweepers were down for days) lands in the default partition,
-- so an insert never fails for want of one. The analysts' views are unchanged.
--
-- The existing rows move into the new table here, in this migration's transaction.

DROP VIEW object_history;
ALTER TABLE object_expiries RENAME TO object_expiries_unpartitioned;
ALTER INDEX object_expiries_object_idx RENAME TO object_expiries_unpartitioned_object_idx;
ALTER INDEX object_expiries_pkey RENAME TO object_expiries_unpartitioned_pkey;

CREATE TABLE object_expiries (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY,
    object_id  BIGINT      NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    expired_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (id, expired_at)
) PARTITION BY RANGE (expired_at);
CREATE INDEX object_expiries_object_idx ON object_expiries (object_id, expired_at DESC);
CREATE TABLE object_expiries_default PARTITION OF object_expiries DEFAULT;

-- A partition per day from the oldest row's day to a week ahead.
DO $$
DECLARE
    first_day DATE := coalesce(
        (SELECT min(expired_at AT TIME ZONE 'UTC')::date FROM object_expiries_unpartitioned),
        (now() AT TIME ZONE 'UTC')::date);
    day DATE;
BEGIN
    FOR day IN SELECT generate_series(first_day, (now() AT TIME ZONE 'UTC')::date + 7, interval '1 day')::date
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF object_expiries FOR VALUES FROM (%L) TO (%L)',
            'object_expiries_p' || to_char(day, 'YYYYMMDD'),
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END LOOP;
END
$$;

INSERT INTO object_expiries (id, object_id, first_seen, last_seen, expires_at, expired_at)
OVERRIDING SYSTEM VALUE
SELECT id, object_id, first_seen, last_seen, expires_at, expired_at
FROM object_expiries_unpartitioned;
SELECT setval(pg_get_serial_sequence('object_expiries', 'id'),
              coalesce((SELECT max(id) FROM object_expiries_unpartitioned), 0) + 1, false);
-- Each object's latest expiry, one row per object: what a sighting of an object not in
-- `objects` is judged against (is it within the latest stretch, and how long was it
-- gone), found with one index probe instead of one per day partition. Written in the
-- expiry's transaction; dropped with the history past the retention.
CREATE TABLE object_last_expiry (
    object_id  BIGINT      PRIMARY KEY,
    last_seen  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    expired_at TIMESTAMPTZ NOT NULL
);
INSERT INTO object_last_expiry (object_id, last_seen, expires_at, expired_at)
SELECT DISTINCT ON (object_id) object_id, last_seen, expires_at, expired_at
FROM object_expiries_unpartitioned
ORDER BY object_id, expired_at DESC;

DROP TABLE object_expiries_unpartitioned;

CREATE VIEW object_history AS
SELECT id AS object_id, first_seen, last_seen, expires_at, NULL::timestamptz AS expired_at
FROM objects
UNION ALL
SELECT object_id, first_seen, last_seen, expires_at, expired_at
FROM object_expiries;

GRANT SELECT ON object_expiries, object_last_expiry, object_history TO lastseen_analyst;
