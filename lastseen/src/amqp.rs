//! RabbitMQ connections: connect (telling a refusal of the settings from an outage), open
//! confirm-mode channels, and publish persistent messages whose confirm and routing are
//! both checked. A process keeps its connection through [`crate::session`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::config::Misconfigured;
use crate::contract::header;

/// AMQP delivery mode that makes a message survive a broker restart.
pub const PERSISTENT: u8 = 2;

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("RabbitMQ at {url} is unreachable: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error("RabbitMQ operation failed: {0}")]
    Protocol(lapin::Error),
    /// RabbitMQ refused the credentials, the virtual host or a permission of `AMQP_URL`,
    /// or a queue exists with other arguments than `DELIVERY_LIMIT` gives it.
    #[error("RabbitMQ refused the settings")]
    Refused(#[source] Misconfigured),
    #[error("RabbitMQ refused (nack) a message published to exchange {exchange:?}")]
    Nacked { exchange: String },
    #[error(
        "RabbitMQ could not route a message published to exchange {exchange:?} with key {routing_key:?}: no queue is bound"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl AmqpError {
    /// True for errors no retry can fix: the process should stop and say why.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

impl From<lapin::Error> for AmqpError {
    /// Sorts the broker's refusals of the settings (a wrong user or password, an unknown
    /// virtual host, a missing permission) from the failures a retry can outlast.
    fn from(err: lapin::Error) -> Self {
        match refusal(&err) {
            Some(reason) => Self::Refused(Misconfigured {
                setting: "AMQP_URL",
                reason,
            }),
            None => Self::Protocol(err),
        }
    }
}

/// Why RabbitMQ refused the settings, when `err` is such a refusal: ACCESS_REFUSED (403:
/// login or permission) or NOT_ALLOWED (530: virtual host). The server's text names the
/// user or virtual host, never the password.
fn refusal(err: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
        return None;
    };
    let refused = matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
    );
    refused.then(|| {
        format!(
            "RabbitMQ refused it: {} (check the user, password and virtual host)",
            amqp.get_message()
        )
    })
}

/// The heartbeat asked for when `AMQP_URL` names none (`?heartbeat=`): RabbitMQ finds a
/// dead peer within about three, and only then requeues a lost consumer's deliveries, so
/// this bounds how long the sweeper waits for a consumer that went silent (see
/// [`crate::progress`]). RabbitMQ's own default is 60 s.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Longest wait for one node to accept a connection: a node cut off by a partition
/// drops packets rather than refusing, and must not hold up the next node of the list.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Where RabbitMQ is: the URL of each node of one cluster (one URL for a single node)
/// and, for `amqps://`, the TLS settings (extra CA, client certificate) of
/// [`crate::tls::TlsArgs`]. Clones share which node to try first.
#[derive(Clone)]
pub struct Broker {
    nodes: Arc<[String]>,
    /// The node to try first at the next connect: the one after the node last connected
    /// to, so a process whose node was lost (or cut off) goes to another at once.
    next: Arc<AtomicUsize>,
    tls: lapin::tcp::OwnedTLSConfig,
}

impl Broker {
    /// A broker at `urls`: one URL, or the comma-separated URLs of a cluster's nodes.
    pub fn new(urls: &str, tls: &crate::tls::TlsArgs) -> Self {
        Self {
            nodes: crate::config::split_urls(urls)
                .into_iter()
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
            tls: tls.amqp(),
        }
    }

    /// The URLs with their passwords hidden, for logs and errors.
    pub fn shown(&self) -> String {
        crate::config::redact_url(&self.nodes.join(","))
    }

    /// How many nodes the URL names.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Broker({})", self.shown())
    }
}

/// A broker with the system's roots only (tools and tests on loopback).
impl From<&str> for Broker {
    fn from(url: &str) -> Self {
        Self::new(url, &crate::tls::TlsArgs::default())
    }
}

impl From<&String> for Broker {
    fn from(url: &String) -> Self {
        Self::from(url.as_str())
    }
}

/// Connects to one node of `broker` (with [`DEFAULT_HEARTBEAT_SECS`] unless its URL sets
/// a heartbeat), trying each once, starting after the node last connected to, each for
/// at most [`CONNECT_LIMIT`]. The connection is named so admins can tell processes apart
/// in the UI. A refusal of the settings, or a TLS certificate that is not trusted, is
/// [`AmqpError::Refused`] when every node refused; when no node answers, the last node's
/// [`AmqpError::Connect`].
pub async fn connect(broker: &Broker, name: &str) -> Result<Connection, AmqpError> {
    let count = broker.nodes.len().max(1);
    let first = broker.next.load(Ordering::Relaxed) % count;
    let mut last_error = None;
    let (mut refusals, mut last_refusal) = (0, None);
    for offset in 0..count {
        let index = (first + offset) % count;
        let Some(url) = broker.nodes.get(index) else {
            break;
        };
        match connect_node(url, &broker.tls, name).await {
            Ok(connection) => {
                broker.next.store(index + 1, Ordering::Relaxed);
                if count > 1 {
                    tracing::info!(
                        node = %crate::config::redact_url(url),
                        "connected to RabbitMQ node {} of {count}",
                        index + 1
                    );
                }
                return Ok(connection);
            }
            // A node's refusal is fatal when it has no other node to go to; else the
            // next node may serve (a node whose virtual host is down refuses alone).
            Err(err) if err.is_fatal() && count == 1 => return Err(err),
            Err(err) if err.is_fatal() => {
                tracing::warn!(
                    node = %crate::config::redact_url(url),
                    "RabbitMQ node {} of {count} refused the settings, trying the next: {err:#}",
                    index + 1
                );
                refusals += 1;
                last_refusal = Some(err);
            }
            Err(err) => {
                if count > 1 {
                    tracing::warn!(
                        node = %crate::config::redact_url(url),
                        "RabbitMQ node {} of {count} unreachable, trying the next: {err}",
                        index + 1
                    );
                }
                last_error = Some(err);
            }
        }
    }
    // Every node refused: the settings are wrong, not a node.
    if refusals == count
        && let Some(refused) = last_refusal
    {
        return Err(refused);
    }
    // The next attempt starts where this one did, after the backoff.
    Err(last_error
        .or(last_refusal)
        .unwrap_or_else(|| AmqpError::Connect {
            url: broker.shown(),
            source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            )),
        }))
}

async fn connect_node(
    url: &str,
    tls: &lapin::tcp::OwnedTLSConfig,
    name: &str,
) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = async {
        match url.parse::<lapin::uri::AMQPUri>() {
            Ok(mut uri) => {
                uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
                match lapin::runtime::default_runtime() {
                    Ok(runtime) => {
                        Connection::connect_uri_with_config(uri, properties, tls.clone(), runtime)
                            .await
                    }
                    Err(err) => Err(err),
                }
            }
            // lapin gives the parse error itself.
            Err(_) => Connection::connect(url, properties).await,
        }
    };
    let connecting = match tokio::time::timeout(CONNECT_LIMIT, connecting).await {
        Ok(result) => result,
        Err(_) => {
            return Err(AmqpError::Connect {
                url: crate::config::redact_url(url),
                source: lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_LIMIT:?}"),
                )),
            });
        }
    };
    connecting.map_err(|source| {
        if let Some(reason) = crate::tls::is_certificate_error(&source) {
            return AmqpError::Refused(Misconfigured {
                setting: "AMQP_URL",
                reason: format!("TLS: {reason} ({})", crate::tls::hint(&reason)),
            });
        }
        match AmqpError::from(source) {
            AmqpError::Protocol(source) => AmqpError::Connect {
                url: crate::config::redact_url(url),
                source,
            },
            refused => refused,
        }
    })
}

/// Opens a channel in publisher-confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A queue's counts as the broker reports them to a passive declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not those a consumer holds unacked).
    pub ready: u32,
    /// Consumers subscribed.
    pub consumers: u32,
}

/// Reads `queue`'s counts with a passive declare, which creates nothing. A missing queue
/// is an error, and the broker closes `channel` for it.
pub async fn queue_counts(channel: &Channel, queue: &str) -> Result<QueueCounts, AmqpError> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..lapin::options::QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, no_args())
        .await?;
    Ok(QueueCounts {
        ready: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

/// Adds the `x-request-id` header (when there is an id) to `properties`, keeping the
/// headers they already have.
pub fn with_request_id(properties: BasicProperties, request_id: Option<&str>) -> BasicProperties {
    let Some(id) = request_id else {
        return properties;
    };
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        header::REQUEST_ID.into(),
        lapin::types::AMQPValue::LongString(id.into()),
    );
    properties.with_headers(headers)
}

/// The integer value of header `name`, whatever integer type the sender gave it.
pub fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    use lapin::types::AMQPValue;
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The `x-request-id` header of a message, if it has one.
pub fn request_id_of(properties: &BasicProperties) -> Option<String> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get(header::REQUEST_ID)?
    {
        lapin::types::AMQPValue::LongString(id) => {
            Some(String::from_utf8_lossy(id.as_bytes()).into_owned())
        }
        _ => None,
    }
}

/// Properties of a persistent JSON message.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(ShortString::from("application/json"))
}

/// Publishes one mandatory message and returns the future that checks its confirm: a
/// message no queue takes is [`AmqpError::Unroutable`].
///
/// Publishing and confirming are split so a caller can publish more before waiting for
/// the broker; a batch known at once goes out cheaper with [`publish_batch`].
pub async fn publish_mandatory(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<impl Future<Output = Result<(), AmqpError>> + use<>, AmqpError> {
    publish_confirmed(channel, exchange, routing_key, body, properties, true).await
}

/// One message of a [`publish_batch`].
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub routing_key: &'a str,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// How a [`publish_batch`] treats a message no queue takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// [`AmqpError::Unroutable`], as [`publish_mandatory`] has it.
    Mandatory,
    /// Not `mandatory`: an event no queue is bound for is dropped by the exchange, as
    /// publish-subscribe has it, and is no error.
    Event,
}

/// Publishes `messages` to `exchange` in their order and waits until RabbitMQ confirmed
/// every one; the first failure is returned (the messages after it may have been
/// published all the same, so a retry may publish some twice).
///
/// Every message is put in the channel's outgoing queue before the first is waited for:
/// lapin's publish waits until its I/O thread has written the message, so publishing
/// one after another costs two thread switches and a write a message, while a batch
/// goes out in a few writes.
pub async fn publish_batch(
    channel: &Channel,
    exchange: &str,
    mut messages: Vec<Outgoing<'_>>,
    routing: Routing,
) -> Result<(), AmqpError> {
    let mandatory = routing == Routing::Mandatory;
    let mut sends = Vec::with_capacity(messages.len());
    for Outgoing {
        routing_key,
        body,
        properties,
    } in messages.iter_mut()
    {
        let mut send = Box::pin(futures::future::maybe_done(publish_confirmed(
            channel,
            exchange,
            routing_key,
            body,
            std::mem::take(properties),
            mandatory,
        )));
        // The first poll queues the message's frames (and numbers it for its confirm)
        // before it waits for them to be written: so the messages keep their order.
        // This relies on lapin 4's `basic_publish` doing both before its first await
        // (`send_method_frame_with_body`); the test
        // `publishing::a_batch_arrives_in_its_order_and_a_mandatory_one_fails_on_an_unroutable_message`
        // reads a batch of 2,000 back in order.
        let _ = futures::poll!(send.as_mut());
        sends.push(send);
    }
    let mut confirms = Vec::with_capacity(sends.len());
    for mut send in sends {
        send.as_mut().await;
        let confirm = send
            .as_mut()
            .take_output()
            .expect("a finished send keeps its output until taken")?;
        confirms.push(confirm);
    }
    futures::future::try_join_all(confirms).await?;
    Ok(())
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<impl Future<Output = Result<(), AmqpError>> + use<>, AmqpError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?;
    let exchange = exchange.to_owned();
    let routing_key = routing_key.to_owned();
    Ok(async move {
        match confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(AmqpError::Unroutable {
                exchange,
                routing_key,
            }),
            Confirmation::Nack(_) => Err(AmqpError::Nacked { exchange }),
            Confirmation::NotRequested => {
                unreachable!("messages are only published on confirm-mode channels")
            }
        }
    })
}

/// An empty argument table.
pub fn no_args() -> FieldTable {
    FieldTable::default()
}
