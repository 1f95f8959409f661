//! The callback driver: POSTs batches of random ids to the producer at an interval, like
//! the original challenge tester, and records what was accepted.

use std::time::Duration;

use clap::Args;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::callback::{Answer, CallbackClient};

/// Settings of `tester drive`.
#[derive(Debug, Clone, Args)]
pub struct DriveArgs {
    /// The producer's callback URL.
    #[arg(
        long,
        env = "CALLBACK_URL",
        default_value = "http://127.0.0.1:9090/callback"
    )]
    pub callback_url: String,
    /// Pause between callbacks (milliseconds).
    #[arg(long, env = "DRIVE_INTERVAL_MS", default_value_t = 5000)]
    pub interval_ms: u64,
    /// Most ids in one callback; each callback has 0 to this many.
    #[arg(long, env = "DRIVE_MAX_IDS", default_value_t = 199)]
    pub max_ids: usize,
    /// Ids are drawn from 0 to this value (exclusive); duplicates are common.
    #[arg(long, env = "DRIVE_ID_SPACE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub id_space: u64,
    /// Stop after this many callbacks (0 = until stopped).
    #[arg(long, env = "DRIVE_COUNT", default_value_t = 0)]
    pub count: u64,
    /// Client timeout per callback (milliseconds), as the original tester's 1 s.
    #[arg(long, env = "DRIVE_TIMEOUT_MS", default_value_t = 1000)]
    pub timeout_ms: u64,
    /// API key to send (`Authorization: Bearer`), for a producer with keys on; none by
    /// default, as the original challenge tester.
    #[arg(long, env = "DRIVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// What the driver sent and what came of it.
#[derive(Debug, Default, Clone)]
pub struct DriveReport {
    pub sent: u64,
    pub accepted: u64,
    pub failed: u64,
    /// Every id of every accepted callback, in order (with duplicates).
    pub accepted_ids: Vec<u64>,
}

/// Runs `tester drive` until `count` callbacks were sent or `shutdown`.
pub async fn run(args: DriveArgs, shutdown: CancellationToken) -> anyhow::Result<DriveReport> {
    let client = CallbackClient::new(&args.callback_url, Duration::from_millis(args.timeout_ms))?
        .with_api_key(args.api_key.clone());
    let mut report = DriveReport::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let ids: Vec<u64> = {
            let mut rng = rand::rng();
            let n = rng.random_range(0..=args.max_ids);
            (0..n).map(|_| rng.random_range(0..args.id_space)).collect()
        };
        report.sent += 1;
        match client.post(&ids).await {
            Answer::Accepted { spooled, .. } => {
                report.accepted += 1;
                tracing::info!(ids = ids.len(), spooled, "callback accepted");
                report.accepted_ids.extend(ids);
            }
            Answer::Refused { status, body } => {
                report.failed += 1;
                tracing::warn!(%status, %body, "callback refused");
            }
            Answer::Unanswered { error } => {
                report.failed += 1;
                tracing::warn!(%error, "callback failed");
            }
        }
        if args.count > 0 && report.sent >= args.count {
            break;
        }
    }
    Ok(report)
}
