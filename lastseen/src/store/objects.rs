//! The `objects` table: batched last-seen upserts (consumer) and expiry (sweeper).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::ObjectId;

/// An object seen online at a moment: when the status service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub id: ObjectId,
    pub seen_at: DateTime<Utc>,
}

/// An object removed for silence, with when it was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub id: ObjectId,
    pub last_seen: DateTime<Utc>,
}

/// Upserts many sightings in one statement; `last_seen` never moves backwards.
///
/// Sightings of one id are merged first (a statement may not touch a row twice), and
/// rows are written in id order so concurrent writers lock in the same order.
pub async fn upsert_last_seen(pool: &PgPool, sightings: &[Sighting]) -> sqlx::Result<u64> {
    let mut latest: HashMap<i64, DateTime<Utc>> = HashMap::with_capacity(sightings.len());
    for s in sightings {
        latest
            .entry(s.id.get())
            .and_modify(|t| *t = (*t).max(s.seen_at))
            .or_insert(s.seen_at);
    }
    let mut rows: Vec<(i64, DateTime<Utc>)> = latest.into_iter().collect();
    rows.sort_unstable_by_key(|(id, _)| *id);
    let (ids, times): (Vec<i64>, Vec<DateTime<Utc>>) = rows.into_iter().unzip();
    let result = sqlx::query(
        "INSERT INTO objects (id, last_seen)
         SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[])
         ON CONFLICT (id) DO UPDATE
             SET last_seen = GREATEST(objects.last_seen, EXCLUDED.last_seen)",
    )
    .bind(&ids)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Deletes up to `limit` objects last seen before `cutoff`, oldest first, and returns
/// them. Rows locked by a concurrent writer or sweeper are skipped, and the condition
/// is checked again on the locked row, so an object refreshed meanwhile stays.
pub async fn delete_expired(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Expired>> {
    let rows: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
        "DELETE FROM objects o
         WHERE o.id IN (
                 SELECT id FROM objects
                 WHERE last_seen < $1
                 ORDER BY last_seen
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
           AND o.last_seen < $1
         RETURNING o.id, o.last_seen",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, last_seen)| ObjectId::new(id).map(|id| Expired { id, last_seen }))
        .collect())
}

/// The earliest `last_seen` in the table, if any: when the next expiry is due.
pub async fn oldest_last_seen(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(last_seen) FROM objects")
        .fetch_one(pool)
        .await
}
