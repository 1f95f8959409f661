//! The work queue deleted under a running pipeline (an admin's mistake, or a queue
//! recreated to change its arguments): the pipeline declares it again by itself, checks
//! in flight still store their ids, even when their consumer dies right after (it
//! re-published them), and callbacks answered meanwhile are all published once it is
//! back.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::process::{free_port, start};
use e2e::{Status, TestEnv, post_ids};
use lapin::options::QueueDeleteOptions;
use serde_json::json;

async fn delete_work_queue(env: &TestEnv) -> anyhow::Result<()> {
    env.channel
        .queue_delete(
            env.topology().checks_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_flight_when_its_queue_is_deleted_is_stored_and_the_consumer_subscribes_again()
-> anyhow::Result<()> {
    // Checks take 1.5 to 2 s: the message is in flight when the queue goes.
    let mut env = TestEnv::start(Status::slow_all_online()).await?;
    let checks = env.topology().checks_queue;
    env.start_consumer(&[])?;
    env.wait_for_consumers(&checks, 1).await?;
    env.publish_check(&[42]).await?;
    let in_flight = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&checks).await? == 0)
        })
        .await?;
    assert!(in_flight, "the consumer never took the message");
    assert!(
        !env.stored(&[42]).await?,
        "the check finished before the deletion, so the deletion tested nothing"
    );

    delete_work_queue(&env).await?;
    let resubscribed = env
        .eventually(Duration::from_secs(15), || async {
            Ok(env
                .broker
                .counts(&checks)
                .await
                .is_ok_and(|c| c.consumers == 1))
        })
        .await?;
    assert!(
        resubscribed,
        "the consumer did not subscribe to the declared-again queue"
    );
    assert!(
        env.stored_within(&[42], Duration::from_secs(10)).await?,
        "the check in flight when its queue was deleted was not stored"
    );
    // And the new queue is worked.
    env.publish_check(&[43]).await?;
    assert!(
        env.stored_within(&[43], Duration::from_secs(15)).await?,
        "a check published to the declared-again queue was not stored"
    );
    env.teardown().await
}

/// Checks a consumer held when their queue was deleted survive that consumer killed -9
/// right after: RabbitMQ dropped them with the queue, so the consumer re-publishes what
/// it holds to the queue declared again, and a consumer started later checks them. Before,
/// the consumer's copies were the only ones, and killing it lost every id (`make chaos`
/// lost 19 so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_held_when_the_queue_is_deleted_survive_their_consumer_killed_at_once()
-> anyhow::Result<()> {
    // Checks take 6 to 7 s: every one is still in flight when the consumer is killed.
    let mut env = TestEnv::start(Status {
        delay_min_ms: 6000,
        delay_max_ms: 7000,
        ..Status::slow_all_online()
    })
    .await?;
    let checks = env.topology().checks_queue;
    let mut settings = env.process_env();
    settings.extend([
        ("METRICS_ADDR", format!("127.0.0.1:{}", free_port()?)),
        ("RUST_LOG", "info,sqlx=warn".into()),
    ]);
    let mut consumer = start("consumer", &settings)?;
    env.wait_for_consumers(&checks, 1).await?;
    let ids: Vec<i64> = (1..=40).collect();
    for message in ids.chunks(4) {
        env.publish_check(message).await?;
    }
    let taken = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&checks).await? == 0)
        })
        .await?;
    assert!(taken, "the consumer never took the messages");

    delete_work_queue(&env).await?;
    let log = consumer.log().to_owned();
    let rehomed = env
        .eventually(Duration::from_secs(3), || async {
            Ok(std::fs::read_to_string(&log)?.contains("re-published the deliveries in hand"))
        })
        .await?;
    let stored_then: i64 = sqlx::query_scalar("SELECT count(*) FROM objects")
        .fetch_one(&env.pool)
        .await?;
    consumer.kill9().await?;
    assert_eq!(
        stored_then, 0,
        "checks finished before the kill, so the kill tested nothing"
    );
    assert!(
        rehomed,
        "the consumer did not say within 3 s of the deletion that it re-published what it \
         held: {}",
        std::fs::read_to_string(&log)?
    );

    env.start_consumer(&[])?;
    let stored = env.stored_within(&ids, Duration::from_secs(30)).await?;
    let kept: Vec<i64> = sqlx::query_scalar("SELECT id FROM objects ORDER BY id")
        .fetch_all(&env.pool)
        .await?;
    assert!(
        stored,
        "ids lost with the consumer killed after its queue was deleted and what it held \
         re-published: stored {} of {}: {kept:?}; its log: {}",
        kept.len(),
        ids.len(),
        std::fs::read_to_string(&log)?
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_after_the_work_queue_is_deleted_are_spooled_until_the_producer_declares_it_again()
-> anyhow::Result<()> {
    // No consumer: only the producer can notice the queue is gone.
    let mut env = TestEnv::start(Status::default()).await?;
    let url = env
        .start_connected_producer(&["--ids-per-message=1"])
        .await?;
    let checks = env.topology().checks_queue;
    delete_work_queue(&env).await?;

    let mut sent = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (mut spooled, mut direct) = (0, false);
    while !direct && tokio::time::Instant::now() < deadline {
        let id = sent.len() as i64;
        let (status, answer) = e2e::post_callback(
            &url,
            Some("application/json"),
            json!({ "object_ids": [id] }).to_string(),
        )
        .await?;
        assert_eq!(status, 202, "{answer}");
        sent.insert(id);
        direct = answer["spooled"] == json!(false);
        if !direct {
            spooled += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spooled > 0,
        "no callback was spooled: the deletion was not noticed"
    );
    assert!(
        direct,
        "{} callbacks after the deletion were all spooled: the work queue was not declared again",
        sent.len()
    );
    post_ids(&url, &[1000]).await?;
    sent.insert(1000);

    // Every id, spooled or not, reaches the declared-again queue.
    let mut published = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while published != sent && tokio::time::Instant::now() < deadline {
        for delivery in env.drain(&checks).await? {
            let message: lastseen::CheckMessage = serde_json::from_slice(&delivery.data)?;
            published.extend(message.object_ids.iter().map(|id| id.get()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        published, sent,
        "not every accepted id reached the work queue"
    );
    env.teardown().await
}
