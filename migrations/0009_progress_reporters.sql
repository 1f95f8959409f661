-- The producers and consumers the sweepers hear progress reports from, so a sweeper that
-- starts knows who may hold unsettled work though silent now (a producer cut off from
-- RabbitMQ, its spool filling) and holds expiry for it (see the sweeper's `watermark`).
-- Rows go when their reporter leaves or is known gone.
CREATE TABLE progress_reporters (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    alive_queue TEXT,
    last_heard TIMESTAMPTZ NOT NULL
);
