//! The batch writer: gathers sightings from many messages into one upsert, retries it
//! until PostgreSQL takes it, and tells each message when its rows are committed.
//!
//! Several writer tasks share one queue: one gathers a batch while the others commit
//! theirs, so a batch never waits for the previous one's commit. Their upserts lock rows
//! in id order, as two consumers' do, and are order-free (`last_seen` never moves back).

use lastseen::contract::metric;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use lastseen::domain::{OnlineNotification, RECOVERED_FROM_STALE};
use lastseen::store::notifications;
use lastseen::store::objects::{self, Sighting};
use lastseen::topology::ONLINE_ROUTING_KEY;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
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
    /// Starts `writers` writer tasks (at least one). They end when every handle is
    /// dropped and the last batches are written, or when `abandon` fires (pending rows
    /// are then left for redelivery); the returned task ends when they all have.
    pub fn spawn(
        pool: PgPool,
        writers: usize,
        max_rows: usize,
        flush_after: Duration,
        abandon: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (requests, rx) = mpsc::channel(QUEUED_REQUESTS);
        let queue = Arc::new(Mutex::new(rx));
        let tasks: Vec<JoinHandle<()>> = (0..writers.max(1))
            .map(|_| {
                tokio::spawn(run(
                    pool.clone(),
                    queue.clone(),
                    max_rows.max(1),
                    flush_after,
                    abandon.clone(),
                ))
            })
            .collect();
        let all = tokio::spawn(async move {
            for task in tasks {
                let _ = task.await;
            }
        });
        (Self { requests }, all)
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

/// Takes the next batch off the shared queue: the first request, then whatever comes
/// within `flush_after` up to `max_rows`. None once every handle is gone.
async fn gather(
    queue: &Mutex<mpsc::Receiver<Request>>,
    max_rows: usize,
    flush_after: Duration,
) -> Option<Vec<Request>> {
    let mut rx = queue.lock().await;
    let first = rx.recv().await?;
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
    Some(batch)
}

async fn run(
    pool: PgPool,
    queue: Arc<Mutex<mpsc::Receiver<Request>>>,
    max_rows: usize,
    flush_after: Duration,
    abandon: CancellationToken,
) {
    while let Some(batch) = gather(&queue, max_rows, flush_after).await {
        let sightings: Vec<Sighting> = batch
            .iter()
            .flat_map(|r| r.sightings.iter().copied())
            .collect();
        let started = Instant::now();
        let write = || commit(&pool, &sightings);
        let retried = write
            .retry(lastseen::backoff::reconnect())
            .notify(|err, delay| {
                metrics::counter!(metric::UPSERT_FAILURES_TOTAL).increment(1);
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
        metrics::histogram!(metric::UPSERT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::UPSERT_BATCH_ROWS).record(sightings.len() as f64);
        metrics::counter!(metric::IDS_STORED_TOTAL).increment(sightings.len() as u64);
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

/// Upserts the sightings and, in the same transaction, records an `object.online`
/// notification for each object that was not there (first seen, or back after expiry)
/// and for each stale object seen again (a recovery).
async fn commit(pool: &PgPool, sightings: &[Sighting]) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let upserted = objects::upsert_sightings(&mut tx, sightings).await?;
    let came_online = upserted.came_online;
    let recovered = upserted.recovered;
    let mut ids: Vec<i64> = Vec::with_capacity(came_online.len() + recovered.len());
    let mut payloads: Vec<OnlineNotification> = Vec::with_capacity(ids.capacity());
    for o in &came_online {
        ids.push(o.id.get());
        payloads.push(OnlineNotification {
            event: ONLINE_ROUTING_KEY.to_owned(),
            object_id: o.id,
            seen_at: o.seen_at,
            expires_at: o.expires_at,
            stale_at: o.stale_at,
            recovered_from: None,
            previous_expired_at: o.previous.map(|p| p.expired_at),
            silent_for_secs: o.previous.map(|p| secs_between(p.last_seen, o.seen_at)),
        });
    }
    for o in &recovered {
        ids.push(o.id.get());
        payloads.push(OnlineNotification {
            event: ONLINE_ROUTING_KEY.to_owned(),
            object_id: o.id,
            seen_at: o.seen_at,
            expires_at: o.expires_at,
            stale_at: o.stale_at,
            recovered_from: Some(RECOVERED_FROM_STALE.to_owned()),
            previous_expired_at: None,
            silent_for_secs: Some(secs_between(o.previous_last_seen, o.seen_at)),
        });
    }
    if !ids.is_empty() {
        let payloads: Vec<serde_json::Value> = payloads
            .iter()
            .map(|p| serde_json::to_value(p).expect("a notification always serializes"))
            .collect();
        notifications::record(&mut tx, ONLINE_ROUTING_KEY, &ids, &payloads).await?;
    }
    tx.commit().await?;
    metrics::counter!(metric::OBJECTS_ONLINE_TOTAL).increment(came_online.len() as u64);
    if !recovered.is_empty() {
        metrics::counter!(metric::STALE_RECOVERIES_TOTAL).increment(recovered.len() as u64);
    }
    if upserted.in_the_past > 0 {
        tracing::info!(
            sightings = upserted.in_the_past,
            "sightings inside an expired stretch dropped (committed after their object expired)"
        );
        metrics::counter!(metric::SIGHTINGS_IN_THE_PAST_TOTAL)
            .increment(upserted.in_the_past as u64);
    }
    Ok(came_online.len())
}

/// Seconds from `from` to `to`, to the millisecond.
fn secs_between(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}
