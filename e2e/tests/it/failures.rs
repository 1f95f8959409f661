//! Failures of one message stay with that message: status errors are retried with
//! growing delays and then dead-lettered with their reason; malformed messages go
//! straight to the dead-letter queue. A setting that contradicts the existing queue stops
//! the consumer with an error naming it.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Parser;
use e2e::{Status, TestEnv};
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn header(delivery: &lapin::message::Delivery, key: &str) -> Option<AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

async fn publish_raw(env: &TestEnv, body: &[u8]) -> anyhow::Result<()> {
    let topology = env.topology();
    env.channel
        .basic_publish(
            topology.callbacks_exchange.as_str().into(),
            "check".into(),
            BasicPublishOptions::default(),
            body,
            lastseen::amqp::persistent_json(),
        )
        .await?
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_are_retried_with_growing_delays_then_dead_lettered_with_reason()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status {
        delay_min_ms: 0,
        delay_max_ms: 0,
        fail_rate: 1.0,
        ..Status::default()
    })
    .await?;
    env.start_consumer(&[
        "--max-attempts=4",
        "--retry-base-ms=200",
        "--retry-max-ms=10000",
    ])?;
    let started = tokio::time::Instant::now();
    let body = json!({ "object_ids": [42], "accepted_at": chrono::Utc::now() }).to_string();
    publish_raw(&env, body.as_bytes()).await?;

    let dead = env.topology().dead_letter_queue;
    let arrived = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&dead).await? == 1)
        })
        .await?;
    assert!(arrived, "the message did not reach the dead-letter queue");
    // Delays 200 + 400 + 800 ms between the four attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "dead-lettered after {:?}",
        started.elapsed()
    );
    let letters = env.drain(&dead).await?;
    assert_eq!(letters.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&letters[0].data)?;
    assert_eq!(body["object_ids"], json!([42]));
    assert_eq!(
        header(&letters[0], "x-attempt"),
        Some(AMQPValue::LongLongInt(4))
    );
    match header(&letters[0], "x-reason") {
        Some(AMQPValue::LongString(reason)) => {
            assert!(reason.to_string().contains("500"), "reason: {reason}");
        }
        other => panic!("x-reason header missing: {other:?}"),
    }
    assert_eq!(env.object_ids().await?, Vec::<i64>::new());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_goes_to_the_dead_letter_queue_and_others_are_still_stored()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status {
        delay_min_ms: 0,
        delay_max_ms: 10,
        online: "all",
        ..Status::default()
    })
    .await?;
    env.start_consumer(&[])?;
    publish_raw(&env, b"this is not a check message").await?;
    let good = json!({ "object_ids": [7], "accepted_at": chrono::Utc::now() }).to_string();
    publish_raw(&env, good.as_bytes()).await?;

    let dead = env.topology().dead_letter_queue;
    let arrived = env
        .eventually(Duration::from_secs(5), || async {
            Ok(env.ready(&dead).await? == 1 && env.object_ids().await? == vec![7])
        })
        .await?;
    assert!(
        arrived,
        "dead letters: {}, rows: {:?}",
        env.ready(&dead).await?,
        env.object_ids().await?
    );
    let letters = env.drain(&dead).await?;
    assert_eq!(letters[0].data, b"this is not a check message");
    match header(&letters[0], "x-reason") {
        Some(AMQPValue::LongString(reason)) => assert!(reason.to_string().contains("malformed")),
        other => panic!("x-reason header missing: {other:?}"),
    }
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_status_answer_fails_only_its_own_id() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // A status service that answers garbage for id 1 and "online" for every other id.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let status_url = format!("http://{}", listener.local_addr()?);
    let router = Router::new().route(
        "/objects/{id}",
        get(
            |axum::extract::Path(id): axum::extract::Path<i64>| async move {
                if id == 1 {
                    "{\"id\": 1, \"online\": maybe}".to_owned()
                } else {
                    json!({ "id": id, "online": true }).to_string()
                }
            },
        ),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    env.start_consumer(&[
        &format!("--status-url={status_url}"),
        "--max-attempts=2",
        "--retry-base-ms=100",
    ])?;
    let body = json!({ "object_ids": [1, 2, 3], "accepted_at": chrono::Utc::now() }).to_string();
    publish_raw(&env, body.as_bytes()).await?;

    let dead = env.topology().dead_letter_queue;
    let settled = env
        .eventually(Duration::from_secs(5), || async {
            Ok(env.object_ids().await? == vec![2, 3] && env.ready(&dead).await? == 1)
        })
        .await?;
    assert!(settled, "rows: {:?}", env.object_ids().await?);
    let letters = env.drain(&dead).await?;
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].data)?;
    assert_eq!(
        letter["object_ids"],
        json!([1]),
        "only the failed id is dead-lettered"
    );
    server.abort();
    env.teardown().await
}

#[tokio::test]
async fn consumer_stops_with_a_clear_error_when_the_queue_exists_with_another_delivery_limit()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    // The test's topology is declared with a delivery-limit of 20.
    let config = consumer::Config::try_parse_from([
        "consumer".to_owned(),
        format!("--amqp-url={}", e2e::amqp_url()),
        format!("--database-url={}", env.database_url),
        format!("--topology-prefix={}", env.prefix),
        format!("--notifications-exchange={}", env.notifications_exchange),
        format!("--status-url={}", env.status_url),
        "--delivery-limit=5".to_owned(),
        "--metrics-addr=127.0.0.1:0".to_owned(),
    ])?;
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        consumer::Application::new(config).run_until_stopped(CancellationToken::new()),
    )
    .await
    .context("the consumer kept retrying instead of stopping")?;
    let err = outcome.expect_err("a mismatched queue must stop the consumer");
    let message = format!("{err:#}");
    assert!(message.contains("DELIVERY_LIMIT"), "{message}");
    assert!(message.contains(&env.topology().checks_queue), "{message}");
    env.teardown().await
}
