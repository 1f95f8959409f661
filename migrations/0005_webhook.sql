-- Webhook delivery of notifications (when NOTIFY_WEBHOOK_URL is set): each outbox row
-- records its attempts, when to try next, and how delivery ended (delivered or failed
-- after NOTIFY_WEBHOOK_MAX_ATTEMPTS). Independent of the RabbitMQ relay.
ALTER TABLE notifications
    ADD COLUMN webhook_attempts INT         NOT NULL DEFAULT 0,
    ADD COLUMN webhook_next_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN webhook_outcome  TEXT CHECK (webhook_outcome IN ('delivered', 'failed')),
    ADD COLUMN webhook_error    TEXT;

-- Serves the webhook sender: rows not yet delivered nor given up, by due time.
CREATE INDEX notifications_webhook_due_idx ON notifications (webhook_next_at)
    WHERE webhook_outcome IS NULL;
