//! Publishing check messages with publisher confirms, on the session the library's
//! [`SessionKeeper`] keeps: each callback borrows a confirm-mode channel for itself, so a
//! message RabbitMQ returns as unroutable can only fail the callback that published it.
//!
//! A broker too slow to confirm within a callback's bound is not asked again by every
//! callback: after [`LAGGING_AFTER_TIMEOUTS`] such timeouts in a row the publisher is
//! *lagging*, callbacks go straight to
//! the spool, and only the drain publishes (with its longer bound) until one of its
//! rounds is confirmed, or a new session replaces the lagging one. So a slow broker costs one channel and one pending publish at a
//! time, not one per callback.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::Channel;
use lastseen::CheckMessage;
use lastseen::amqp::{self, AmqpError};
use lastseen::contract::metric;
use lastseen::session::{Session, SessionKeeper};
use lastseen::topology::{CHECK_ROUTING_KEY, Topology};
use tokio::sync::Mutex;
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

/// Longest wait for the broker to acknowledge closing a retired channel.
const CHANNEL_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Publishes not confirmed in time, one after another, that make the publisher lagging:
/// one late confirm on a busy machine is not a slow broker.
pub const LAGGING_AFTER_TIMEOUTS: u32 = 3;

/// Longest wait for a channel that opened too late for its callback, before it is
/// closed (or the session renewed).
const LATE_CHANNEL_LIMIT: Duration = Duration::from_secs(30);

/// The confirm-mode channels of one session, each lent to one callback at a time. A
/// slot is empty until first used, and emptied when its channel failed or still owes
/// confirms: a channel is never lent on with another callback's confirms outstanding.
struct Channels {
    session: Arc<Session>,
    slots: Vec<Mutex<Option<Channel>>>,
}

/// Publishes check messages durably: persistent, mandatory, confirmed.
pub struct CallbackPublisher {
    keeper: Arc<SessionKeeper>,
    channels: std::sync::Mutex<Option<Arc<Channels>>>,
    next_channel: AtomicUsize,
    topology: Topology,
    channel_count: usize,
    /// The session on which a publish was not confirmed in time; cleared when the drain's
    /// publish is. While it is the current session, callbacks are spooled without trying
    /// RabbitMQ.
    lagging: std::sync::Mutex<Option<Weak<Session>>>,
    /// Publishes not confirmed in time since the last one that was.
    timeouts_in_a_row: AtomicU32,
    /// True while the topology is being declared again after a refused publish.
    redeclaring: Arc<AtomicBool>,
}

impl CallbackPublisher {
    /// Publishes on the sessions `keeper` keeps, over `channel_count` confirm channels.
    pub fn new(keeper: Arc<SessionKeeper>, topology: Topology, channel_count: usize) -> Arc<Self> {
        Arc::new(Self {
            keeper,
            channels: std::sync::Mutex::new(None),
            next_channel: AtomicUsize::new(0),
            topology,
            channel_count: channel_count.max(1),
            lagging: std::sync::Mutex::new(None),
            timeouts_in_a_row: AtomicU32::new(0),
            redeclaring: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Declares the topology again, in the background and once at a time: a publish
    /// nothing routed (or to a missing exchange) means part of the topology is gone (an
    /// admin deleted it), and until it is back every callback goes to the spool.
    fn redeclare(&self, session: &Arc<Session>) {
        if self.redeclaring.swap(true, Ordering::AcqRel) {
            return;
        }
        let (session, topology, redeclaring) = (
            session.clone(),
            self.topology.clone(),
            self.redeclaring.clone(),
        );
        tokio::spawn(async move {
            match session.declare(&topology).await {
                Ok(()) => {
                    tracing::info!("a publish was refused; the topology is declared again")
                }
                Err(err) => tracing::warn!(error = %err, "declaring the topology again failed"),
            }
            redeclaring.store(false, Ordering::Release);
        });
    }

    /// True when the publisher holds a usable connection to RabbitMQ.
    pub fn is_connected(&self) -> bool {
        self.keeper.current().is_some()
    }

    /// True when a callback should try RabbitMQ: connected, and not lagging (see the
    /// module's documentation); otherwise it goes to the spool at once.
    pub fn takes_callbacks(&self) -> bool {
        let Some(current) = self.keeper.current() else {
            return false;
        };
        let lagging = self
            .lagging
            .lock()
            .expect("the lagging lock is never poisoned");
        !lagging
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|session| Arc::ptr_eq(&session, &current))
    }

    /// Counts a publish not confirmed in time on `session`; the publisher lags after
    /// [`LAGGING_AFTER_TIMEOUTS`] in a row.
    fn timed_out_on(&self, session: &Arc<Session>) {
        let in_a_row = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= LAGGING_AFTER_TIMEOUTS {
            *self
                .lagging
                .lock()
                .expect("the lagging lock is never poisoned") = Some(Arc::downgrade(session));
        }
    }

    /// Publishes spooled callbacks (the drain): like [`Self::publish`], and once RabbitMQ
    /// confirmed them in time the publisher takes callbacks again.
    pub async fn publish_spooled(
        &self,
        messages: &[CheckMessage],
        bound: Duration,
    ) -> Result<(), PublishError> {
        self.publish(messages, bound).await?;
        let was_lagging = self
            .lagging
            .lock()
            .expect("the lagging lock is never poisoned")
            .take()
            .is_some();
        if was_lagging {
            tracing::info!("RabbitMQ confirms in time again; callbacks are published directly");
        }
        Ok(())
    }

    /// The channel slots of `session`, made when a session is first used.
    fn channels_of(&self, session: &Arc<Session>) -> Arc<Channels> {
        let mut channels = self
            .channels
            .lock()
            .expect("the channel table is never left poisoned");
        match channels.as_ref() {
            Some(current) if Arc::ptr_eq(&current.session, session) => current.clone(),
            _ => {
                let fresh = Arc::new(Channels {
                    session: session.clone(),
                    slots: (0..self.channel_count).map(|_| Mutex::new(None)).collect(),
                });
                *channels = Some(fresh.clone());
                fresh
            }
        }
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
            .keeper
            .wait(bound, &CancellationToken::new())
            .await
            .ok_or(PublishError::NotConnected)?;
        let channels = self.channels_of(&session);
        let slots = &channels.slots;
        let start = self.next_channel.fetch_add(1, Ordering::Relaxed);
        // Borrow a free slot if there is one, else wait for the next in turn, within the
        // bound: a slot may be held by a publish whose confirms are late (the drain's
        // bound is 30 s), and this callback is better spooled than kept waiting.
        let free = (0..slots.len()).find_map(|i| slots[(start + i) % slots.len()].try_lock().ok());
        let mut slot = match free {
            Some(guard) => guard,
            None => {
                let remaining = bound.saturating_sub(started.elapsed());
                tokio::time::timeout(remaining, slots[start % slots.len()].lock())
                    .await
                    .map_err(|_| PublishError::Timeout)?
            }
        };
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                // Opening a channel is a round trip too: within the bound. One that opens
                // too late is closed, not left open on the connection.
                let remaining = bound.saturating_sub(started.elapsed());
                let mut opening = tokio::spawn({
                    let session = session.clone();
                    async move { session.confirm_channel().await }
                });
                let opened = match tokio::time::timeout(remaining, &mut opening).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        self.timed_out_on(&session);
                        tokio::spawn(close_when_open(opening));
                        return Err(PublishError::Timeout);
                    }
                };
                // The opening task ends early only when the runtime is stopping.
                let opened = opened.map_err(|_| PublishError::NotConnected)?;
                let channel = opened.inspect_err(|_| self.keeper.broken(&session))?;
                *slot = Some(channel.clone());
                channel
            }
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
            self.timeouts_in_a_row.store(0, Ordering::Relaxed);
            let ids: usize = messages.iter().map(|m| m.object_ids.len()).sum();
            metrics::counter!(metric::IDS_PUBLISHED_TOTAL).increment(ids as u64);
        }
        if let Err(err) = &result {
            // The channel may still owe confirms: it is retired, never lent on. A broken
            // connection is renewed; a slow or refused confirm on a healthy one is not a
            // reason to drop every other callback's publishes.
            *slot = None;
            // Closing waits for the broker, which may not answer: not on the callback's time.
            tokio::spawn(async move {
                let closing = channel.close(200, "publish not confirmed".into());
                let _ = tokio::time::timeout(CHANNEL_CLOSE_LIMIT, closing).await;
            });
            if session.is_usable() {
                match err {
                    PublishError::Timeout => {
                        self.timed_out_on(&session);
                        tracing::warn!(error = %err, "publish not confirmed in time");
                    }
                    // Unroutable, or the exchange gone: part of the topology was deleted.
                    PublishError::Amqp(_) => {
                        tracing::warn!(error = %err, "publish refused by RabbitMQ");
                        self.redeclare(&session);
                    }
                    PublishError::NotConnected => {
                        tracing::warn!(error = %err, "publish failed");
                    }
                }
            } else {
                tracing::warn!(error = %err, "publish failed; the session will be renewed");
                self.keeper.broken(&session);
            }
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        messages: &[CheckMessage],
    ) -> Result<(), AmqpError> {
        let outgoing: Vec<amqp::Outgoing> = messages
            .iter()
            .map(|message| amqp::Outgoing {
                routing_key: CHECK_ROUTING_KEY,
                body: serde_json::to_vec(message).expect("a CheckMessage always serializes"),
                properties: amqp::with_request_id(
                    amqp::persistent_json(),
                    message.request_id.as_deref(),
                ),
            })
            .collect();
        amqp::publish_batch(
            channel,
            &self.topology.callbacks_exchange,
            outgoing,
            amqp::Routing::Mandatory,
        )
        .await
    }

    /// Closes the connection, letting in-flight confirms finish first (bounded).
    pub async fn close(&self) {
        let channels = self
            .channels
            .lock()
            .expect("the channel table is never left poisoned")
            .take();
        if let Some(channels) = channels {
            for slot in &channels.slots {
                if let Some(channel) = slot.lock().await.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), channel.wait_for_confirms())
                            .await;
                    let closing = channel.close(200, "producer shutting down".into());
                    let _ = tokio::time::timeout(CHANNEL_CLOSE_LIMIT, closing).await;
                }
            }
        }
        self.keeper.close("producer shutting down").await;
    }
}

/// Closes a channel that opened after its callback gave up on it (or drops the attempt
/// if it does not open within [`LATE_CHANNEL_LIMIT`]).
async fn close_when_open(opening: tokio::task::JoinHandle<Result<Channel, AmqpError>>) {
    if let Ok(Ok(Ok(channel))) = tokio::time::timeout(LATE_CHANNEL_LIMIT, opening).await {
        let closing = channel.close(200, "opened too late".into());
        let _ = tokio::time::timeout(CHANNEL_CLOSE_LIMIT, closing).await;
    }
}
