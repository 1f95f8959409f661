//! Webhook delivery: every notification POSTed once delivered, signed the Standard Webhooks
//! way, retried after a failure; a dead webhook ends in "failed" and never holds expiry;
//! two sweepers and a slow receiver still send each notification once.

use std::time::Duration;

use chrono::Utc;
use e2e::{Status, TestEnv};
use serde_json::Value;
use tester::webhook_receiver::{Behaviour, WebhookReceiver};

/// A webhook that answers 500 to its first request and 204 to the others.
async fn start_receiver() -> anyhow::Result<WebhookReceiver> {
    let behaviour = Behaviour {
        fail_first: 1,
        ..Behaviour::default()
    };
    WebhookReceiver::start("127.0.0.1:0".parse()?, behaviour).await
}

/// A webhook that takes 3 s over every request.
async fn start_slow_receiver() -> anyhow::Result<WebhookReceiver> {
    let behaviour = Behaviour {
        delay: Duration::from_secs(3),
        ..Behaviour::default()
    };
    WebhookReceiver::start("127.0.0.1:0".parse()?, behaviour).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_reaches_the_webhook_signed_and_is_retried_after_a_failure()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let receiver = start_receiver().await?;
    env.start_sweeper(&[
        &format!("--notify-webhook-url={}", receiver.url()),
        "--notify-webhook-secret=s3cret",
        "--notify-webhook-retry-base-ms=100",
    ])?;
    env.insert_objects(&[1, 2, 3], Utc::now()).await?;

    // Three object.expired and one digest, all delivered (one after a 500).
    let pool = env.pool.clone();
    let delivered = env
        .eventually(Duration::from_secs(20), || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM notifications WHERE webhook_outcome = 'delivered'",
                )
                .fetch_one(&pool)
                .await?;
                Ok(n == 4)
            }
        })
        .await?;
    assert!(delivered, "not every notification was delivered");
    let rows: Vec<(i64, String, Value, i32)> = sqlx::query_as(
        "SELECT id, routing_key, payload, webhook_attempts FROM notifications ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await?;
    let retried: i32 = rows.iter().map(|r| r.3).sum();
    assert_eq!(
        retried, 5,
        "four deliveries, one of them on its second attempt"
    );

    let requests = receiver.requests();
    assert_eq!(requests.len(), 5);
    for (id, routing_key, payload, _) in &rows {
        let (headers, body) = requests
            .iter()
            .rev()
            .find(|(h, _)| h["webhook-id"] == id.to_string().as_str())
            .expect("a request per notification");
        assert_eq!(headers["x-lastseen-event"], routing_key.as_str());
        assert_eq!(headers["content-type"], "application/json");
        // Standard Webhooks: signed over id, timestamp and body, the timestamp current.
        let timestamp: i64 = headers["webhook-timestamp"].to_str()?.parse()?;
        assert!(
            (Utc::now().timestamp() - timestamp).abs() < 60,
            "{timestamp}"
        );
        assert_eq!(
            headers["webhook-signature"],
            sweeper::webhook::signature(b"s3cret", &id.to_string(), timestamp, body).as_str()
        );
        assert_eq!(&serde_json::from_slice::<Value>(body)?, payload);
    }

    // A notification's AMQP message and its webhook request carry the same bytes.
    let published = env.drain(&env.topology().notifications_queue).await?;
    assert_eq!(published.len(), 4, "notifications published to RabbitMQ");
    for message in &published {
        let id = message
            .properties
            .message_id()
            .as_ref()
            .expect("a notification has a message_id")
            .as_str();
        let (_, body) = requests
            .iter()
            .rev()
            .find(|(h, _)| h["webhook-id"] == id)
            .expect("a request per notification");
        assert_eq!(
            String::from_utf8_lossy(&message.data),
            String::from_utf8_lossy(&body[..]),
            "notification {id}: the message's body and the webhook's"
        );
    }
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_ends_in_failed_and_never_holds_expiry() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // Nothing listens on port 1. The URL holds a password and a key, which analysts
    // reading `webhook_error` must not see.
    env.start_sweeper(&[
        "--notify-webhook-url=http://hook:secretpw@127.0.0.1:1/hook/secretpw?key=secretpw",
        "--notify-webhook-secret=s3cret",
        "--notify-webhook-retry-base-ms=50",
        "--notify-webhook-max-attempts=3",
    ])?;
    env.insert_objects(&[1, 2, 3], Utc::now()).await?;

    let pool = env.pool.clone();
    let settled = env
        .eventually(Duration::from_secs(20), || {
            let pool = pool.clone();
            async move {
                let (failed, expired, published): (i64, i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE webhook_outcome = 'failed'),
                            (SELECT count(*) FROM object_expiries),
                            count(*) FILTER (WHERE published_at IS NOT NULL)
                     FROM notifications",
                )
                .fetch_one(&pool)
                .await?;
                Ok(failed == 4 && expired == 3 && published == 4)
            }
        })
        .await?;
    assert!(
        settled,
        "expected 4 failed deliveries, 3 expiries, 4 published"
    );
    let (attempts, error): (i32, String) = sqlx::query_as(
        "SELECT webhook_attempts, webhook_error FROM notifications ORDER BY id LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(attempts, 3);
    assert!(error.contains("could not be reached"), "{error}");
    assert!(!error.contains("secretpw"), "{error}");
    assert!(env.object_ids().await?.is_empty());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_and_a_slow_webhook_deliver_each_notification_once_in_one_attempt()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let receiver = start_slow_receiver().await?;
    for _ in 0..2 {
        env.start_sweeper(&[
            &format!("--notify-webhook-url={}", receiver.url()),
            "--notify-webhook-secret=s3cret",
        ])?;
    }
    let ids: Vec<i64> = (1..=200).collect();
    env.insert_objects(&ids, Utc::now()).await?;

    let pool = env.pool.clone();
    let settled = env
        .eventually(Duration::from_secs(120), || {
            let pool = pool.clone();
            async move {
                let (expired, undelivered): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM object_expiries),
                            count(*) FILTER (WHERE webhook_outcome IS DISTINCT FROM 'delivered')
                     FROM notifications",
                )
                .fetch_one(&pool)
                .await?;
                Ok(expired == 200 && undelivered == 0)
            }
        })
        .await?;
    assert!(settled, "not every notification was delivered within 120 s");
    // Leases that ran out while a request was on its way would show as second requests.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let rows: Vec<(i64, i32)> =
        sqlx::query_as("SELECT id, webhook_attempts FROM notifications ORDER BY id")
            .fetch_all(&env.pool)
            .await?;
    assert!(rows.len() > 200, "200 expiries and their digests");
    let more_than_one: Vec<&(i64, i32)> = rows.iter().filter(|(_, a)| *a != 1).collect();
    assert!(
        more_than_one.is_empty(),
        "rows not delivered in one attempt: {more_than_one:?}"
    );
    let per_id = receiver.per_webhook_id();
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "webhook-ids received more than once: {twice:?}"
    );
    assert_eq!(per_id.len(), rows.len(), "every notification received");
    env.teardown().await
}
