//! Per-object holds on expiry: ids sent to a retry queue wait where no process reports
//! them, so before the retry is published their consumer records a hold on each (the
//! sweeper expires none of them for a deadline at or after the callback's acceptance),
//! and when a later attempt settles an id its hold is released.

use chrono::{DateTime, Utc};
use lastseen::ObjectId;
use lastseen::backoff::Retries;
use lastseen::contract::metric;
use lastseen::store::holds;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Tries to release a hold before leaving it to `MAX_EXPIRY_HOLD_SECS`.
const RELEASE_ATTEMPTS: u32 = 3;

fn raw(ids: &[ObjectId]) -> Vec<i64> {
    ids.iter().map(|id| id.get()).collect()
}

/// Records holds on `ids` for the callback accepted at `accepted_at`, retrying through a
/// PostgreSQL outage (the delivery stays in flight, and so reported, meanwhile). False
/// if `ended` fired first: the delivery is then left for redelivery.
pub async fn hold(
    pool: &PgPool,
    ids: &[ObjectId],
    accepted_at: DateTime<Utc>,
    ended: &CancellationToken,
) -> bool {
    let ids = raw(ids);
    let mut retries = Retries::new();
    loop {
        match holds::hold(pool, &ids, accepted_at).await {
            Ok(()) => {
                metrics::counter!(metric::EXPIRY_HOLDS_TOTAL).increment(ids.len() as u64);
                return true;
            }
            Err(err) => {
                tracing::warn!(error = %err, ids = ids.len(), "cannot hold ids from expiry before their retry; retrying");
                if !retries.pause(ended).await {
                    return false;
                }
            }
        }
    }
}

/// Releases the holds of settled `ids` (a later attempt of the callback accepted at
/// `accepted_at` stored them, found them offline, or gave them up). A hold left by a
/// failure here lapses after `MAX_EXPIRY_HOLD_SECS`.
pub async fn release(pool: &PgPool, ids: &[ObjectId], accepted_at: DateTime<Utc>) {
    if ids.is_empty() {
        return;
    }
    let ids = raw(ids);
    for attempt in 1..=RELEASE_ATTEMPTS {
        match holds::release(pool, &ids, accepted_at).await {
            Ok(_) => return,
            Err(err) if attempt == RELEASE_ATTEMPTS => {
                tracing::warn!(error = %err, ids = ids.len(), "cannot release expiry holds; they lapse after MAX_EXPIRY_HOLD_SECS");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
