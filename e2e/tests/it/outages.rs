//! The consumer through outages: a broken RabbitMQ connection is renewed and its work
//! redone; while PostgreSQL is away nothing is acked, and everything is stored after.

use std::time::Duration;

use e2e::fault_proxy::FaultProxy;
use e2e::{Status, TestEnv, post_ids};

async fn stored(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM objects")
        .fetch_one(&env.pool)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reconnects_after_its_broker_connection_drops_and_stores_every_id()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status {
        delay_min_ms: 300,
        delay_max_ms: 1200,
        ..Status::default()
    })
    .await?;
    let proxy = FaultProxy::start(e2e::amqp_server().host()).await?;
    let url = env.start_producer(&[]).await?;
    env.start_consumer(&[&format!("--amqp-url={}", proxy.amqp_url())])?;

    post_ids(&url, &(0..200).collect::<Vec<i64>>()).await?;
    // Checks are in flight when the connection drops; their deliveries come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore().await?;

    let evens: Vec<i64> = (0..200).filter(|id| id % 2 == 0).collect();
    let all_stored = env
        .eventually(Duration::from_secs(30), || async {
            Ok(env.object_ids().await? == evens)
        })
        .await?;
    let topology = env.topology();
    if !all_stored {
        // What a failure needs to be read: where the messages are, and who listens.
        let counts = env.broker.counts(&topology.checks_queue).await;
        let dead = env.ready(&topology.dead_letter_queue).await;
        panic!(
            "stored 30 s after the reconnect: {:?}; work queue {counts:?} (a consumer that never came back has 0 consumers), dead letters {dead:?}",
            env.object_ids().await?
        );
    }
    let drained = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&topology.checks_queue).await? == 0)
        })
        .await?;
    assert!(drained, "the work queue kept messages");
    assert_eq!(env.ready(&topology.dead_letter_queue).await?, 0);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_acks_nothing_while_postgres_is_down_and_stores_every_id_after()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status {
        delay_min_ms: 1,
        delay_max_ms: 20,
        online: "all",
        ..Status::default()
    })
    .await?;
    let proxy = FaultProxy::start(e2e::postgres_server().host()).await?;
    let database = env.database_name().to_owned();
    let through_proxy = format!("--database-url={}", proxy.postgres_url(&database));
    let url = env.start_producer(&["--ids-per-message=50"]).await?;
    let consumer = env.start_consumer(&[&through_proxy, "--shutdown-timeout-ms=1000"])?;
    post_ids(&url, &[1000]).await?;
    let up = env
        .eventually(Duration::from_secs(10), || async {
            Ok(stored(&env).await? == 1)
        })
        .await?;
    assert!(up, "the consumer did not store the first id");

    proxy.cut();
    post_ids(&url, &(0..100).collect::<Vec<i64>>()).await?;
    // The checks answer at once; only the commit is missing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Stopping the consumer now returns whatever it holds: had it acked anything
    // uncommitted, fewer than the two messages would come back.
    env.stop(consumer).await?;
    let checks = env.topology().checks_queue;
    let returned = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&checks).await? == 2)
        })
        .await?;
    assert!(
        returned,
        "messages back in the queue: {}",
        env.ready(&checks).await?
    );
    assert_eq!(stored(&env).await?, 1);

    proxy.restore().await?;
    env.start_consumer(&[&through_proxy])?;
    let all_stored = env
        .eventually(Duration::from_secs(30), || async {
            Ok(stored(&env).await? == 101)
        })
        .await?;
    assert!(
        all_stored,
        "stored after PostgreSQL returned: {}",
        stored(&env).await?
    );
    let drained = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&checks).await? == 0)
        })
        .await?;
    assert!(drained, "the work queue kept messages");
    env.teardown().await
}
