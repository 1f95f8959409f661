//! The load generator: concurrent clients POST callbacks of distinct random ids and the
//! callback latency is reported as percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use tester::callback::CallbackClient;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Settings of `harness load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The producer's callback URL.
    #[arg(
        long,
        env = "CALLBACK_URL",
        default_value = "http://127.0.0.1:9090/callback"
    )]
    pub callback_url: String,
    /// Callbacks to send in all.
    #[arg(long, default_value_t = 2000)]
    pub callbacks: u64,
    /// Clients sending at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Distinct ids per callback.
    #[arg(long, default_value_t = 200)]
    pub ids: usize,
    /// Ids are drawn from 0 to this value (exclusive).
    #[arg(long, default_value_t = 1_000_000)]
    pub id_space: u64,
    /// Client timeout (milliseconds), as the original tester's 1 s.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Latency and outcome figures of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub sent: u64,
    pub accepted: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "| callbacks sent | accepted | failed | callbacks/s | p50 ms | p90 ms | p99 ms | max ms |"
        )?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        write!(
            f,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.sent,
            self.accepted,
            self.failed,
            self.accepted as f64 / secs,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// Runs the load and returns its figures.
pub async fn run(args: LoadArgs, shutdown: CancellationToken) -> anyhow::Result<LoadReport> {
    let client = CallbackClient::new(&args.callback_url, Duration::from_millis(args.timeout_ms))?;
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
    ));
    let counters = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let per_client = args.callbacks.div_ceil(args.concurrency.max(1));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, args, histogram, counters, shutdown) = (
            client.clone(),
            args.clone(),
            histogram.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        clients.push(tokio::spawn(async move {
            for _ in 0..per_client {
                if shutdown.is_cancelled() {
                    break;
                }
                let ids: Vec<u64> = {
                    let mut rng = rand::rng();
                    rand::seq::index::sample(
                        &mut rng,
                        args.id_space as usize,
                        args.ids.min(args.id_space as usize),
                    )
                    .into_iter()
                    .map(|i| i as u64)
                    .collect()
                };
                let (answer, latency) = client.post_timed(&ids, None).await;
                let micros = latency.as_micros() as u64;
                let ok = answer.is_accepted();
                histogram.lock().await.saturating_record(micros.max(1));
                let mut c = counters.lock().await;
                c.0 += 1;
                if ok {
                    c.1 += 1;
                } else {
                    c.2 += 1;
                }
            }
        }));
    }
    for client in clients {
        client.await.context("a load client panicked")?;
    }
    let elapsed = started.elapsed();
    let h = histogram.lock().await;
    let c = *counters.lock().await;
    let ms = |v: u64| v as f64 / 1000.0;
    Ok(LoadReport {
        sent: c.0,
        accepted: c.1,
        failed: c.2,
        elapsed,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    })
}
