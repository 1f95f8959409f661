-- Warn before expiry: an object silent past its stale deadline is marked stale (and raises
-- `object.stale`) before it expires. Off unless a callback gives `stale_after_secs` or the
-- consumers have OBJECT_STALE_AFTER_SECS: then both columns stay NULL and nothing changes.
--
-- stale_at:    last_seen + the stale delay of the sighting that set last_seen (NULL: no
--              stale state for this object; always before expires_at when set).
-- stale_since: when the sweeper marked it stale (NULL: online). A sighting newer than
--              last_seen clears it (a recovery, raising `object.online`).
-- recovered_last_seen: written by every upsert: on the one that brought the object back
--              from stale, its last sighting before (so the `object.online` it raises can
--              tell how long it was silent); NULL on every other write. Internal.
--
-- Nullable columns without a default: added without rewriting the table.
ALTER TABLE objects
    ADD COLUMN stale_at TIMESTAMPTZ,
    ADD COLUMN stale_since TIMESTAMPTZ,
    ADD COLUMN recovered_last_seen TIMESTAMPTZ;

-- The stale sweep reads what is due through this index, as the expiry sweep reads
-- objects_expires_at_idx: a sweep costs what changes state, not the table. Only objects
-- with a stale deadline still ahead of them are in it, so with stale off it stays empty
-- and costs a sighting nothing.
CREATE INDEX objects_stale_due_idx ON objects (stale_at)
    WHERE stale_at IS NOT NULL AND stale_since IS NULL;
-- Counting the stale objects (the metric, the status page, GET /objects?state=stale)
-- reads only them.
CREATE INDEX objects_stale_idx ON objects (id) WHERE stale_since IS NOT NULL;

-- The analysts' view gains the state (online / stale) and the stale deadline; its
-- existing columns are unchanged.
CREATE OR REPLACE VIEW online_objects AS
SELECT id,
       first_seen,
       last_seen,
       expires_at,
       extract(epoch FROM now() - last_seen) AS seconds_since_seen,
       CASE WHEN stale_since IS NULL THEN 'online' ELSE 'stale' END AS state,
       stale_at,
       stale_since
FROM objects;
