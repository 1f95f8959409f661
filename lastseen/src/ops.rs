//! The operations endpoint every process serves: Prometheus `/metrics`, `/healthz` (the
//! process lives) and `/readyz` (its dependencies answer, naming any that does not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets (seconds) of every `*_seconds` histogram: 1 ms to about 2 minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Size buckets of every `*_rows` and `*_ids` histogram.
const COUNT_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];

/// How long a dependency may take to answer a readiness probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the operations endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot listen on METRICS_ADDR {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How often histogram samples are folded into their buckets. Until then each sample is
/// held on its own; without this, a process nobody scrapes keeps every one.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use, with its upkeep running
/// for the life of the process. Components running in one process (as in the tests)
/// share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            keep_up(handle.clone(), UPKEEP_EVERY);
            handle
        })
        .clone()
}

/// The recorder, with the buckets of every histogram.
fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), COUNT_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ids".into()), COUNT_BUCKETS))
        .expect("the bucket lists are non-empty constants")
        .build_recorder()
}

/// Runs the recorder's upkeep every `every`, on a thread of its own (the recorder is
/// process-wide and may be made outside a runtime), for the life of the process.
fn keep_up(handle: PrometheusHandle, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the metrics upkeep; histogram samples pile up until a scrape");
    }
}

/// One dependency as `/readyz` reports it.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub name: &'static str,
    /// `None` when it answers, else why not.
    pub problem: Option<String>,
    /// Shown instead of `ok` when there is no problem (a state worth telling that does
    /// not make the process unready).
    pub detail: Option<String>,
}

impl Dependency {
    pub fn ok(name: &'static str) -> Self {
        Self {
            name,
            problem: None,
            detail: None,
        }
    }

    /// Ready, with something to tell.
    pub fn telling(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            problem: None,
            detail: Some(detail.into()),
        }
    }

    pub fn failing(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: Some(problem.into()),
            detail: None,
        }
    }
}

/// A part of `/readyz` a worker adds (see [`WorkerOps::tell`]).
pub type Telling = Arc<dyn Fn() -> Dependency + Send + Sync>;

/// Asks the process's dependencies, now.
pub type ReadinessProbe = Arc<dyn Fn() -> BoxFuture<'static, Vec<Dependency>> + Send + Sync>;

/// Checks that PostgreSQL answers `SELECT 1` within [`PROBE_TIMEOUT`].
pub async fn postgres(pool: &PgPool) -> Dependency {
    let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
    match tokio::time::timeout(PROBE_TIMEOUT, query).await {
        Ok(Ok(_)) => Dependency::ok("postgresql"),
        Ok(Err(err)) => Dependency::failing("postgresql", err.to_string()),
        Err(_) => Dependency::failing("postgresql", "no answer within 1 s"),
    }
}

/// Like [`postgres`], for a process still connecting (and migrating) at startup.
pub async fn postgres_once_connected(pool: &OnceLock<PgPool>) -> Dependency {
    match pool.get() {
        Some(pool) => postgres(pool).await,
        None => Dependency::failing("postgresql", "connecting"),
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    probe: ReadinessProbe,
}

/// `/metrics`, `/healthz` and `/readyz`, to serve on their own port or merge into an app.
pub fn router(probe: ReadinessProbe) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(OpsState {
            metrics: metrics_handle(),
            probe,
        })
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    render(&state.metrics)
}

/// `GET /metrics` for a process that serves its own router (the producer).
pub async fn metrics() -> Response {
    render(&metrics_handle())
}

fn render(handle: &PrometheusHandle) -> Response {
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// `GET /healthz`: the process is alive (every process answers it the same way).
pub async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let dependencies = (state.probe)().await;
    let mut checks = Map::new();
    for dependency in &dependencies {
        let value = match (&dependency.problem, &dependency.detail) {
            (Some(problem), _) => Value::from(problem.as_str()),
            (None, Some(detail)) => Value::from(detail.as_str()),
            (None, None) => Value::from("ok"),
        };
        checks.insert(dependency.name.to_owned(), value);
    }
    if dependencies.iter().all(|d| d.problem.is_none()) {
        axum::Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready", "checks": checks })),
        )
            .into_response()
    }
}

/// The operations endpoint bound to its address, ready to serve.
pub struct OpsServer {
    listener: TcpListener,
    router: Router,
}

impl OpsServer {
    /// Binds `addr` (port 0 picks a free port; see [`Self::addr`]).
    pub async fn bind(addr: SocketAddr, probe: ReadinessProbe) -> Result<Self, OpsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| OpsError::Bind { addr, source })?;
        Ok(Self {
            listener,
            router: router(probe),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves in a task of its own until [`RunningOps::stop`].
    pub fn spawn(self) -> RunningOps {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.run(stop.clone()));
        RunningOps { stop, task }
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Some(addr) = self.addr() {
            tracing::info!(%addr, "metrics and health endpoints listening");
        }
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "the metrics endpoint stopped");
        }
    }
}

/// An operations endpoint serving in the background.
pub struct RunningOps {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningOps {
    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The start of a worker (consumer, sweeper): the operations endpoint first, so a probe
/// sees the process while it waits for PostgreSQL, then the database. `/readyz` names
/// PostgreSQL until it is connected and RabbitMQ while the worker says it is not up.
pub struct WorkerOps {
    running: RunningOps,
    database: Arc<OnceLock<PgPool>>,
    rabbitmq_up: Arc<AtomicBool>,
    telling: Arc<OnceLock<Telling>>,
}

impl WorkerOps {
    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr`; while RabbitMQ is not up,
    /// `/readyz` gives `rabbitmq_down` as the problem.
    pub async fn serve(addr: SocketAddr, rabbitmq_down: &'static str) -> Result<Self, OpsError> {
        let database = Arc::new(OnceLock::new());
        let rabbitmq_up = Arc::new(AtomicBool::new(false));
        let telling: Arc<OnceLock<Telling>> = Arc::new(OnceLock::new());
        let probe: ReadinessProbe = {
            let (database, rabbitmq_up, telling) =
                (database.clone(), rabbitmq_up.clone(), telling.clone());
            Arc::new(move || {
                let (database, rabbitmq_up, telling) =
                    (database.clone(), rabbitmq_up.clone(), telling.clone());
                Box::pin(async move {
                    let rabbitmq = if rabbitmq_up.load(Ordering::Relaxed) {
                        Dependency::ok("rabbitmq")
                    } else {
                        Dependency::failing("rabbitmq", rabbitmq_down)
                    };
                    let mut parts = vec![postgres_once_connected(&database).await, rabbitmq];
                    parts.extend(telling.get().map(|tell| tell()));
                    parts
                })
            })
        };
        let running = OpsServer::bind(addr, probe).await?.spawn();
        Ok(Self {
            running,
            database,
            rabbitmq_up,
            telling,
        })
    }

    /// Adds a part to `/readyz` (once; a second call is ignored).
    pub fn tell(&self, telling: Telling) {
        let _ = self.telling.set(telling);
    }

    /// Connects to PostgreSQL and migrates, retrying an outage; `None` when `shutdown`
    /// fired first.
    pub async fn connect_database(
        &self,
        args: &crate::config::DatabaseArgs,
        tls: &crate::tls::TlsArgs,
        shutdown: &CancellationToken,
    ) -> Result<Option<PgPool>, crate::db::DbError> {
        match crate::db::connect_and_migrate(args, tls, shutdown).await {
            Ok(pool) => {
                let _ = self.database.set(pool.clone());
                Ok(Some(pool))
            }
            Err(crate::db::DbError::Cancelled) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The flag the worker sets while its RabbitMQ work runs (for `/readyz`).
    pub fn rabbitmq_up(&self) -> Arc<AtomicBool> {
        self.rabbitmq_up.clone()
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident memory of this process, in bytes (Linux).
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("statm's second field is the resident page count");
        pages * 4096
    }

    #[test]
    fn histogram_samples_do_not_pile_up_when_nobody_scrapes() {
        const SAMPLES: u64 = 8_000_000;
        let recorder = recorder();
        keep_up(recorder.handle(), Duration::from_millis(20));
        let before = resident_bytes();
        metrics::with_local_recorder(&recorder, || {
            let histogram = metrics::histogram!("status_check_seconds");
            for i in 0..SAMPLES {
                histogram.record((i % 1000) as f64 / 1000.0);
                if i % 100_000 == 0 {
                    // Give the upkeep thread a moment, as a real process's pace would.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let grown = resident_bytes().saturating_sub(before);
        // Held one by one, the samples alone would take 8 bytes each: 64 MB.
        assert!(
            grown < 16 << 20,
            "memory grew by {} MB for {SAMPLES} samples with no scrape",
            grown >> 20
        );
    }
}
