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
