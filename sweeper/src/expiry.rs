//! Expiry: delete objects whose deadline (`expires_at`) has passed, keep their stretch in
//! the history, and record their `object.expired` notifications and one `digest`, all in
//! the same transaction.

use lastseen::contract::metric;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lastseen::domain::{DigestNotification, ExpiredNotification};
use lastseen::progress::REPORT_EVERY;
use lastseen::store::{notifications, objects};
use lastseen::topology::{DIGEST_ROUTING_KEY, EXPIRED_ROUTING_KEY};
use sqlx::PgPool;

use crate::watermark::Watermark;

/// Shortest pause between sweeps, so rows another sweeper holds cannot cause a hot loop.
pub const MIN_PAUSE: Duration = Duration::from_millis(20);

/// Most ids a digest lists; the count covers them all.
pub const DIGEST_MAX_IDS: usize = 1_000;

/// Expires every object due (its deadline before the watermark, and not held by an id
/// waiting in a retry queue), in transactions of at most `batch` objects, each stamped
/// with its own time, `workers` transactions at once (each locks its own rows and skips
/// the others'): a mass expiry keeps PostgreSQL busy on more than one core while each
/// worker builds its notifications. Returns how many were expired.
pub async fn sweep(
    pool: &PgPool,
    batch: u32,
    workers: u32,
    watermark: &Watermark,
    max_hold: Duration,
) -> sqlx::Result<u64> {
    let chains = (0..workers.max(1)).map(|_| sweep_chain(pool, batch, watermark, max_hold));
    let expired = futures::future::try_join_all(chains).await?;
    Ok(expired.into_iter().sum())
}

/// One worker of [`sweep`]: batches until one comes back short (nothing more is due, or
/// the rest is locked by another worker or sweeper).
async fn sweep_chain(
    pool: &PgPool,
    batch: u32,
    watermark: &Watermark,
    max_hold: Duration,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let now = Utc::now();
        let due = objects::Due {
            now,
            before: watermark.judgement().before,
            holds_from: now - chrono::Duration::from_std(max_hold).unwrap_or(chrono::Duration::MAX),
        };
        let mut tx = pool.begin().await?;
        let expired = objects::expire_due(&mut tx, due, i64::from(batch)).await?;
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
                    first_seen: e.first_seen,
                    last_seen: e.last_seen,
                    expires_at: e.expires_at,
                    expired_at: now,
                })
                .expect("a notification always serializes")
            })
            .collect();
        notifications::record(&mut tx, EXPIRED_ROUTING_KEY, &ids, &payloads).await?;
        let digest = DigestNotification {
            event: DIGEST_ROUTING_KEY.to_owned(),
            expired: expired.len() as u64,
            object_ids: expired.iter().take(DIGEST_MAX_IDS).map(|e| e.id).collect(),
            truncated: expired.len() > DIGEST_MAX_IDS,
            expired_at: now,
        };
        let digest = serde_json::to_value(digest).expect("a digest always serializes");
        notifications::record_event(&mut tx, DIGEST_ROUTING_KEY, &digest).await?;
        tx.commit().await?;
        record_expiry_metrics(&expired, Utc::now());
        total += expired.len() as u64;
        if expired.len() < batch as usize {
            return Ok(total);
        }
    }
}

/// Objects expired and, for each, how late after its deadline the expiry committed.
fn record_expiry_metrics(expired: &[objects::Expired], committed: DateTime<Utc>) {
    let lag = metrics::histogram!(metric::EXPIRY_LAG_SECONDS);
    for object in expired {
        let late = committed - object.expires_at;
        lag.record(late.to_std().unwrap_or(Duration::ZERO).as_secs_f64());
    }
    let count = expired.len() as u64;
    metrics::counter!(metric::OBJECTS_EXPIRED_TOTAL).increment(count);
    metrics::counter!(metric::NOTIFICATIONS_RECORDED_TOTAL, "routing_key" => EXPIRED_ROUTING_KEY)
        .increment(count);
    metrics::counter!(metric::NOTIFICATIONS_RECORDED_TOTAL, "routing_key" => DIGEST_ROUTING_KEY)
        .increment(1);
}

/// How long to sleep before the next sweep: until the watermark (`before`) reaches the
/// earliest deadline not yet due, but no longer than `interval` and no shorter than
/// [`MIN_PAUSE`]; or, when that deadline has passed and only the watermark is awaited,
/// no shorter than the watermark's step ([`REPORT_EVERY`]).
pub async fn pause_before_next(
    pool: &PgPool,
    interval: Duration,
    before: DateTime<Utc>,
) -> sqlx::Result<Duration> {
    let Some(deadline) = objects::next_deadline(pool, before).await? else {
        return Ok(interval);
    };
    let shortest = if deadline <= Utc::now() {
        REPORT_EVERY.min(interval)
    } else {
        MIN_PAUSE
    };
    let until = (deadline - before).to_std().unwrap_or(Duration::ZERO);
    Ok(until.clamp(shortest, interval.max(shortest)))
}
