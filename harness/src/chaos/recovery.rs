//! Recovery after a fault, measured end to end: from the moment the fault ended, a probe
//! callback of one fresh online id every 500 ms, until a probe answered directly (not
//! spooled) has its row in `objects`. The time from the fault's end to that row is the
//! recovery time; it includes one status check (50-500 ms, and retries when the
//! simulator fails or hangs the call).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::ground_truth::{Answer, GroundTruth};
use tester::callback::CallbackClient;

/// Probe ids start here, far above the load's ids, and are even: online under the
/// status simulator's default rule.
pub const PROBE_ID_BASE: i64 = 1_000_000_000;

/// One probe callback per this period.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often `objects` is polled for the probes' rows.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// A pipeline not recovered after this long counts as not recovering.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(90);
/// Probes sent within `RECOVERY_LIMIT`, so the channel of their answers never fills.
const MAX_PROBES: usize = (RECOVERY_LIMIT.as_millis() / PROBE_EVERY.as_millis()) as usize + 2;

/// Sends probes and watches for their rows.
pub struct Prober {
    client: CallbackClient,
    truth: Arc<GroundTruth>,
    pool: PgPool,
    next: AtomicI64,
}

impl Prober {
    pub fn new(client: CallbackClient, truth: Arc<GroundTruth>, pool: PgPool) -> Self {
        Self {
            client,
            truth,
            pool,
            next: AtomicI64::new(0),
        }
    }

    /// Probe callbacks sent so far.
    pub fn sent(&self) -> u64 {
        self.next.load(Ordering::Relaxed).max(0) as u64
    }

    /// Probes until the pipeline demonstrably works again; the time since `fault_ended`,
    /// or `None` after `RECOVERY_LIMIT`. Every probe is ground truth like the load.
    pub async fn measure(&self, fault_ended: Instant) -> Option<Duration> {
        let (direct_tx, mut direct_rx) = mpsc::channel::<(i64, DateTime<Utc>)>(MAX_PROBES);
        let probes = TaskTracker::new();
        let mut direct: Vec<(i64, DateTime<Utc>)> = Vec::new();
        let mut probe_every = tokio::time::interval(PROBE_EVERY);
        let mut poll_every = tokio::time::interval(POLL_EVERY);
        let recovered = loop {
            if fault_ended.elapsed() > RECOVERY_LIMIT {
                break None;
            }
            tokio::select! {
                _ = probe_every.tick() => {
                    let id = PROBE_ID_BASE + 2 * self.next.fetch_add(1, Ordering::Relaxed);
                    let client = self.client.clone();
                    let truth = self.truth.clone();
                    let direct_tx = direct_tx.clone();
                    probes.spawn(async move {
                        let sent_at = Utc::now();
                        let answer = client.post(&[id]).await;
                        truth.record(&[id], sent_at, answer.clone());
                        if let Answer::Accepted { spooled: false, .. } = answer {
                            let _ = direct_tx.send((id, sent_at)).await;
                        }
                    });
                }
                _ = poll_every.tick() => {
                    while let Ok(probe) = direct_rx.try_recv() {
                        direct.push(probe);
                    }
                    if self.any_stored(&direct).await {
                        break Some(fault_ended.elapsed());
                    }
                }
            }
        };
        probes.close();
        probes.wait().await;
        recovered
    }

    /// Whether any of the probes has a row seen after it was sent.
    async fn any_stored(&self, probes: &[(i64, DateTime<Utc>)]) -> bool {
        if probes.is_empty() {
            return false;
        }
        let ids: Vec<i64> = probes.iter().map(|(id, _)| *id).collect();
        // While PostgreSQL is down the query fails: not recovered yet.
        let Ok(rows) = sqlx::query_as::<_, (i64, DateTime<Utc>)>(
            "SELECT id, last_seen FROM objects WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        else {
            return false;
        };
        rows.iter().any(|(id, last_seen)| {
            probes
                .iter()
                .any(|(probe, sent_at)| probe == id && last_seen >= sent_at)
        })
    }
}
