//! `harness chaos` (`make chaos`): the whole pipeline from the release binaries, on its own
//! RabbitMQ node and PostgreSQL cluster, under steady callback load while faults are
//! injected one after another; then it verifies that no accepted id was lost and prints
//! the figures.
//!
//! ```text
//! setup     own RabbitMQ node + PostgreSQL cluster, fresh database, the processes
//!           (two sweepers delivering to a webhook that takes 3 s per request)
//! load      20 callbacks/s, every 2xx recorded as ground truth;  ─┐
//!           a fleet of 200 objects every 2 s with a 10 s TTL     │
//! faults    spool disk full; work queue deleted; kill -9         │ status service failing
//!           consumer, producer, sweeper; RabbitMQ and PostgreSQL │ 20%, hanging 5% of calls
//!           stopped 10 s (deadlines passing); memory alarm;      │
//!           recovery measured after each                         │
//! drain     load stopped; work and retry queues must empty       ─┘
//! verify    rows vs ground truth, dead letters, exact queue depths, logs
//! teardown  processes, node and cluster stopped, whatever happened
//! ```

pub mod broker;
mod database;
pub(crate) mod dead_letters;
pub(crate) mod deadlines;
pub(crate) mod faults;
mod fleet;
pub(crate) mod ground_truth;
pub(crate) mod load;
pub(crate) mod logs;
mod phases;
pub(crate) mod queues;
pub(crate) mod recovery;
pub(crate) mod report;
mod spool_disk;
pub(crate) mod tools;
pub(crate) mod verify;
mod webhook;
mod work_queue;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::process::Supervisor;

pub use report::ChaosResult;

/// Settings of `harness chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Callbacks per second of the load.
    #[arg(long, env = "CHAOS_RATE", default_value_t = 20)]
    pub rate: u32,
    /// Most ids in one callback; each holds 1 to this many distinct random ids.
    #[arg(long, env = "CHAOS_MAX_IDS", default_value_t = 200)]
    pub max_ids: usize,
    /// Ids are drawn from 0 to this value (exclusive).
    #[arg(long, env = "CHAOS_ID_SPACE", default_value_t = 100_000)]
    pub id_space: i64,
    /// Seconds of undisturbed load before the first fault and after each recovery.
    #[arg(long, env = "CHAOS_SETTLE_SECS", default_value_t = 8)]
    pub settle_secs: u64,
    /// Seconds RabbitMQ and PostgreSQL each stay stopped.
    #[arg(long, env = "CHAOS_OUTAGE_SECS", default_value_t = 10)]
    pub outage_secs: u64,
    /// Longest wait, in seconds, for the work and retry queues to empty after the load.
    #[arg(long, env = "CHAOS_DRAIN_SECS", default_value_t = 240)]
    pub drain_secs: u64,
    /// AMQP port of the suite's own RabbitMQ node (management on +10000, Erlang
    /// distribution on +20000).
    #[arg(long, env = "CHAOS_AMQP_PORT", default_value_t = 5673)]
    pub amqp_port: u16,
    /// Port of the suite's own PostgreSQL cluster.
    #[arg(long, env = "CHAOS_PG_PORT", default_value_t = 5499)]
    pub pg_port: u16,
    /// Port of the producer under test.
    #[arg(long, env = "CHAOS_CALLBACK_PORT", default_value_t = 19290)]
    pub callback_port: u16,
    /// Port of the status simulator.
    #[arg(long, env = "CHAOS_STATUS_PORT", default_value_t = 19210)]
    pub status_port: u16,
    /// Port of the webhook receiver the two sweepers deliver to.
    #[arg(long, env = "CHAOS_WEBHOOK_PORT", default_value_t = 19211)]
    pub webhook_port: u16,
    /// Where the release binaries are.
    #[arg(long, env = "CHAOS_BIN", default_value = "target/release")]
    pub bin: PathBuf,
    /// Where the result, the logs and the RabbitMQ node's files go.
    #[arg(long, env = "CHAOS_OUT", default_value = "target/chaos")]
    pub out: PathBuf,
}

/// How long each process gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Runs one chaos run: setup, load and faults, drain, verification, report, teardown.
/// Fails if any check failed; the report says which.
pub async fn run(args: ChaosArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    tools::require_root()?;
    let (out, logs) = tools::prepare_out(&args.out, "CHAOS_OUT")?;

    eprintln!("[chaos] preparing its own RabbitMQ node and PostgreSQL cluster");
    let broker = broker::BrokerNode::new(&out.join("rabbitmq"), &logs, args.amqp_port);
    broker.prepare().await?;
    let database = database::DatabaseCluster::prepare(args.pg_port).await?;
    let spool_disk = spool_disk::SpoolDisk::mount(&out.join("spool")).await?;
    let mut pipeline = Supervisor::new(&args.bin, &logs);

    let ctx = phases::Setup {
        args: &args,
        logs: &logs,
        broker: &broker,
        database: &database,
        spool_disk: &spool_disk,
    };
    let outcome = ctx.run(&mut pipeline, started, &shutdown).await;

    // Teardown, whatever happened: no stray process, node or cluster left running.
    pipeline.stop_all(STOP_GRACE).await;
    let mut teardown_failures = Vec::new();
    if let Err(err) = broker.teardown().await {
        teardown_failures.push(format!("teardown of the RabbitMQ node: {err:#}"));
    }
    if let Err(err) = database.stop().await {
        teardown_failures.push(format!("teardown of the PostgreSQL cluster: {err:#}"));
    }
    if let Err(err) = spool_disk.unmount().await {
        teardown_failures.push(format!("teardown of the spool disk: {err:#}"));
    }
    let _ = std::fs::copy(database.log_file(), logs.join("postgresql.log"));
    if teardown_failures.is_empty() {
        eprintln!("[chaos] pipeline, RabbitMQ node and PostgreSQL cluster stopped");
    }

    let mut result = outcome.map_err(|err| {
        anyhow::anyhow!(
            "{err:#}{}\nthe chaos run did not complete; logs of every process are in {}",
            teardown_failures
                .iter()
                .map(|f| format!("; {f}"))
                .collect::<String>(),
            logs.display()
        )
    })?;
    result.run_secs = started.elapsed().as_secs_f64();
    result.failures.extend(teardown_failures);
    result.judge();
    let md = report::write(&out, &result)?;
    report::conclude(
        "the chaos run",
        &md,
        (&out, &logs),
        result.passed,
        &result.failures,
        "every process, rabbitmq/, postgresql.log",
    )
}
