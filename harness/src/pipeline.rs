//! The pipeline of the multi-node scenarios (`cluster-chaos`, `pg-failover`), run and
//! judged alike: a status simulator, two producers, two consumers and two sweepers under
//! one [`Supervisor`] (each process with its own `AMQP_URL`, so they spread over a
//! cluster's nodes), the callback load over both producers with its ground truth and
//! recovery prober, and at the end the drain and the [`Outcome`] every such scenario
//! checks: nothing lost, every callback 2xx, every notification published.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chaos::ground_truth::{CallbackCounts, GroundTruth};
use crate::chaos::load::{self, LoadOutcome, LoadShape};
use crate::chaos::logs::LogFigures;
use crate::chaos::queues::QueueWatch;
use crate::chaos::recovery::Prober;
use crate::chaos::verify::{self, Verdict};
use crate::chaos::{dead_letters, logs, tools};
use crate::process::{Supervisor, UnexpectedExit};
use tester::callback::{CallbackClient, ORIGINAL_TIMEOUT};
use tester::serve::OnlineRule;

/// How long each process gets to stop on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
pub const PRODUCERS: [&str; 2] = ["producer-1", "producer-2"];
pub const CONSUMERS: [&str; 2] = ["consumer-1", "consumer-2"];
pub const SWEEPERS: [&str; 2] = ["sweeper-1", "sweeper-2"];
/// Status answers take 50-500 ms, so a run settles quickly.
const STATUS_DELAY_MIN_MS: u64 = 50;
const STATUS_DELAY_MAX_MS: u64 = 500;
/// Long, so every row stays until it is verified (a batch may set its own `ttl_secs`).
const OBJECT_TTL_SECS: u64 = 3600;
/// Longest wait for the simulator and the producers to answer after their start.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// Where a scenario's pipeline runs.
pub struct Layout<'a> {
    pub database_url: &'a str,
    /// Prefix of the run's queues and exchanges.
    pub prefix: &'a str,
    /// Port of the first producer; the second listens on the next one.
    pub callback_port: u16,
    pub status_port: u16,
    /// Logs go here; the producers' spools beside it, in `spool/`.
    pub logs: &'a Path,
}

impl Layout<'_> {
    /// The producers' callback ports, one after another from `callback_port`.
    pub fn producer_ports(&self) -> impl Iterator<Item = u16> + use<> {
        let first = self.callback_port;
        (0..PRODUCERS.len()).map(move |k| first + k as u16)
    }

    /// The producers' callback URLs.
    pub fn callback_urls(&self) -> Vec<String> {
        self.producer_ports()
            .map(|port| format!("http://127.0.0.1:{port}/callback"))
            .collect()
    }

    /// Every process but the simulator, in the order they should stop (producers first,
    /// so nothing new arrives), then the simulator.
    pub fn process_names() -> Vec<&'static str> {
        let mut names: Vec<&str> = PRODUCERS.to_vec();
        names.extend(CONSUMERS);
        names.extend(SWEEPERS);
        names.push("status");
        names
    }

    /// Starts the status simulator, both producers, both consumers and both sweepers;
    /// process `k` of each kind gets `amqp_url(k)` (producers), `amqp_url(k + 1)`
    /// (consumers) or `amqp_url(k + 2)` (sweepers). Returns once the simulator and the
    /// producers answer.
    pub async fn start(
        &self,
        pipeline: &mut Supervisor,
        amqp_url: &dyn Fn(usize) -> String,
    ) -> anyhow::Result<()> {
        let ports = [self.callback_port, self.callback_port + 1, self.status_port];
        for port in ports {
            anyhow::ensure!(
                !tools::port_open(port).await,
                "port {port} is taken: choose free callback and status ports (see --help)"
            );
        }
        let status_addr = format!("127.0.0.1:{}", self.status_port);
        let env = |first: usize, extra: &[(&str, String)]| -> Vec<(String, String)> {
            [
                ("DATABASE_URL", self.database_url.to_owned()),
                ("AMQP_URL", amqp_url(first)),
                ("TOPOLOGY_PREFIX", self.prefix.to_owned()),
                (
                    "NOTIFICATIONS_EXCHANGE",
                    format!("{}.notifications", self.prefix),
                ),
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
                            format!("127.0.0.1:{}", self.callback_port + k as u16),
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
                &format!("http://127.0.0.1:{}/readyz", self.callback_port + k as u16),
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

/// Notifications in the outbox, and how many of them are published.
async fn notification_counts(pool: &PgPool) -> anyhow::Result<(u64, u64)> {
    let (all, published): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(published_at) FROM notifications")
            .fetch_one(pool)
            .await
            .context("cannot count the notifications")?;
    Ok((all as u64, published as u64))
}

/// The callback load over both producers: `rate` callbacks/s in all, every answer in the
/// ground truth, and a prober on the first producer for the recovery times.
pub struct Load {
    pub truth: Arc<GroundTruth>,
    pub prober: Prober,
    pub started: Instant,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<LoadOutcome>>,
}

impl Load {
    /// Starts the load on `layout`'s producers; the prober reads `pool`.
    pub fn start(
        layout: &Layout<'_>,
        rate: u32,
        max_ids: usize,
        id_space: i64,
        pool: &PgPool,
    ) -> anyhow::Result<Self> {
        let truth = Arc::new(GroundTruth::default());
        let clients = layout
            .callback_urls()
            .into_iter()
            .map(|url| CallbackClient::new(url, ORIGINAL_TIMEOUT))
            .collect::<Result<Vec<_>, _>>()?;
        let prober = Prober::new(clients[0].clone(), truth.clone(), pool.clone());
        let stop = CancellationToken::new();
        let shape = LoadShape {
            callbacks_per_sec: (rate / PRODUCERS.len() as u32).max(1),
            max_ids,
            id_space,
        };
        let tasks = clients
            .iter()
            .map(|client| {
                tokio::spawn(load::run(
                    client.clone(),
                    shape,
                    truth.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Ok(Self {
            truth,
            prober,
            started: Instant::now(),
            stop,
            tasks,
        })
    }

    /// Seconds since the load started.
    pub fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Stops the load and waits for the outstanding callbacks; the run's figures so far
    /// (`callbacks_per_sec` as offered).
    pub async fn stop(&mut self, callbacks_per_sec: u32) -> anyhow::Result<RunFigures> {
        self.stop.cancel();
        let mut skipped = 0;
        for task in self.tasks.drain(..) {
            skipped += task.await.context("the load panicked")?.skipped;
        }
        Ok(RunFigures {
            passed: false,
            failures: Vec::new(),
            run_secs: 0.0,
            callbacks_per_sec,
            load_secs: self.at(),
            load_ticks_skipped: skipped,
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The verdict and the load's figures, first in every multi-node scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub passed: bool,
    pub failures: Vec<String>,
    pub run_secs: f64,
    pub callbacks_per_sec: u32,
    pub load_secs: f64,
    pub load_ticks_skipped: u64,
}

/// A multi-node scenario's result.
pub trait ScenarioResult: Serialize {
    fn run_figures(&mut self) -> &mut RunFigures;
    /// Every check that failed, in words.
    fn failures(&self) -> Vec<String>;
    /// The report, as markdown.
    fn markdown(&self) -> String;
}

/// The end of a scenario: its result judged, written to `out` as `result.json` and
/// `result.md` and printed; an error unless it passed, or if it did not complete. `what`
/// names the scenario, `in_logs` what its logs hold.
pub fn conclude<R: ScenarioResult>(
    what: &str,
    outcome: anyhow::Result<R>,
    started: Instant,
    (out, logs): (&Path, &Path),
    in_logs: &str,
) -> anyhow::Result<()> {
    let mut result = outcome.map_err(|err| {
        anyhow::anyhow!(
            "{err:#}\n{what} did not complete; logs of {in_logs} are in {}",
            logs.display()
        )
    })?;
    let failures = result.failures();
    let run = result.run_figures();
    run.run_secs = started.elapsed().as_secs_f64();
    run.passed = failures.is_empty();
    run.failures.clone_from(&failures);
    let json = serde_json::to_string_pretty(&result)?;
    std::fs::write(out.join("result.json"), json).context("cannot write result.json")?;
    let md = result.markdown();
    std::fs::write(out.join("result.md"), &md).context("cannot write result.md")?;
    crate::chaos::report::conclude(
        what,
        &md,
        (out, logs),
        failures.is_empty(),
        &failures,
        in_logs,
    )
}

/// What every multi-node scenario checks and reports alike.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub callbacks: CallbackCounts,
    pub probe_callbacks: u64,
    pub verdict: Verdict,
    pub notifications: u64,
    pub notifications_published: u64,
    pub drained_after_secs: Option<f64>,
    pub logs: LogFigures,
    pub unexpected_exits: Vec<UnexpectedExit>,
    pub logs_dir: String,
    /// The dead letters taken off the dead-letter queue (judged in `verdict`; kept for
    /// checks of the scenario's own, such as the deadline batch's).
    #[serde(skip)]
    pub dead_letters: Vec<dead_letters::DeadLetter>,
}

/// Where the end of a run looks.
pub struct Ending<'a> {
    pub queues: &'a QueueWatch,
    /// An AMQP URL (list) to take the dead letters from.
    pub amqp_url: &'a str,
    pub prefix: &'a str,
    pub drain: Duration,
    pub logs: &'a Path,
    /// The scenario's tag in progress lines, e.g. `[cluster]`.
    pub tag: &'a str,
}

impl Ending<'_> {
    /// After the load stopped: waits for the work and retry queues to empty and the
    /// outbox to be published, stops the pipeline, takes the dead letters and judges the
    /// store against the ground truth. The caller closes `pool`.
    pub async fn collect(
        &self,
        pipeline: &mut Supervisor,
        pool: &PgPool,
        load: &Load,
    ) -> anyhow::Result<Outcome> {
        let drained = self.queues.wait_drained(self.drain).await;
        let pending = wait_published(pool, self.drain).await?;
        eprintln!(
            "{} {}; {pending} notifications unpublished; verifying",
            self.tag,
            drained.map_or("queues NOT drained".to_owned(), |d| format!(
                "queues drained in {:.1} s",
                d.as_secs_f64()
            ))
        );
        pipeline.stop(&Layout::process_names(), STOP_GRACE).await;
        let dead =
            dead_letters::take_all(self.amqp_url, &format!("{}.checks.dead", self.prefix)).await?;
        let (rows, expiries) = verify::read_store(pool).await?;
        let (notifications, published) = notification_counts(pool).await?;
        let snapshot = load.truth.take();
        let verdict = verify::verify(&snapshot, &rows, &dead, &expiries, OnlineRule::Even);
        Ok(Outcome {
            callbacks: snapshot.counts,
            probe_callbacks: load.prober.sent(),
            verdict,
            notifications,
            notifications_published: published,
            drained_after_secs: drained.map(|d| d.as_secs_f64()),
            logs: logs::read(self.logs)?,
            unexpected_exits: pipeline.unexpected_exits().to_vec(),
            logs_dir: self.logs.display().to_string(),
            dead_letters: dead,
        })
    }
}

impl Outcome {
    /// Every check that failed, in words.
    ///
    /// `late_answers_fail`: whether a callback answered after the client's 1 s timeout
    /// fails the run (a refusal always does).
    pub fn failures(&self, late_answers_fail: bool) -> Vec<String> {
        let mut failures = self.verdict.failures();
        let late = if late_answers_fail {
            self.callbacks.no_answer
        } else {
            0
        };
        if self.callbacks.refused + late > 0 {
            failures.push(format!(
                "callbacks not answered 2xx: {} refused, {} unanswered (1 s)",
                self.callbacks.refused, self.callbacks.no_answer
            ));
        }
        if self.notifications_published < self.notifications {
            failures.push(format!(
                "{} of {} notifications never published",
                self.notifications - self.notifications_published,
                self.notifications
            ));
        }
        if self.drained_after_secs.is_none() {
            failures.push("the work and retry queues did not drain".into());
        }
        for exit in &self.unexpected_exits {
            failures.push(exit.to_string());
        }
        for file in &self.logs.panics {
            failures.push(format!("a panic in {file}"));
        }
        failures
    }

    /// The figures table (markdown).
    pub fn figures(&self, md: &mut String) {
        let c = &self.callbacks;
        let v = &self.verdict;
        let _ = writeln!(md, "| figure | value |");
        let _ = writeln!(md, "|---|---|");
        let rows = [
            ("callbacks sent (load)", c.sent.to_string()),
            (
                "answered 2xx direct / spooled",
                format!("{} / {}", c.accepted_direct, c.accepted_spooled),
            ),
            (
                "refused / unanswered",
                format!("{} / {}", c.refused, c.no_answer),
            ),
            ("recovery probes", self.probe_callbacks.to_string()),
            (
                "distinct ids accepted (online)",
                format!("{} ({})", v.ids_accepted, v.online_ids_accepted),
            ),
            ("online ids stored", v.ids_stored.to_string()),
            ("dead-lettered ids", v.ids_dead_lettered.to_string()),
            ("**lost ids**", format!("**{}**", v.ids_lost)),
            (
                "false expiries",
                format!("{} of {} checked", v.false_expiries, v.expiries_checked),
            ),
            (
                "notifications published",
                format!("{} of {}", self.notifications_published, self.notifications),
            ),
            ("queues drained after load", secs(self.drained_after_secs)),
            (
                "ERROR lines in logs",
                self.logs.errors.values().sum::<u64>().to_string(),
            ),
            ("unexpected exits", self.unexpected_exits.len().to_string()),
        ];
        for (name, value) in rows {
            let _ = writeln!(md, "| {name} | {value} |");
        }
    }
}

/// Seconds with one decimal, or "never".
pub fn secs(value: Option<f64>) -> String {
    value.map_or("never".to_owned(), |s| format!("{s:.1} s"))
}
