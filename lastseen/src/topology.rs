//! The RabbitMQ topology: names derived from one prefix, and the idempotent declaration
//! of every exchange, queue and binding the pipeline uses.
//!
//! ```text
//! {prefix}.callbacks (direct) --check--> {prefix}.checks (quorum) --consumer-->
//!        ^                                   | delivery-limit exceeded
//!        | TTL expired                       v
//! {prefix}.checks.retry.{ms} (quorum)   {prefix}.dead (fanout) --> {prefix}.checks.dead
//!
//! notifications (topic) --#--> {prefix}.notifications (quorum, the latest
//!                                NOTIFICATIONS_QUEUE_MAX_LENGTH)
//!
//! producers, consumers --report--> {prefix}.progress (fanout) --> one exclusive,
//!                                  transient queue per sweeper
//! ```

use std::time::Duration;

use clap::Args;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::amqp::{AmqpError, no_args};
use crate::config::Misconfigured;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

/// Routing key of check messages on the callbacks exchange.
pub const CHECK_ROUTING_KEY: &str = "check";

/// Routing key of the notification raised when an object expires.
pub const EXPIRED_ROUTING_KEY: &str = "object.expired";

/// Routing key of an object coming online: first seen, or back after it expired.
pub const ONLINE_ROUTING_KEY: &str = "object.online";

/// Routing key of the notification that expiry is held because the pipeline lags behind
/// (`state` `started`), and that it is current again (`ended`).
pub const LAGGING_ROUTING_KEY: &str = "pipeline.lagging";

/// Routing key of the digest of one expiry transaction (counts, and ids up to a cap).
pub const DIGEST_ROUTING_KEY: &str = "digest";

/// Routing key of an object silent past its stale deadline (before it expires).
pub const STALE_ROUTING_KEY: &str = "object.stale";

/// Routing key of the digest of one transaction that marked objects stale.
pub const STALE_DIGEST_ROUTING_KEY: &str = "digest.stale";

/// Names of exchanges and queues; tests give each run its own prefix.
#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    /// Prefix of every exchange and queue name the pipeline declares (except the
    /// notifications exchange), so several pipelines or tests can share one broker.
    #[arg(long, env = "TOPOLOGY_PREFIX", default_value = "lastseen", value_parser = parse_prefix)]
    pub topology_prefix: String,

    /// Topic exchange on which notifications (`object.expired`, ...) are published.
    #[arg(long, env = "NOTIFICATIONS_EXCHANGE", default_value = "notifications", value_parser = parse_prefix)]
    pub notifications_exchange: String,

    /// RabbitMQ's last guard against a poison message: deliveries of one message before
    /// the quorum queue dead-letters it (RabbitMQ 3.10 sets no default).
    #[arg(long, env = "DELIVERY_LIMIT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub delivery_limit: u32,

    /// Most notifications `{prefix}.notifications` keeps: beyond it the oldest is dropped,
    /// so a queue nobody reads never fills the broker. Readers that must see every event
    /// bind a queue of their own to the notifications exchange. 0: the queue is not
    /// declared.
    #[arg(long, env = "NOTIFICATIONS_QUEUE_MAX_LENGTH", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(0..=100_000_000))]
    pub notifications_queue_max_length: u32,

    /// Replicas of each quorum queue when it is first declared
    /// (`x-quorum-initial-group-size`). Unset: RabbitMQ's default, a replica on every
    /// node of the cluster (3 on a 3-node cluster, 1 on a single node). A queue keeps the
    /// replicas it was created with; `rabbitmq-queues grow`/`shrink` change them later.
    #[arg(long, env = "QUORUM_REPLICAS", value_parser = clap::value_parser!(u32).range(1..=9))]
    pub quorum_replicas: Option<u32>,
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("may only hold letters, digits, '.', '-' and '_'".into());
    }
    Ok(s.to_owned())
}

/// The resolved names, and the declaration of the topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub callbacks_exchange: String,
    pub checks_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub notifications_exchange: String,
    pub notifications_queue: String,
    /// Where producers and consumers publish their progress reports, for every sweeper.
    pub progress_exchange: String,
    prefix: String,
    delivery_limit: u32,
    notifications_queue_max_length: u32,
    quorum_replicas: Option<u32>,
}

impl Topology {
    pub fn new(args: &TopologyArgs) -> Self {
        let p = &args.topology_prefix;
        Self {
            callbacks_exchange: format!("{p}.callbacks"),
            checks_queue: format!("{p}.checks"),
            dead_letter_exchange: format!("{p}.dead"),
            dead_letter_queue: format!("{p}.checks.dead"),
            notifications_exchange: args.notifications_exchange.clone(),
            notifications_queue: format!("{p}.notifications"),
            progress_exchange: format!("{p}.progress"),
            prefix: p.clone(),
            delivery_limit: args.delivery_limit,
            notifications_queue_max_length: args.notifications_queue_max_length,
            quorum_replicas: args.quorum_replicas,
        }
    }

    /// Name of the retry queue that holds a message for `delay` before it returns to work.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.checks.retry.{}ms", self.prefix, delay.as_millis())
    }

    /// Declares the exchanges, the work queue, the dead-letter queue and the notification
    /// queue. Idempotent: every process calls it at start and after reconnecting.
    pub async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        declare_exchange(channel, &self.callbacks_exchange, ExchangeKind::Direct).await?;
        declare_exchange(channel, &self.dead_letter_exchange, ExchangeKind::Fanout).await?;
        declare_exchange(channel, &self.notifications_exchange, ExchangeKind::Topic).await?;
        declare_exchange(channel, &self.progress_exchange, ExchangeKind::Fanout).await?;

        let mut checks = self.quorum_args();
        checks.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
        );
        dead_letter_to(&mut checks, &self.dead_letter_exchange, None);
        declare_queue(channel, &self.checks_queue, checks, "DELIVERY_LIMIT").await?;
        bind(
            channel,
            &self.checks_queue,
            &self.callbacks_exchange,
            CHECK_ROUTING_KEY,
        )
        .await?;

        declare_queue(
            channel,
            &self.dead_letter_queue,
            self.quorum_args(),
            "TOPOLOGY_PREFIX",
        )
        .await?;
        bind(
            channel,
            &self.dead_letter_queue,
            &self.dead_letter_exchange,
            "",
        )
        .await?;

        if self.notifications_queue_max_length > 0 {
            let mut notifications = self.quorum_args();
            notifications.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::from(self.notifications_queue_max_length)),
            );
            notifications.insert("x-overflow".into(), long_string("drop-head"));
            declare_queue(
                channel,
                &self.notifications_queue,
                notifications,
                "NOTIFICATIONS_QUEUE_MAX_LENGTH",
            )
            .await?;
            bind(
                channel,
                &self.notifications_queue,
                &self.notifications_exchange,
                "#",
            )
            .await?;
        }
        Ok(())
    }

    /// The name of a consumer's alive queue `tag` (see `progress::Reporter::alive_queue`).
    pub fn alive_queue(&self, tag: &str) -> String {
        format!("{}.alive.{tag}", self.prefix)
    }

    /// Declares a queue of the caller's own, named by the broker, gone with its
    /// connection, that receives every progress report; returns its name.
    pub async fn declare_progress_queue(&self, channel: &Channel) -> Result<String, AmqpError> {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(ShortString::from(""), options, no_args())
            .await?;
        let name = queue.name().as_str().to_owned();
        bind(channel, &name, &self.progress_exchange, "").await?;
        Ok(name)
    }

    /// The arguments every quorum queue of the topology starts from.
    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        if let Some(replicas) = self.quorum_replicas {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(i32::try_from(replicas).unwrap_or(i32::MAX)),
            );
        }
        args
    }

    /// Declares the retry queue for `delay`: messages wait there for `delay`, then are
    /// dead-lettered back to the callbacks exchange and so to the work queue.
    pub async fn declare_retry_queue(
        &self,
        channel: &Channel,
        delay: Duration,
    ) -> Result<String, AmqpError> {
        let name = self.retry_queue(delay);
        let mut args = self.quorum_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        dead_letter_to(&mut args, &self.callbacks_exchange, Some(CHECK_ROUTING_KEY));
        declare_queue(channel, &name, args, "RETRY_BASE_MS").await?;
        Ok(name)
    }
}

/// At-least-once dead-lettering, which RabbitMQ 3.10 only allows with `reject-publish`.
fn dead_letter_to(args: &mut FieldTable, exchange: &str, routing_key: Option<&str>) {
    args.insert("x-dead-letter-exchange".into(), long_string(exchange));
    if let Some(key) = routing_key {
        args.insert("x-dead-letter-routing-key".into(), long_string(key));
    }
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), AmqpError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(ShortString::from(name), kind, options, no_args())
        .await?;
    Ok(())
}

/// Declares a durable queue. One that exists with other arguments is a refused setting:
/// `setting` is the one that gives it these.
async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
    setting: &'static str,
) -> Result<(), AmqpError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(ShortString::from(name), options, args)
        .await
    {
        Ok(_) => Ok(()),
        Err(err) => match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp)
                if matches!(
                    amqp.kind(),
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                ) =>
            {
                Err(AmqpError::Refused(Misconfigured {
                    setting,
                    reason: format!(
                        "queue {name:?} already exists with other arguments than these settings give it ({setting}, QUORUM_REPLICAS, TOPOLOGY_PREFIX): {}. Keep the settings it was created with, or delete the queue (its messages with it: rabbitmqctl delete_queue {name}) and restart",
                        amqp.get_message()
                    ),
                }))
            }
            _ => Err(err.into()),
        },
    }
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await?;
    Ok(())
}
