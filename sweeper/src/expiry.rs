//! Sweeping: each round marks the objects past their stale deadline stale
//! ([`crate::stale`]), then expires those past their deadline (`expires_at`): deletes them,
//! keeps their stretch in the history, and records their `object.expired` notifications
//! and one `digest`, all in the same transaction.

use lastseen::contract::metric;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lastseen::domain::{DIGEST_MAX_IDS, DigestNotification, ExpiredNotification};
use lastseen::progress::REPORT_EVERY;
use lastseen::store::{notifications, objects};
use lastseen::topology::{DIGEST_ROUTING_KEY, EXPIRED_ROUTING_KEY};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::stale;

use crate::watermark::Watermark;

/// Shortest pause between sweeps, so rows another sweeper holds cannot cause a hot loop.
pub const MIN_PAUSE: Duration = Duration::from_millis(20);

/// What a sweep does to the objects due: mark them stale, or expire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Objects silent past their stale deadline are marked stale (`crate::stale`).
    Stale,
    /// Objects past their deadline are expired (below).
    Expiry,
}

/// Marks stale, then expires, every object due (its deadline before the watermark, and
/// not held by an id waiting in a retry queue), in transactions of at most `batch`
/// objects, each stamped with its own time. The first transaction runs alone; only when
/// it comes back full do `workers` run at once (each locks its own rows and skips the
/// others'): a mass expiry keeps PostgreSQL busy on more than one core while each worker
/// builds its notifications, and a sweep with less than a batch due is one transaction
/// with one digest (workers started together each took some of its rows and each wrote
/// a digest). The stale pass runs first, so an
/// object due for both (the sweepers were down) says `object.stale` before
/// `object.expired`; expiry waits for that mark (see `objects::expire_due`). Returns how
/// many were marked stale and how many expired.
/// Once `stop` fires no further transaction starts (those running commit), so a stop
/// is not held up by a mass expiry; what is left is due for the next sweep.
pub async fn sweep(
    pool: &PgPool,
    batch: u32,
    workers: u32,
    watermark: &Watermark,
    max_hold: Duration,
    stop: &CancellationToken,
) -> sqlx::Result<(u64, u64)> {
    let sweep = Sweep {
        pool,
        batch,
        watermark,
        max_hold,
        stop,
    };
    let mut done = [0; 2];
    for (pass, count) in [Pass::Stale, Pass::Expiry].into_iter().zip(&mut done) {
        if stop.is_cancelled() {
            break;
        }
        *count = sweep.batch(pass).await?;
        if *count < u64::from(batch) || stop.is_cancelled() {
            continue;
        }
        let chains = (0..workers.max(1)).map(|_| sweep.chain(pass));
        *count += futures::future::try_join_all(chains)
            .await?
            .into_iter()
            .sum::<u64>();
    }
    Ok((done[0], done[1]))
}

/// What each transaction of a sweep works with.
#[derive(Clone, Copy)]
struct Sweep<'a> {
    pool: &'a PgPool,
    batch: u32,
    watermark: &'a Watermark,
    max_hold: Duration,
    stop: &'a CancellationToken,
}

impl Sweep<'_> {
    /// One worker of [`sweep`]: batches until one comes back short (nothing more is due,
    /// or the rest is locked by another worker or sweeper).
    async fn chain(self, pass: Pass) -> sqlx::Result<u64> {
        let mut total = 0;
        loop {
            let count = self.batch(pass).await?;
            total += count;
            if count < u64::from(self.batch) || self.stop.is_cancelled() {
                return Ok(total);
            }
        }
    }

    /// One transaction of `pass` over up to `batch` objects due now; returns how many.
    async fn batch(self, pass: Pass) -> sqlx::Result<u64> {
        let (pool, batch) = (self.pool, self.batch);
        let now = Utc::now();
        let due = objects::Due {
            now,
            before: self.watermark.judgement().before,
            holds_from: now
                - chrono::Duration::from_std(self.max_hold).unwrap_or(chrono::Duration::MAX),
        };
        let mut tx = pool.begin().await?;
        let count = match pass {
            Pass::Stale => {
                let stale = stale::mark_batch(&mut tx, due, batch).await?;
                tx.commit().await?;
                stale::record_metrics(&stale, Utc::now());
                stale.len()
            }
            Pass::Expiry => {
                let expired = expire_batch(&mut tx, due, batch).await?;
                tx.commit().await?;
                record_expiry_metrics(&expired, Utc::now());
                expired.len()
            }
        };
        Ok(count as u64)
    }
}

/// Expires up to `batch` objects due and records their `object.expired` notifications
/// and one `digest`, in `tx`.
async fn expire_batch(
    tx: &mut PgConnection,
    due: objects::Due,
    batch: u32,
) -> sqlx::Result<Vec<objects::Expired>> {
    let now = due.now;
    let expired = objects::expire_due(tx, due, i64::from(batch)).await?;
    if expired.is_empty() {
        return Ok(expired);
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
    notifications::record(tx, EXPIRED_ROUTING_KEY, &ids, &payloads).await?;
    let digest = DigestNotification {
        event: DIGEST_ROUTING_KEY.to_owned(),
        expired: expired.len() as u64,
        object_ids: expired.iter().take(DIGEST_MAX_IDS).map(|e| e.id).collect(),
        truncated: expired.len() > DIGEST_MAX_IDS,
        expired_at: now,
    };
    let digest = serde_json::to_value(digest).expect("a digest always serializes");
    notifications::record_event(tx, DIGEST_ROUTING_KEY, &digest).await?;
    Ok(expired)
}

/// Objects expired and, for each, how late after its deadline the expiry committed.
fn record_expiry_metrics(expired: &[objects::Expired], committed: DateTime<Utc>) {
    if expired.is_empty() {
        return;
    }
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

/// How long to sleep before the next sweep: until the watermark (`before`, now) reaches
/// the earliest deadline not yet swept, but no longer than `interval` and no shorter than
/// [`MIN_PAUSE`]; or, when that deadline has passed and only the watermark is awaited,
/// no shorter than the watermark's step ([`REPORT_EVERY`]). The deadlines looked at are
/// those from `swept` on, the watermark the last sweep started from: what fell due while
/// it ran (a sweep held up by a busy server) is swept at once, not an interval later.
pub async fn pause_before_next(
    pool: &PgPool,
    interval: Duration,
    swept: DateTime<Utc>,
    before: DateTime<Utc>,
) -> sqlx::Result<Duration> {
    let Some(deadline) = objects::next_deadline(pool, swept).await? else {
        return Ok(interval);
    };
    let shortest = if deadline >= before && deadline <= Utc::now() {
        REPORT_EVERY.min(interval)
    } else {
        MIN_PAUSE
    };
    let until = (deadline - before).to_std().unwrap_or(Duration::ZERO);
    Ok(until.clamp(shortest, interval.max(shortest)))
}
