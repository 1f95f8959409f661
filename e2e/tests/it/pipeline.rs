//! End to end: callbacks in, rows out, expiry and its notifications.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::{Status, TestEnv, post_callback, post_ids};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_ids_in_five_callbacks_store_exactly_the_even_ids_and_leave_no_message()
-> anyhow::Result<()> {
    let status = Status::default();
    let longest_delay = Duration::from_millis(status.delay_max_ms);
    let mut env = TestEnv::start(status).await?;
    let url = env.start_connected_producer(&[]).await?;
    env.start_consumer(&[])?;
    env.start_consumer(&[])?;
    // The clock starts with the pipeline up, not with the processes booting.
    env.wait_for_consumers(&env.topology().checks_queue, 2)
        .await?;

    let started = tokio::time::Instant::now();
    for chunk in (0..1000i64).collect::<Vec<_>>().chunks(200) {
        let (code, body) = post_callback(
            &url,
            Some("application/json"),
            json!({ "object_ids": chunk }).to_string(),
        )
        .await?;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body, json!({ "accepted": 200, "spooled": false }));
    }
    let expected: Vec<i64> = (0..1000).filter(|id| id % 2 == 0).collect();
    let stored = env
        .eventually(
            longest_delay + Duration::from_secs(2) - started.elapsed(),
            || async { Ok(env.object_ids().await? == expected) },
        )
        .await?;
    let ids = env.object_ids().await?;
    assert!(
        stored,
        "after {:?}: {} rows, {} of them odd",
        started.elapsed(),
        ids.len(),
        ids.iter().filter(|id| *id % 2 == 1).count()
    );

    // Stop the consumers: anything they still held unacked would become ready again.
    let checks = env.topology().checks_queue;
    env.stop(1).await?;
    env.stop(2).await?;
    assert_eq!(
        env.ready(&checks).await?,
        0,
        "messages left on the work queue"
    );
    assert_eq!(env.ready(&env.topology().dead_letter_queue).await?, 0);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_expire_between_two_and_three_seconds_after_last_sighting_with_one_notification_each()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status {
        delay_min_ms: 50,
        delay_max_ms: 300,
        ..Status::default()
    })
    .await?;
    let url = env.start_producer(&[]).await?;
    env.start_consumer(&["--object-ttl-secs=2"])?;
    env.start_sweeper(&[])?;

    let ids: Vec<i64> = (0..100).collect();
    post_ids(&url, &ids).await?;
    let stored = env
        .eventually(Duration::from_secs(5), || async {
            Ok(env.object_ids().await?.len() == 50)
        })
        .await?;
    assert!(stored, "the 50 even ids were not stored");
    let last_seen: HashMap<i64, DateTime<Utc>> =
        sqlx::query_as("SELECT id, last_seen FROM objects")
            .fetch_all(&env.pool)
            .await?
            .into_iter()
            .collect();

    // Watch the table: note when each row disappears.
    let mut gone_at: HashMap<i64, DateTime<Utc>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while gone_at.len() < last_seen.len() && tokio::time::Instant::now() < deadline {
        let present = env.object_ids().await?;
        let now = Utc::now();
        for id in last_seen.keys() {
            if !present.contains(id) {
                gone_at.entry(*id).or_insert(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gone_at.len(), 50, "not every row expired");
    for (id, gone) in &gone_at {
        let after = (*gone - last_seen[id]).num_milliseconds();
        assert!(
            (2000..3000).contains(&after),
            "id {id} disappeared {after} ms after its last sighting"
        );
    }

    // Exactly one object.online and one object.expired message per object (the latter
    // carrying its last_seen), and digests whose counts add up to the 50 expiries.
    let queue = env.topology().notifications_queue;
    let published = env
        .eventually(Duration::from_secs(3), || async {
            Ok(env.ready(&queue).await? >= 101)
        })
        .await?;
    assert!(published, "notifications were not published");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = env.drain(&queue).await?;
    let mut per_id: HashMap<i64, usize> = HashMap::new();
    let mut online: HashMap<i64, usize> = HashMap::new();
    let mut digested = 0;
    for message in &messages {
        assert!(
            message.properties.message_id().is_some(),
            "message_id is set"
        );
        let body: serde_json::Value = serde_json::from_slice(&message.data)?;
        match message.routing_key.as_str() {
            "object.online" => {
                let id = body["object_id"].as_i64().expect("object_id is an integer");
                *online.entry(id).or_default() += 1;
                continue;
            }
            "digest" => {
                digested += body["expired"].as_u64().expect("expired is a count");
                continue;
            }
            key => assert_eq!(key, "object.expired"),
        }
        let id = body["object_id"].as_i64().expect("object_id is an integer");
        let seen: DateTime<Utc> = body["last_seen"].as_str().expect("last_seen").parse()?;
        let expired: DateTime<Utc> = body["expired_at"].as_str().expect("expired_at").parse()?;
        assert_eq!(
            seen, last_seen[&id],
            "id {id}: last_seen in the notification"
        );
        assert!(
            (expired - seen).num_milliseconds() >= 2000,
            "id {id} expired early"
        );
        *per_id.entry(id).or_default() += 1;
    }
    assert_eq!(digested, 50, "the digests count every expiry once");
    assert_eq!(online.len(), 50);
    assert!(online.values().all(|n| *n == 1));
    assert_eq!(per_id.len(), 50);
    assert!(per_id.values().all(|n| *n == 1));
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_shutdown_lets_in_flight_checks_commit_and_ack() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status {
        delay_min_ms: 800,
        delay_max_ms: 1200,
        online: "all",
        ..Status::default()
    })
    .await?;
    let url = env.start_producer(&[]).await?;
    let consumer = env.start_consumer(&[])?;
    let ids: Vec<i64> = (0..200).collect();
    post_ids(&url, &ids).await?;
    // Stop once the consumer holds every message, while its checks still wait for the
    // status service (800 ms or more).
    let checks = env.topology().checks_queue;
    let taken = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&checks).await? == 0)
        })
        .await?;
    assert!(taken, "the consumer did not take the messages");
    env.stop(consumer).await?;

    assert_eq!(
        env.object_ids().await?,
        ids,
        "in-flight checks were committed before the consumer stopped"
    );
    assert_eq!(
        env.ready(&env.topology().checks_queue).await?,
        0,
        "every message was acked"
    );
    env.teardown().await
}

/// Several batch writers in one consumer commit at once, on the same rows: sightings of
/// the same 200 ids in 20 callbacks, written in batches of a millisecond's gathering by
/// four writers, store each id once with one `object.online` each, and nothing is
/// dead-lettered (no lock cycle between the writers, no failed upsert given up on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_batch_writers_store_the_same_ids_at_once_with_one_event_each() -> anyhow::Result<()>
{
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let url = env.start_producer(&[]).await?;
    let consumer = env.start_consumer(&["--batch-writers=4", "--batch-flush-ms=1"])?;
    let checks = env.topology().checks_queue;
    env.wait_for_consumers(&checks, 1).await?;
    let ids: Vec<i64> = (0..200).collect();
    futures::future::try_join_all((0..20).map(|_| post_ids(&url, &ids))).await?;
    let pool = env.pool.clone();
    let online = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE routing_key = 'object.online'",
        )
        .fetch_one(&pool)
        .await?;
        anyhow::Ok(n)
    };
    let stored = env
        .eventually(Duration::from_secs(20), || async {
            Ok(env.object_ids().await? == ids
                && online().await? == 200
                && env.ready(&checks).await? == 0)
        })
        .await?;
    assert!(
        stored,
        "{} of 200 ids stored, {} object.online",
        env.object_ids().await?.len(),
        online().await?
    );
    // The messages still in hand finish (or go back to the queue) as the consumer stops:
    // none of them may raise a second event or be dead-lettered.
    env.stop(consumer).await?;
    assert_eq!(env.ready(&env.topology().dead_letter_queue).await?, 0);
    assert_eq!(online().await?, 200, "one object.online per id");
    env.teardown().await
}
