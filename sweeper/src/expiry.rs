//! Expiry: delete objects whose last sighting is older than the TTL and record their
//! `object.expired` notifications in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lastseen::domain::ExpiredNotification;
use lastseen::store::{notifications, objects};
use lastseen::topology::EXPIRED_ROUTING_KEY;
use sqlx::PgPool;

/// Shortest pause between sweeps, so rows another sweeper holds cannot cause a hot loop.
pub const MIN_PAUSE: Duration = Duration::from_millis(20);

/// Expires every object due at `now`, in transactions of at most `batch` objects.
/// Returns how many were expired.
pub async fn sweep(
    pool: &PgPool,
    ttl: Duration,
    batch: u32,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let cutoff = now - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let expired = objects::delete_expired(&mut tx, cutoff, i64::from(batch)).await?;
        if expired.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        let ids: Vec<i64> = expired.iter().map(|e| e.id.get()).collect();
        let payloads: Vec<serde_json::Value> = expired
            .iter()
            .map(|e| {
                serde_json::to_value(ExpiredNotification {
                    event: EXPIRED_ROUTING_KEY.to_owned(),
                    object_id: e.id,
                    last_seen: e.last_seen,
                    expired_at: now,
                })
                .expect("a notification always serializes")
            })
            .collect();
        notifications::record(&mut tx, EXPIRED_ROUTING_KEY, &ids, &payloads).await?;
        tx.commit().await?;
        total += expired.len() as u64;
        if expired.len() < batch as usize {
            return Ok(total);
        }
    }
}

/// How long to sleep before the next sweep: until the oldest object's deadline, but no
/// longer than `interval` and no shorter than [`MIN_PAUSE`].
pub async fn pause_before_next(
    pool: &PgPool,
    ttl: Duration,
    interval: Duration,
) -> sqlx::Result<Duration> {
    let Some(oldest) = objects::oldest_last_seen(pool).await? else {
        return Ok(interval);
    };
    let deadline = oldest + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let until = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Ok(until.clamp(MIN_PAUSE, interval.max(MIN_PAUSE)))
}
