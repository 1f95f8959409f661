//! The `objects` table: batched last-seen upserts (consumer) and expiry (sweeper).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres};

use crate::ObjectId;

/// An object seen online at a moment (when the status service answered), and the
/// deadlines that sighting gives it: `expires_at` (`seen_at` + the callback's TTL) and,
/// when a stale delay applies and is shorter than the TTL, `stale_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub id: ObjectId,
    pub seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub stale_at: Option<DateTime<Utc>>,
}

/// An object that was not in `objects` before this sighting: first seen, or back after
/// it expired (`previous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameOnline {
    pub id: ObjectId,
    pub seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub stale_at: Option<DateTime<Utc>>,
    /// The object's latest expiry, when it comes back after one.
    pub previous: Option<PreviousExpiry>,
}

/// The end of an object's previous stretch online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousExpiry {
    /// Its last sighting.
    pub last_seen: DateTime<Utc>,
    /// When the sweeper expired it.
    pub expired_at: DateTime<Utc>,
}

/// A stale object seen again: online once more, no longer stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub id: ObjectId,
    pub seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub stale_at: Option<DateTime<Utc>>,
    /// Its last sighting before this one: silent from then until `seen_at`.
    pub previous_last_seen: DateTime<Utc>,
}

/// What an upsert of sightings did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upserted {
    /// The objects it inserted.
    pub came_online: Vec<CameOnline>,
    /// The stale objects it brought back (a sighting newer than their last).
    pub recovered: Vec<Recovered>,
    /// Sightings it dropped because they fall inside an expired stretch: at or before the
    /// deadline of their object's latest expiry (see [`upsert_sightings`]).
    pub in_the_past: usize,
}

/// An object marked stale: silent past its stale deadline, not yet expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    pub id: ObjectId,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub stale_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An object removed at its deadline, with its stretch online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub id: ObjectId,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Upserts many sightings in one statement and returns the objects it inserted (which
/// come online) and the stale ones it brought back. `last_seen` never moves backwards;
/// `expires_at` and `stale_at` follow the latest sighting, and a sighting newer than a
/// stale object's `last_seen` ends its stale state. Call inside the transaction that
/// records their `object.online` events.
///
/// Whether a write ended a stale state is decided on the locked row (a sweeper may mark
/// the object stale between this statement's snapshot and its write), so the write keeps
/// the row's previous `last_seen` in `recovered_last_seen` for `RETURNING` to see: NULL
/// on every write that recovered nothing.
///
/// A sighting of an object not in `objects` that is no later than the deadline of the
/// object's latest expiry belongs to that expired stretch (its commit was late: the
/// writer retried through an outage while the sweeper went on): it is dropped, so a
/// stretch is never resurrected and stretches, each online from `first_seen` to its
/// deadline, never overlap. A later one is a comeback and carries that expiry.
///
/// Sightings of one id are merged first (a statement may not touch a row twice), and
/// rows are written in id order so concurrent writers lock in the same order.
pub async fn upsert_sightings(
    conn: &mut PgConnection,
    sightings: &[Sighting],
) -> sqlx::Result<Upserted> {
    let mut latest: HashMap<i64, Sighting> = HashMap::with_capacity(sightings.len());
    for s in sightings {
        latest
            .entry(s.id.get())
            .and_modify(|kept| {
                if s.seen_at > kept.seen_at {
                    *kept = *s;
                }
            })
            .or_insert(*s);
    }
    let mut rows: Vec<Sighting> = latest.into_values().collect();
    rows.sort_unstable_by_key(|s| s.id);
    let ids: Vec<i64> = rows.iter().map(|s| s.id.get()).collect();
    let seen: Vec<DateTime<Utc>> = rows.iter().map(|s| s.seen_at).collect();
    let expires: Vec<DateTime<Utc>> = rows.iter().map(|s| s.expires_at).collect();
    let stale: Vec<Option<DateTime<Utc>>> = rows.iter().map(|s| s.stale_at).collect();
    // The latest expiry is looked up only for ids not in `objects`, so refreshing an
    // online object costs what it did; it is one row per object in `object_last_expiry`,
    // not a search through every day partition of `object_expiries`.
    // `xmax = 0` on a returned row: it was inserted, not updated.
    // Planned afresh for each batch (`persistent(false)`: an unnamed statement): a plan
    // PostgreSQL cached for a prepared statement while the tables were small (sequential
    // scans and hash joins) was kept as they grew, and every batch read both tables whole.
    let written: Vec<UpsertedRow> = sqlx::query_as(
        "WITH s AS (
             SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamptz[],
                                  $4::timestamptz[])
                 AS s(id, seen, expires, stale)
         ), judged AS (
             SELECT s.id, s.seen, s.expires, s.stale, prev.expires_at AS prev_deadline,
                    prev.last_seen AS prev_last_seen, prev.expired_at AS prev_expired_at
             FROM s
             -- One primary-key probe per sighting, whatever the planner thinks of the
             -- tables' sizes (a LIMIT keeps each lookup a subquery of its own): joined,
             -- a large batch was planned as a hash join over a sequential scan of both.
             LEFT JOIN LATERAL (SELECT o.id FROM objects o WHERE o.id = s.id LIMIT 1) o
                 ON true
             LEFT JOIN LATERAL (SELECT p.expires_at, p.last_seen, p.expired_at
                                FROM object_last_expiry p
                                WHERE o.id IS NULL AND p.object_id = s.id LIMIT 1) prev
                 ON true
         ), up AS (
             INSERT INTO objects (id, first_seen, last_seen, expires_at, stale_at)
             SELECT id, seen, seen, expires, stale FROM judged
             WHERE prev_deadline IS NULL OR seen > prev_deadline
             ORDER BY id
             ON CONFLICT (id) DO UPDATE
                 SET last_seen = GREATEST(objects.last_seen, EXCLUDED.last_seen),
                     expires_at = CASE WHEN EXCLUDED.last_seen >= objects.last_seen
                                       THEN EXCLUDED.expires_at ELSE objects.expires_at END,
                     stale_at = CASE WHEN EXCLUDED.last_seen >= objects.last_seen
                                     THEN EXCLUDED.stale_at ELSE objects.stale_at END,
                     stale_since = CASE WHEN EXCLUDED.last_seen > objects.last_seen
                                        THEN NULL ELSE objects.stale_since END,
                     recovered_last_seen = CASE WHEN objects.stale_since IS NOT NULL
                                                 AND EXCLUDED.last_seen > objects.last_seen
                                                THEN objects.last_seen END
             RETURNING id, last_seen, expires_at, stale_at, (xmax = 0) AS inserted,
                       recovered_last_seen
         )
         SELECT up.id, up.last_seen, up.expires_at, up.stale_at, up.inserted,
                up.recovered_last_seen, judged.prev_last_seen, judged.prev_expired_at
         FROM up JOIN judged ON judged.id = up.id",
    )
    .bind(&ids)
    .bind(&seen)
    .bind(&expires)
    .bind(&stale)
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let in_the_past = rows.len() - written.len();
    let recovered = written
        .iter()
        .filter_map(|row| {
            let previous_last_seen = row.recovered_last_seen?;
            ObjectId::new(row.id).map(|id| Recovered {
                id,
                seen_at: row.last_seen,
                expires_at: row.expires_at,
                stale_at: row.stale_at,
                previous_last_seen,
            })
        })
        .collect();
    let came_online = written
        .into_iter()
        .filter(|row| row.inserted)
        .filter_map(|row| {
            ObjectId::new(row.id).map(|id| CameOnline {
                id,
                seen_at: row.last_seen,
                expires_at: row.expires_at,
                stale_at: row.stale_at,
                previous: row.prev_last_seen.zip(row.prev_expired_at).map(
                    |(last_seen, expired_at)| PreviousExpiry {
                        last_seen,
                        expired_at,
                    },
                ),
            })
        })
        .collect();
    Ok(Upserted {
        came_online,
        recovered,
        in_the_past,
    })
}

#[derive(sqlx::FromRow)]
struct UpsertedRow {
    id: i64,
    last_seen: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    stale_at: Option<DateTime<Utc>>,
    inserted: bool,
    recovered_last_seen: Option<DateTime<Utc>>,
    prev_last_seen: Option<DateTime<Utc>>,
    prev_expired_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct StaleRow {
    id: i64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    stale_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ExpiredRow {
    id: i64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// Which objects a sweep may expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// When the expiry happens (`expired_at`).
    pub now: DateTime<Utc>,
    /// Deadlines before this are due: the watermark (every callback accepted before it is
    /// settled), never later than `now`.
    pub before: DateTime<Utc>,
    /// Per-object holds from callbacks accepted before this no longer hold
    /// (`MAX_EXPIRY_HOLD_SECS` ago).
    pub holds_from: DateTime<Utc>,
}

impl Due {
    /// Everything whose deadline is before `now`, every hold holding (no watermark).
    pub fn at(now: DateTime<Utc>) -> Self {
        Self {
            now,
            before: now,
            holds_from: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

/// Deletes up to `limit` objects that are due (deadline before `due.before`, and not held
/// by a hold from a callback accepted at or before the deadline, and marked stale first
/// when they have a stale deadline: see [`mark_stale`]), earliest first, keeps
/// each one's stretch in `object_expiries` (and as the object's latest in
/// `object_last_expiry`), and returns them. Rows locked by a
/// concurrent writer or sweeper are skipped, and the deadline is checked again on the
/// locked row, so an object refreshed meanwhile stays.
pub async fn expire_due(
    conn: &mut PgConnection,
    due: Due,
    limit: i64,
) -> sqlx::Result<Vec<Expired>> {
    let rows: Vec<ExpiredRow> = sqlx::query_as(
        "WITH due AS (
             SELECT id FROM objects o
             WHERE expires_at < $2
               -- An object with a stale deadline goes stale (and says so) before it
               -- expires; whatever is due to expire is due to go stale too.
               AND (stale_at IS NULL OR stale_since IS NOT NULL)
               -- The first test runs once: with no hold in force (the common case) no
               -- object is looked up in `expiry_holds`.
               AND (NOT EXISTS (SELECT 1 FROM expiry_holds WHERE accepted_at >= $3)
                    OR NOT EXISTS (
                        SELECT 1 FROM expiry_holds h
                        WHERE h.object_id = o.id AND h.accepted_at <= o.expires_at
                          AND h.accepted_at >= $3))
             ORDER BY expires_at
             LIMIT $4
             FOR UPDATE SKIP LOCKED
         ), gone AS (
             -- By id through the primary key: a join with `due` was planned as a hash
             -- of every object due, so each batch of a mass expiry read all of them.
             DELETE FROM objects o
             WHERE o.id = ANY (ARRAY(SELECT id FROM due)) AND o.expires_at < $2
             RETURNING o.id, o.first_seen, o.last_seen, o.expires_at
         ), kept AS (
             INSERT INTO object_expiries (object_id, first_seen, last_seen, expires_at, expired_at)
             SELECT id, first_seen, last_seen, expires_at, $1 FROM gone
         ), latest AS (
             INSERT INTO object_last_expiry (object_id, last_seen, expires_at, expired_at)
             SELECT id, last_seen, expires_at, $1 FROM gone
             ON CONFLICT (object_id) DO UPDATE
                 SET last_seen = EXCLUDED.last_seen, expires_at = EXCLUDED.expires_at,
                     expired_at = EXCLUDED.expired_at
                 WHERE EXCLUDED.expired_at >= object_last_expiry.expired_at
         )
         SELECT id, first_seen, last_seen, expires_at FROM gone ORDER BY expires_at",
    )
    .bind(due.now)
    .bind(due.before.min(due.now))
    .bind(due.holds_from)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            ObjectId::new(row.id).map(|id| Expired {
                id,
                first_seen: row.first_seen,
                last_seen: row.last_seen,
                expires_at: row.expires_at,
            })
        })
        .collect())
}

/// Marks up to `limit` objects stale that are due (stale deadline before `due.before`, not
/// yet stale, and not held by a hold from a callback accepted at or before that
/// deadline), earliest first, and returns them. Like [`expire_due`]: rows locked by a
/// writer or another sweeper are skipped, and the deadline is checked again on the locked
/// row, so an object seen meanwhile stays online. Call inside the transaction that
/// records their `object.stale` events.
pub async fn mark_stale(conn: &mut PgConnection, due: Due, limit: i64) -> sqlx::Result<Vec<Stale>> {
    let mut rows: Vec<StaleRow> = sqlx::query_as(
        "WITH due AS (
             SELECT id FROM objects o
             WHERE stale_at < $2 AND stale_since IS NULL
               AND (NOT EXISTS (SELECT 1 FROM expiry_holds WHERE accepted_at >= $3)
                    OR NOT EXISTS (
                        SELECT 1 FROM expiry_holds h
                        WHERE h.object_id = o.id AND h.accepted_at <= o.stale_at
                          AND h.accepted_at >= $3))
             ORDER BY stale_at
             LIMIT $4
             FOR UPDATE SKIP LOCKED
         )
         -- By id through the primary key, not joined with `due` (see `expire_due`).
         UPDATE objects o SET stale_since = $1
         WHERE o.id = ANY (ARRAY(SELECT id FROM due))
           AND o.stale_at < $2 AND o.stale_since IS NULL
         RETURNING o.id, o.first_seen, o.last_seen, o.stale_at, o.expires_at",
    )
    .bind(due.now)
    .bind(due.before.min(due.now))
    .bind(due.holds_from)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.sort_unstable_by_key(|row| (row.stale_at, row.id));
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            ObjectId::new(row.id).map(|id| Stale {
                id,
                first_seen: row.first_seen,
                last_seen: row.last_seen,
                stale_at: row.stale_at,
                expires_at: row.expires_at,
            })
        })
        .collect())
}

/// How many objects are stale now, read through their own small index: on a table not
/// analyzed yet PostgreSQL takes `stale_since IS NOT NULL` to hold for nearly every row
/// and would scan it whole (the sweeper counts every second), so sequential scans are
/// ruled out for this one statement: in a transaction (or savepoint) of its own, rolled
/// back, which undoes the setting.
pub async fn stale_count<'a>(db: impl sqlx::Acquire<'a, Database = Postgres>) -> sqlx::Result<i64> {
    let mut tx = db.begin().await?;
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let count = sqlx::query_scalar("SELECT count(*) FROM objects WHERE stale_since IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(count)
}

/// The earliest deadline, stale or expiry, at or after `from` (the watermark the last
/// sweep started from), if any: when the next sweep has something to do. Objects before
/// it that are still there are held or locked; they are looked at again on the next
/// sweep.
pub async fn next_deadline(
    db: impl sqlx::PgExecutor<'_>,
    from: DateTime<Utc>,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT least((SELECT min(expires_at) FROM objects WHERE expires_at >= $1),
                      (SELECT min(stale_at) FROM objects
                       WHERE stale_at >= $1 AND stale_since IS NULL))",
    )
    .bind(from)
    .fetch_one(db)
    .await
}
