//! Saying when expiry is held: a `pipeline.lagging` notification (`started`) when the
//! watermark falls further behind than `EXPIRY_HOLD_ALERT_SECS`, one (`ended`) when it is
//! current again, the `lastseen_expiry_held` gauge, and a warning when the hold reached
//! `MAX_EXPIRY_HOLD_SECS` and expiry goes on regardless. Admins learn from them that
//! silence is not being judged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lastseen::contract::metric;
use lastseen::domain::LaggingNotification;
use lastseen::store::{holds, notifications};
use lastseen::topology::LAGGING_ROUTING_KEY;
use sqlx::PgPool;

use crate::watermark::Judgement;

/// Tells holds as they start and end; several sweepers announce each once (the
/// `pipeline_lag` row decides). A change seen while PostgreSQL is away is recorded once
/// it is back, with the time it happened.
pub struct Announcer {
    alert_after: chrono::Duration,
    /// Whether this sweeper last saw expiry held; `None` before its first look.
    held: Option<bool>,
    /// Changes not yet recorded (PostgreSQL was away), oldest first.
    pending: Vec<LaggingNotification>,
    bound_reached: bool,
}

impl Announcer {
    pub fn new(alert_after: Duration) -> Self {
        Self {
            alert_after: chrono::Duration::from_std(alert_after).unwrap_or(chrono::Duration::MAX),
            held: None,
            pending: Vec::new(),
            bound_reached: false,
        }
    }

    /// Notes whether `judged` holds expiry, and records the hold's start or end when that
    /// changed. A failure (PostgreSQL down) leaves the change pending for the next call.
    pub async fn update(&mut self, pool: &PgPool, judged: &Judgement) -> sqlx::Result<()> {
        let now = Utc::now();
        let held = judged.lag > self.alert_after;
        metrics::gauge!(metric::EXPIRY_HELD).set(if held { 1.0 } else { 0.0 });
        if judged.bound_reached && !self.bound_reached {
            metrics::counter!(metric::EXPIRY_HOLD_BOUND_REACHED_TOTAL).increment(1);
            tracing::warn!(reason = %judged.reason, "expiry held for MAX_EXPIRY_HOLD_SECS: it goes on although work accepted since may be unsettled");
        }
        self.bound_reached = judged.bound_reached;
        if self.held != Some(held) {
            // At the first look, "not held" still ends a hold a sweeper before left open.
            let state = if held { "started" } else { "ended" };
            self.pending.push(lagging(state, judged, now, now));
            self.held = Some(held);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut tx = pool.begin().await?;
        let mut recorded = Vec::new();
        for change in &self.pending {
            let event = if change.state == "started" {
                holds::start_lagging(&mut tx, change.since)
                    .await?
                    .then(|| change.clone())
            } else {
                holds::end_lagging(&mut tx)
                    .await?
                    .map(|since| LaggingNotification {
                        since,
                        ..change.clone()
                    })
            };
            if let Some(event) = event {
                let payload =
                    serde_json::to_value(&event).expect("a notification always serializes");
                notifications::record_event(&mut tx, LAGGING_ROUTING_KEY, &payload).await?;
                recorded.push(event);
            }
        }
        tx.commit().await?;
        self.pending.clear();
        for event in recorded {
            metrics::counter!(metric::NOTIFICATIONS_RECORDED_TOTAL, "routing_key" => LAGGING_ROUTING_KEY)
                .increment(1);
            if event.state == "started" {
                tracing::warn!(lag_secs = event.lag_secs, reason = %event.reason, "expiry held: the pipeline lags behind");
            } else {
                tracing::info!(
                    held_for_secs = (event.at - event.since).as_seconds_f64(),
                    "expiry current again"
                );
            }
        }
        Ok(())
    }
}

fn lagging(
    state: &str,
    judged: &Judgement,
    since: DateTime<Utc>,
    at: DateTime<Utc>,
) -> LaggingNotification {
    LaggingNotification {
        event: LAGGING_ROUTING_KEY.to_owned(),
        state: state.to_owned(),
        watermark: judged.before,
        lag_secs: judged.lag.as_seconds_f64(),
        reason: judged.reason.clone(),
        bound_reached: judged.bound_reached,
        since,
        at,
    }
}
