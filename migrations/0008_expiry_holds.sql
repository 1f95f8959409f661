-- Per-object holds on expiry: an id whose status check failed waits in a retry queue,
-- where no process reports it; its consumer records a hold first, so the object is not
-- expired for a deadline at or after the callback that named it was accepted, until
-- the id is settled (stored, found offline or dead-lettered) or MAX_EXPIRY_HOLD_SECS
-- have passed since that acceptance.
CREATE TABLE expiry_holds (
    object_id BIGINT NOT NULL,
    accepted_at TIMESTAMPTZ NOT NULL,
    held_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (object_id, accepted_at)
);
CREATE INDEX expiry_holds_accepted_at ON expiry_holds (accepted_at);

-- Whether expiry is held because the pipeline lags (one row): the sweeper that flips it
-- records the `pipeline.lagging` notification in the same transaction, so several
-- sweepers raise each start and end once.
CREATE TABLE pipeline_lag (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    held_since TIMESTAMPTZ
);
INSERT INTO pipeline_lag (id, held_since) VALUES (1, NULL);
