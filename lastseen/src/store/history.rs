//! Expiry history past `HISTORY_RETENTION_DAYS`: the day partitions of `object_expiries`
//! that ended before the cutoff are dropped whole (see [`super::day_partitions`]); the
//! default partition's rows and the objects' latest expiries from before it are deleted.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::day_partitions::OBJECT_EXPIRIES;

/// Drops every day partition of `object_expiries` that ends at or before `cutoff`, and
/// deletes the default partition's rows and the objects' latest expiries from before it;
/// returns the partitions dropped and the default partition's rows deleted.
pub async fn drop_before(pool: &PgPool, cutoff: DateTime<Utc>) -> sqlx::Result<(u64, u64)> {
    let dropped = OBJECT_EXPIRIES.drop_ended_by(pool, cutoff).await?;
    let deleted = sqlx::query("DELETE FROM object_expiries_default WHERE expired_at < $1")
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    // The latest expiry of an object is history too: gone with its day.
    sqlx::query("DELETE FROM object_last_expiry WHERE expired_at < $1")
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok((dropped.partitions, deleted))
}
