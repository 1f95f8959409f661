-- Transactional outbox of notifications. The sweeper inserts a row in the same
-- transaction that deletes the object; a relay publishes unpublished rows with
-- publisher confirms, using the row id as the AMQP message_id, and only then sets
-- published_at. A crash can cause a re-publish (same message_id), never a loss.
CREATE TABLE notifications (
    id           BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    routing_key  TEXT        NOT NULL,
    object_id    BIGINT      NOT NULL,
    payload      JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at TIMESTAMPTZ
);

-- Serves the relay: only the pending rows, in order.
CREATE INDEX notifications_pending_idx ON notifications (id) WHERE published_at IS NULL;
