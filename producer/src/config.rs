//! The producer's settings, from flags, the environment or `.env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lastseen::config::{AmqpArgs, LogArgs, parse_positive_millis};
use lastseen::tls::TlsArgs;
use lastseen::topology::TopologyArgs;

/// Accepts callbacks of object ids and publishes them durably to RabbitMQ.
#[derive(Debug, Clone, Parser)]
#[command(name = "producer", version, args_override_self = true)]
pub struct Config {
    /// Address the callback endpoint (and the producer's /metrics, /healthz, /readyz)
    /// listens on: loopback by default; `0.0.0.0:9090` for every interface.
    #[arg(long, env = "CALLBACK_ADDR", default_value = "127.0.0.1:9090")]
    pub callback_addr: SocketAddr,

    /// Largest accepted callback body in bytes; larger ones get 413. The default admits
    /// well over 10,000 ids per callback.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(64..=268_435_456))]
    pub max_body_bytes: u64,

    /// How many ids one check message carries (1 = one message per id). Several ids per
    /// message cut the broker's per-message cost (see docs/performance.md);
    /// a retry or dead letter still holds only the ids that failed.
    #[arg(long, env = "IDS_PER_MESSAGE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ids_per_message: u32,

    /// How long a callback may wait for RabbitMQ to confirm its messages before it is
    /// written to the local spool instead (milliseconds, per 1,000 messages of the
    /// callback). While RabbitMQ is unreachable, callbacks go to the spool at once.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value = "200", value_parser = parse_positive_millis)]
    pub publish_timeout_ms: Duration,

    /// The local durable spool file (redb) that holds callbacks while RabbitMQ cannot
    /// take them; drained into RabbitMQ when it answers again, also after a restart.
    /// Its folder is created if missing. Keep it on a local disk that outlives the process.
    #[arg(long, env = "SPOOL_PATH", default_value = "spool/producer.redb")]
    pub spool_path: PathBuf,

    /// Most ids the spool holds; beyond it callbacks get 503 with Retry-After.
    #[arg(long, env = "SPOOL_MAX_IDS", default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_ids: u64,

    /// Most bytes the bodies of callbacks being read may take together (each counted at
    /// its Content-Length, or MAX_BODY_BYTES without one); a callback beyond it gets 503
    /// `overloaded` at once. A quarter is kept for bodies up to 64 KiB. At least
    /// MAX_BODY_BYTES.
    #[arg(long, env = "MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 67_108_864, value_parser = clap::value_parser!(u64).range(65_536..=17_179_869_184))]
    pub max_body_bytes_in_flight: u64,

    /// Most client connections open at once; one beyond it is answered 503 `overloaded`
    /// and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Longest `ttl_secs` a callback may give (seconds); a callback above it gets 422
    /// `ttl_too_long`. Bounds how long one client can keep an object from expiring.
    #[arg(long, env = "MAX_TTL_SECS", default_value_t = 604_800, value_parser = clap::value_parser!(u32).range(1..=31_536_000))]
    pub max_ttl_secs: u32,

    /// Confirm-mode channels the producer spreads its publishes over.
    #[arg(long, env = "PUBLISH_CHANNELS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub publish_channels: u32,

    /// Longest time a client may take to send its whole request body, however steadily it
    /// trickles (milliseconds); a slower one is answered 400 `unreadable_body`.
    #[arg(long, env = "REQUEST_BODY_TIMEOUT_MS", default_value = "5000", value_parser = parse_positive_millis)]
    pub request_body_timeout_ms: Duration,

    /// Longest time a client may take to send its request headers, and longest a
    /// keep-alive connection may sit idle before its next request (milliseconds); a slower
    /// one is disconnected.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub header_read_timeout_ms: Duration,

    /// API keys a callback must bring (`Authorization: Bearer <key>`), comma-separated,
    /// each at least 16 characters. Unset (and no CALLBACK_API_KEYS_FILE): callbacks need
    /// no key. Several keys let one be rotated.
    #[arg(long, env = "CALLBACK_API_KEYS", hide_env_values = true)]
    pub callback_api_keys: Option<String>,

    /// A file of API keys, one a line (`#` starts a comment), taken with
    /// CALLBACK_API_KEYS; read at start.
    #[arg(long, env = "CALLBACK_API_KEYS_FILE")]
    pub callback_api_keys_file: Option<String>,

    /// PostgreSQL for the read API (`GET /objects`, `/events`...), as a read-only login
    /// (`make run` uses `analyst`). Unset: the read endpoints answer 503 `reads_off`. Its
    /// own pool, connected on first use: ingest never waits on it.
    #[arg(long, env = "READ_DATABASE_URL", hide_env_values = true, value_parser = lastseen::config::parse_database_url)]
    pub read_database_url: Option<String>,

    /// Connections in the read API's pool.
    #[arg(long, env = "READ_DATABASE_MAX_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub read_database_max_connections: u32,

    /// Most live event streams (`GET /events/stream`) open at once; one more gets 503
    /// `overloaded`. Each asks PostgreSQL twice a second while idle.
    #[arg(long, env = "READ_MAX_STREAMS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub read_max_streams: u32,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub topology: TopologyArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
