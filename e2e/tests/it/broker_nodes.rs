//! `AMQP_URL` naming several nodes of one cluster: every process connects to a node that
//! answers and, when its node is lost, goes on through another, losing nothing. Two
//! proxies in front of the machine's RabbitMQ stand for two nodes here; the real
//! three-node cluster, with kills, partitions and rolling restarts, is `make cluster-chaos`.

use std::time::Duration;

use e2e::fault_proxy::FaultProxy;
use e2e::{Status, TestEnv, base_of, post_callback, until_readiness};

/// POSTs `ids`; returns whether the producer said it spooled them (a 202 either way).
async fn accepted_spooled(url: &str, ids: &[i64]) -> anyhow::Result<bool> {
    let body = serde_json::json!({ "object_ids": ids }).to_string();
    let (code, answer) = post_callback(url, Some("application/json"), body).await?;
    anyhow::ensure!(code == 202, "callback answered {code}: {answer}");
    answer["spooled"]
        .as_bool()
        .ok_or_else(|| anyhow::anyhow!("no `spooled` in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_given_two_nodes_goes_on_through_the_second_when_its_node_is_lost()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let first = FaultProxy::start(e2e::amqp_server().host()).await?;
    let second = FaultProxy::start(e2e::amqp_server().host()).await?;
    let nodes = format!("--amqp-url={},{}", first.amqp_url(), second.amqp_url());
    let url = env.start_connected_producer(&[&nodes]).await?;
    env.start_consumer(&[&nodes])?;
    env.wait_for_consumers(&env.topology().checks_queue, 1)
        .await?;

    assert!(
        !accepted_spooled(&url, &[2, 4]).await?,
        "published through the first node"
    );
    assert!(env.stored_within(&[2, 4], Duration::from_secs(30)).await?);

    // The first node is lost: its connections drop and it refuses new ones.
    first.cut();
    // Both processes reconnect through the second; the producer says so in /readyz, the
    // consumer by subscribing again.
    until_readiness(base_of(&url), "ready", Duration::from_secs(30)).await?;
    env.wait_for_consumers(&env.topology().checks_queue, 1)
        .await?;
    let mut spooled_while_failing_over = 0;
    for batch in [[6, 8], [10, 12], [14, 16]] {
        if accepted_spooled(&url, &batch).await? {
            spooled_while_failing_over += 1;
        }
    }
    assert!(
        spooled_while_failing_over < 3,
        "every callback after the failover was spooled: the producer never published through the second node"
    );
    assert!(
        env.stored_within(&[6, 8, 10, 12, 14, 16], Duration::from_secs(30))
            .await?,
        "ids accepted after the first node was lost were not all stored"
    );
    env.teardown().await
}
