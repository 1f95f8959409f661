//! The producer's memory through a slow broker: 10,000 callbacks (`make memory-check`:
//! 100,000) while every byte to and from RabbitMQ is half a second late (so no publish is
//! confirmed within its bound), then the broker quick again. Its resident memory must stay
//! bounded: no confirm, channel or callback may be kept per callback. The figures are
//! printed for the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::fault_proxy::FaultProxy;
use e2e::process::free_port;
use e2e::{Status, TestEnv};
use futures::StreamExt;
use tester::callback::{Answer, CallbackClient};

/// Callbacks posted while the broker is slow (`MEMORY_TEST_CALLBACKS` overrides).
const CALLBACKS: u64 = 10_000;

/// Resident memory of process `pid` in MiB, from /proc.
fn resident_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_memory_stays_bounded_through_callbacks_to_a_slow_broker() -> anyhow::Result<()> {
    let callbacks: u64 = std::env::var("MEMORY_TEST_CALLBACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CALLBACKS);
    let env = TestEnv::start(Status::default()).await?;
    let proxy = FaultProxy::start(e2e::amqp_server().host()).await?;
    let port = free_port()?;
    let mut settings = env.process_env();
    settings.retain(|(k, _)| *k != "AMQP_URL");
    settings.push(("AMQP_URL", proxy.amqp_url()));
    settings.push(("CALLBACK_ADDR", format!("127.0.0.1:{port}")));
    let producer = e2e::process::start("producer", &settings)?;
    let pid = producer.pid().expect("the producer runs");
    let url = format!("http://127.0.0.1:{port}/callback");
    let client = CallbackClient::new(&url, Duration::from_secs(30))?;
    let started = tokio::time::Instant::now();
    while !client.post(&[0]).await.is_accepted() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the producer never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_start = resident_mib(pid).unwrap_or(0);

    proxy.slow(Duration::from_millis(500));
    let peak = Arc::new(AtomicU64::new(at_start));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                if let Some(mib) = resident_mib(pid) {
                    peak.fetch_max(mib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let answers: Vec<Answer> = futures::stream::iter(0..callbacks)
        .map(|n| {
            let client = client.clone();
            async move { client.post(&[n as i64 % 1000]).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let refused = answers.iter().filter(|a| !a.is_accepted()).count();
    assert_eq!(
        refused, 0,
        "callbacks not accepted while the broker was slow"
    );
    let after_slow = resident_mib(pid).unwrap_or(0);
    let peak_slow = peak.load(Ordering::Relaxed);

    proxy.restore().await?;
    let checks = env.topology().checks_queue;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while u64::from(env.ready(&checks).await?) < callbacks + 1 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the spool was not drained within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_drain = resident_mib(pid).unwrap_or(0);
    sampler.abort();
    let peak_all = peak.load(Ordering::Relaxed).max(after_drain);
    eprintln!(
        "producer RSS: {at_start} MiB at start, peak {peak_slow} MiB and {after_slow} MiB after \
         {callbacks} callbacks to a broker 0.5 s away each way, {after_drain} MiB once the \
         spool was drained (peak {peak_all} MiB)"
    );
    // A confirm, channel or buffered body kept per callback would take far more than this.
    assert!(
        peak_all < at_start + 256,
        "the producer grew from {at_start} to {peak_all} MiB"
    );
    drop(producer);
    env.teardown().await
}
