//! The consumer's settings, from flags, the environment or `.env`.

use std::time::Duration;

use clap::Parser;
use lastseen::config::{AmqpArgs, DatabaseArgs, LogArgs, parse_positive_millis};
use lastseen::tls::TlsArgs;
use lastseen::topology::TopologyArgs;

/// Checks queued object ids against the status service and records last_seen.
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer", version, args_override_self = true)]
pub struct Config {
    /// Base URL of the status service; ids are checked at `{STATUS_URL}/objects/{id}`.
    #[arg(long, env = "STATUS_URL", hide_env_values = true, default_value = "http://127.0.0.1:9010", value_parser = parse_status_url)]
    pub status_url: url::Url,

    /// How long one status call may take before it counts as failed (milliseconds).
    #[arg(long, env = "STATUS_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub status_timeout_ms: Duration,

    /// Unacknowledged messages RabbitMQ hands this process at once: with the ids per
    /// message, this bounds the status checks in flight (each takes 0.3 to 4.3 s, so
    /// throughput needs many: 500 messages of 50 ids = 25,000 checks, of which
    /// `MAX_CHECKS_IN_FLIGHT` run at once). A message stays unacked until its slowest
    /// id is settled and committed (~4.5 s at the status service's slowest), so at r
    /// messages/s a process holds ~4.5 × r of them: at 100/s (5,000 ids/s per process)
    /// 500 is ~90% full and 1,000 gives a flatter lag (the bench's setting). 500 by
    /// default: after a RabbitMQ outage every retry waits behind what the processes
    /// hold (18-26 s in `make chaos` with 1,000).
    #[arg(long, env = "PREFETCH", default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most status calls in flight in this process, and so most HTTP connections to the
    /// status service (HTTP/1.1 needs one per call in flight; each uses an ephemeral port).
    #[arg(long, env = "MAX_CHECKS_IN_FLIGHT", default_value_t = 13_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_checks_in_flight: u32,

    /// Most rows in one upsert statement. 1,000: a batch holds its rows' locks until it
    /// commits, and a writer whose batch shares an object with it waits meanwhile; after
    /// such a wait the sightings pile up, and with 5,000 the next batches grew with them
    /// and held more rows for longer (churn bench on an AMD EPYC host: lag p99 1.1-7.4 s
    /// against 0.6-1.5 s with 1,000, the same CPU per id; docs/performance.md).
    #[arg(long, env = "BATCH_MAX_ROWS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_rows: u32,

    /// Longest a sighting waits for its batch to fill before it is written (milliseconds).
    /// 50: fuller batches cost PostgreSQL less per row; a sighting waits at most that long.
    #[arg(long, env = "BATCH_FLUSH_MS", default_value = "50", value_parser = parse_flush_millis)]
    pub batch_flush_ms: Duration,

    /// Batches written at once, each on its own PostgreSQL connection: while one commits,
    /// the next is gathered and written, so a sighting does not wait for another batch's
    /// commit. Four: with two, a commit slower than the gathering (~0.3 s under load)
    /// left sightings waiting for a writer. Keep below `DATABASE_MAX_CONNECTIONS`.
    #[arg(long, env = "BATCH_WRITERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub batch_writers: u32,

    /// Checks of one message (failed status calls) before it goes to the dead-letter queue.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Delay before the first retry; each further retry doubles it (milliseconds).
    #[arg(long, env = "RETRY_BASE_MS", default_value = "1000", value_parser = parse_positive_millis)]
    pub retry_base_ms: Duration,

    /// Longest delay between two retries (milliseconds).
    #[arg(long, env = "RETRY_MAX_MS", default_value = "60000", value_parser = parse_positive_millis)]
    pub retry_max_ms: Duration,

    /// Longest a shutdown waits for in-flight checks to finish (milliseconds), and as
    /// much again for the last batch's write; what is left unacked is redelivered to
    /// another consumer. The whole stop takes at most twice this plus 3 s.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub shutdown_timeout_ms: Duration,

    /// An object not seen online for this many seconds expires, unless the callback
    /// that listed it gave its own `ttl_secs`.
    #[arg(long, env = "OBJECT_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=31_536_000))]
    pub object_ttl_secs: u32,

    /// An object not seen online for this many seconds goes stale (an `object.stale`
    /// warning) before it expires, unless the callback gave its own `stale_after_secs`.
    /// Must be below OBJECT_TTL_SECS. Unset: no stale state.
    #[arg(long, env = "OBJECT_STALE_AFTER_SECS", value_parser = clap::value_parser!(u32).range(1..=31_536_000))]
    pub object_stale_after_secs: Option<u32>,

    /// Where `/metrics` (Prometheus), `/healthz` and `/readyz` are served; port 0 picks
    /// a free one (logged). Each consumer on one host needs its own.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: std::net::SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub topology: TopologyArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// Longest stop after the signal: `SHUTDOWN_TIMEOUT_MS` for the checks in flight, as
    /// much again for the writer's last batch, then closing
    /// ([`lastseen::shutdown::STOP_MARGIN`]).
    pub fn stop_limit(&self) -> Duration {
        self.shutdown_timeout_ms
            .saturating_mul(2)
            .saturating_add(lastseen::shutdown::STOP_MARGIN)
    }
}

fn parse_flush_millis(s: &str) -> Result<Duration, String> {
    let d = parse_positive_millis(s)?;
    if d > Duration::from_secs(60) {
        return Err("must be at most 60000".into());
    }
    Ok(d)
}

fn parse_status_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(url)
}
