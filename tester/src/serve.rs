//! The status service simulator: `GET /objects/:id` answers `{"id":N,"online":bool}`
//! after a random delay, and can be told to fail or hang a share of the calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::{Args, ValueEnum};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Which ids the simulator reports online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnlineRule {
    /// Even ids are online (the original tester's rule).
    Even,
    Odd,
    All,
    None,
}

impl OnlineRule {
    pub fn is_online(self, id: i64) -> bool {
        match self {
            Self::Even => id % 2 == 0,
            Self::Odd => id % 2 == 1,
            Self::All => true,
            Self::None => false,
        }
    }
}

/// Settings of `tester serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; `0.0.0.0:9010` for every interface).
    #[arg(long, env = "STATUS_ADDR", default_value = "127.0.0.1:9010")]
    pub addr: SocketAddr,
    /// PEM certificate (chain) to serve HTTPS with (with `STATUS_TLS_KEY`); plain HTTP
    /// without.
    #[arg(long, env = "STATUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `STATUS_TLS_CERT`.
    #[arg(long, env = "STATUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Shortest answer delay (milliseconds).
    #[arg(long, env = "STATUS_DELAY_MIN_MS", default_value_t = 300)]
    pub delay_min_ms: u64,
    /// Longest answer delay (milliseconds); delays are uniform between the two.
    #[arg(long, env = "STATUS_DELAY_MAX_MS", default_value_t = 4300)]
    pub delay_max_ms: u64,
    /// Which ids are online.
    #[arg(long, env = "STATUS_ONLINE", value_enum, default_value_t = OnlineRule::Even)]
    pub online: OnlineRule,
    /// Share of calls answered 500 (0.0 to 1.0).
    #[arg(long, env = "STATUS_FAIL_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// Share of calls that never answer (0.0 to 1.0).
    #[arg(long, env = "STATUS_HANG_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub hang_rate: f64,
    /// Derive each id's delay from the id (same range, but repeatable), so a benchmark
    /// knows every id's delay without asking.
    #[arg(long, env = "STATUS_DELAY_BY_ID", default_value_t = false)]
    pub delay_by_id: bool,
}

/// The delay an id gets with `--delay-by-id`: a hash of the id spread over the range.
pub fn delay_for_id(id: i64, min_ms: u64, max_ms: u64) -> u64 {
    // splitmix64: a cheap, well-mixed hash.
    let mut z = (id as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    min_ms + z % (max_ms - min_ms + 1)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0.0 and 1.0".into())
    }
}

/// Counters of what the simulator answered, served at `GET /stats`.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    pub hung: AtomicU64,
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
}

impl ServeStats {
    fn snapshot(&self) -> serde_json::Value {
        json!({
            "answered": self.answered.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "hung": self.hung.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "peak_in_flight": self.peak_in_flight.load(Ordering::Relaxed),
        })
    }
}

/// Counts a request in flight for as long as it lives (also when its client goes away).
struct InFlight<'a>(&'a ServeStats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a ServeStats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct SimState {
    args: ServeArgs,
    stats: Arc<ServeStats>,
    outage: Arc<AtomicBool>,
}

/// A bound simulator, ready to serve.
pub struct StatusSimulator {
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    router: Router,
    pub stats: Arc<ServeStats>,
    /// While set, every call is answered 500 at once: an outage of the status service
    /// (tests switch it).
    pub outage: Arc<AtomicBool>,
}

impl StatusSimulator {
    pub async fn bind(args: ServeArgs) -> anyhow::Result<Self> {
        if args.delay_min_ms > args.delay_max_ms {
            anyhow::bail!(
                "invalid configuration: STATUS_DELAY_MIN_MS ({}) is above STATUS_DELAY_MAX_MS ({})",
                args.delay_min_ms,
                args.delay_max_ms
            );
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(
                crate::tls_listener::server_config_from_files(cert, key)
                    .context("invalid configuration: STATUS_TLS_CERT / STATUS_TLS_KEY")?,
            ),
            _ => None,
        };
        lastseen::limits::raise_open_files();
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on STATUS_ADDR {}", args.addr))?;
        let stats = Arc::new(ServeStats::default());
        let outage = Arc::new(AtomicBool::new(false));
        let state = Arc::new(SimState {
            args,
            stats: stats.clone(),
            outage: outage.clone(),
        });
        let router = Router::new()
            .route("/objects/{id}", get(object_status))
            .route("/stats", get(serve_stats))
            .with_state(state);
        Ok(Self {
            listener,
            tls,
            router,
            stats,
            outage,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let https = self.tls.is_some();
        tracing::info!(addr = %self.addr(), https, "status simulator listening");
        let stopped = async move { shutdown.cancelled().await };
        match self.tls {
            Some(config) => {
                let listener = crate::tls_listener::TlsListener::new(self.listener, config)?;
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            None => {
                axum::serve(self.listener, self.router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        }
        .context("status simulator failed")
    }
}

/// Runs `tester serve` until `shutdown`.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    StatusSimulator::bind(args)
        .await?
        .run_until_stopped(shutdown)
        .await
}

async fn serve_stats(State(state): State<Arc<SimState>>) -> Json<serde_json::Value> {
    Json(state.stats.snapshot())
}

async fn object_status(State(state): State<Arc<SimState>>, Path(raw): Path<String>) -> Response {
    let Some(id) = raw.parse::<i64>().ok().filter(|id| *id >= 0) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "bad_id", "message": format!("object id must be an integer from 0 to {}, got {raw:?}", i64::MAX) })),
        )
            .into_response();
    };
    let _in_flight = InFlight::enter(&state.stats);
    if state.outage.load(Ordering::Relaxed) {
        state.stats.failed.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::INTERNAL_SERVER_ERROR, "simulated outage").into_response();
    }
    let args = &state.args;
    let (delay, roll) = {
        let mut rng = rand::rng();
        let delay = if args.delay_by_id {
            delay_for_id(id, args.delay_min_ms, args.delay_max_ms)
        } else {
            rng.random_range(args.delay_min_ms..=args.delay_max_ms)
        };
        (delay, rng.random::<f64>())
    };
    if roll < args.hang_rate {
        state.stats.hung.fetch_add(1, Ordering::Relaxed);
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if roll < args.hang_rate + args.fail_rate {
        state.stats.failed.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::INTERNAL_SERVER_ERROR, "simulated failure").into_response();
    }
    state.stats.answered.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "id": id, "online": args.online.is_online(id) })).into_response()
}
