//! Two sweepers deliver every notification to one webhook receiver that takes 3 s over
//! each request, all through the run's faults. At the end: how many requests came, for
//! how many distinct `webhook-id`s, and what the outbox says (delivered in one attempt or
//! more, failed, still pending). A notification must never be given up on (`failed`)
//! because the receiver is slow, and a second request for one happens only when a
//! sweeper lost its claim: killed mid-request, or PostgreSQL down when the answer came.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tester::webhook_receiver::{Behaviour, WebhookReceiver};

/// How long the receiver takes over each request.
pub const RECEIVER_DELAY: Duration = Duration::from_secs(3);

/// The sweepers delivering to it; the first is the one killed.
pub const SWEEPERS: [&str; 2] = ["sweeper-1", "sweeper-2"];

/// Starts the receiver on `port`.
pub async fn start_receiver(port: u16) -> anyhow::Result<WebhookReceiver> {
    let behaviour = Behaviour {
        delay: RECEIVER_DELAY,
        ..Behaviour::default()
    };
    WebhookReceiver::start(([127, 0, 0, 1], port).into(), behaviour).await
}

/// The webhook's figures after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookFigures {
    pub requests: u64,
    pub distinct_ids: u64,
    /// `webhook-id`s received more than once.
    pub ids_received_twice_or_more: u64,
    pub delivered_in_one_attempt: u64,
    pub delivered_in_more: u64,
    pub failed: u64,
    pub pending: u64,
}

impl WebhookFigures {
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.failed > 0 {
            failures.push(format!(
                "webhook: {} notifications given up on",
                self.failed
            ));
        }
        if self.requests == 0 {
            failures.push("webhook: no request reached the receiver".into());
        }
        failures
    }
}

/// Reads the receiver's record and the outbox.
pub async fn figures(receiver: &WebhookReceiver, pool: &PgPool) -> anyhow::Result<WebhookFigures> {
    let per_id = receiver.per_webhook_id();
    let (one, more, failed, pending): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE webhook_outcome = 'delivered' AND webhook_attempts = 1),
                count(*) FILTER (WHERE webhook_outcome = 'delivered' AND webhook_attempts > 1),
                count(*) FILTER (WHERE webhook_outcome = 'failed'),
                count(*) FILTER (WHERE webhook_outcome IS NULL)
         FROM notifications",
    )
    .fetch_one(pool)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(WebhookFigures {
        requests: per_id.values().map(|n| *n as u64).sum(),
        distinct_ids: per_id.len() as u64,
        ids_received_twice_or_more: per_id.values().filter(|n| **n > 1).count() as u64,
        delivered_in_one_attempt: count(one),
        delivered_in_more: count(more),
        failed: count(failed),
        pending: count(pending),
    })
}
