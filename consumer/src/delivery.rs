//! The handling of one delivery: check every id, record the online ones, send the failed
//! ones to retry, and ack only when all of that is durable.

use std::sync::Arc;

use chrono::Utc;
use futures::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lastseen::CheckMessage;
use lastseen::store::objects::Sighting;

use crate::retry::{Outcome, Retrier, attempt_of};
use crate::status::StatusClient;
use crate::writer::LastSeenWriter;

/// What every delivery of one AMQP session shares.
pub struct Context {
    /// The channel the deliveries came on: kept open while any delivery is in flight,
    /// since lapin closes a channel when its last handle goes and acks would then fail.
    pub channel: lapin::Channel,
    pub status: StatusClient,
    pub writer: LastSeenWriter,
    pub retrier: Retrier,
}

/// Handles one delivery to the end: acked once durable, or left unacked (and so
/// redelivered) if anything on the way failed.
pub async fn handle(delivery: Delivery, ctx: Arc<Context>) {
    let attempt = attempt_of(&delivery.properties);
    let message: CheckMessage = match serde_json::from_slice(&delivery.data) {
        Ok(message) => message,
        Err(err) => {
            let reason = format!("malformed check message: {err}");
            tracing::warn!(%reason, "dead-lettering");
            match ctx
                .retrier
                .dead_letter(&delivery.data, attempt, &reason)
                .await
            {
                Ok(()) => ack(&delivery).await,
                Err(err) => requeue(&delivery, &err.to_string()).await,
            }
            return;
        }
    };

    let answers = join_all(message.object_ids.iter().map(|&id| {
        let status = &ctx.status;
        async move { (id, status.is_online(id).await, Utc::now()) }
    }))
    .await;

    let mut sightings = Vec::new();
    let mut failed = Vec::new();
    let mut reason = String::new();
    for (id, answer, seen_at) in answers {
        match answer {
            Ok(true) => sightings.push(Sighting { id, seen_at }),
            Ok(false) => {}
            Err(err) => {
                tracing::debug!(error = %err, attempt, "status check failed");
                reason = err.to_string();
                failed.push(id);
            }
        }
    }

    if !sightings.is_empty() && ctx.writer.record(sightings).await.is_err() {
        // Shutting down before commit: leave the message unacked for redelivery.
        return;
    }
    if !failed.is_empty() {
        let retry = CheckMessage {
            object_ids: failed,
            accepted_at: message.accepted_at,
        };
        match ctx
            .retrier
            .retry_or_dead_letter(&retry, attempt, &reason)
            .await
        {
            Ok(Outcome::Retried { delay }) => {
                tracing::info!(ids = retry.object_ids.len(), attempt, ?delay, %reason, "check failed, retrying later");
            }
            Ok(Outcome::DeadLettered) => {
                tracing::warn!(ids = ?retry.object_ids, attempt, %reason, "check failed for the last time, dead-lettered");
            }
            Err(err) => return requeue(&delivery, &err.to_string()).await,
        }
    }
    ack(&delivery).await;
}

async fn ack(delivery: &Delivery) {
    if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; RabbitMQ redelivers the message, and the upsert is idempotent.
        tracing::warn!(error = %err, "ack failed; the message will be redelivered");
    }
}

async fn requeue(delivery: &Delivery, why: &str) {
    tracing::warn!(%why, "could not forward a failed message; requeueing it");
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(err) = delivery.acker.nack(options).await {
        tracing::warn!(error = %err, "nack failed; the message will be redelivered");
    }
}
