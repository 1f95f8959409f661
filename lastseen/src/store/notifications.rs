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
    pub payload: serde_json::Value,
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
         RETURNING n.id, n.routing_key, n.payload, n.webhook_attempts, n.webhook_claim",
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
