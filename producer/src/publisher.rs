//! Publishing check messages with publisher confirms over a small pool of channels,
//! reconnecting to RabbitMQ after any failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::try_join_all;
use lapin::{Channel, Connection};
use lastseen::CheckMessage;
use lastseen::amqp::{self, AmqpError};
use lastseen::topology::{CHECK_ROUTING_KEY, Topology};
use tokio::sync::{Mutex, RwLock};

/// Why a batch was not (or not provably) stored by RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("RabbitMQ did not confirm within the publish timeout")]
    Timeout,
}

/// A live connection and its confirm-mode channels.
struct Session {
    connection: Connection,
    channels: Vec<Channel>,
}

impl Session {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

/// Publishes check messages durably: persistent, mandatory, confirmed.
pub struct CallbackPublisher {
    amqp_url: String,
    topology: Topology,
    channel_count: usize,
    session: RwLock<Option<Arc<Session>>>,
    /// Only one task reconnects at a time; the others wait for its result.
    reconnecting: Mutex<()>,
    next_channel: AtomicUsize,
}

impl CallbackPublisher {
    pub fn new(amqp_url: String, topology: Topology, channel_count: usize) -> Self {
        Self {
            amqp_url,
            topology,
            channel_count: channel_count.max(1),
            session: RwLock::new(None),
            reconnecting: Mutex::new(()),
            next_channel: AtomicUsize::new(0),
        }
    }

    /// True when the publisher holds a usable connection to RabbitMQ.
    pub async fn is_connected(&self) -> bool {
        self.session
            .read()
            .await
            .as_ref()
            .is_some_and(|s| s.is_usable())
    }

    /// Makes sure a usable session exists, connecting (once, without retrying) if not.
    pub async fn ensure_connected(&self) -> Result<(), AmqpError> {
        self.session().await.map(|_| ())
    }

    async fn session(&self) -> Result<Arc<Session>, AmqpError> {
        if let Some(session) = self.session.read().await.as_ref()
            && session.is_usable()
        {
            return Ok(session.clone());
        }
        let _guard = self.reconnecting.lock().await;
        // Another task may have reconnected while this one waited for the lock.
        if let Some(session) = self.session.read().await.as_ref()
            && session.is_usable()
        {
            return Ok(session.clone());
        }
        let connection = amqp::connect(&self.amqp_url, "producer").await?;
        let mut channels = Vec::with_capacity(self.channel_count);
        for _ in 0..self.channel_count {
            channels.push(amqp::confirm_channel(&connection).await?);
        }
        self.topology.declare(&channels[0]).await?;
        tracing::info!(channels = channels.len(), "connected to RabbitMQ");
        let session = Arc::new(Session {
            connection,
            channels,
        });
        *self.session.write().await = Some(session.clone());
        Ok(session)
    }

    /// Publishes every message and returns once RabbitMQ has confirmed and routed all.
    pub async fn publish(&self, messages: &[CheckMessage]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let session = self.session().await?;
        let index = self.next_channel.fetch_add(1, Ordering::Relaxed) % session.channels.len();
        let channel = &session.channels[index];
        let result = self.publish_on(channel, messages).await;
        if let Err(err) = &result {
            tracing::warn!(error = %err, "publish failed; the session will be renewed");
            self.discard(&session).await;
        }
        result.map_err(PublishError::from)
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
                    amqp::persistent_json(),
                )
                .await?,
            );
        }
        try_join_all(confirms).await?;
        Ok(())
    }

    /// Drops a session that failed, unless another task already replaced it.
    pub(crate) async fn discard_current(&self) {
        let current = self.session.read().await.clone();
        if let Some(session) = current {
            self.discard(&session).await;
        }
    }

    async fn discard(&self, failed: &Arc<Session>) {
        let mut guard = self.session.write().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
            *guard = None;
        }
    }

    /// Closes the connection, letting in-flight confirms finish first.
    pub async fn close(&self) {
        if let Some(session) = self.session.write().await.take() {
            for channel in &session.channels {
                let _ = channel.wait_for_confirms().await;
            }
            let _ = session
                .connection
                .close(200, "producer shutting down".into())
                .await;
        }
    }
}
