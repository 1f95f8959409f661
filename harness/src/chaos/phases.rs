//! One chaos run's phases, in order: the services and the pipeline's processes started,
//! the load and the faults, the drain, and everything the verdict needs collected.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use tokio_util::sync::CancellationToken;

use super::broker::BrokerNode;
use super::database::DatabaseCluster;
use super::faults::Chaos;
use super::ground_truth::GroundTruth;
use tester::callback::{CallbackClient, ORIGINAL_TIMEOUT};

use super::load::{self, LoadShape};
use super::queues::QueueWatch;
use super::recovery::Prober;
use super::report::{ChaosResult, LoadSettings, QueueDepth};
use super::spool_disk::SpoolDisk;
use super::{ChaosArgs, STOP_GRACE, dead_letters, deadlines, fleet, logs, tools, verify, webhook};
use crate::process::Supervisor;
use tester::serve::OnlineRule;

/// Prefix of the run's queues and exchanges (on its own node, so nothing else shares it).
const PREFIX: &str = "chaos";
/// Consumer processes; the first is the one killed.
const CONSUMERS: [&str; 2] = ["consumer-1", "consumer-2"];
/// Status answers take 50-500 ms: short, so retries and the whole run settle quickly.
const STATUS_DELAY_MIN_MS: u64 = 50;
const STATUS_DELAY_MAX_MS: u64 = 500;
/// The acceptance's status service trouble, for the whole run.
const STATUS_FAIL_RATE: f64 = 0.2;
const STATUS_HANG_RATE: f64 = 0.05;
/// A hung status call fails after this (ms), so it is retried soon.
const STATUS_TIMEOUT_MS: u64 = 1500;
/// Retries after 200 ms, doubling up to 2 s: at most ~13 s over the 10 attempts.
const RETRY_BASE_MS: u64 = 200;
const RETRY_MAX_MS: u64 = 2000;
/// Status calls in flight per consumer. After an outage each consumer holds a full
/// prefetch (500 messages of up to 50 ids) and would open one connection per id up to the
/// default 13,000; two of them would exhaust the simulator's open-file limit (20,000 on
/// the development machine) and add connection failures the schedule did not ask for.
const MAX_CHECKS_IN_FLIGHT: u32 = 4000;
/// Long, so every row stays until it is verified while the sweeper still runs.
const OBJECT_TTL_SECS: u64 = 3600;
/// Longest wait for a process to answer or subscribe after its start.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The run's queue and exchange names.
fn topology() -> lastseen::topology::Topology {
    lastseen::topology::Topology::new(&lastseen::topology::TopologyArgs {
        topology_prefix: PREFIX.to_owned(),
        notifications_exchange: format!("{PREFIX}.notifications"),
        delivery_limit: 20,
        notifications_queue_max_length: 100_000,
        quorum_replicas: None,
    })
}

/// What a run works with.
pub struct Setup<'a> {
    pub args: &'a ChaosArgs,
    pub logs: &'a Path,
    pub broker: &'a BrokerNode,
    pub database: &'a DatabaseCluster,
    pub spool_disk: &'a SpoolDisk,
}

impl Setup<'_> {
    /// Runs every phase up to the verdict; teardown is the caller's.
    pub async fn run(
        &self,
        pipeline: &mut Supervisor,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ChaosResult> {
        let boot = self.broker.start().await?;
        eprintln!(
            "[chaos] RabbitMQ node up in {:.1} s at {}",
            boot.as_secs_f64(),
            self.broker.amqp_url()
        );
        self.database.start().await?;
        let pool = self.database.fresh_database().await?;
        eprintln!(
            "[chaos] PostgreSQL up, database {}",
            self.database.database_url()
        );
        let receiver = webhook::start_receiver(self.args.webhook_port)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on CHAOS_WEBHOOK_PORT {}",
                    self.args.webhook_port
                )
            })?;
        self.start_processes(pipeline, receiver.url()).await?;
        let queues = Arc::new(
            QueueWatch::new(
                &self.broker.amqp_url(),
                &self.broker.management_url(),
                PREFIX,
            )?
            .with_spools([self.args.callback_port]),
        );
        queues
            .wait_consumers(CONSUMERS.len() as u64, READY_LIMIT)
            .await?;
        eprintln!(
            "[chaos] pipeline up after {:.0} s; load and faults begin",
            started.elapsed().as_secs_f64()
        );

        let truth = Arc::new(GroundTruth::default());
        // The original tester's 1 s timeout: a later answer is no answer, so its callback
        // is not ground truth.
        let client = CallbackClient::new(
            format!("http://127.0.0.1:{}/callback", self.args.callback_port),
            ORIGINAL_TIMEOUT,
        )?;
        let prober = Prober::new(client.clone(), truth.clone(), pool.clone());
        let batch_client = client.clone();
        // Drop guards: the sampler and the load stop on every way out of this function.
        let sampling = CancellationToken::new();
        let _stop_sampling = sampling.clone().drop_guard();
        let sampler = tokio::spawn({
            let queues = queues.clone();
            let stop = sampling.clone();
            async move { queues.sample_until(stop).await }
        });
        let shape = LoadShape {
            callbacks_per_sec: self.args.rate,
            max_ids: self.args.max_ids,
            id_space: self.args.id_space,
        };
        let stop_load = CancellationToken::new();
        let _stop_load = stop_load.clone().drop_guard();
        let load_started = Instant::now();
        let fleet_truth = Arc::new(GroundTruth::default());
        let fleet_task = tokio::spawn(fleet::run(
            client.clone(),
            fleet_truth.clone(),
            stop_load.clone(),
        ));
        let load_task = tokio::spawn(load::run(client, shape, truth.clone(), stop_load.clone()));
        let mut chaos = Chaos {
            pipeline: &mut *pipeline,
            broker: self.broker,
            database: self.database,
            spool_disk: self.spool_disk,
            queues: &queues,
            prober: &prober,
            outage: Duration::from_secs(self.args.outage_secs),
            topology: topology(),
            client: batch_client,
            pool: pool.clone(),
            deadlines: None,
            removed: Vec::new(),
            settle: Duration::from_secs(self.args.settle_secs),
            load_started,
        };
        let faults = chaos.run_schedule(shutdown).await;
        let removed = std::mem::take(&mut chaos.removed);
        let planted = chaos.deadlines.take();
        drop(chaos);
        stop_load.cancel();
        let load_outcome = load_task.await.context("the load panicked")?;
        fleet_task.await.context("the fleet panicked")?;
        let load_secs = load_started.elapsed().as_secs_f64();
        let faults = faults?;
        let counts = truth.counts();
        eprintln!(
            "[chaos] +{load_secs:>5.1} s  load stopped ({} callbacks accepted); waiting up to {} s for the queues to drain",
            counts.accepted_direct + counts.accepted_spooled,
            self.args.drain_secs
        );

        let drained = queues
            .wait_drained(Duration::from_secs(self.args.drain_secs))
            .await;
        queues.sample_redeliveries().await;
        sampling.cancel();
        let _ = sampler.await;
        eprintln!(
            "[chaos] {}; stopping the pipeline and verifying",
            drained.map_or("queues NOT drained".to_owned(), |d| format!(
                "queues drained in {:.1} s",
                d.as_secs_f64()
            ))
        );
        // With no consumer left, a passive declare counts every message, unacked or not.
        let [first, second] = CONSUMERS;
        let [sweeper_1, sweeper_2] = webhook::SWEEPERS;
        let names = ["producer", first, second, sweeper_1, sweeper_2, "status"];
        pipeline.stop(&names, STOP_GRACE).await;
        let mut work_and_retry = vec![queues.work_queue()];
        if let Ok(all) = queues.queues().await {
            work_and_retry.extend(
                all.into_iter()
                    .map(|q| q.name)
                    .filter(|name| queues.is_work_or_retry(name) && *name != queues.work_queue()),
            );
        }
        let amqp_url = self.broker.amqp_url();
        let final_depths = queues
            .exact_depths(&work_and_retry)
            .await
            .into_iter()
            .map(|(queue, depth)| QueueDepth {
                queue,
                messages: depth.as_ref().ok().copied(),
                error: depth.err(),
            })
            .collect();
        let mut dead = dead_letters::take_all(&amqp_url, &topology().dead_letter_queue).await?;
        dead.extend(removed);
        let (rows, expiries) = verify::read_store(&pool).await?;
        let webhook = webhook::figures(&receiver, &pool).await?;
        let deadlines = match &planted {
            Some(planted) => Some(deadlines::verify(planted, &pool, &dead).await?),
            None => None,
        };
        pool.close().await;
        let mut snapshot = truth.take();
        let fleet = fleet_truth.take();
        // The fleet's rows are expected; its callbacks are judged for expiries only
        // (its objects expire once it stops, so rows are not required of it).
        snapshot.sent.extend(fleet.sent.iter().copied());
        let mut verdict = verify::verify(&snapshot, &rows, &dead, &expiries, OnlineRule::Even);
        verify::judge_expiries(&fleet, &expiries, OnlineRule::Even, &mut verdict);
        verdict.fleet_callbacks_accepted =
            fleet.counts.accepted_direct + fleet.counts.accepted_spooled;
        verdict.fleet_callbacks_sent = fleet.counts.sent;
        Ok(ChaosResult {
            passed: false,
            failures: Vec::new(),
            run_secs: started.elapsed().as_secs_f64(),
            load: LoadSettings {
                callbacks_per_sec: self.args.rate,
                max_ids: self.args.max_ids,
                id_space: self.args.id_space,
                load_secs,
                status_fail_rate: STATUS_FAIL_RATE,
                status_hang_rate: STATUS_HANG_RATE,
            },
            faults,
            callbacks: snapshot.counts,
            probe_callbacks: prober.sent(),
            load_ticks_skipped: load_outcome.skipped,
            verdict,
            deadlines,
            webhook,
            redeliveries: queues.redeliveries(),
            logs: logs::read(self.logs)?,
            drained_after_secs: drained.map(|d| d.as_secs_f64()),
            final_depths,
            unexpected_exits: pipeline.unexpected_exits().to_vec(),
            logs_dir: self.logs.display().to_string(),
        })
    }

    /// Starts the status simulator, the producer, the consumers and the sweeper, and
    /// waits for the simulator and the producer to answer.
    async fn start_processes(
        &self,
        pipeline: &mut Supervisor,
        webhook_url: &str,
    ) -> anyhow::Result<()> {
        let args = self.args;
        for port in [args.callback_port, args.status_port] {
            if tools::port_open(port).await {
                anyhow::bail!(
                    "port {port} is taken: set CHAOS_CALLBACK_PORT / CHAOS_STATUS_PORT to free ports"
                );
            }
        }
        let common = [
            ("DATABASE_URL", self.database.database_url()),
            ("AMQP_URL", self.broker.amqp_url()),
            ("TOPOLOGY_PREFIX", PREFIX.to_owned()),
            ("NOTIFICATIONS_EXCHANGE", format!("{PREFIX}.notifications")),
            ("RUST_LOG", "info,sqlx=warn".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            // Any free port: two consumers cannot share the default, nor may they take
            // `make run`'s.
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            // Every process that knows a TTL gets the long one (the consumer may stamp
            // expiry deadlines, the sweeper enforces them).
            ("OBJECT_TTL_SECS", OBJECT_TTL_SECS.to_string()),
        ];
        let env = |extra: &[(&str, String)]| -> Vec<(String, String)> {
            common
                .iter()
                .chain(extra)
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let status_addr = format!("127.0.0.1:{}", args.status_port);
        pipeline.start(
            "status",
            "tester",
            &["serve"],
            &env(&[
                ("STATUS_ADDR", status_addr.clone()),
                ("STATUS_DELAY_MIN_MS", STATUS_DELAY_MIN_MS.to_string()),
                ("STATUS_DELAY_MAX_MS", STATUS_DELAY_MAX_MS.to_string()),
                ("STATUS_ONLINE", "even".to_owned()),
                ("STATUS_FAIL_RATE", STATUS_FAIL_RATE.to_string()),
                ("STATUS_HANG_RATE", STATUS_HANG_RATE.to_string()),
            ]),
        )?;
        // SPOOL_PATH goes by environment, which an older producer simply ignores; the
        // same file across restarts, so a restarted producer drains what it spooled.
        pipeline.start(
            "producer",
            "producer",
            &[],
            &env(&[
                ("CALLBACK_ADDR", format!("127.0.0.1:{}", args.callback_port)),
                (
                    "SPOOL_PATH",
                    self.spool_disk.spool_path().display().to_string(),
                ),
            ]),
        )?;
        for name in CONSUMERS {
            pipeline.start(
                name,
                "consumer",
                &[],
                &env(&[
                    ("STATUS_URL", format!("http://{status_addr}")),
                    ("STATUS_TIMEOUT_MS", STATUS_TIMEOUT_MS.to_string()),
                    ("RETRY_BASE_MS", RETRY_BASE_MS.to_string()),
                    ("RETRY_MAX_MS", RETRY_MAX_MS.to_string()),
                    ("MAX_ATTEMPTS", "10".to_owned()),
                    ("MAX_CHECKS_IN_FLIGHT", MAX_CHECKS_IN_FLIGHT.to_string()),
                    ("SHUTDOWN_TIMEOUT_MS", "5000".to_owned()),
                    // The consumer sets each object's deadline: rows must outlive the run.
                    ("OBJECT_TTL_SECS", OBJECT_TTL_SECS.to_string()),
                ]),
            )?;
        }
        for name in webhook::SWEEPERS {
            pipeline.start(
                name,
                "sweeper",
                &[],
                &env(&[
                    ("NOTIFY_WEBHOOK_URL", webhook_url.to_owned()),
                    ("NOTIFY_WEBHOOK_SECRET", "chaos-secret".to_owned()),
                ]),
            )?;
        }
        tools::wait_http(READY_LIMIT, &format!("http://{status_addr}/stats")).await?;
        tools::wait_http(
            READY_LIMIT,
            &format!("http://127.0.0.1:{}/readyz", args.callback_port),
        )
        .await?;
        Ok(())
    }
}
