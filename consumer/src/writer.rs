//! The batch writer: gathers sightings from many messages into one upsert, retries it
//! until PostgreSQL takes it, and tells each message when its rows are committed.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lastseen::store::objects::{self, Sighting};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Requests queued for the writer beyond which message tasks wait: while PostgreSQL is
/// down, this (with the prefetch) stops the consumer from taking more work.
const QUEUED_REQUESTS: usize = 50_000;

/// The writer stopped (shutdown) before the rows were committed; the message must not
/// be acked.
#[derive(Debug, thiserror::Error)]
#[error("the last_seen writer stopped before committing")]
pub struct WriterStopped;

struct Request {
    sightings: Vec<Sighting>,
    committed: oneshot::Sender<()>,
}

/// The handle message tasks use to record sightings.
#[derive(Clone)]
pub struct LastSeenWriter {
    requests: mpsc::Sender<Request>,
}

impl LastSeenWriter {
    /// Starts the writer task. It ends when every handle is dropped and the last batch is
    /// written, or when `abandon` fires (pending rows are then left for redelivery).
    pub fn spawn(
        pool: PgPool,
        max_rows: usize,
        flush_after: Duration,
        abandon: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (requests, rx) = mpsc::channel(QUEUED_REQUESTS);
        let task = tokio::spawn(run(pool, rx, max_rows.max(1), flush_after, abandon));
        (Self { requests }, task)
    }

    /// Records sightings and returns once they are committed.
    pub async fn record(&self, sightings: Vec<Sighting>) -> Result<(), WriterStopped> {
        let (committed, done) = oneshot::channel();
        self.requests
            .send(Request {
                sightings,
                committed,
            })
            .await
            .map_err(|_| WriterStopped)?;
        done.await.map_err(|_| WriterStopped)
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Request>,
    max_rows: usize,
    flush_after: Duration,
    abandon: CancellationToken,
) {
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + flush_after;
        let mut rows = first.sightings.len();
        let mut batch = vec![first];
        while rows < max_rows {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(request) => {
                        rows += request.sightings.len();
                        batch.push(request);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let sightings: Vec<Sighting> = batch
            .iter()
            .flat_map(|r| r.sightings.iter().copied())
            .collect();
        let write = || objects::upsert_last_seen(&pool, &sightings);
        let retried = write
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times(),
            )
            .notify(|err, delay| {
                tracing::warn!(error = %err, ?delay, rows = sightings.len(), "upsert failed, retrying");
            });
        tokio::select! {
            result = retried => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "upsert gave up");
                    continue;
                }
            }
            () = abandon.cancelled() => {
                tracing::warn!(rows = sightings.len(), "shutdown: leaving uncommitted rows for redelivery");
                return;
            }
        }
        tracing::debug!(
            rows = sightings.len(),
            messages = batch.len(),
            "batch committed"
        );
        for request in batch {
            let _ = request.committed.send(());
        }
    }
}
