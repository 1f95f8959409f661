//! The RabbitMQ session of a process, one way for the producer, the consumers and the
//! sweeper. A [`Session`] is one named connection with the topology declared on it; its
//! owner opens the channels it needs on it, each for itself alone, so a confirm-mode
//! channel with confirms outstanding is never shared with another publisher. A
//! [`SessionKeeper`] holds the current session and renews it, with the one reconnect
//! backoff, when it drops or its owner reports it broken; an error no retry can fix
//! (refused credentials, a queue declared with other arguments) stops it at once.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpError, Broker};
use crate::backoff::Retries;
use crate::topology::Topology;

/// A session that lasted this long was healthy: the reconnect backoff starts over.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Longest wait for the broker to acknowledge closing a connection.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// How often the keeper looks whether the connection dropped when nobody told it.
const LIVENESS_CHECK: Duration = Duration::from_millis(500);

/// One connection with the topology declared.
pub struct Session {
    connection: Connection,
    opened: Instant,
}

impl Session {
    /// Connects as `name` (shown in the management UI) and declares `topology`. One
    /// attempt; a refusal of the settings is [`AmqpError::Refused`].
    pub async fn open(broker: &Broker, name: &str, topology: &Topology) -> Result<Self, AmqpError> {
        let session = Self {
            connection: amqp::connect(broker, name).await?,
            opened: Instant::now(),
        };
        session.declare(topology).await?;
        Ok(session)
    }

    /// Declares `topology` on a channel of its own: at the start, and again when the
    /// broker says part of it is gone (a queue deleted by an admin). Idempotent.
    pub async fn declare(&self, topology: &Topology) -> Result<(), AmqpError> {
        let channel = self.channel().await?;
        topology.declare(&channel).await?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// A new channel, for the caller alone (consuming, declaring).
    pub async fn channel(&self) -> Result<Channel, AmqpError> {
        Ok(self.connection.create_channel().await?)
    }

    /// A new channel in publisher-confirm mode, for one publisher alone.
    pub async fn confirm_channel(&self) -> Result<Channel, AmqpError> {
        amqp::confirm_channel(&self.connection).await
    }

    /// The heartbeat agreed with the broker, in seconds (0: none).
    pub fn heartbeat(&self) -> u16 {
        self.connection.configuration().heartbeat()
    }

    /// True while the connection is up.
    pub fn is_usable(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection (and with it every channel), waiting at most
    /// [`CLOSE_LIMIT`] for a broker that may not answer.
    pub async fn close(&self, reason: &str) {
        let closing = self.connection.close(200, reason.into());
        let _ = tokio::time::timeout(CLOSE_LIMIT, closing).await;
    }
}

/// Keeps one usable [`Session`] for a process.
pub struct SessionKeeper {
    broker: Broker,
    name: String,
    topology: Topology,
    current: watch::Sender<Option<Arc<Session>>>,
    /// Wakes the keeper when an owner found the session broken.
    renew: Notify,
    /// Cancelled once [`Self::run`] returned, for whatever reason.
    stopped: CancellationToken,
}

impl SessionKeeper {
    /// A keeper for connections named `name` to `broker`; nothing connects before [`Self::run`].
    pub fn new(broker: Broker, name: &str, topology: Topology) -> Arc<Self> {
        Arc::new(Self {
            broker,
            name: name.to_owned(),
            topology,
            current: watch::Sender::new(None),
            renew: Notify::new(),
            stopped: CancellationToken::new(),
        })
    }

    /// Keeps a usable session until `shutdown`: connects, declares the topology, and
    /// reconnects with backoff and jitter whenever the session drops or is reported
    /// broken. Returns an error no retry can fix at once ([`AmqpError::is_fatal`]), for
    /// the process to stop with it. The session is left open for its owner to close.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), AmqpError> {
        let _stopped = self.stopped.clone().drop_guard();
        let mut retries = Retries::new();
        let mut last_opened: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if self.current().is_some() {
                tokio::select! {
                    () = self.renew.notified() => {}
                    () = tokio::time::sleep(LIVENESS_CHECK) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            // A session broke: wait before the next one, briefly if it was healthy.
            if let Some(opened) = last_opened.take() {
                if opened.elapsed() > HEALTHY_SESSION {
                    retries.succeeded();
                }
                if !retries.pause(&shutdown).await {
                    break;
                }
            }
            match Session::open(&self.broker, &self.name, &self.topology).await {
                Ok(session) => {
                    tracing::info!(name = %self.name, "connected to RabbitMQ");
                    last_opened = Some(session.opened);
                    self.current.send_replace(Some(Arc::new(session)));
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

    /// The usable session, if any.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|s| s.is_usable())
            .cloned()
    }

    /// Waits for a usable session until `within` passes, `cancel` fires or the keeper
    /// stopped.
    pub async fn wait(&self, within: Duration, cancel: &CancellationToken) -> Option<Arc<Session>> {
        tokio::time::timeout(within, self.next(cancel))
            .await
            .ok()
            .flatten()
    }

    /// Waits for a usable session until `cancel` fires or the keeper stopped.
    pub async fn next(&self, cancel: &CancellationToken) -> Option<Arc<Session>> {
        let mut changes = self.current.subscribe();
        loop {
            if let Some(session) = self.current() {
                return Some(session);
            }
            // Not usable, yet not replaced: the keeper may not have noticed.
            self.renew.notify_one();
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep(LIVENESS_CHECK) => {}
                () = cancel.cancelled() => return None,
                () = self.stopped.cancelled() => return None,
            }
        }
    }

    /// Reports `session` broken: it is dropped (unless already replaced) and renewed.
    pub fn broken(&self, session: &Arc<Session>) {
        self.current.send_if_modified(|current| {
            if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
                *current = None;
                true
            } else {
                false
            }
        });
        self.renew.notify_one();
    }

    /// Closes the current session, if any.
    pub async fn close(&self, reason: &str) {
        if let Some(session) = self.current.send_replace(None) {
            session.close(reason).await;
        }
    }
}
