//! RabbitMQ connections: connect (telling a refusal of the settings from an outage), open
//! confirm-mode channels, and publish persistent messages whose confirm and routing are
//! both checked. A process keeps its connection through [`crate::session`].

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

/// Connects once; the connection is named so admins can tell processes apart in the UI.
/// A refusal of the settings is [`AmqpError::Refused`]; anything else is
/// [`AmqpError::Connect`].
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(|source| match AmqpError::from(source) {
            AmqpError::Protocol(source) => AmqpError::Connect {
                url: crate::config::redact_url(url),
                source,
            },
            refused => refused,
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
/// Publishing and confirming are split so a caller can put many messages on the wire
/// before waiting for the broker, which is what makes confirms cheap.
pub async fn publish_mandatory(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<impl Future<Output = Result<(), AmqpError>> + use<>, AmqpError> {
    publish_confirmed(channel, exchange, routing_key, body, properties, true).await
}

/// Publishes one event to an exchange for whoever subscribed, like
/// [`publish_mandatory`] but without `mandatory`: an event no queue is bound for is
/// dropped by the exchange, as publish-subscribe has it, and is no error.
pub async fn publish_event(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<impl Future<Output = Result<(), AmqpError>> + use<>, AmqpError> {
    publish_confirmed(channel, exchange, routing_key, body, properties, false).await
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
