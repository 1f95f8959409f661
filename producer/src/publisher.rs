//! Publishing check messages with publisher confirms. A background task keeps one
//! connection with a pool of confirm-mode channels alive, reconnecting with backoff;
//! each callback borrows a channel for itself, so a message RabbitMQ returns as
//! unroutable can only fail the callback that published it.

use lastseen::contract::metric;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::try_join_all;
use lapin::{Channel, Connection};
use lastseen::CheckMessage;
use lastseen::amqp::{self, AmqpError};
use lastseen::backoff::Retries;
use lastseen::topology::{CHECK_ROUTING_KEY, Topology};
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

/// Why a batch was not (or not provably) stored by RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("RabbitMQ is not connected")]
    NotConnected,
    #[error("RabbitMQ did not confirm within the publish timeout")]
    Timeout,
}

/// A live connection and its confirm-mode channels, each lent to one callback at a time.
struct Session {
    connection: Connection,
    channels: Vec<Mutex<Channel>>,
}

impl Session {
    fn is_usable(&self) -> bool {
        self.connection.status().connected()
    }
}

/// Publishes check messages durably: persistent, mandatory, confirmed.
pub struct CallbackPublisher {
    session: watch::Receiver<Option<Arc<Session>>>,
    session_tx: watch::Sender<Option<Arc<Session>>>,
    /// Wakes the connection keeper when a publish found the session broken.
    broken: Notify,
    next_channel: AtomicUsize,
    amqp_url: String,
    topology: Topology,
    channel_count: usize,
}

impl CallbackPublisher {
    pub fn new(amqp_url: String, topology: Topology, channel_count: usize) -> Arc<Self> {
        let (session_tx, session) = watch::channel(None);
        Arc::new(Self {
            session,
            session_tx,
            broken: Notify::new(),
            next_channel: AtomicUsize::new(0),
            amqp_url,
            topology,
            channel_count: channel_count.max(1),
        })
    }

    /// Keeps a usable session until `shutdown`: connects, declares the topology, and
    /// reconnects with backoff and jitter whenever the session breaks. Returns an error
    /// no retry can fix ([`AmqpError::is_fatal`]: refused credentials, a queue declared
    /// with other settings) at once, for the producer to stop with it.
    pub async fn keep_connected(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), AmqpError> {
        let mut retries = Retries::new();
        while !shutdown.is_cancelled() {
            if self.current().is_some() {
                tokio::select! {
                    () = self.broken.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            match self.connect().await {
                Ok(session) => {
                    tracing::info!(channels = session.channels.len(), "connected to RabbitMQ");
                    self.session_tx.send_replace(Some(session));
                    retries.succeeded();
                }
                Err(err) if err.is_fatal() => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "RabbitMQ not reachable, retrying");
                    if !retries.pause(&shutdown).await {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Arc<Session>, AmqpError> {
        let connection = amqp::connect(&self.amqp_url, "producer").await?;
        let mut channels = Vec::with_capacity(self.channel_count);
        for _ in 0..self.channel_count {
            channels.push(amqp::confirm_channel(&connection).await?);
        }
        self.topology.declare(&channels[0]).await?;
        Ok(Arc::new(Session {
            connection,
            channels: channels.into_iter().map(Mutex::new).collect(),
        }))
    }

    /// The usable session, if any.
    fn current(&self) -> Option<Arc<Session>> {
        self.session
            .borrow()
            .as_ref()
            .filter(|s| s.is_usable())
            .cloned()
    }

    /// True when the publisher holds a usable connection to RabbitMQ.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Waits for a usable session, at most `wait`.
    async fn wait_for_session(&self, wait: Duration) -> Option<Arc<Session>> {
        if let Some(session) = self.current() {
            return Some(session);
        }
        self.broken.notify_one();
        let mut rx = self.session.clone();
        tokio::time::timeout(wait, async {
            loop {
                if let Some(session) = rx.borrow_and_update().as_ref().filter(|s| s.is_usable()) {
                    return Some(session.clone());
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Publishes every message and returns once RabbitMQ has confirmed and routed all,
    /// within `bound` (waiting for a connection included).
    pub async fn publish(
        &self,
        messages: &[CheckMessage],
        bound: Duration,
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let session = self
            .wait_for_session(bound)
            .await
            .ok_or(PublishError::NotConnected)?;
        let start = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let slots = &session.channels;
        // Borrow a free channel if there is one, else wait for the next in turn.
        let channel =
            match (0..slots.len()).find_map(|i| slots[(start + i) % slots.len()].try_lock().ok()) {
                Some(guard) => guard,
                None => slots[start % slots.len()].lock().await,
            };
        let remaining = bound.saturating_sub(started.elapsed());
        let publishing = std::time::Instant::now();
        let result =
            match tokio::time::timeout(remaining, self.publish_on(&channel, messages)).await {
                Ok(result) => result.map_err(PublishError::from),
                Err(_) => Err(PublishError::Timeout),
            };
        let outcome = if result.is_ok() {
            "confirmed"
        } else {
            "failed"
        };
        metrics::histogram!(metric::PUBLISH_CONFIRM_SECONDS, "outcome" => outcome)
            .record(publishing.elapsed().as_secs_f64());
        if result.is_ok() {
            let ids: usize = messages.iter().map(|m| m.object_ids.len()).sum();
            metrics::counter!(metric::IDS_PUBLISHED_TOTAL).increment(ids as u64);
        }
        if let Err(err) = &result {
            // A broken channel or connection is renewed; a slow or refused confirm on a
            // healthy channel is not a reason to drop every other callback's publishes.
            if session.is_usable() && channel.status().connected() {
                tracing::warn!(error = %err, "publish not confirmed in time");
            } else {
                tracing::warn!(error = %err, "publish failed; the session will be renewed");
                self.discard(&session);
            }
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        messages: &[CheckMessage],
    ) -> Result<(), AmqpError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let body = serde_json::to_vec(message).expect("a CheckMessage always serializes");
            confirms.push(
                amqp::publish_mandatory(
                    channel,
                    &self.topology.callbacks_exchange,
                    CHECK_ROUTING_KEY,
                    &body,
                    amqp::with_request_id(amqp::persistent_json(), message.request_id.as_deref()),
                )
                .await?,
            );
        }
        try_join_all(confirms).await?;
        Ok(())
    }

    /// Drops a session that failed (unless it was already replaced) and wakes the keeper.
    fn discard(&self, failed: &Arc<Session>) {
        self.session_tx.send_if_modified(|current| {
            if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
                *current = None;
                true
            } else {
                false
            }
        });
        self.broken.notify_one();
    }

    /// Closes the connection, letting in-flight confirms finish first (bounded).
    pub async fn close(&self) {
        let Some(session) = self.session_tx.send_replace(None) else {
            return;
        };
        for slot in &session.channels {
            let channel = slot.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), channel.wait_for_confirms()).await;
            let _ = channel.close(200, "producer shutting down".into()).await;
        }
        let _ = session
            .connection
            .close(200, "producer shutting down".into())
            .await;
    }
}
