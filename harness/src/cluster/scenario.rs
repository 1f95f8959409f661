//! The cluster scenario's phases, in order: the cluster formed, the pipeline started on
//! it, the load and the three faults, the drain, and what the verdict needs collected.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::network::Network;
use super::node::{self, ClusterNode};
use super::report::ClusterResult;
use super::{ClusterArgs, NODES};
use crate::chaos::ground_truth::GroundTruth;
use crate::chaos::load::{self, LoadShape};
use crate::chaos::queues::QueueWatch;
use crate::chaos::recovery::Prober;
use crate::chaos::{dead_letters, logs, tools, verify};
use crate::process::Supervisor;
use tester::callback::{CallbackClient, ORIGINAL_TIMEOUT};
use tester::serve::OnlineRule;

/// How long each process gets to stop on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// Prefix of the run's queues and exchanges.
const PREFIX: &str = "cluster";
const PRODUCERS: [&str; 2] = ["producer-1", "producer-2"];
const CONSUMERS: [&str; 2] = ["consumer-1", "consumer-2"];
const SWEEPERS: [&str; 2] = ["sweeper-1", "sweeper-2"];
/// Status answers take 50-500 ms, so the run settles quickly.
const STATUS_DELAY_MIN_MS: u64 = 50;
const STATUS_DELAY_MAX_MS: u64 = 500;
/// Long, so every row stays until it is verified.
const OBJECT_TTL_SECS: u64 = 3600;
/// Longest wait for the pipeline to answer or subscribe after its start, and for the
/// cluster to show every node running after a node came back.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// What a run works with.
pub struct Setup<'a> {
    pub args: &'a ClusterArgs,
    pub logs: &'a Path,
    pub network: &'a Network,
    pub nodes: &'a [ClusterNode],
}

impl Setup<'_> {
    /// Every node's AMQP URL, starting with node `first` (0-based), so the processes
    /// spread over the nodes.
    fn nodes_from(&self, first: usize) -> String {
        (0..NODES)
            .map(|k| self.nodes[(first + k) % NODES].amqp_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs every phase up to the verdict; teardown is the caller's.
    pub async fn run(
        &self,
        pipeline: &mut Supervisor,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ClusterResult> {
        node::form(self.nodes).await?;
        let pool = crate::database::fresh(&self.args.database_url, "CLUSTER_DATABASE_URL").await?;
        self.start_processes(pipeline).await?;
        // The last node's management API watches the queues (it is the last to restart).
        let watcher = &self.nodes[NODES - 1];
        let queues = Arc::new(QueueWatch::new(
            &self.nodes_from(NODES - 1),
            &watcher.management_url(),
            PREFIX,
        )?);
        queues
            .wait_consumers(CONSUMERS.len() as u64, READY_LIMIT)
            .await?;
        let replicas = self.replicas(&queues.work_queue()).await?;
        eprintln!(
            "[cluster] pipeline up after {:.0} s, work queue on {replicas} nodes; load and faults begin",
            started.elapsed().as_secs_f64()
        );

        let truth = Arc::new(GroundTruth::default());
        let clients = PRODUCERS
            .iter()
            .enumerate()
            .map(|(k, _)| {
                CallbackClient::new(
                    format!(
                        "http://127.0.0.1:{}/callback",
                        self.args.callback_port + k as u16
                    ),
                    ORIGINAL_TIMEOUT,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prober = Prober::new(clients[0].clone(), truth.clone(), pool.clone());
        let stop_load = CancellationToken::new();
        let _stop_load = stop_load.clone().drop_guard();
        let load_started = Instant::now();
        let per_producer = (self.args.rate / PRODUCERS.len() as u32).max(1);
        let loads: Vec<_> = clients
            .iter()
            .map(|client| {
                tokio::spawn(load::run(
                    client.clone(),
                    LoadShape {
                        callbacks_per_sec: per_producer,
                        max_ids: self.args.max_ids,
                        id_space: self.args.id_space,
                    },
                    truth.clone(),
                    stop_load.clone(),
                ))
            })
            .collect();

        let faults = self.faults(&prober, &truth, load_started, shutdown).await;
        stop_load.cancel();
        let mut skipped = 0;
        for load in loads {
            skipped += load.await.context("the load panicked")?.skipped;
        }
        let load_secs = load_started.elapsed().as_secs_f64();
        let faults = faults?;
        eprintln!("[cluster] +{load_secs:>5.1} s  load stopped; draining");

        let drained = queues
            .wait_drained(Duration::from_secs(self.args.drain_secs))
            .await;
        let pending = wait_published(&pool, Duration::from_secs(self.args.drain_secs)).await?;
        eprintln!(
            "[cluster] {}; {pending} notifications unpublished; verifying",
            drained.map_or("queues NOT drained".to_owned(), |d| format!(
                "queues drained in {:.1} s",
                d.as_secs_f64()
            ))
        );
        let mut names: Vec<&str> = PRODUCERS.to_vec();
        names.extend(CONSUMERS);
        names.extend(SWEEPERS);
        names.push("status");
        pipeline.stop(&names, STOP_GRACE).await;

        let dead =
            dead_letters::take_all(&self.nodes_from(0), &format!("{PREFIX}.checks.dead")).await?;
        let (rows, expiries) = verify::read_store(&pool).await?;
        let (notifications, published): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(published_at) FROM notifications")
                .fetch_one(&pool)
                .await
                .context("cannot count the notifications")?;
        pool.close().await;
        let snapshot = truth.take();
        let verdict = verify::verify(&snapshot, &rows, &dead, &expiries, OnlineRule::Even);
        Ok(ClusterResult {
            passed: false,
            failures: Vec::new(),
            run_secs: 0.0,
            callbacks_per_sec: self.args.rate,
            load_secs,
            load_ticks_skipped: skipped,
            work_queue_replicas: replicas,
            faults,
            callbacks: snapshot.counts,
            probe_callbacks: prober.sent(),
            verdict,
            notifications: notifications as u64,
            notifications_published: published as u64,
            drained_after_secs: drained.map(|d| d.as_secs_f64()),
            logs: logs::read(self.logs)?,
            unexpected_exits: pipeline.unexpected_exits().to_vec(),
            logs_dir: self.logs.display().to_string(),
        })
    }

    /// How many nodes hold a replica of quorum queue `queue`.
    async fn replicas(&self, queue: &str) -> anyhow::Result<usize> {
        let node = &self.nodes[0];
        let info: serde_json::Value = lastseen::tls::http_client()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("{}/api/queues/%2F/{queue}", node.management_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(info["members"].as_array().map_or(0, Vec::len))
    }

    /// Starts the status simulator, both producers, both consumers and both sweepers,
    /// each given the three nodes starting with a different one.
    async fn start_processes(&self, pipeline: &mut Supervisor) -> anyhow::Result<()> {
        let args = self.args;
        let ports = [args.callback_port, args.callback_port + 1, args.status_port];
        for port in ports {
            anyhow::ensure!(
                !tools::port_open(port).await,
                "port {port} is taken: set CLUSTER_CALLBACK_PORT / CLUSTER_STATUS_PORT to free ports"
            );
        }
        let status_addr = format!("127.0.0.1:{}", args.status_port);
        let env = |first: usize, extra: &[(&str, String)]| -> Vec<(String, String)> {
            [
                ("DATABASE_URL", args.database_url.clone()),
                ("AMQP_URL", self.nodes_from(first)),
                ("TOPOLOGY_PREFIX", PREFIX.to_owned()),
                ("NOTIFICATIONS_EXCHANGE", format!("{PREFIX}.notifications")),
                ("RUST_LOG", "info,sqlx=warn".to_owned()),
                ("LOG_FORMAT", "json".to_owned()),
                ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
                ("OBJECT_TTL_SECS", OBJECT_TTL_SECS.to_string()),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
        };
        pipeline.start(
            "status",
            "tester",
            &["serve"],
            &env(
                0,
                &[
                    ("STATUS_ADDR", status_addr.clone()),
                    ("STATUS_DELAY_MIN_MS", STATUS_DELAY_MIN_MS.to_string()),
                    ("STATUS_DELAY_MAX_MS", STATUS_DELAY_MAX_MS.to_string()),
                    ("STATUS_ONLINE", "even".to_owned()),
                ],
            ),
        )?;
        let spool = self.logs.parent().unwrap_or(self.logs).join("spool");
        std::fs::create_dir_all(&spool)?;
        for (k, name) in PRODUCERS.iter().enumerate() {
            let path = spool.join(format!("{name}.redb"));
            let _ = std::fs::remove_file(&path);
            pipeline.start(
                name,
                "producer",
                &[],
                &env(
                    k,
                    &[
                        (
                            "CALLBACK_ADDR",
                            format!("127.0.0.1:{}", args.callback_port + k as u16),
                        ),
                        ("SPOOL_PATH", path.display().to_string()),
                    ],
                ),
            )?;
        }
        for (k, name) in CONSUMERS.iter().enumerate() {
            pipeline.start(
                name,
                "consumer",
                &[],
                &env(
                    k + 1,
                    &[
                        ("STATUS_URL", format!("http://{status_addr}")),
                        ("STATUS_TIMEOUT_MS", "1500".to_owned()),
                        ("RETRY_BASE_MS", "200".to_owned()),
                        ("RETRY_MAX_MS", "2000".to_owned()),
                        ("SHUTDOWN_TIMEOUT_MS", "5000".to_owned()),
                    ],
                ),
            )?;
        }
        for (k, name) in SWEEPERS.iter().enumerate() {
            pipeline.start(name, "sweeper", &[], &env(k + 2, &[]))?;
        }
        tools::wait_http(READY_LIMIT, &format!("http://{status_addr}/stats")).await?;
        for k in 0..PRODUCERS.len() {
            tools::wait_http(
                READY_LIMIT,
                &format!("http://127.0.0.1:{}/readyz", args.callback_port + k as u16),
            )
            .await?;
        }
        Ok(())
    }
}

/// Waits until every notification row is published, up to `limit`; returns how many
/// are not.
async fn wait_published(pool: &PgPool, limit: Duration) -> anyhow::Result<i64> {
    let started = Instant::now();
    loop {
        let (pending,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM notifications WHERE published_at IS NULL")
                .fetch_one(pool)
                .await
                .context("cannot count unpublished notifications")?;
        if pending == 0 || started.elapsed() > limit {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
