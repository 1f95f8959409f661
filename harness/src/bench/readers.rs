//! `BENCH_READERS=1`: readers beside the load, to measure what they cost ingest: the
//! status page held open in headless chromium (its figures and latest events refreshed
//! every 2 s), and an API client asking `GET /objects?state=online` every second.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the readers did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadFigures {
    /// The status page was open in chromium for the whole load.
    pub status_page_open: bool,
    pub api_polls: u64,
    pub api_failures: u64,
    pub api_p50_ms: f64,
    pub api_p99_ms: f64,
}

/// The readers while they run.
pub struct Readers {
    browser: Child,
    poller: JoinHandle<(u64, u64, Histogram<u64>)>,
    stop: CancellationToken,
}

/// Opens `{base}/status` in headless chromium (its profile under `logs`) and starts the
/// API poller.
pub fn start(base: &str, logs: &Path) -> anyhow::Result<Readers> {
    let profile = logs.join("chromium-profile");
    let _ = std::fs::remove_dir_all(&profile);
    let log = std::fs::File::create(logs.join("chromium.log"))?;
    let browser = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.display()),
            &format!("{base}/status"),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            anyhow::anyhow!("BENCH_READERS needs chromium ({err}); make browser-check installs it")
        })?;
    let stop = CancellationToken::new();
    let url = format!("{base}/objects?state=online");
    let poller = tokio::spawn(poll(url, stop.clone()));
    Ok(Readers {
        browser,
        poller,
        stop,
    })
}

async fn poll(url: String, stop: CancellationToken) -> (u64, u64, Histogram<u64>) {
    let client = lastseen::tls::http_client()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client builds");
    let mut latencies = Histogram::<u64>::new(3).expect("a histogram");
    let (mut polls, mut failures) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return (polls, failures, latencies),
        }
        let started = Instant::now();
        let ok = match client.get(&url).send().await {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        polls += 1;
        if ok {
            let _ = latencies.record(started.elapsed().as_micros() as u64);
        } else {
            failures += 1;
        }
    }
}

impl Readers {
    /// Stops both readers; what they did.
    pub async fn finish(mut self) -> ReadFigures {
        let open = matches!(self.browser.try_wait(), Ok(None));
        let _ = self.browser.kill().await;
        self.stop.cancel();
        let (api_polls, api_failures, latencies) = match self.poller.await {
            Ok(done) => done,
            Err(_) => (0, 0, Histogram::new(3).expect("a histogram")),
        };
        ReadFigures {
            status_page_open: open,
            api_polls,
            api_failures,
            api_p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
            api_p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }
}
