//! A broken session is not the message's failure: however often the consumer's connection
//! breaks while a message is in flight (broker flaps, restarts), the message is checked
//! and stored in the end, never dead-lettered for it by the queue's delivery limit.

use std::time::Duration;

use e2e::fault_proxy::FaultProxy;
use e2e::{Status, TestEnv};
use lapin::options::QueueDeleteOptions;
use lastseen::topology::Topology;

/// The work queue's delivery limit in this test: small, so a few breaks pass it.
const DELIVERY_LIMIT: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_through_many_session_breaks_is_stored_not_dead_lettered()
-> anyhow::Result<()> {
    // Every check takes 1.5 to 2 s, so the message is in flight when the connection is cut.
    let mut env = TestEnv::start(Status::slow_all_online()).await?;
    let mut args = env.topology_args();
    args.delivery_limit = DELIVERY_LIMIT;
    let topology = Topology::new(&args);
    env.channel
        .queue_delete(
            topology.checks_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    topology.declare(&env.channel).await?;

    let proxy = FaultProxy::start(e2e::amqp_server().host()).await?;
    env.start_consumer(&[
        &format!("--amqp-url={}", proxy.amqp_url()),
        &format!("--delivery-limit={DELIVERY_LIMIT}"),
    ])?;
    env.publish_check(&[42]).await?;

    // Three times the limit: each break returns the message to the queue, and RabbitMQ
    // counts it as a delivery.
    let breaks = 3 * DELIVERY_LIMIT;
    for n in 1..=breaks {
        let in_flight = env
            .eventually(Duration::from_secs(30), || async {
                let counts = env.broker.counts(&topology.checks_queue).await?;
                Ok(counts.consumers == 1 && counts.ready == 0)
            })
            .await?;
        assert!(in_flight, "break {n}: the consumer never took the message");
        assert!(
            !env.stored(&[42]).await?,
            "break {n}: the check finished before the cut, so the break tested nothing"
        );
        assert_eq!(
            env.ready(&topology.dead_letter_queue).await?,
            0,
            "dead-lettered after {} session breaks (delivery limit {DELIVERY_LIMIT})",
            n - 1
        );
        proxy.cut();
        // Back in the queue once RabbitMQ saw the connection close.
        let returned = env
            .eventually(Duration::from_secs(10), || async {
                Ok(env.broker.counts(&topology.checks_queue).await?.consumers == 0)
            })
            .await?;
        assert!(returned, "break {n}: RabbitMQ kept the consumer");
        proxy.restore().await?;
    }

    let stored = env.stored_within(&[42], Duration::from_secs(60)).await?;
    let dead = env.ready(&topology.dead_letter_queue).await?;
    assert_eq!(dead, 0, "dead-lettered after {breaks} session breaks");
    assert!(stored, "id 42 was not stored after {breaks} session breaks");
    let left = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.ready(&topology.checks_queue).await? == 0)
        })
        .await?;
    assert!(left, "a message was left in the work queue");
    env.teardown().await
}
