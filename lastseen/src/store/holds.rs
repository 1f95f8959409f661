//! The `expiry_holds` table (per-object holds on expiry while an id waits in a retry
//! queue) and the `pipeline_lag` row (whether expiry is held because the pipeline lags).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// Holds `ids` from expiry for deadlines at or after `accepted_at` (the callback that
/// named them). Idempotent.
pub async fn hold(pool: &PgPool, ids: &[i64], accepted_at: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO expiry_holds (object_id, accepted_at)
         SELECT id, $2 FROM UNNEST($1::bigint[]) AS id
         ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(accepted_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Releases the holds of `ids` from callbacks accepted at or before `accepted_at`: the
/// latest check of each id settled them all.
pub async fn release(pool: &PgPool, ids: &[i64], accepted_at: DateTime<Utc>) -> sqlx::Result<u64> {
    let result =
        sqlx::query("DELETE FROM expiry_holds WHERE object_id = ANY($1) AND accepted_at <= $2")
            .bind(ids)
            .bind(accepted_at)
            .execute(pool)
            .await?;
    Ok(result.rows_affected())
}

/// Deletes holds from callbacks accepted before `floor` (past `MAX_EXPIRY_HOLD_SECS`:
/// they hold nothing any more).
pub async fn prune(pool: &PgPool, floor: DateTime<Utc>) -> sqlx::Result<u64> {
    let result = sqlx::query("DELETE FROM expiry_holds WHERE accepted_at < $1")
        .bind(floor)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

/// Marks expiry held since `since`, if it was not; true when this call flipped it (its
/// caller then records the `started` notification in the same transaction).
pub async fn start_lagging(conn: &mut PgConnection, since: DateTime<Utc>) -> sqlx::Result<bool> {
    let flipped =
        sqlx::query("UPDATE pipeline_lag SET held_since = $1 WHERE id = 1 AND held_since IS NULL")
            .bind(since)
            .execute(conn)
            .await?;
    Ok(flipped.rows_affected() == 1)
}

/// Marks expiry current, if it was held; returns since when it was held when this call
/// flipped it.
pub async fn end_lagging(conn: &mut PgConnection) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "UPDATE pipeline_lag p SET held_since = NULL
         FROM (SELECT held_since FROM pipeline_lag WHERE id = 1 FOR UPDATE) old
         WHERE p.id = 1 AND p.held_since IS NOT NULL
         RETURNING old.held_since",
    )
    .fetch_optional(conn)
    .await
}
