-- Objects seen online, with when each was last seen. The consumer upserts with
-- GREATEST so last_seen never moves backwards; the sweeper deletes expired rows.
CREATE TABLE objects (
    id        BIGINT      PRIMARY KEY CHECK (id >= 0),
    last_seen TIMESTAMPTZ NOT NULL
);

-- Serves the sweeper: the oldest rows first, without scanning the table.
CREATE INDEX objects_last_seen_idx ON objects (last_seen);
