//! Retention: deletes notifications that are done once they are older than
//! `NOTIFICATION_RETENTION_SECS`, so the outbox stays the size of its recent past,
//! per-object expiry holds past `MAX_EXPIRY_HOLD_SECS`, and whole days of expiry history
//! past `HISTORY_RETENTION_DAYS` when set (the partitions it also makes a week ahead).

use lastseen::contract::metric;
use std::time::Duration;

use lastseen::store::{history, holds, notifications};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often old notifications are looked for (the first time right at start).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Rows looked at per statement, so a large backlog never makes one long transaction.
const PRUNE_BATCH: i64 = 10_000;

/// Days of history partitions made ahead of today.
const PARTITIONS_AHEAD_DAYS: u64 = 7;

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub notifications: Duration,
    /// `None`: history is kept forever.
    pub history: Option<Duration>,
    pub max_hold: Duration,
}

/// Prunes every [`PRUNE_EVERY`] until `shutdown`. Failures are logged and retried at the
/// next round: a notification kept a minute longer costs nothing.
pub async fn run(pool: PgPool, keep: Retention, shutdown: CancellationToken) {
    let Retention {
        notifications: retention,
        history: keep_history,
        max_hold,
    } = keep;
    while !shutdown.is_cancelled() {
        prune_history(&pool, keep_history).await;
        let floor = chrono::Utc::now()
            - chrono::Duration::from_std(max_hold).unwrap_or(chrono::Duration::MAX);
        match holds::prune(&pool, floor).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expiry holds past MAX_EXPIRY_HOLD_SECS pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning old expiry holds failed; will retry"),
        }
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

/// Makes the history partitions of today and the week ahead, and drops those past
/// `keep` (if history is not kept forever).
async fn prune_history(pool: &PgPool, keep: Option<Duration>) {
    let now = chrono::Utc::now();
    if let Err(err) =
        history::ensure_partitions(pool, now.date_naive(), PARTITIONS_AHEAD_DAYS + 1).await
    {
        tracing::warn!(error = %err, "cannot make the coming days' history partitions; will retry");
    }
    let Some(keep) = keep else { return };
    let cutoff = now
        .checked_sub_signed(chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    match history::drop_before(pool, cutoff).await {
        Ok((0, 0)) => {}
        Ok((partitions, rows)) => {
            metrics::counter!(metric::HISTORY_PARTITIONS_DROPPED_TOTAL).increment(partitions);
            tracing::info!(
                partitions,
                rows,
                ?keep,
                "expiry history past HISTORY_RETENTION_DAYS dropped"
            );
        }
        Err(err) => tracing::warn!(error = %err, "dropping old expiry history failed; will retry"),
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
