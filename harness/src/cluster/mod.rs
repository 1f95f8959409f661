//! `harness cluster-chaos` (`make cluster-chaos`): the pipeline against a three-node
//! RabbitMQ cluster that the scenario starts itself, each node in its own network
//! namespace, with two producers, two consumers and two sweepers, each given all three
//! nodes. Under steady callback load it kills one node with SIGKILL (back after
//! `CLUSTER_KILL_SECS`), cuts one off for `CLUSTER_CUT_SECS` then heals it, and restarts
//! all three one after another; then it verifies, as the chaos suite does, that no
//! accepted id was lost, every callback was answered 2xx (direct or spooled), every
//! notification was published, and how long the pipeline took to recover from each fault.
//!
//! ```text
//! setup     bridge + 3 namespaces, nodes rabbit-1..3 clustered (pause_minority),
//!           a fresh database on the machine's PostgreSQL, the processes
//! load      CLUSTER_RATE callbacks/s over both producers, every 2xx ground truth
//! faults    kill -9 rabbit-1 (back after 20 s); cut rabbit-2 off 30 s; rolling restart
//! drain     load stopped; work and retry queues empty; outbox all published
//! verify    rows vs ground truth, dead letters, callbacks, notifications, recovery
//! teardown  processes, nodes, namespaces and bridge removed, whatever happened
//! ```

mod faults;
mod network;
mod node;
pub(crate) mod report;
mod scenario;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::chaos::tools;
use crate::process::Supervisor;

/// Nodes of the cluster.
pub const NODES: usize = 3;

/// Settings of `harness cluster-chaos`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Callbacks per second of the load, over both producers.
    #[arg(long, env = "CLUSTER_RATE", default_value_t = 20)]
    pub rate: u32,
    /// Most ids in one callback.
    #[arg(long, env = "CLUSTER_MAX_IDS", default_value_t = 200)]
    pub max_ids: usize,
    /// Ids are drawn from 0 to this value (exclusive).
    #[arg(long, env = "CLUSTER_ID_SPACE", default_value_t = 100_000)]
    pub id_space: i64,
    /// Seconds of undisturbed load before the first fault and after each recovery.
    #[arg(long, env = "CLUSTER_SETTLE_SECS", default_value_t = 10)]
    pub settle_secs: u64,
    /// Seconds the killed node stays down.
    #[arg(long, env = "CLUSTER_KILL_SECS", default_value_t = 20)]
    pub kill_secs: u64,
    /// Seconds the cut-off node stays cut off.
    #[arg(long, env = "CLUSTER_CUT_SECS", default_value_t = 30)]
    pub cut_secs: u64,
    /// Longest wait, in seconds, for the queues to empty and the outbox to be published.
    #[arg(long, env = "CLUSTER_DRAIN_SECS", default_value_t = 240)]
    pub drain_secs: u64,
    /// The nodes' `net_ticktime`: seconds before a node that went silent (cut off)
    /// counts as down. RabbitMQ's default is 60; until then a process whose node was cut
    /// off waits for its new session's topology declaration (callbacks are spooled).
    #[arg(long, env = "CLUSTER_NET_TICKTIME", default_value_t = 15)]
    pub net_ticktime: u32,
    /// First three octets of the nodes' addresses ({subnet}.1-3; the bridge is .254).
    #[arg(long, env = "CLUSTER_SUBNET", default_value = "10.231.0")]
    pub subnet: String,
    /// The database the run makes afresh (dropped first) on the machine's PostgreSQL.
    #[arg(
        long,
        env = "CLUSTER_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/lastseen_cluster_chaos"
    )]
    pub database_url: String,
    /// Port of the first producer; the second listens on the next one.
    #[arg(long, env = "CLUSTER_CALLBACK_PORT", default_value_t = 19390)]
    pub callback_port: u16,
    /// Port of the status simulator.
    #[arg(long, env = "CLUSTER_STATUS_PORT", default_value_t = 19310)]
    pub status_port: u16,
    /// Where the release binaries are.
    #[arg(long, env = "CLUSTER_BIN", default_value = "target/release")]
    pub bin: PathBuf,
    /// Where the result, the logs and the nodes' files go.
    #[arg(long, env = "CLUSTER_OUT", default_value = "target/cluster-chaos")]
    pub out: PathBuf,
}

fn require_tools() -> anyhow::Result<()> {
    tools::require(&[
        ("rabbitmq-server", "rabbitmq-server"),
        ("rabbitmqctl", "rabbitmq-server"),
        ("epmd", "erlang-base"),
    ])
}

/// The three hosts and their nodes, with files under `out` and logs under `logs`.
fn hosts(
    args: &ClusterArgs,
    out: &std::path::Path,
    logs: &std::path::Path,
) -> (network::Network, Vec<node::ClusterNode>) {
    let network = network::Network::new(&args.subnet, NODES);
    let nodes = (1..=NODES)
        .map(|i| {
            node::ClusterNode::new(
                i,
                &network.namespace(i),
                &network.address(i),
                &out.join("rabbitmq"),
                logs,
                args.net_ticktime,
            )
        })
        .collect();
    (network, nodes)
}

/// `harness cluster-up`: forms the same three-node cluster and keeps it until SIGTERM or
/// Ctrl-C, for runs against it (`make cluster-bench`). Writes the nodes' `AMQP_URL` to
/// `{out}/amqp_url` once the cluster is up, and removes everything on the way out.
pub async fn up(args: ClusterArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    tools::require_root()?;
    require_tools()?;
    let out = std::path::absolute(&args.out)
        .with_context(|| format!("bad CLUSTER_OUT {}", args.out.display()))?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let ready_file = out.join("amqp_url");
    let _ = std::fs::remove_file(&ready_file);
    let (network, nodes) = hosts(&args, &out, &logs);
    let formed = async {
        network.create().await?;
        node::form(&nodes).await
    }
    .await;
    let formed = formed.and_then(|()| {
        let urls: Vec<String> = nodes.iter().map(node::ClusterNode::amqp_url).collect();
        std::fs::write(&ready_file, urls.join(","))
            .with_context(|| format!("cannot write {}", ready_file.display()))?;
        eprintln!(
            "[cluster] up: AMQP_URL={}; management on {}; stop with SIGTERM",
            lastseen::config::redact_url(&urls.join(",")),
            nodes[0].management_url()
        );
        Ok(())
    });
    if formed.is_ok() {
        shutdown.cancelled().await;
    }
    let _ = std::fs::remove_file(&ready_file);
    for node in &nodes {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), node.shutdown()).await;
    }
    network.remove().await;
    eprintln!("[cluster] nodes and namespaces removed");
    formed
}

/// Runs one scenario; fails if any check failed (the report says which).
pub async fn run(args: ClusterArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    tools::require_root()?;
    require_tools()?;
    let (out, logs) = tools::prepare_out(&args.out, "CLUSTER_OUT")?;

    let (network, nodes) = hosts(&args, &out, &logs);
    let mut pipeline = Supervisor::new(&args.bin, &logs);
    eprintln!("[cluster] creating 3 hosts (network namespaces) and their RabbitMQ nodes");
    let outcome = async {
        network.create().await?;
        let setup = scenario::Setup {
            args: &args,
            logs: &logs,
            network: &network,
            nodes: &nodes,
        };
        setup.run(&mut pipeline, started, &shutdown).await
    }
    .await;

    // Teardown, whatever happened.
    pipeline.stop_all(crate::pipeline::STOP_GRACE).await;
    for node in &nodes {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), node.shutdown()).await;
    }
    network.remove().await;
    eprintln!("[cluster] pipeline, nodes and namespaces removed");

    crate::pipeline::conclude(
        "the cluster scenario",
        outcome,
        started,
        (&out, &logs),
        "every process and node",
    )
}
