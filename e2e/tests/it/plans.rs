//! Statements stay planned for the tables as they are: a plan cached while a table was
//! small must not go on scanning it whole once it has grown.

use chrono::{SubsecRound, Utc};
use e2e::{Status, TestEnv};
use lastseen::ObjectId;
use lastseen::store::notifications;
use lastseen::store::objects::{self, Sighting};
use sqlx::Connection;

/// The writer's upsert, run by one connection many times while `objects` and
/// `object_last_expiry` were empty, then again once they held 100,000 rows each (never
/// analyzed), reads only the rows of its own batch, small or large. It failed on each of
/// two defects, with 200,240 rows read: the plan PostgreSQL had cached for the prepared
/// statement while the tables were empty (sequential scans and hash joins) was kept
/// (`make bench`, churn, 50 s: 889 sequential scans of `objects` reading 122.8 million
/// rows, 1,928 of `object_last_expiry` reading 26.4 million); and, planned per batch, a
/// large batch was still given hash joins over sequential scans. It checks the outcome:
/// the lookups by primary key (`LATERAL … LIMIT 1`) would keep a cached plan's probes
/// too, so it does not tell whether the statement is also planned per batch (it is, as
/// a plan cached while a table fits in a page could scan inside each lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upsert_reads_only_its_batchs_rows_after_the_tables_grew() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let mut conn = env.pool.acquire().await?;
    let now = Utc::now().trunc_subsecs(6);
    let hour = chrono::Duration::hours(1);
    let batch = |from: i64, len: i64| -> Vec<Sighting> {
        (from..from + len)
            .map(|i| Sighting {
                id: ObjectId::new(i).expect("a small id is valid"),
                seen_at: now,
                expires_at: now + hour,
                stale_at: None,
            })
            .collect()
    };
    // While the tables are (nearly) empty: enough batches for a plan to be cached.
    for round in 0..12 {
        let mut tx = conn.begin().await?;
        objects::upsert_sightings(&mut tx, &batch(round * 20, 20)).await?;
        tx.commit().await?;
    }
    sqlx::query(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at)
         SELECT g, $1, $1, $2 FROM generate_series(100000, 199999) g",
    )
    .bind(now)
    .bind(now + hour)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO object_last_expiry (object_id, last_seen, expires_at, expired_at)
         SELECT g, $1, $1, $1 FROM generate_series(200000, 299999) g",
    )
    .bind(now - hour)
    .execute(&mut *conn)
    .await?;

    // This backend's counts not yet reported (those of earlier transactions too): the
    // upsert's are the difference.
    let sequential_reads = "SELECT relname::text, seq_scan, seq_tup_read
                            FROM pg_stat_xact_user_tables
                            WHERE relname IN ('objects', 'object_last_expiry')
                            ORDER BY relname";
    // A small batch of new objects, and a large one of 1,500 refreshes (in `objects`) and
    // 1,500 comebacks (in `object_last_expiry`), each rolled back.
    for (from, len, new) in [(300_000, 20, 20), (198_500, 3_000, 1_500)] {
        let mut tx = conn.begin().await?;
        let before: Vec<(String, i64, i64)> =
            sqlx::query_as(sequential_reads).fetch_all(&mut *tx).await?;
        let upserted = objects::upsert_sightings(&mut tx, &batch(from, len)).await?;
        let after: Vec<(String, i64, i64)> =
            sqlx::query_as(sequential_reads).fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        // The view has a row for each table of the database, in the same order both times.
        let scans: Vec<(String, i64, i64)> = after
            .into_iter()
            .zip(before)
            .map(|((table, scans, rows), (_, scans_before, rows_before))| {
                (table, scans - scans_before, rows - rows_before)
            })
            .collect();
        let read: i64 = scans.iter().map(|(_, _, rows)| rows).sum();
        assert_eq!(upserted.came_online.len(), new);
        assert_eq!(
            read, 0,
            "an upsert of {len} sightings read {read} rows of objects and object_last_expiry \
             by sequential scans (each holds 100,000): {scans:?} (table, scans, rows)"
        );
    }
    drop(conn);
    env.teardown().await
}

/// The sweeper's once-a-second reads (how many objects are stale, how many notifications
/// wait, the next deadline) read through their indexes on tables grown to 100,000 rows
/// and never analyzed. Without statistics PostgreSQL takes `stale_since IS NOT NULL` to
/// hold for nearly every row, so the stale count was a parallel sequential scan of
/// `objects` each second (`make bench`, churn, 60 s: 147 scans reading 3.1 million rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweepers_counts_read_no_table_whole_before_it_is_analyzed() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let now = Utc::now().trunc_subsecs(6);
    let hour = chrono::Duration::hours(1);
    // Never analyzed, on any server (autovacuum could analyze it on another).
    sqlx::query("ALTER TABLE objects SET (autovacuum_enabled = false)")
        .execute(&env.pool)
        .await?;
    sqlx::query(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at, stale_at)
         SELECT g, $1, $1, $2, CASE WHEN g % 2 = 0 THEN $2 END
         FROM generate_series(1, 100000) g",
    )
    .bind(now)
    .bind(now + hour)
    .execute(&env.pool)
    .await?;
    sqlx::query("UPDATE objects SET stale_since = $1 WHERE id <= 10")
        .bind(now)
        .execute(&env.pool)
        .await?;
    sqlx::query(
        "INSERT INTO notifications (routing_key, payload, published_at)
         SELECT 'digest', '{}', $1 FROM generate_series(1, 100000)",
    )
    .bind(now)
    .execute(&env.pool)
    .await?;

    let mut conn = env.pool.acquire().await?;
    let mut read = Vec::new();
    for statement in ["the stale count", "the pending count", "the next deadline"] {
        // Each in a transaction of its own (what one sets does not reach the next), with
        // no parallel workers: they report their reads apart from this transaction's.
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
            .execute(&mut *tx)
            .await?;
        let sequential_reads = "SELECT coalesce(sum(seq_tup_read), 0)::bigint
                                FROM pg_stat_xact_user_tables
                                WHERE relname = 'objects' OR relname LIKE 'notifications%'";
        let before: i64 = sqlx::query_scalar(sequential_reads)
            .fetch_one(&mut *tx)
            .await?;
        let answer = match statement {
            "the stale count" => Some(objects::stale_count(&mut *tx).await?),
            "the pending count" => Some(notifications::count_pending(&mut *tx).await?),
            _ => objects::next_deadline(&mut *tx, now)
                .await?
                .map(|deadline| (deadline - now).num_seconds()),
        };
        let after: i64 = sqlx::query_scalar(sequential_reads)
            .fetch_one(&mut *tx)
            .await?;
        tx.rollback().await?;
        read.push((statement, answer, after - before));
    }
    assert_eq!(
        read,
        [
            ("the stale count", Some(10), 0),
            ("the pending count", Some(0), 0),
            ("the next deadline", Some(3600), 0),
        ],
        "(statement, its answer, rows it read by sequential scans)"
    );
    drop(conn);
    env.teardown().await
}
