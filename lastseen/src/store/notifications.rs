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

/// Marks notifications published (after their confirms arrived).
pub async fn mark_published(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> sqlx::Result<u64> {
    let result =
        sqlx::query("UPDATE notifications SET published_at = clock_timestamp() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut **tx)
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
