//! The handling of one delivery: check every id, record the online ones, send the failed
//! ones to retry, and ack only when all of that is durable.

use lastseen::contract::metric;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::Utc;
use futures::FutureExt;
use futures::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lastseen::progress::Held;
use lastseen::{CheckMessage, ObjectId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::deadlines::Deadlines;
use crate::holds;
use crate::redelivery::{self, Redelivery, RenewPolicy};
use crate::retry::{Outcome, Retrier, attempt_of};
use crate::status::StatusClient;
use crate::writer::LastSeenWriter;

/// What every delivery of one AMQP session shares.
pub struct Context {
    /// The channel the deliveries came on: kept open while any delivery is in flight,
    /// since lapin closes a channel when its last handle goes and acks would then fail.
    pub channel: lapin::Channel,
    pub status: StatusClient,
    /// Status calls this process may have in flight (see `MAX_CHECKS_IN_FLIGHT`).
    pub check_slots: Arc<tokio::sync::Semaphore>,
    pub writer: LastSeenWriter,
    pub retrier: Retrier,
    /// Cancelled when forwarding to retry failed: the session is then renewed, so its
    /// queues are declared again, instead of requeueing every failure forever.
    pub session_failed: CancellationToken,
    /// TTL and stale delay of sightings from messages that carry none
    /// (`OBJECT_TTL_SECS`, `OBJECT_STALE_AFTER_SECS`).
    pub deadlines: Deadlines,
    /// When a redelivered message is re-published fresh (see [`crate::redelivery`]).
    pub renew: RenewPolicy,
    /// For per-object expiry holds (see [`crate::holds`]).
    pub pool: sqlx::PgPool,
}

/// Handles one delivery to the end: acked once durable, or left unacked (and so
/// redelivered) if anything on the way failed or `ended` fired: its session broke, so it
/// can no longer be acked and RabbitMQ redelivers it, and its work stops instead of
/// holding check slots. `held` keeps its `accepted_at` in this process's progress
/// reports until then.
pub async fn handle(
    delivery: Delivery,
    ctx: Arc<Context>,
    held: Option<Held>,
    ended: CancellationToken,
) {
    let _held = held;
    tokio::select! {
        settled = AssertUnwindSafe(settle(&delivery, &ctx, &ended)).catch_unwind() => {
            if let Err(panic) = settled {
                let reason = format!("the consumer panicked handling it: {}", panic_text(&*panic));
                tracing::error!(%reason, "dead-lettering");
                // Given up: its ids are settled, and any hold of theirs goes.
                if let Ok(message) = serde_json::from_slice::<CheckMessage>(&delivery.data) {
                    holds::release(&ctx.pool, &message.object_ids, message.accepted_at).await;
                }
                let request_id = lastseen::amqp::request_id_of(&delivery.properties);
                dead_letter(&delivery, &ctx, &reason, "panicked", request_id.as_deref()).await;
            }
        }
        () = ended.cancelled() => {
            tracing::debug!("session broke; the delivery is left for redelivery");
        }
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Sends a delivery as it is to the dead-letter queue with `reason` (and `request_id`,
/// when known), then acks it; if that fails, requeues it and renews the session.
async fn dead_letter(
    delivery: &Delivery,
    ctx: &Context,
    reason: &str,
    label: &'static str,
    request_id: Option<&str>,
) {
    let attempt = attempt_of(&delivery.properties);
    match ctx
        .retrier
        .dead_letter(&delivery.data, attempt, reason, request_id)
        .await
    {
        Ok(()) => {
            metrics::counter!(metric::DEAD_LETTERS_TOTAL, "reason" => label).increment(1);
            ack(delivery).await;
        }
        Err(err) => {
            ctx.session_failed.cancel();
            requeue(delivery, &err.to_string()).await;
        }
    }
}

/// Re-publishes a delivery fresh (see [`crate::redelivery`]), then acks it.
async fn renew(delivery: &Delivery, ctx: &Context, redeliveries: u64) {
    let properties = redelivery::renewed(&delivery.properties, redeliveries);
    match ctx.retrier.renew(&delivery.data, properties).await {
        Ok(()) => {
            metrics::counter!(metric::DELIVERIES_RENEWED_TOTAL).increment(1);
            tracing::info!(
                redeliveries,
                "redelivered often by session breaks; re-published fresh"
            );
            ack(delivery).await;
        }
        Err(err) => {
            ctx.session_failed.cancel();
            requeue(delivery, &err.to_string()).await;
        }
    }
}

async fn settle(delivery: &Delivery, ctx: &Context, ended: &CancellationToken) {
    let attempt = attempt_of(&delivery.properties);
    metrics::counter!(
        metric::DELIVERIES_TOTAL,
        "redelivered" => if delivery.redelivered { "true" } else { "false" }
    )
    .increment(1);
    let message: CheckMessage = match serde_json::from_slice(&delivery.data) {
        Ok(message) => message,
        Err(err) => {
            let reason = format!("malformed check message: {err}");
            tracing::warn!(%reason, "dead-lettering");
            return dead_letter(delivery, ctx, &reason, "malformed", None).await;
        }
    };
    match ctx.renew.judge(&delivery.properties) {
        Redelivery::Handle => {}
        Redelivery::Renew { redeliveries } => return renew(delivery, ctx, redeliveries).await,
        Redelivery::GiveUp { redeliveries } => {
            let reason = format!(
                "delivered {redeliveries} times without being settled: it keeps breaking its consumers"
            );
            tracing::error!(%reason, "dead-lettering");
            let request_id = message.request_id.as_deref();
            // Given up: its ids are settled, and any hold of theirs goes.
            holds::release(&ctx.pool, &message.object_ids, message.accepted_at).await;
            return dead_letter(delivery, ctx, &reason, "redelivered", request_id).await;
        }
    }

    let span = tracing::info_span!(
        "delivery",
        request_id = message.request_id.as_deref().unwrap_or("-"),
        attempt,
    );
    check_message(delivery, ctx, message, attempt, ended)
        .instrument(span)
        .await;
}

/// Checks every id of a parsed message, records the online ones, retries the failed.
async fn check_message(
    delivery: &Delivery,
    ctx: &Context,
    message: CheckMessage,
    attempt: u32,
    ended: &CancellationToken,
) {
    // Every id is checked, and if online recorded, on its own: a fast answer is written
    // without waiting for the slowest id of its message. The message is acked once all
    // its ids are settled.
    let deadlines = ctx.deadlines.of(&message);
    let outcomes = join_all(
        message
            .object_ids
            .iter()
            .map(|&id| check_and_record(id, deadlines, ctx)),
    )
    .await;
    let mut failed = Vec::new();
    let mut settled = Vec::new();
    let mut reason = String::new();
    for (id, outcome) in message.object_ids.iter().zip(outcomes) {
        match outcome {
            Settled::Stored | Settled::Offline => settled.push(*id),
            Settled::Failed(why) => {
                tracing::debug!(%why, attempt, "status check failed");
                reason = why;
                failed.push(*id);
            }
            // Shutting down before commit: leave the message unacked for redelivery.
            Settled::WriterStopped => return,
        }
    }
    // Ids that go to a retry queue are held from expiry first (see `crate::holds`).
    if !failed.is_empty()
        && attempt < ctx.retrier.policy.max_attempts
        && !holds::hold(&ctx.pool, &failed, message.accepted_at, ended).await
    {
        return;
    }
    if !failed.is_empty() {
        let retry = CheckMessage {
            object_ids: failed,
            accepted_at: message.accepted_at,
            request_id: message.request_id.clone(),
            ttl_secs: message.ttl_secs,
            stale_after_secs: message.stale_after_secs,
        };
        match ctx
            .retrier
            .retry_or_dead_letter(&retry, attempt, &reason)
            .await
        {
            Ok(Outcome::Retried { delay }) => {
                metrics::counter!(metric::CHECK_RETRIES_TOTAL).increment(1);
                metrics::counter!(metric::RETRIED_IDS_TOTAL)
                    .increment(retry.object_ids.len() as u64);
                tracing::info!(ids = retry.object_ids.len(), attempt, ?delay, %reason, "check failed, retrying later");
            }
            Ok(Outcome::DeadLettered) => {
                settled.extend(&retry.object_ids);
                metrics::counter!(metric::DEAD_LETTERS_TOTAL, "reason" => "attempts").increment(1);
                tracing::warn!(ids = ?retry.object_ids, attempt, %reason, "check failed for the last time, dead-lettered");
            }
            Err(err) => {
                ctx.session_failed.cancel();
                return requeue(delivery, &err.to_string()).await;
            }
        }
    }
    // Only a retry (attempt 2 on), or a delivery that got as far as holding its failed
    // ids before (redelivered), can have held ids.
    if attempt > 1 || delivery.redelivered {
        holds::release(&ctx.pool, &settled, message.accepted_at).await;
    }
    ack(delivery).await;
}

/// How one id of a message ended.
enum Settled {
    Stored,
    Offline,
    Failed(String),
    WriterStopped,
}

async fn check_and_record(id: ObjectId, deadlines: Deadlines, ctx: &Context) -> Settled {
    let answer = {
        // Bounds the status calls (and so the HTTP connections) of this process.
        let _permit = ctx.check_slots.acquire().await;
        let in_flight = metrics::gauge!(metric::CHECKS_IN_FLIGHT);
        in_flight.increment(1.0);
        let started = std::time::Instant::now();
        let answer = ctx.status.is_online(id).await;
        in_flight.decrement(1.0);
        let outcome = match &answer {
            Ok(true) => "online",
            Ok(false) => "offline",
            Err(_) => "failed",
        };
        metrics::histogram!(metric::STATUS_CHECK_SECONDS, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(metric::STATUS_CHECKS_TOTAL, "outcome" => outcome).increment(1);
        answer
    };
    match answer {
        Ok(true) => {
            let sighting = deadlines.sighting(id, Utc::now());
            match ctx.writer.record(vec![sighting]).await {
                Ok(()) => Settled::Stored,
                Err(_) => Settled::WriterStopped,
            }
        }
        Ok(false) => Settled::Offline,
        Err(err) => Settled::Failed(err.to_string()),
    }
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
