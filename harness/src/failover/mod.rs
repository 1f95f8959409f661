//! `harness pg-failover` (`make pg-failover`): the pipeline against a two-node
//! PostgreSQL cluster managed by Patroni (etcd as its consensus store, HAProxy in front,
//! synchronous replication), started by the scenario itself on loopback. Under steady
//! callback load it kills the primary's host (Patroni and PostgreSQL, SIGKILL), lets the
//! standby take over, brings the old primary back as the new standby, and does the same
//! the other way round; then it verifies, as the chaos suite does, that no accepted id was
//! lost, every callback was answered 2xx, deadlines that passed during the failover were
//! expired exactly once with their notifications published, and how long each step took.
//!
//! ```text
//! setup     etcd, pg1 (bootstraps), pg2 (synchronous standby), HAProxy; a fresh
//!           database through HAProxy; the pipeline on the machine's RabbitMQ
//! load      PG_FAILOVER_RATE callbacks/s over both producers, every 2xx ground truth
//! faults    a deadline batch due just after the kill; kill -9 the primary's Patroni and
//!           postmaster; back after PG_FAILOVER_DOWN_SECS as the standby; again, the
//!           other member
//! drain     load stopped; work and retry queues empty; outbox all published
//! verify    rows vs ground truth, deadline batch, notifications, recovery times
//! teardown  processes, members, etcd, HAProxy and the run's queues removed
//! ```

mod patroni;
mod report;
mod scenario;

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::chaos::tools;
use crate::process::Supervisor;

/// Settings of `harness pg-failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Callbacks per second of the load, over both producers.
    #[arg(long, env = "PG_FAILOVER_RATE", default_value_t = 20)]
    pub rate: u32,
    /// Most ids in one callback.
    #[arg(long, env = "PG_FAILOVER_MAX_IDS", default_value_t = 200)]
    pub max_ids: usize,
    /// Ids are drawn from 0 to this value (exclusive).
    #[arg(long, env = "PG_FAILOVER_ID_SPACE", default_value_t = 100_000)]
    pub id_space: i64,
    /// Seconds of undisturbed load before the first kill and after each recovery.
    #[arg(long, env = "PG_FAILOVER_SETTLE_SECS", default_value_t = 10)]
    pub settle_secs: u64,
    /// Kills of the primary: the first with the deadline batch, each later one of the
    /// member promoted by the one before (so 2 fails over and back).
    #[arg(long, env = "PG_FAILOVER_KILLS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub kills: u32,
    /// Seconds a killed member stays down before its Patroni is started again.
    #[arg(long, env = "PG_FAILOVER_DOWN_SECS", default_value_t = 20)]
    pub down_secs: u64,
    /// Longest wait, in seconds, for the queues to empty and the outbox to be published.
    #[arg(long, env = "PG_FAILOVER_DRAIN_SECS", default_value_t = 240)]
    pub drain_secs: u64,
    /// First of 7 consecutive free ports: HAProxy (the pipeline's database port), etcd's
    /// two, and each member's PostgreSQL and Patroni REST API.
    #[arg(long, env = "PG_FAILOVER_PORT", default_value_t = 25430)]
    pub port: u16,
    /// The RabbitMQ the pipeline uses (the run's queues have their own prefix and are
    /// deleted at the end).
    #[arg(
        long,
        env = "PG_FAILOVER_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// That RabbitMQ's management API (queue depths while draining).
    #[arg(
        long,
        env = "PG_FAILOVER_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Port of the first producer; the second listens on the next one.
    #[arg(long, env = "PG_FAILOVER_CALLBACK_PORT", default_value_t = 19490)]
    pub callback_port: u16,
    /// Port of the status simulator.
    #[arg(long, env = "PG_FAILOVER_STATUS_PORT", default_value_t = 19410)]
    pub status_port: u16,
    /// Where the members' data, etcd's and the configuration files go (made afresh and
    /// removed at the end; PostgreSQL's user must reach it, so not under /root).
    #[arg(
        long,
        env = "PG_FAILOVER_DATA",
        default_value = "/tmp/lastseen-pg-failover"
    )]
    pub data: PathBuf,
    /// Where the release binaries are.
    #[arg(long, env = "PG_FAILOVER_BIN", default_value = "target/release")]
    pub bin: PathBuf,
    /// Where the result and the logs go.
    #[arg(long, env = "PG_FAILOVER_OUT", default_value = "target/pg-failover")]
    pub out: PathBuf,
}

/// Runs the scenario; fails if any check failed (the report says which).
pub async fn run(args: FailoverArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    tools::require_root()?;
    tools::require(&[
        ("patroni", "patroni"),
        ("etcd", "etcd-server"),
        ("haproxy", "haproxy"),
    ])?;
    let (out, logs) = tools::prepare_out(&args.out, "PG_FAILOVER_OUT")?;
    let mut cluster =
        patroni::PgCluster::new(&args.data, &logs, patroni::Ports { base: args.port })?;
    let mut pipeline = Supervisor::new(&args.bin, &logs);
    eprintln!("[failover] starting etcd, two Patroni members (pg1, pg2) and HAProxy");
    let outcome = scenario::Setup {
        args: &args,
        logs: &logs,
    }
    .run(&mut cluster, &mut pipeline, started, &shutdown)
    .await;

    // Teardown, whatever happened.
    pipeline.stop_all(crate::pipeline::STOP_GRACE).await;
    cluster.shutdown().await;
    crate::broker_admin::delete_local_queues(&args.amqp_url, scenario::PREFIX).await;
    eprintln!("[failover] pipeline, members, etcd, HAProxy and the run's queues removed");

    crate::pipeline::conclude(
        "the failover scenario",
        outcome,
        started,
        (&out, &logs),
        "every process and member",
    )
}
