//! Outbox retention: notifications that are done (published, and delivered, failed or
//! skipped by the webhook) are deleted once older than NOTIFICATION_RETENTION_SECS; those
//! still owed to RabbitMQ or to the webhook are kept whatever their age.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::{Status, TestEnv};
use lastseen::store::notifications;

/// Inserts one notification created at `created_at`, published then (or never), with
/// `outcome` as its webhook outcome; returns its id.
async fn insert(
    env: &TestEnv,
    created_at: DateTime<Utc>,
    published: bool,
    outcome: Option<&str>,
) -> anyhow::Result<i64> {
    let id = sqlx::query_scalar(
        "INSERT INTO notifications (routing_key, payload, created_at, published_at, webhook_outcome)
         VALUES ('digest', '{}', $1, CASE WHEN $2 THEN $1 END, $3) RETURNING id",
    )
    .bind(created_at)
    .bind(published)
    .bind(outcome)
    .fetch_one(&env.pool)
    .await?;
    Ok(id)
}

async fn ids(env: &TestEnv) -> anyhow::Result<BTreeSet<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM notifications")
        .fetch_all(&env.pool)
        .await?;
    Ok(ids.into_iter().collect())
}

#[tokio::test]
async fn only_done_notifications_older_than_the_cutoff_are_pruned() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let now = Utc::now();
    let old = now - chrono::Duration::hours(2);
    let mut done_old = BTreeSet::new();
    for outcome in ["skipped", "delivered", "failed"] {
        done_old.insert(insert(&env, old, true, Some(outcome)).await?);
    }
    let kept: BTreeSet<i64> = [
        // Not yet published to RabbitMQ.
        insert(&env, old, false, None).await?,
        // Delivered by the webhook but not yet published to RabbitMQ.
        insert(&env, old, false, Some("delivered")).await?,
        // Published, but the webhook still owes it.
        insert(&env, old, true, None).await?,
        // Done, but recent.
        insert(&env, now, true, Some("skipped")).await?,
    ]
    .into();

    // Steps of 2 rows from the oldest: the three done old rows go, the pending ones are
    // stepped over, and the walk stops at the first recent row.
    let cutoff = now - chrono::Duration::hours(1);
    let mut after = 0;
    let mut deleted = Vec::new();
    loop {
        let step = notifications::prune_step(&env.pool, cutoff, after, 2).await?;
        deleted.push(step.deleted);
        match step.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(deleted, [2, 1, 0, 0], "rows deleted per step");
    assert_eq!(ids(&env).await?, kept);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_prunes_old_done_notifications_and_marks_new_ones_skipped_without_a_webhook()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let now = Utc::now();
    let old = now - chrono::Duration::hours(2);
    let mut pruned = BTreeSet::new();
    for _ in 0..50 {
        pruned.insert(insert(&env, old, true, Some("skipped")).await?);
    }
    let owed_to_webhook = insert(&env, old, true, None).await?;
    let recent = insert(&env, now, true, Some("skipped")).await?;
    let pending = insert(&env, now, false, None).await?;

    env.start_sweeper(&["--notification-retention-secs=3600"])?;
    let ok = env
        .eventually(Duration::from_secs(15), || async {
            let left = ids(&env).await?;
            let outcome: Option<String> = sqlx::query_scalar(
                "SELECT webhook_outcome FROM notifications WHERE id = $1 AND published_at IS NOT NULL",
            )
            .bind(pending)
            .fetch_optional(&env.pool)
            .await?
            .flatten();
            Ok(left.is_disjoint(&pruned) && outcome.as_deref() == Some("skipped"))
        })
        .await?;
    assert!(ok, "left: {:?}", ids(&env).await?);
    assert_eq!(
        ids(&env).await?,
        BTreeSet::from([owed_to_webhook, recent, pending])
    );
    env.teardown().await
}

/// Inserts one expiry of `object_id` expired at `at`.
async fn insert_expiry(env: &TestEnv, object_id: i64, at: DateTime<Utc>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO object_expiries (object_id, first_seen, last_seen, expires_at, expired_at)
         VALUES ($1, $2, $2, $2, $2)",
    )
    .bind(object_id)
    .bind(at)
    .execute(&env.pool)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_drops_history_partitions_past_the_retention_and_the_views_still_answer()
-> anyhow::Result<()> {
    use lastseen::store::history;
    let mut env = TestEnv::start(Status::default()).await?;
    let now = Utc::now();
    let old_day = (now - chrono::Duration::days(40)).date_naive();
    // A day of history from before the retention, as a database a year old holds.
    history::ensure_partitions(&env.pool, old_day, 1).await?;
    let old_partition = history::partition_name(old_day);
    let old_at = old_day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    insert_expiry(&env, 1, old_at).await?;
    // Within the retention: kept.
    insert_expiry(&env, 2, now - chrono::Duration::days(3)).await?;
    insert_expiry(&env, 3, now).await?;
    let in_old: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {old_partition}"
    )))
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(in_old, 1, "the old expiry is in its day's partition");

    env.start_sweeper(&["--history-retention-days=30"])?;
    let dropped = env
        .eventually(Duration::from_secs(15), || async {
            let left: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(&old_partition)
                .fetch_one(&env.pool)
                .await?;
            Ok(left.is_none())
        })
        .await?;
    assert!(dropped, "partition {old_partition} was not dropped");

    // The views answer, with what is within the retention.
    let history_ids: Vec<i64> = sqlx::query_scalar(
        "SELECT object_id FROM object_history WHERE expired_at IS NOT NULL ORDER BY object_id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(history_ids, [2, 3]);
    // Partitions for today and the week ahead exist, so expiries never wait for one.
    let days: BTreeSet<chrono::NaiveDate> = history::partitions(&env.pool)
        .await?
        .into_iter()
        .map(|(_, day)| day)
        .collect();
    for ahead in 0..=7 {
        let day = now.date_naive() + chrono::Days::new(ahead);
        assert!(days.contains(&day), "no history partition for {day}");
    }
    env.teardown().await
}
