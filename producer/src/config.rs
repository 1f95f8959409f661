//! The producer's settings, from flags, the environment or `.env`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use lastseen::config::{AmqpArgs, LogArgs, parse_positive_millis};
use lastseen::topology::TopologyArgs;

/// Accepts callbacks of object ids and publishes them durably to RabbitMQ.
#[derive(Debug, Clone, Parser)]
#[command(name = "producer", version, args_override_self = true)]
pub struct Config {
    /// Address the callback endpoint listens on.
    #[arg(long, env = "CALLBACK_ADDR", default_value = "0.0.0.0:9090")]
    pub callback_addr: SocketAddr,

    /// Largest accepted callback body in bytes; larger ones get 413. The default admits
    /// well over 10,000 ids per callback.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(64..=268_435_456))]
    pub max_body_bytes: u64,

    /// How many ids one check message carries (1 = one message per id). Several ids per
    /// message cut the broker's per-message cost (see the README's performance section);
    /// a retry or dead letter still holds only the ids that failed.
    #[arg(long, env = "IDS_PER_MESSAGE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ids_per_message: u32,

    /// How long a callback may wait for RabbitMQ to confirm its messages before it is
    /// answered 503 with Retry-After (milliseconds, per 1,000 messages of the callback).
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value = "800", value_parser = parse_positive_millis)]
    pub publish_timeout_ms: Duration,

    /// Confirm-mode channels the producer spreads its publishes over.
    #[arg(long, env = "PUBLISH_CHANNELS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub publish_channels: u32,

    /// Longest time a client may take to send its request body (milliseconds).
    #[arg(long, env = "REQUEST_BODY_TIMEOUT_MS", default_value = "5000", value_parser = parse_positive_millis)]
    pub request_body_timeout_ms: Duration,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub topology: TopologyArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
