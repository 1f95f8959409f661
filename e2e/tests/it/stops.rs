//! A stop is bounded: each service asked to stop returns within its stop limit even when
//! RabbitMQ stops answering mid-run (a frozen connection: no bytes either way, no close),
//! leaving what it had not finished to be delivered again.

use std::time::{Duration, Instant};

use e2e::fault_proxy::FaultProxy;
use e2e::{Status, TestEnv};
use lastseen::shutdown::STOP_MARGIN;

/// The consumer's grace for in-flight work in this test; its stop limit is twice it plus
/// [`STOP_MARGIN`] (`consumer::Config::stop_limit`).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(1_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_stops_within_its_limit_when_rabbitmq_stops_answering() -> anyhow::Result<()>
{
    let mut env = TestEnv::start(Status::slow_all_online()).await?;
    let proxy = FaultProxy::start(e2e::amqp_server().host()).await?;
    let amqp = format!("--amqp-url={}", proxy.amqp_url());
    let shutdown = format!("--shutdown-timeout-ms={}", SHUTDOWN_TIMEOUT.as_millis());
    let consumer = env.start_consumer(&[&amqp, &shutdown])?;
    let sweeper = env.start_sweeper(&[&amqp])?;
    let producer_url = env.start_connected_producer(&[&amqp]).await?;
    let producer = env.components() - 1;
    let checks_queue = env.topology().checks_queue;
    env.wait_for_consumers(&checks_queue, 1).await?;

    // Checks in flight (1.5-2 s each) when the broker goes silent.
    let ids = [1, 2, 3, 4];
    let accepted = reqwest::Client::new()
        .post(&producer_url)
        .json(&serde_json::json!({ "object_ids": ids }))
        .send()
        .await?;
    assert!(accepted.status().is_success(), "{}", accepted.status());
    let taken = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&checks_queue).await? == 0)
        })
        .await?;
    assert!(taken, "the consumer never took the message");
    assert!(
        !env.stored(&ids).await?,
        "the checks finished before the broker went silent, so the stop waited for nothing"
    );

    proxy.freeze();
    let limits = [
        // `consumer::Config::stop_limit`: twice SHUTDOWN_TIMEOUT_MS plus the margin.
        ("consumer", consumer, 2 * SHUTDOWN_TIMEOUT + STOP_MARGIN),
        // `sweeper::Config::stop_limit`: NOTIFY_WEBHOOK_TIMEOUT_MS (5 s) plus the margin.
        ("sweeper", sweeper, Duration::from_secs(5) + STOP_MARGIN),
        ("producer", producer, producer::STOP_LIMIT),
    ];
    let mut late = Vec::new();
    for (name, index, limit) in limits {
        let started = Instant::now();
        env.stop(index).await?;
        let took = started.elapsed();
        // A second of slack for the test's own scheduling on a busy machine.
        if took > limit + Duration::from_secs(1) {
            late.push(format!(
                "{name} took {took:?} to stop (its limit: {limit:?})"
            ));
        }
    }
    assert!(late.is_empty(), "with RabbitMQ silent: {late:?}");

    // The broker sees the stopped consumer's connection go and requeues what it held
    // unacked; a new consumer finishes it: nothing the cut-short stop left is lost.
    proxy.cut();
    env.start_consumer(&[])?;
    let stored = env.stored_within(&ids, Duration::from_secs(60)).await?;
    assert!(
        stored,
        "ids {ids:?} were not stored after the cut-short stop"
    );
    env.teardown().await
}
