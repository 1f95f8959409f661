//! The sweeper's settings, from flags, the environment or `.env`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use lastseen::config::{AmqpArgs, DatabaseArgs, LogArgs, parse_positive_millis};
use lastseen::tls::TlsArgs;
use lastseen::topology::TopologyArgs;

/// Expires objects at their deadline (`expires_at`, set by the consumer from the
/// callback's TTL) and publishes the notifications.
#[derive(Debug, Clone, Parser)]
#[command(name = "sweeper", version, args_override_self = true)]
pub struct Config {
    /// Longest pause between two sweeps (milliseconds); the sweeper wakes earlier when
    /// the oldest object's deadline comes first.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value = "1000", value_parser = parse_positive_millis)]
    pub sweep_interval_ms: Duration,

    /// Most objects expired (or marked stale) in one transaction. The transaction holds
    /// their rows until it commits, and a consumer writing a sighting of one of them waits
    /// for it (with every row of its own batch locked meanwhile), so this is kept small:
    /// under churn, 10,000 held writers for a second at a time (docs/performance.md).
    #[arg(long, env = "SWEEP_BATCH", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sweep_batch: u32,

    /// Transactions a sweep runs at once, each expiring up to `SWEEP_BATCH` objects: a
    /// mass expiry then uses more than one PostgreSQL core. They start once the sweep's
    /// first transaction came back full, so a smaller sweep is one digest.
    #[arg(long, env = "SWEEP_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sweep_workers: u32,

    /// Longest expiry waits for work the pipeline holds (seconds): a producer whose spool
    /// is on a dead host, a backlog that never drains, an id retried this long. After
    /// it, expiry goes on (logged, counted, and in the `pipeline.lagging` notification).
    #[arg(long, env = "MAX_EXPIRY_HOLD_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub max_expiry_hold_secs: u64,

    /// How far the watermark may fall behind now (seconds) before expiry counts as held:
    /// the `lastseen_expiry_held` gauge and a `pipeline.lagging` notification when it
    /// starts and ends. It trails by the status delay when the pipeline is current.
    #[arg(long, env = "EXPIRY_HOLD_ALERT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub expiry_hold_alert_secs: u64,

    /// Most notifications published per relay round.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub relay_batch: u32,

    /// How long a notification is kept after it was raised, once it is published (and
    /// delivered or given up by the webhook); older ones are deleted (seconds, at least 60).
    #[arg(long, env = "NOTIFICATION_RETENTION_SECS", default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(60..=3_153_600_000))]
    pub notification_retention_secs: u64,

    /// Days of expiry history (`object_expiries`, and so `object_history`) kept: each
    /// day is a partition, dropped whole once every expiry in it is older than this.
    /// Unset: kept forever (as before history was partitioned).
    #[arg(long, env = "HISTORY_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub history_retention_days: Option<u32>,

    /// Also deliver every notification to this URL (POST, JSON, signed); unset: off.
    #[arg(long, env = "NOTIFY_WEBHOOK_URL", hide_env_values = true, requires = "notify_webhook_secret", value_parser = parse_webhook_url)]
    pub notify_webhook_url: Option<String>,

    /// The secret of the webhook's signature (Standard Webhooks `webhook-signature`):
    /// `whsec_` and base64, as Standard Webhooks libraries take it, or any other text,
    /// whose bytes are then the HMAC key.
    #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_webhook_secret)]
    pub notify_webhook_secret: Option<WebhookKey>,

    /// Attempts per notification before it is recorded as failed.
    #[arg(long, env = "NOTIFY_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub notify_webhook_max_attempts: u32,

    /// Timeout of one webhook request (milliseconds).
    #[arg(long, env = "NOTIFY_WEBHOOK_TIMEOUT_MS", default_value = "5000", value_parser = parse_positive_millis)]
    pub notify_webhook_timeout_ms: Duration,

    /// Delay after a failed attempt (milliseconds); it doubles up to 5 minutes.
    #[arg(long, env = "NOTIFY_WEBHOOK_RETRY_BASE_MS", default_value = "1000", value_parser = parse_positive_millis)]
    pub notify_webhook_retry_base_ms: Duration,

    /// Where `/metrics` (Prometheus), `/healthz` and `/readyz` are served; port 0 picks
    /// a free one (logged).
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9102")]
    pub metrics_addr: SocketAddr,

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
    /// Longest stop after the signal: the transactions in flight (2 s) or a webhook
    /// request in flight (`NOTIFY_WEBHOOK_TIMEOUT_MS`), whichever is longer, then closing
    /// ([`lastseen::shutdown::STOP_MARGIN`]).
    pub fn stop_limit(&self) -> Duration {
        self.notify_webhook_timeout_ms
            .max(Duration::from_secs(2))
            .saturating_add(lastseen::shutdown::STOP_MARGIN)
    }
}

/// The HMAC key of the webhook's signatures; never shown, not even by `Debug`.
#[derive(Clone)]
pub struct WebhookKey(pub Vec<u8>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

fn parse_webhook_secret(value: &str) -> Result<WebhookKey, String> {
    crate::webhook::signing_key(value).map(WebhookKey)
}

fn parse_webhook_url(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if matches!(url.scheme(), "http" | "https") {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected an http:// or https:// URL, got {:?}",
            url.scheme()
        ))
    }
}
