//! The `notifications` outbox: rows written with the state change that raised them,
//! then published by a relay and marked published only after the broker confirmed.

use sqlx::{PgConnection, Postgres, Transaction};

/// A notification waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// Records notifications; call inside the transaction that made the change.
pub async fn record(
    conn: &mut PgConnection,
    routing_key: &str,
    object_ids: &[i64],
    payloads: &[serde_json::Value],
) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "INSERT INTO notifications (routing_key, object_id, payload)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::jsonb[])",
    )
    .bind(routing_key)
    .bind(object_ids)
    .bind(payloads)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Locks up to `limit` unpublished notifications, oldest first; rows another relay
/// holds are skipped. The lock lasts until `tx` ends.
pub async fn lock_pending(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<Pending>> {
    sqlx::query_as(
        "SELECT id, routing_key, payload FROM notifications
         WHERE published_at IS NULL
         ORDER BY id
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Marks notifications published (after their confirms arrived). Without a webhook
/// (`webhook` false) they are also marked `skipped` for it, so they are done.
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
    webhook: bool,
) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "UPDATE notifications SET published_at = clock_timestamp(),
             webhook_outcome = CASE WHEN $2 THEN webhook_outcome
                                    ELSE coalesce(webhook_outcome, 'skipped') END
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(webhook)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

/// What one pruning step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneStep {
    /// Notifications deleted.
    pub deleted: u64,
    /// Where the next step starts (`after`), or `None` when this step reached rows
    /// created after the cutoff, or the end of the table: the pruning is done.
    pub next: Option<i64>,
}

/// One step of pruning: among the `limit` oldest notifications with an id above `after`,
/// deletes those created before `cutoff` that are done (published, and delivered,
/// failed or skipped by the webhook). Ids grow with `created_at`, so walking the primary
/// key from the oldest row finds the old rows without an index of its own; a pending
/// row is stepped over, not waited for.
pub async fn prune_step(
    pool: &sqlx::PgPool,
    cutoff: chrono::DateTime<chrono::Utc>,
    after: i64,
    limit: i64,
) -> sqlx::Result<PruneStep> {
    let (deleted, read, last, all_old): (i64, i64, Option<i64>, Option<bool>) = sqlx::query_as(
        "WITH oldest AS (
             SELECT id, created_at < $2 AS old FROM notifications
             WHERE id > $1 ORDER BY id LIMIT $3),
         gone AS (
             DELETE FROM notifications n USING oldest o
             WHERE n.id = o.id AND o.old
               AND n.published_at IS NOT NULL AND n.webhook_outcome IS NOT NULL
             RETURNING n.id)
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM oldest),
                (SELECT max(id) FROM oldest), (SELECT bool_and(old) FROM oldest)",
    )
    .bind(after)
    .bind(cutoff)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    let more = read == limit && all_old == Some(true);
    Ok(PruneStep {
        deleted: u64::try_from(deleted).unwrap_or_default(),
        next: last.filter(|_| more),
    })
}

/// How many notifications wait to be published.
pub async fn count_pending(pool: &sqlx::PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM notifications WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Records one notification about no single object (a digest); call inside the
/// transaction that made the change.
pub async fn record_digest(
    conn: &mut PgConnection,
    routing_key: &str,
    payload: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO notifications (routing_key, payload) VALUES ($1, $2)")
        .bind(routing_key)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}
