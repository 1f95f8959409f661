//! Going stale: objects silent past their stale deadline (`stale_at`) are marked stale,
//! with an `object.stale` notification each and one `digest.stale`, in one transaction;
//! a warning before they expire. Held by the same watermark and holds as expiry, so our
//! own lag never makes an object stale.

use chrono::{DateTime, Utc};
use lastseen::contract::metric;
use lastseen::domain::{DIGEST_MAX_IDS, StaleDigestNotification, StaleNotification};
use lastseen::store::{notifications, objects};
use lastseen::topology::{STALE_DIGEST_ROUTING_KEY, STALE_ROUTING_KEY};
use sqlx::PgConnection;

/// Marks up to `batch` objects due stale and records their `object.stale` notifications
/// and one `digest.stale`, in `tx`.
pub async fn mark_batch(
    tx: &mut PgConnection,
    due: objects::Due,
    batch: u32,
) -> sqlx::Result<Vec<objects::Stale>> {
    let marked_at = due.now;
    let stale = objects::mark_stale(tx, due, i64::from(batch)).await?;
    if stale.is_empty() {
        return Ok(stale);
    }
    let ids: Vec<i64> = stale.iter().map(|o| o.id.get()).collect();
    let payloads: Vec<serde_json::Value> = stale
        .iter()
        .map(|o| {
            serde_json::to_value(StaleNotification {
                event: STALE_ROUTING_KEY.to_owned(),
                object_id: o.id,
                first_seen: o.first_seen,
                last_seen: o.last_seen,
                stale_at: o.stale_at,
                expires_at: o.expires_at,
                marked_at,
            })
            .expect("a notification always serializes")
        })
        .collect();
    notifications::record(tx, STALE_ROUTING_KEY, &ids, &payloads).await?;
    let digest = StaleDigestNotification {
        event: STALE_DIGEST_ROUTING_KEY.to_owned(),
        stale: stale.len() as u64,
        object_ids: stale.iter().take(DIGEST_MAX_IDS).map(|o| o.id).collect(),
        truncated: stale.len() > DIGEST_MAX_IDS,
        marked_at,
    };
    let digest = serde_json::to_value(digest).expect("a digest always serializes");
    notifications::record_event(tx, STALE_DIGEST_ROUTING_KEY, &digest).await?;
    Ok(stale)
}

/// Objects marked stale and, for each, how late after its stale deadline the mark
/// committed.
pub fn record_metrics(stale: &[objects::Stale], committed: DateTime<Utc>) {
    if stale.is_empty() {
        return;
    }
    let lag = metrics::histogram!(metric::STALE_LAG_SECONDS);
    for object in stale {
        let late = committed - object.stale_at;
        lag.record(late.to_std().unwrap_or_default().as_secs_f64());
    }
    let count = stale.len() as u64;
    metrics::counter!(metric::OBJECTS_STALE_TOTAL).increment(count);
    metrics::counter!(metric::NOTIFICATIONS_RECORDED_TOTAL, "routing_key" => STALE_ROUTING_KEY)
        .increment(count);
    metrics::counter!(metric::NOTIFICATIONS_RECORDED_TOTAL, "routing_key" => STALE_DIGEST_ROUTING_KEY)
        .increment(1);
}
