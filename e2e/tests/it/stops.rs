//! A stop is bounded: each service asked to stop returns within its stop limit even when
//! RabbitMQ stops answering mid-run (a frozen connection: no bytes either way, no close),
//! leaving what it had not finished to be delivered again.

use std::time::{Duration, Instant};

use e2e::fault_proxy::FaultProxy;
use e2e::{Status, TestEnv};

/// The consumer's grace for in-flight work in this test; its stop limit is twice it plus
/// `lastseen::shutdown::STOP_MARGIN` (`consumer::Config::stop_limit`).
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
    env.wait_for_consumers(&env.topology().checks_queue, 1)
        .await?;
    // Checks in flight (1.5-2 s each) when the broker goes silent.
    let accepted = reqwest::Client::new()
        .post(&producer_url)
        .json(&serde_json::json!({ "object_ids": [1, 2, 3, 4] }))
        .send()
        .await?;
    assert!(accepted.status().is_success(), "{}", accepted.status());
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.freeze();
    let limits = [
        (
            "consumer",
            consumer,
            2 * SHUTDOWN_TIMEOUT + lastseen::shutdown::STOP_MARGIN,
        ),
        ("sweeper", sweeper, sweeper::STOP_LIMIT),
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
    proxy.restore().await?;
    assert!(late.is_empty(), "with RabbitMQ silent: {late:?}");
    env.teardown().await
}
