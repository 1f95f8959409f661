-- Object lifecycle: a deadline per object, the history of expired stretches, events
-- beyond expiry, and views for analysts.

-- Each object expires at its own deadline: last_seen + the TTL of the callback that saw it
-- (`ttl_secs`, default OBJECT_TTL_SECS). first_seen is when its current stretch online
-- began. Rows from before this migration get the old fixed 30 s TTL.
ALTER TABLE objects
    ADD COLUMN first_seen TIMESTAMPTZ,
    ADD COLUMN expires_at TIMESTAMPTZ;
UPDATE objects SET first_seen = last_seen, expires_at = last_seen + interval '30 seconds';
ALTER TABLE objects
    ALTER COLUMN first_seen SET NOT NULL,
    ALTER COLUMN expires_at SET NOT NULL;

-- The sweeper reads due rows through this index: a sweep costs what expires, not the
-- table. It replaces the index on last_seen, which every upsert had to maintain too.
CREATE INDEX objects_expires_at_idx ON objects (expires_at);
DROP INDEX objects_last_seen_idx;

-- Every stretch online that ended in expiry: written in the transaction that deletes the
-- object from `objects`.
CREATE TABLE object_expiries (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object_id  BIGINT      NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    expired_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX object_expiries_object_idx ON object_expiries (object_id, expired_at DESC);

-- A digest notification (one per expiry transaction) is about many objects.
ALTER TABLE notifications ALTER COLUMN object_id DROP NOT NULL;

-- For analysts: who is online now, and every stretch of every object (current ones with
-- expired_at NULL).
CREATE VIEW online_objects AS
SELECT id,
       first_seen,
       last_seen,
       expires_at,
       extract(epoch FROM now() - last_seen) AS seconds_since_seen
FROM objects;

CREATE VIEW object_history AS
SELECT id AS object_id, first_seen, last_seen, expires_at, NULL::timestamptz AS expired_at
FROM objects
UNION ALL
SELECT object_id, first_seen, last_seen, expires_at, expired_at
FROM object_expiries;
