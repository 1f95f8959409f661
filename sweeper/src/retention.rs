//! Outbox retention: deletes notifications that are done once they are older than
//! `NOTIFICATION_RETENTION_SECS`, so the outbox stays the size of its recent past.

use lastseen::contract::metric;
use std::time::Duration;

use lastseen::store::notifications;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often old notifications are looked for (the first time right at start).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Rows looked at per statement, so a large backlog never makes one long transaction.
const PRUNE_BATCH: i64 = 10_000;

/// Prunes every [`PRUNE_EVERY`] until `shutdown`. Failures are logged and retried at the
/// next round: a notification kept a minute longer costs nothing.
pub async fn run(pool: PgPool, retention: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match prune(&pool, retention, &shutdown).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, ?retention, "old notifications pruned"),
            Err(err) => {
                tracing::warn!(error = %err, "pruning old notifications failed; will retry")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(PRUNE_EVERY) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// Deletes, step by step from the oldest row, every done notification older than
/// `retention`.
async fn prune(
    pool: &PgPool,
    retention: Duration,
    shutdown: &CancellationToken,
) -> sqlx::Result<u64> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let mut total = 0;
    let mut after = 0;
    while !shutdown.is_cancelled() {
        let step = notifications::prune_step(pool, cutoff, after, PRUNE_BATCH).await?;
        metrics::counter!(metric::NOTIFICATIONS_PRUNED_TOTAL).increment(step.deleted);
        total += step.deleted;
        match step.next {
            Some(next) => after = next,
            None => break,
        }
    }
    Ok(total)
}
