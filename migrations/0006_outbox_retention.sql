-- Outbox retention: a notification that is done (published to RabbitMQ, and delivered,
-- failed or not wanted by the webhook) is deleted by the sweeper after
-- NOTIFICATION_RETENTION_SECS, so the outbox does not grow without bound.
--
-- 'skipped': published while no webhook was configured. Without it such rows stayed
-- "due" for the webhook forever, so its index covered the whole outbox and configuring a
-- webhook later would have delivered the whole backlog.
ALTER TABLE notifications DROP CONSTRAINT notifications_webhook_outcome_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_webhook_outcome_check
    CHECK (webhook_outcome IN ('delivered', 'failed', 'skipped'));

-- Serves the pruning: created_at only grows with the table, so a BRIN index finds the
-- old rows for next to nothing in size and in insert cost.
CREATE INDEX notifications_created_at_brin ON notifications USING brin (created_at);
