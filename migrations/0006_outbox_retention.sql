-- Outbox retention: a notification that is done (published to RabbitMQ, and delivered,
-- failed or not wanted by the webhook) is deleted by the sweeper after
-- NOTIFICATION_RETENTION_SECS, so the outbox does not grow without bound. The pruning
-- walks the primary key from the oldest row (ids grow with created_at), so it needs no
-- index of its own: an index on created_at (even BRIN) cost the relay a lot at
-- 10,000 notifications/s in make expiry-bench.
--
-- 'skipped': published while no webhook was configured. Without it such rows stayed
-- "due" for the webhook forever, so its index covered the whole outbox and configuring a
-- webhook later would have delivered the whole backlog.
ALTER TABLE notifications DROP CONSTRAINT notifications_webhook_outcome_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_webhook_outcome_check
    CHECK (webhook_outcome IN ('delivered', 'failed', 'skipped'));
