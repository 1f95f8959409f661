//! The outbox relay: publish pending notifications with confirms, `message_id` set to
//! the row id, and mark them published only after the broker confirmed them.

use lastseen::contract::metric;
use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::types::ShortString;
use lastseen::amqp::{self, AmqpError};
use lastseen::session::{Session, SessionKeeper};
use lastseen::store::notifications;
use lastseen::topology::Topology;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Longest a relay round waits for the session keeper to (re)connect.
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// Why a relay round stopped; what it had locked stays pending for the next round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("a relay round took longer than {0:?} (RabbitMQ blocked or too slow to confirm)")]
    Timeout(Duration),
    #[error("RabbitMQ is not connected")]
    NotConnected,
}

/// Publishes notifications on the session the keeper keeps, over one confirm-mode
/// channel of its own, opened again whenever it or its session failed.
pub struct Relay {
    sessions: Arc<SessionKeeper>,
    batch: i64,
    /// Whether a webhook delivers the notifications too (else they are marked skipped
    /// for it when published).
    webhook: bool,
    topology: Topology,
    channel: Option<(Arc<Session>, Channel)>,
}

impl Relay {
    pub fn new(
        sessions: Arc<SessionKeeper>,
        topology: Topology,
        batch: u32,
        webhook: bool,
    ) -> Self {
        Self {
            sessions,
            batch: i64::from(batch),
            webhook,
            topology,
            channel: None,
        }
    }

    async fn channel(&mut self) -> Result<Channel, RelayError> {
        if let Some((session, channel)) = &self.channel
            && session.is_usable()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        // At start, and while RabbitMQ is back but not yet reconnected: wait a little for
        // the keeper rather than fail the round.
        let session = self
            .sessions
            .wait(SESSION_WAIT, &CancellationToken::new())
            .await
            .ok_or(RelayError::NotConnected)?;
        let channel = session.confirm_channel().await.inspect_err(|_| {
            self.sessions.broken(&session);
        })?;
        self.channel = Some((session, channel.clone()));
        Ok(channel)
    }

    /// Forgets the channel after a failure; a broken session is renewed.
    fn failed(&mut self) {
        if let Some((session, _)) = self.channel.take()
            && !session.is_usable()
        {
            self.sessions.broken(&session);
        }
    }

    /// Publishes every pending notification; returns how many were published. Each round
    /// (lock a batch, publish it, wait for its confirms, mark it) has `round_timeout`; a
    /// round past it is abandoned and its rows stay pending, so a blocked broker cannot
    /// hold the relay, while a long backlog is drained round after round.
    pub async fn drain(
        &mut self,
        pool: &PgPool,
        round_timeout: Duration,
    ) -> Result<u64, RelayError> {
        // Open the channel even with nothing to publish, so readiness reflects RabbitMQ.
        if let Err(err) = self.channel().await {
            self.failed();
            return Err(err);
        }
        let mut total = 0;
        loop {
            let published = tokio::time::timeout(round_timeout, self.round(pool))
                .await
                .unwrap_or(Err(RelayError::Timeout(round_timeout)));
            match published {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(err) => {
                    if matches!(err, RelayError::Amqp(_) | RelayError::Timeout(_)) {
                        self.failed();
                    }
                    return Err(err);
                }
            }
        }
    }

    async fn round(&mut self, pool: &PgPool) -> Result<u64, RelayError> {
        let mut tx = pool.begin().await?;
        let mut pending = notifications::lock_pending(&mut tx, self.batch).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let channel = self.channel().await?;
        // An event nobody subscribed to is dropped by the exchange: published all the
        // same (with NOTIFICATIONS_QUEUE_MAX_LENGTH=0 no queue takes every event).
        // Each row's payload is moved into its message: only the ids and days are needed
        // after (to mark them).
        let events: Vec<amqp::Outgoing> = pending
            .iter_mut()
            .map(|row| {
                let notifications::Pending {
                    id,
                    routing_key,
                    payload,
                    ..
                } = row;
                amqp::Outgoing {
                    routing_key,
                    body: std::mem::take(payload).into_bytes(),
                    properties: amqp::persistent_json()
                        .with_message_id(ShortString::from(id.to_string())),
                }
            })
            .collect();
        amqp::publish_batch(
            &channel,
            &self.topology.notifications_exchange,
            events,
            amqp::Routing::Event,
        )
        .await?;
        notifications::mark_published(&mut tx, &pending, self.webhook).await?;
        tx.commit().await?;
        metrics::counter!(metric::NOTIFICATIONS_PUBLISHED_TOTAL).increment(pending.len() as u64);
        Ok(pending.len() as u64)
    }

    /// Closes its channel; the session is closed by its owner once every user of it
    /// stopped (closing it under another task's channel makes lapin log an error).
    pub async fn close(&mut self) {
        if let Some((_, channel)) = self.channel.take() {
            let _ = channel.close(200, "sweeper shutting down".into()).await;
        }
    }
}
