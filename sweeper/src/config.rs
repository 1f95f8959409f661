//! The sweeper's settings, from flags, the environment or `.env`.

use std::time::Duration;

use clap::Parser;
use lastseen::config::{AmqpArgs, DatabaseArgs, LogArgs, parse_positive_millis};
use lastseen::topology::TopologyArgs;

/// Expires silent objects and publishes a notification for each.
#[derive(Debug, Clone, Parser)]
#[command(name = "sweeper", version, args_override_self = true)]
pub struct Config {
    /// An object not seen online for this many seconds is expired.
    #[arg(long, env = "OBJECT_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=31_536_000))]
    pub object_ttl_secs: u32,

    /// Longest pause between two sweeps (milliseconds); the sweeper wakes earlier when
    /// the oldest object's deadline comes first.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value = "1000", value_parser = parse_positive_millis)]
    pub sweep_interval_ms: Duration,

    /// Most objects expired in one transaction.
    #[arg(long, env = "SWEEP_BATCH", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sweep_batch: u32,

    /// Most notifications published per relay round.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub relay_batch: u32,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub topology: TopologyArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
