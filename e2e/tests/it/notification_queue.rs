//! `{prefix}.notifications`, the queue bound to every notification, keeps only the latest
//! NOTIFICATIONS_QUEUE_MAX_LENGTH: a queue nobody reads never fills the broker.

use e2e::{Status, TestEnv};
use lapin::BasicProperties;
use lapin::options::QueueDeleteOptions;
use lastseen::topology::{EXPIRED_ROUTING_KEY, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_queue_keeps_the_latest_and_drops_the_oldest() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    // The test's topology declared the queue with the default bound: again with 10.
    let mut args = env.topology_args();
    args.notifications_queue_max_length = 10;
    let topology = Topology::new(&args);
    env.channel
        .queue_delete(
            topology.notifications_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    topology.declare(&env.channel).await?;

    let channel = lastseen::amqp::confirm_channel(&env.amqp).await?;
    for n in 0..25 {
        lastseen::amqp::publish_mandatory(
            &channel,
            &topology.notifications_exchange,
            EXPIRED_ROUTING_KEY,
            format!("{{\"n\":{n}}}").as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    let kept = env.drain(&topology.notifications_queue).await?;
    let numbers: Vec<i64> = kept
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.data)
                .map(|v| v["n"].as_i64().unwrap_or(-1))
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(numbers, (15..25).collect::<Vec<_>>(), "the latest ten");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_queue_declared_with_another_bound_is_a_refused_setting()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let mut args = env.topology_args();
    args.notifications_queue_max_length = 10;
    let channel = env.amqp.create_channel().await?;
    let refused = Topology::new(&args).declare(&channel).await;
    let message = match refused {
        Err(lastseen::amqp::AmqpError::Refused(misconfigured)) => misconfigured.to_string(),
        other => panic!("expected a refused setting, got {other:?}"),
    };
    assert!(
        message.starts_with("invalid configuration: NOTIFICATIONS_QUEUE_MAX_LENGTH"),
        "{message}"
    );
    assert!(message.contains("rabbitmqctl delete_queue"), "{message}");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_notification_queue_events_nobody_subscribed_to_are_still_published()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // No queue is bound to the notifications exchange at all.
    env.channel
        .queue_delete(
            env.topology().notifications_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    env.start_sweeper(&["--notifications-queue-max-length=0"])?;
    env.insert_objects(&[1, 2, 3], chrono::Utc::now()).await?;
    let pool = env.pool.clone();
    let published = env
        .eventually(std::time::Duration::from_secs(20), || {
            let pool = pool.clone();
            async move {
                let (all, published): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE published_at IS NOT NULL)
                     FROM notifications",
                )
                .fetch_one(&pool)
                .await?;
                Ok(all >= 4 && published == all)
            }
        })
        .await?;
    assert!(
        published,
        "the relay must not hold events nobody subscribed to"
    );
    env.teardown().await
}
