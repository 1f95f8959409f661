//! The `notifications` outbox: rows written with the state change that raised them,
//! then published by a relay and marked published only after the broker confirmed; kept
//! by day partitions of `created_at`, dropped whole past the retention.

use sqlx::{PgConnection, Postgres, Transaction};

use super::day_partitions::NOTIFICATIONS;

/// A notification waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub routing_key: String,
    /// The payload's JSON text, as PostgreSQL writes it: published as it is, so the
    /// relay never parses and re-serializes it.
    pub payload: String,
    /// Its day partition's key.
    pub created_at: chrono::DateTime<chrono::Utc>,
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
        "SELECT id, routing_key, payload::text AS payload, created_at FROM notifications
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
/// (`webhook` false) they are also marked `skipped` for it, so they are done. Only the
/// day partitions from the oldest row's day on are looked into.
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Pending],
    webhook: bool,
) -> sqlx::Result<u64> {
    let Some(oldest) = rows.iter().map(|r| r.created_at).min() else {
        return Ok(0);
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let result = sqlx::query(
        "UPDATE notifications SET published_at = clock_timestamp(),
             webhook_outcome = CASE WHEN $2 THEN webhook_outcome
                                    ELSE coalesce(webhook_outcome, 'skipped') END
         WHERE id = ANY($1) AND created_at >= $3",
    )
    .bind(&ids)
    .bind(webhook)
    .bind(oldest)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

/// What one round of outbox retention did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Day partitions dropped: all of the day past the retention, every row done.
    pub partitions: u64,
    /// Day partitions past the retention kept for a notification still owed.
    pub kept: u64,
    /// Done rows deleted from the default partition.
    pub default_rows: u64,
}

/// Outbox retention: drops the day partitions that end at or before `cutoff` and hold
/// only notifications that are done (published, and delivered, failed or skipped by the
/// webhook); a day with one still owed stays whole until it is done. Done rows of the
/// default partition (made while the sweepers were down for days) created before
/// `cutoff` are deleted.
pub async fn drop_before(
    pool: &sqlx::PgPool,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<Pruned> {
    let dropped = NOTIFICATIONS.drop_ended_by(pool, cutoff).await?;
    let default_rows = sqlx::query(
        "DELETE FROM notifications_default
         WHERE created_at < $1 AND published_at IS NOT NULL AND webhook_outcome IS NOT NULL",
    )
    .bind(cutoff)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(Pruned {
        partitions: dropped.partitions,
        kept: dropped.kept,
        default_rows,
    })
}

/// How many notifications wait to be published.
pub async fn count_pending(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM notifications WHERE published_at IS NULL")
        .fetch_one(db)
        .await
}

/// Records one notification about no single object (a digest, `pipeline.lagging`); call inside the
/// transaction that made the change.
pub async fn record_event(
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

/// A notification due for a webhook attempt.
#[derive(Debug, sqlx::FromRow)]
pub struct WebhookDue {
    pub id: i64,
    pub routing_key: String,
    /// The payload's JSON text, as PostgreSQL writes it: the same bytes the relay
    /// publishes.
    pub payload: String,
    pub webhook_attempts: i32,
    /// The claim it was taken under (see [`claim_webhook_due`]).
    pub webhook_claim: i64,
}

/// How one webhook attempt ended.
#[derive(Debug)]
pub struct WebhookAttempt<'a> {
    pub id: i64,
    /// The claim the attempt was made under.
    pub claim: i64,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// `delivered` or `failed` (given up); `None` to try again after `next_in`.
    pub outcome: Option<&'a str>,
    pub error: Option<String>,
    pub next_in: std::time::Duration,
}

/// Claims up to `limit` notifications due for the webhook as `claim`, with a lease of
/// `lease_secs` (their next attempt moved past it), in one short statement: no row lock
/// is held while the webhook answers, so the RabbitMQ relay never waits for it. A crash
/// leaves the lease to expire: retried.
pub async fn claim_webhook_due(
    pool: &sqlx::PgPool,
    limit: i64,
    lease_secs: f64,
    claim: i64,
) -> sqlx::Result<Vec<WebhookDue>> {
    sqlx::query_as(
        "UPDATE notifications n
         SET webhook_next_at = clock_timestamp() + make_interval(secs => $2),
             webhook_claim = $3
         FROM (SELECT id FROM notifications
               WHERE webhook_outcome IS NULL AND webhook_next_at <= clock_timestamp()
               ORDER BY webhook_next_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED) due
         WHERE n.id = due.id
         RETURNING n.id, n.routing_key, n.payload::text AS payload, n.webhook_attempts,
                   n.webhook_claim",
    )
    .bind(limit)
    .bind(lease_secs)
    .bind(claim)
    .fetch_all(pool)
    .await
}

/// Records how webhook attempts ended, in one statement. An attempt whose claim is no
/// longer the row's (its lease ran out and another sweeper claimed it), or whose row is
/// already done, records nothing.
pub async fn record_webhook_attempts(
    pool: &sqlx::PgPool,
    attempts: &[WebhookAttempt<'_>],
) -> sqlx::Result<()> {
    let ids: Vec<i64> = attempts.iter().map(|a| a.id).collect();
    let counts: Vec<i32> = attempts.iter().map(|a| a.attempts).collect();
    let outcomes: Vec<Option<&str>> = attempts.iter().map(|a| a.outcome).collect();
    let errors: Vec<Option<String>> = attempts.iter().map(|a| a.error.clone()).collect();
    let delays: Vec<f64> = attempts.iter().map(|a| a.next_in.as_secs_f64()).collect();
    let claims: Vec<i64> = attempts.iter().map(|a| a.claim).collect();
    sqlx::query(
        "UPDATE notifications n
         SET webhook_attempts = u.attempts,
             webhook_outcome = u.outcome,
             webhook_error = u.error,
             webhook_next_at = clock_timestamp() + make_interval(secs => u.delay)
         FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::text[], $5::float8[], $6::bigint[])
              AS u(id, attempts, outcome, error, delay, claim)
         WHERE n.id = u.id AND n.webhook_claim = u.claim AND n.webhook_outcome IS NULL",
    )
    .bind(&ids)
    .bind(&counts)
    .bind(&outcomes)
    .bind(&errors)
    .bind(&delays)
    .bind(&claims)
    .execute(pool)
    .await?;
    Ok(())
}
