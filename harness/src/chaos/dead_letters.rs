//! The dead letters of a run, taken off `{prefix}.checks.dead` and read: the ids they
//! hold, when those were accepted, and why they died (the consumer's `x-reason` header,
//! or RabbitMQ's `x-first-death-reason` for a message over the delivery limit).

use chrono::{DateTime, Utc};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lastseen::CheckMessage;
use serde::Serialize;

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub object_ids: Vec<i64>,
    /// When the producer accepted the callback these ids came in (absent if unreadable).
    pub accepted_at: Option<DateTime<Utc>>,
    pub reason: String,
    /// The consumer's attempt count, if it set one.
    pub attempt: Option<i64>,
    /// The body did not parse as a check message.
    pub unreadable: bool,
}

/// Takes every message off `queue` (auto-ack: the node is wiped before the next run).
pub async fn take_all(amqp_url: &str, queue: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let conn = lastseen::amqp::connect(&amqp_url.into(), "chaos-dead-letters").await?;
    let channel = conn.create_channel().await?;
    let letters = take_from(&channel, queue).await?;
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(letters)
}

/// Takes every ready message off `queue` on `channel` (auto-ack) and reads each.
pub async fn take_from(channel: &lapin::Channel, queue: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    let options = BasicGetOptions { no_ack: true };
    while let Some(message) = channel.basic_get(queue.into(), options).await? {
        letters.push(read(&message.delivery));
    }
    Ok(letters)
}

fn read(delivery: &lapin::message::Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| h.inner().get(name).cloned());
    let reason = header(lastseen::contract::header::REASON)
        .or_else(|| header("x-first-death-reason"))
        .map_or_else(|| "unknown".to_owned(), |v| text(&v));
    let attempt =
        lastseen::amqp::header_int(&delivery.properties, lastseen::contract::header::ATTEMPT);
    match serde_json::from_slice::<CheckMessage>(&delivery.data) {
        Ok(message) => DeadLetter {
            object_ids: message.object_ids.iter().map(|id| id.get()).collect(),
            accepted_at: Some(message.accepted_at),
            reason,
            attempt,
            unreadable: false,
        },
        Err(_) => DeadLetter {
            object_ids: Vec::new(),
            accepted_at: None,
            reason,
            attempt,
            unreadable: true,
        },
    }
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}
