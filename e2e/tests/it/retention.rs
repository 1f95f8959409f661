//! Retention by day partitions. The outbox: a day of notifications is dropped whole once
//! all of it is older than NOTIFICATION_RETENTION_SECS and every notification in it is
//! done (published, and delivered, failed or skipped by the webhook); a day holding one
//! still owed to RabbitMQ or to the webhook is kept whole, whatever its age. The expiry
//! history: a day is dropped once older than HISTORY_RETENTION_DAYS, and the views still
//! answer.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use e2e::{Status, TestEnv};
use lastseen::store::day_partitions::{DayPartitioned, NOTIFICATIONS, OBJECT_EXPIRIES};
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

/// Whether table `name` exists.
async fn exists(env: &TestEnv, name: &str) -> anyhow::Result<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(name)
        .fetch_one(&env.pool)
        .await?;
    Ok(found.is_some())
}

/// Asserts that `table` has its partitions of today and the 7 days ahead.
async fn assert_week_ahead(env: &TestEnv, table: DayPartitioned) -> anyhow::Result<()> {
    let days: BTreeSet<NaiveDate> = table
        .partitions(&env.pool)
        .await?
        .into_iter()
        .map(|(_, day)| day)
        .collect();
    for ahead in 0..=7 {
        let day = Utc::now().date_naive() + chrono::Days::new(ahead);
        assert!(
            days.contains(&day),
            "no {} partition for {day}",
            table.table
        );
    }
    Ok(())
}

/// Noon (UTC) of the day `days` before today, and that day.
fn days_ago(days: i64) -> (DateTime<Utc>, NaiveDate) {
    let day = (Utc::now() - chrono::Duration::days(days)).date_naive();
    (day.and_hms_opt(12, 0, 0).unwrap().and_utc(), day)
}

#[tokio::test]
async fn an_old_day_of_the_outbox_is_dropped_only_once_every_notification_in_it_is_done()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let (all_done_at, all_done_day) = days_ago(3);
    let (owing_at, owing_day) = days_ago(2);
    NOTIFICATIONS.ensure(&env.pool, all_done_day, 2).await?;
    let mut gone = BTreeSet::new();
    for outcome in ["skipped", "delivered", "failed"] {
        gone.insert(insert(&env, all_done_at, true, Some(outcome)).await?);
    }
    let owing: BTreeSet<i64> = [
        insert(&env, owing_at, true, Some("skipped")).await?,
        // Not yet published to RabbitMQ.
        insert(&env, owing_at, false, None).await?,
        // Published, but the webhook still owes it.
        insert(&env, owing_at, true, None).await?,
    ]
    .into();
    let recent = insert(&env, Utc::now(), true, Some("skipped")).await?;
    // Days without a partition of their own (sweepers down for weeks) land in the
    // default partition: its done rows past the cutoff are deleted, the others kept.
    let (long_ago, _) = days_ago(40);
    gone.insert(insert(&env, long_ago, true, Some("delivered")).await?);
    let default_owing = insert(&env, long_ago, false, None).await?;

    let cutoff = Utc::now() - chrono::Duration::days(1);
    let pruned = notifications::drop_before(&env.pool, cutoff).await?;
    assert_eq!(
        pruned,
        notifications::Pruned {
            partitions: 1,
            kept: 1,
            default_rows: 1
        }
    );
    assert!(!exists(&env, &NOTIFICATIONS.partition_name(all_done_day)).await?);
    assert!(exists(&env, &NOTIFICATIONS.partition_name(owing_day)).await?);
    let mut left = owing.clone();
    left.extend([recent, default_owing]);
    assert_eq!(ids(&env).await?, left);
    assert!(ids(&env).await?.is_disjoint(&gone));

    // Once the relay and the webhook are done with that day, it goes too.
    sqlx::query(
        "UPDATE notifications SET published_at = coalesce(published_at, now()),
             webhook_outcome = coalesce(webhook_outcome, 'delivered')
         WHERE id = ANY($1)",
    )
    .bind(owing.iter().copied().collect::<Vec<_>>())
    .execute(&env.pool)
    .await?;
    let pruned = notifications::drop_before(&env.pool, cutoff).await?;
    assert_eq!((pruned.partitions, pruned.kept), (1, 0));
    assert!(!exists(&env, &NOTIFICATIONS.partition_name(owing_day)).await?);
    assert_eq!(ids(&env).await?, BTreeSet::from([recent, default_owing]));
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_committed_while_its_day_is_being_dropped_is_kept() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let (old_at, old_day) = days_ago(3);
    NOTIFICATIONS.ensure(&env.pool, old_day, 1).await?;
    insert(&env, old_at, true, Some("skipped")).await?;
    // A transaction writes a pending notification into that day and has not committed
    // when the retention looks at the day.
    let mut writer = env.pool.begin().await?;
    let pending: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (routing_key, payload, created_at)
         VALUES ('digest', '{}', $1) RETURNING id",
    )
    .bind(old_at)
    .fetch_one(&mut *writer)
    .await?;
    let pool = env.pool.clone();
    let cutoff = Utc::now() - chrono::Duration::days(1);
    let retention = tokio::spawn(async move { notifications::drop_before(&pool, cutoff).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.commit().await?;
    let pruned = retention.await??;
    assert_eq!(
        (pruned.partitions, pruned.kept),
        (0, 1),
        "the day with a notification still owed must be kept"
    );
    assert!(
        ids(&env).await?.contains(&pending),
        "the pending notification was dropped"
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_drops_old_outbox_days_and_marks_new_notifications_skipped_without_a_webhook()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let (old_at, old_day) = days_ago(3);
    let (owing_at, owing_day) = days_ago(4);
    NOTIFICATIONS.ensure(&env.pool, owing_day, 2).await?;
    let mut pruned = BTreeSet::new();
    for _ in 0..50 {
        pruned.insert(insert(&env, old_at, true, Some("skipped")).await?);
    }
    let owed_to_webhook = insert(&env, owing_at, true, None).await?;
    let recent = insert(&env, Utc::now(), true, Some("skipped")).await?;
    let pending = insert(&env, Utc::now(), false, None).await?;

    env.start_sweeper(&["--notification-retention-secs=86400"])?;
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
    assert!(!exists(&env, &NOTIFICATIONS.partition_name(old_day)).await?);
    assert!(exists(&env, &NOTIFICATIONS.partition_name(owing_day)).await?);
    assert_eq!(
        ids(&env).await?,
        BTreeSet::from([owed_to_webhook, recent, pending])
    );
    // The outbox's partitions for today and the week ahead exist too.
    assert_week_ahead(&env, NOTIFICATIONS).await?;
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
    let mut env = TestEnv::start(Status::default()).await?;
    let now = Utc::now();
    let old_day = (now - chrono::Duration::days(40)).date_naive();
    // A day of history from before the retention, as a database a year old holds.
    OBJECT_EXPIRIES.ensure(&env.pool, old_day, 1).await?;
    let old_partition = OBJECT_EXPIRIES.partition_name(old_day);
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
            Ok(!exists(&env, &old_partition).await?)
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
    assert_week_ahead(&env, OBJECT_EXPIRIES).await?;
    env.teardown().await
}
