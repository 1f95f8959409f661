//! Retries and dead letters: a message whose checks failed goes, with only the failed
//! ids, to a retry queue whose TTL sends it back to work after a growing delay; after
//! `MAX_ATTEMPTS` it goes to the dead-letter queue with the reason in its headers.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use lastseen::CheckMessage;
use lastseen::amqp::{self, AmqpError};
use lastseen::contract::header;
use lastseen::topology::Topology;

/// Exponential delays between attempts, and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): base, 2 base, 4 base, ... max.
    pub fn delay(&self, attempt: u32) -> Duration {
        lastseen::backoff::doubling(self.base, attempt, self.max)
    }

    /// Every distinct delay the policy uses, so their queues can be declared.
    pub fn delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_attempts).map(|a| self.delay(a)).collect();
        delays.dedup();
        delays
    }
}

/// Where a failed message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Retried { delay: Duration },
    DeadLettered,
}

/// Publishes retries and dead letters on a confirm-mode channel.
pub struct Retrier {
    pub channel: Channel,
    pub topology: Topology,
    pub policy: RetryPolicy,
    /// One publish at a time (see [`Self::publish_confirmed`]).
    publishing: tokio::sync::Mutex<()>,
}

impl Retrier {
    pub fn new(channel: Channel, topology: Topology, policy: RetryPolicy) -> Self {
        Self {
            channel,
            topology,
            policy,
            publishing: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `message` (holding only the failed ids) to retry after `attempt`, or to the
    /// dead-letter queue if that was the last attempt; returns once confirmed.
    pub async fn retry_or_dead_letter(
        &self,
        message: &CheckMessage,
        attempt: u32,
        reason: &str,
    ) -> Result<Outcome, AmqpError> {
        let body = serde_json::to_vec(message).expect("a CheckMessage always serializes");
        let request_id = message.request_id.as_deref();
        if attempt >= self.policy.max_attempts {
            self.dead_letter(&body, attempt, reason, request_id).await?;
            return Ok(Outcome::DeadLettered);
        }
        let delay = self.policy.delay(attempt);
        let queue = self.topology.retry_queue(delay);
        let properties = amqp::with_request_id(with_headers(attempt + 1, reason), request_id);
        self.publish_confirmed("", &queue, &body, properties)
            .await?;
        Ok(Outcome::Retried { delay })
    }

    /// Sends a body to the dead-letter queue with the reason, the attempts made and the
    /// request id (when known).
    pub async fn dead_letter(
        &self,
        body: &[u8],
        attempts: u32,
        reason: &str,
        request_id: Option<&str>,
    ) -> Result<(), AmqpError> {
        let properties = amqp::with_request_id(with_headers(attempts, reason), request_id);
        self.publish_confirmed(&self.topology.dead_letter_exchange, "", body, properties)
            .await
    }

    /// Puts a copy of a delivery back at the tail of the work queue, with `properties`
    /// (see [`crate::redelivery`]); returns once confirmed.
    pub async fn renew(&self, body: &[u8], properties: BasicProperties) -> Result<(), AmqpError> {
        self.publish_confirmed("", &self.topology.checks_queue, body, properties)
            .await
    }

    /// Publishes one message and waits for its confirm, alone on the channel: RabbitMQ
    /// may ack several publishes at once, and lapin then hands a returned message to any
    /// one of them, so only one publish may be awaiting its confirm.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), AmqpError> {
        let _one_at_a_time = self.publishing.lock().await;
        amqp::publish_mandatory(&self.channel, exchange, routing_key, body, properties)
            .await?
            .await
    }
}

fn with_headers(attempt: u32, reason: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        header::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    headers.insert(
        header::REASON.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    amqp::persistent_json().with_headers(headers)
}

/// The attempt number of a delivery, from its header (1 when absent).
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    let n = amqp::header_int(properties, header::ATTEMPT).unwrap_or(1);
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_attempts: 10,
        };
        let secs: Vec<u64> = (1..=6).map(|a| policy.delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.delays().len(), 5);
    }

    #[test]
    fn attempt_defaults_to_one_and_reads_the_header() {
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        assert_eq!(attempt_of(&with_headers(4, "x")), 4);
    }
}
