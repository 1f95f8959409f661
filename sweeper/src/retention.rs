//! Retention: keeps the outbox and the expiry history the size of their recent past.
//! Both are partitioned by day; the partitions of today and the week ahead are made
//! here. A day of notifications is dropped whole once all of it is older than
//! `NOTIFICATION_RETENTION_SECS` and every notification in it is done; a day of history
//! once it is older than `HISTORY_RETENTION_DAYS` (when set). Per-object expiry holds
//! past `MAX_EXPIRY_HOLD_SECS` are deleted.

use lastseen::contract::metric;
use std::time::Duration;

use lastseen::store::day_partitions::{DayPartitioned, NOTIFICATIONS, OBJECT_EXPIRIES};
use lastseen::store::{history, holds, notifications};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often old notifications are looked for (the first time right at start).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Days of partitions made ahead of today.
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
        make_partitions(&pool).await;
        prune_history(&pool, keep_history).await;
        let floor = chrono::Utc::now()
            - chrono::Duration::from_std(max_hold).unwrap_or(chrono::Duration::MAX);
        match holds::prune(&pool, floor).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expiry holds past MAX_EXPIRY_HOLD_SECS pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning old expiry holds failed; will retry"),
        }
        prune_outbox(&pool, retention).await;
        tokio::select! {
            () = tokio::time::sleep(PRUNE_EVERY) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// Makes the partitions of today and the week ahead of the outbox and the history.
async fn make_partitions(pool: &PgPool) {
    let today = chrono::Utc::now().date_naive();
    for table in [OBJECT_EXPIRIES, NOTIFICATIONS] {
        let DayPartitioned { table: name, .. } = table;
        if let Err(err) = table.ensure(pool, today, PARTITIONS_AHEAD_DAYS + 1).await {
            tracing::warn!(error = %err, table = name, "cannot make the coming days' partitions; will retry");
        }
    }
}

/// The moment `keep` before now.
fn cutoff(keep: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
        .checked_sub_signed(chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// Drops the days of history past `keep` (if history is not kept forever).
async fn prune_history(pool: &PgPool, keep: Option<Duration>) {
    let Some(keep) = keep else { return };
    match history::drop_before(pool, cutoff(keep)).await {
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

/// Drops the days of the outbox past `retention` whose notifications are all done.
async fn prune_outbox(pool: &PgPool, retention: Duration) {
    match notifications::drop_before(pool, cutoff(retention)).await {
        Ok(pruned) => {
            metrics::counter!(metric::NOTIFICATION_PARTITIONS_DROPPED_TOTAL)
                .increment(pruned.partitions);
            metrics::counter!(metric::NOTIFICATIONS_PRUNED_TOTAL).increment(pruned.default_rows);
            if pruned.kept > 0 {
                tracing::warn!(
                    kept = pruned.kept,
                    "days of the outbox past NOTIFICATION_RETENTION_SECS kept: they hold notifications not yet published or owed to the webhook"
                );
            }
            if pruned.partitions + pruned.default_rows > 0 {
                tracing::info!(
                    partitions = pruned.partitions,
                    default_rows = pruned.default_rows,
                    ?retention,
                    "outbox days past NOTIFICATION_RETENTION_SECS dropped"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "dropping old outbox days failed; will retry"),
    }
}
