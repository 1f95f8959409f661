//! Publishing under contention: a returned (unroutable) message fails the publish that
//! sent it and no other, and a publish bound covers the wait for a channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::fault_proxy::FaultProxy;
use e2e::{Status, TestEnv};
use lapin::options::QueueDeleteOptions;
use lastseen::session::SessionKeeper;
use lastseen::{CheckMessage, ObjectId};
use producer::{CallbackPublisher, PublishError};
use tokio_util::sync::CancellationToken;

fn check_message(id: i64) -> CheckMessage {
    CheckMessage {
        object_ids: vec![ObjectId::new(id).expect("a valid id")],
        accepted_at: chrono::Utc::now(),
        ttl_secs: None,
        stale_after_secs: None,
        request_id: None,
    }
}

/// Dead letters to an exchange with no queue bound must each fail, while retries
/// published beside them on the same channel must each succeed: RabbitMQ acks several
/// publishes at once, and lapin hands a returned message to whichever of them completes
/// first, so publishes awaiting their confirms together cannot tell whose message came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_dead_letter_fails_itself_never_a_retry_beside_it() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let topology = env.topology();
    // No dead-letter queue: every dead letter is unroutable.
    env.channel
        .queue_delete(
            topology.dead_letter_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    let policy = consumer::RetryPolicy {
        base: Duration::from_secs(600),
        max: Duration::from_secs(600),
        max_attempts: 5,
    };
    topology
        .declare_retry_queue(&env.channel, policy.delay(1))
        .await?;
    let channel = lastseen::amqp::confirm_channel(&env.amqp).await?;
    let retrier = consumer::Retrier::new(channel, topology.clone(), policy);

    const EACH: i64 = 2000;
    let retries = (0..EACH).map(|id| {
        let retrier = &retrier;
        async move {
            retrier
                .retry_or_dead_letter(&check_message(id), 1, "status 503")
                .await
        }
    });
    let dead_letters = (0..EACH).map(|id| {
        let retrier = &retrier;
        async move {
            // Spread over the time the retries take, so the two kinds interleave.
            tokio::time::sleep(Duration::from_millis((id % 500) as u64 * 4)).await;
            let body = serde_json::to_vec(&check_message(id)).expect("serializes");
            retrier.dead_letter(&body, 5, "gave up", None).await
        }
    });
    let (retried, dead_lettered) = tokio::join!(
        futures::future::join_all(retries),
        futures::future::join_all(dead_letters)
    );
    let retries_failed = retried.iter().filter(|r| r.is_err()).count();
    let dead_letters_ok = dead_lettered.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        (retries_failed, dead_letters_ok),
        (0, 0),
        "retries charged with a returned message, dead letters counted done though unroutable"
    );
    assert_eq!(
        env.ready(&topology.retry_queue(policy.delay(1))).await?,
        EACH as u32
    );
    env.teardown().await
}

/// With its only channel held by a publish whose confirms do not come, a second publish
/// gives up within its own bound (so its callback is spooled), not the first one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_bound_covers_the_wait_for_a_channel() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let proxy = FaultProxy::start(e2e::amqp_server().host()).await?;
    let keeper = SessionKeeper::new(
        proxy.amqp_url().as_str().into(),
        "publishing-test",
        env.topology(),
    );
    let stop = CancellationToken::new();
    let kept = tokio::spawn(keeper.clone().run(stop.clone()));
    let publisher = CallbackPublisher::new(keeper, env.topology(), 1);
    publisher
        .publish(&[check_message(1)], Duration::from_secs(10))
        .await?;

    proxy.freeze();
    let holder = tokio::spawn({
        let publisher = Arc::clone(&publisher);
        async move {
            publisher
                .publish(&[check_message(2)], Duration::from_secs(6))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let second = publisher
        .publish(&[check_message(3)], Duration::from_millis(300))
        .await;
    let waited = started.elapsed();
    assert!(matches!(second, Err(PublishError::Timeout)), "{second:?}");
    assert!(
        waited < Duration::from_secs(3),
        "a 300 ms publish waited {waited:?} for the channel another publish held"
    );

    assert!(matches!(holder.await?, Err(PublishError::Timeout)));
    proxy.restore().await?;
    stop.cancel();
    let _ = kept.await;
    env.teardown().await
}

/// A batch put on the wire before its first confirm is waited for still arrives in its
/// order, every message confirmed; a mandatory batch with a message no queue takes
/// fails, an event batch does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_arrives_in_its_order_and_a_mandatory_one_fails_on_an_unroutable_message()
-> anyhow::Result<()> {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions};
    use lastseen::amqp::{self, AmqpError, Outgoing, Routing};

    let env = TestEnv::start(Status::default()).await?;
    let queue = format!("{}.batch-order", env.topology().checks_queue);
    env.channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            amqp::no_args(),
        )
        .await?;
    let channel = amqp::confirm_channel(&env.amqp).await?;

    const COUNT: usize = 2000;
    let numbered: Vec<Outgoing> = (0..COUNT)
        .map(|n| Outgoing {
            routing_key: &queue,
            body: n.to_string().into_bytes(),
            properties: amqp::persistent_json(),
        })
        .collect();
    amqp::publish_batch(&channel, "", numbered, Routing::Mandatory).await?;

    let mut bodies = Vec::with_capacity(COUNT);
    while let Some(message) = env
        .channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        bodies.push(String::from_utf8(message.delivery.data.clone())?);
    }
    let expected: Vec<String> = (0..COUNT).map(|n| n.to_string()).collect();
    assert_eq!(bodies.len(), COUNT, "messages read back");
    assert_eq!(bodies, expected, "the batch's order");

    let unroutable = "no-queue-has-this-name";
    fn three<'a>(keys: [&'a str; 3]) -> Vec<Outgoing<'a>> {
        keys.into_iter()
            .map(|routing_key| Outgoing {
                routing_key,
                body: b"{}".to_vec(),
                properties: amqp::persistent_json(),
            })
            .collect()
    }
    let queue = queue.as_str();
    let mandatory = amqp::publish_batch(
        &channel,
        "",
        three([queue, unroutable, queue]),
        Routing::Mandatory,
    )
    .await;
    assert!(
        matches!(mandatory, Err(AmqpError::Unroutable { .. })),
        "a mandatory batch with an unroutable message: {mandatory:?}"
    );
    // A failed batch's channel is not used again (as the producer and the relay do).
    let channel = amqp::confirm_channel(&env.amqp).await?;
    amqp::publish_batch(
        &channel,
        "",
        three([queue, unroutable, queue]),
        Routing::Event,
    )
    .await?;
    // Each batch's two routable messages were published, the failed one's too.
    let mut routed = 0;
    while let Some(message) = env
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await?
    {
        assert_eq!(message.delivery.data, b"{}", "a routed message's body");
        routed += 1;
    }
    assert_eq!(routed, 4, "routed messages of the two batches of three");
    env.teardown().await
}
