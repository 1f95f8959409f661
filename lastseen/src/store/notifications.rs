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

/// Deletes up to `limit` notifications created before `cutoff` that are done: published,
/// and delivered, failed or skipped by the webhook. Rows another sweeper is deleting
/// are skipped. Returns how many were deleted.
pub async fn prune_done(
    pool: &sqlx::PgPool,
    cutoff: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "DELETE FROM notifications WHERE id IN (
             SELECT id FROM notifications
             WHERE created_at < $1 AND published_at IS NOT NULL AND webhook_outcome IS NOT NULL
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
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
