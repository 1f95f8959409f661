//! The contract between the processes and with the people and programs around them,
//! typed once: metric names, message and webhook header names. Routing keys (event
//! kinds) are in [`crate::topology`]. Changing a value here changes what dashboards,
//! alerts, receivers and older processes see: add, don't rename.

/// Prometheus metric names, served at `/metrics` by the process that records them.
pub mod metric {
    /// The value of the unlabelled gauge or counter `name` in Prometheus text, as the
    /// services render it (`name value`); `None` when it is not there.
    pub fn read(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
    }

    /// Callbacks answered, by `outcome` (published, spooled, or the error code). Producer.
    pub const CALLBACKS_TOTAL: &str = "lastseen_callbacks_total";
    /// Messages sent to a retry queue. Consumer.
    pub const CHECK_RETRIES_TOTAL: &str = "lastseen_check_retries_total";
    /// Status calls in flight. Consumer.
    pub const CHECKS_IN_FLIGHT: &str = "lastseen_checks_in_flight";
    /// Messages taken from the work queue, by `redelivered`. Consumer.
    pub const DELIVERIES_TOTAL: &str = "lastseen_deliveries_total";
    /// Messages re-published fresh to the work queue because session breaks had brought
    /// their delivery count near the queue's limit. Consumer.
    pub const DELIVERIES_RENEWED_TOTAL: &str = "lastseen_deliveries_renewed_total";
    /// Messages dead-lettered, by `reason`. Consumer.
    pub const DEAD_LETTERS_TOTAL: &str = "lastseen_dead_letters_total";
    /// 1 while expiry is held because the pipeline lags (the watermark is further behind
    /// than `EXPIRY_HOLD_ALERT_SECS`), else 0. Sweeper.
    pub const EXPIRY_HELD: &str = "lastseen_expiry_held";
    /// Ids a consumer held back from expiry while they wait in a retry queue. Consumer.
    pub const EXPIRY_HOLDS_TOTAL: &str = "lastseen_expiry_holds_total";
    /// How far the watermark (before it every accepted callback is settled) is behind
    /// now; objects expire only when their deadline is before it. Sweeper.
    pub const EXPIRY_WATERMARK_LAG_SECONDS: &str = "lastseen_expiry_watermark_lag_seconds";
    /// Times expiry went on without waiting longer for work held past
    /// `MAX_EXPIRY_HOLD_SECS`. Sweeper.
    pub const EXPIRY_HOLD_BOUND_REACHED_TOTAL: &str = "lastseen_expiry_hold_bound_reached_total";
    /// Producers and consumers the sweeper hears progress reports from. Sweeper.
    pub const PROGRESS_REPORTERS: &str = "lastseen_progress_reporters";
    /// Time from an object's deadline to its expiry. Sweeper.
    pub const EXPIRY_LAG_SECONDS: &str = "lastseen_expiry_lag_seconds";
    /// Distinct ids of accepted callbacks. Producer.
    pub const IDS_ACCEPTED_TOTAL: &str = "lastseen_ids_accepted_total";
    /// Ids published to RabbitMQ with confirms (at once or from the spool). Producer.
    pub const IDS_PUBLISHED_TOTAL: &str = "lastseen_ids_published_total";
    /// Ids committed to the local spool. Producer.
    pub const IDS_SPOOLED_TOTAL: &str = "lastseen_ids_spooled_total";
    /// Online ids whose `last_seen` was committed. Consumer.
    pub const IDS_STORED_TOTAL: &str = "lastseen_ids_stored_total";
    /// Outbox rows not yet published. Sweeper.
    pub const NOTIFICATIONS_PENDING: &str = "lastseen_notifications_pending";
    /// Done outbox rows deleted by retention from the default partition (rows of days
    /// with no partition of their own). Sweeper.
    pub const NOTIFICATIONS_PRUNED_TOTAL: &str = "lastseen_notifications_pruned_total";
    /// Day partitions of the outbox dropped past `NOTIFICATION_RETENTION_SECS`. Sweeper.
    pub const NOTIFICATION_PARTITIONS_DROPPED_TOTAL: &str =
        "lastseen_notification_partitions_dropped_total";
    /// Day partitions of `object_expiries` dropped past `HISTORY_RETENTION_DAYS`. Sweeper.
    pub const HISTORY_PARTITIONS_DROPPED_TOTAL: &str = "lastseen_history_partitions_dropped_total";
    /// Outbox rows published with confirms. Sweeper.
    pub const NOTIFICATIONS_PUBLISHED_TOTAL: &str = "lastseen_notifications_published_total";
    /// Outbox rows written, by `routing_key`. Consumer and sweeper.
    pub const NOTIFICATIONS_RECORDED_TOTAL: &str = "lastseen_notifications_recorded_total";
    /// Objects expired. Sweeper.
    pub const OBJECTS_EXPIRED_TOTAL: &str = "lastseen_objects_expired_total";
    /// Objects that came online (first seen, or back after expiry). Consumer.
    pub const OBJECTS_ONLINE_TOTAL: &str = "lastseen_objects_online_total";
    /// Objects marked stale (silent past their stale deadline): their `object.stale`
    /// events. Sweeper.
    pub const OBJECTS_STALE_TOTAL: &str = "lastseen_objects_stale_total";
    /// Objects stale now (counted by each sweeper, once a second). Sweeper.
    pub const OBJECTS_STALE: &str = "lastseen_objects_stale";
    /// Stale objects seen again (their `object.online` with `recovered_from` = `stale`).
    /// Consumer.
    pub const STALE_RECOVERIES_TOTAL: &str = "lastseen_stale_recoveries_total";
    /// Time from an object's stale deadline to its being marked stale. Sweeper.
    pub const STALE_LAG_SECONDS: &str = "lastseen_stale_lag_seconds";
    /// Time from publish to the last confirm of a callback. Producer.
    pub const PUBLISH_CONFIRM_SECONDS: &str = "lastseen_publish_confirm_seconds";
    /// Ids sent to a retry queue. Consumer.
    pub const RETRIED_IDS_TOTAL: &str = "lastseen_retried_ids_total";
    /// Sightings dropped because they fall inside their object's expired stretch (at or
    /// before its deadline; committed after the sweeper expired it). Consumer.
    pub const SIGHTINGS_IN_THE_PAST_TOTAL: &str = "lastseen_sightings_in_the_past_total";
    /// Callbacks waiting in the spool. Producer.
    pub const SPOOL_PENDING_CALLBACKS: &str = "lastseen_spool_pending_callbacks";
    /// Ids waiting in the spool. Producer.
    pub const SPOOL_PENDING_IDS: &str = "lastseen_spool_pending_ids";
    /// Duration of one status call. Consumer.
    pub const STATUS_CHECK_SECONDS: &str = "lastseen_status_check_seconds";
    /// Status calls, by `result`. Consumer.
    pub const STATUS_CHECKS_TOTAL: &str = "lastseen_status_checks_total";
    /// Rows per upsert statement. Consumer.
    pub const UPSERT_BATCH_ROWS: &str = "lastseen_upsert_batch_rows";
    /// Upsert transactions that failed (and were retried). Consumer.
    pub const UPSERT_FAILURES_TOTAL: &str = "lastseen_upsert_failures_total";
    /// Duration of one upsert transaction. Consumer.
    pub const UPSERT_SECONDS: &str = "lastseen_upsert_seconds";
    /// Webhook deliveries, by `outcome`. Sweeper.
    pub const WEBHOOK_DELIVERIES_TOTAL: &str = "lastseen_webhook_deliveries_total";
    /// Duration of one webhook POST. Sweeper.
    pub const WEBHOOK_SECONDS: &str = "lastseen_webhook_seconds";
}

/// Header names of the AMQP messages and of the webhook's requests.
pub mod header {
    /// The request id of the callback a message came from (AMQP), and of the request (HTTP).
    pub const REQUEST_ID: &str = "x-request-id";
    /// How many times a check message has been tried (AMQP; retries and dead letters).
    pub const ATTEMPT: &str = "x-attempt";
    /// How often RabbitMQ delivered a message before (AMQP; set by quorum queues on a
    /// redelivery, and counted against the queue's `delivery-limit`).
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// Deliveries a check message had before the consumer re-published it fresh, summed
    /// over every renewal (AMQP; see the consumer's `redelivery` module).
    pub const REDELIVERIES: &str = "x-redeliveries";
    /// Why a message was dead-lettered (AMQP).
    pub const REASON: &str = "x-reason";
    /// The notification's id, the same on every attempt and the same as the AMQP
    /// `message_id`: receivers de-duplicate on it (webhook; Standard Webhooks).
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// Unix seconds when the attempt was sent; receivers refuse an old one, a replay
    /// (webhook; Standard Webhooks).
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">` under the
    /// key of NOTIFY_WEBHOOK_SECRET (webhook; Standard Webhooks).
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
    /// The notification's routing key (webhook).
    pub const WEBHOOK_EVENT: &str = "x-lastseen-event";
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn a_metric_is_read_from_prometheus_text_and_not_its_neighbours() {
        let text = "# HELP x y\n\
                    # TYPE lastseen_spool_pending_callbacks gauge\n\
                    lastseen_spool_pending_callbacks_other 9\n\
                    lastseen_spool_pending_ids 12\n\
                    lastseen_spool_pending_callbacks 3\n";
        assert_eq!(metric::read(text, metric::SPOOL_PENDING_IDS), Some(12));
        assert_eq!(metric::read(text, metric::SPOOL_PENDING_CALLBACKS), Some(3));
        assert_eq!(metric::read(text, "missing"), None);
    }
}
