//! The test environment leaves the shared machine as it found it: after a test's
//! teardown no queue or exchange of its topology is left on the broker, and its
//! processes' logs are kept with the build, not in the machine's temporary folder.

use std::time::Duration;

use e2e::{Status, TestEnv, post_ids};

#[tokio::test]
async fn teardown_leaves_no_queue_or_exchange_of_the_test_behind() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let prefix = format!("{}.", env.topology_args().topology_prefix);
    let url = env.start_connected_producer(&[]).await?;
    env.start_consumer(&[])?;
    env.start_sweeper(&[])?;
    post_ids(&url, &[1, 2, 3]).await?;
    assert!(
        env.stored_within(&[1, 2, 3], Duration::from_secs(30))
            .await?,
        "the ids were not stored"
    );
    // Listed before teardown too, so an empty list after it means deleted, not a
    // `rabbitmqctl` that could not list.
    let queues = harness::broker_admin::local_queue_names(&prefix).await;
    let exchanges = harness::broker_admin::local_exchange_names(&prefix).await;
    assert!(
        queues.len() >= 3 && exchanges.len() >= 4,
        "the test's queues and exchanges cannot be listed: {queues:?} {exchanges:?}"
    );
    // A test may close the environment's channel with a refused declaration (a passive
    // one of a queue that does not exist): teardown must clean up all the same.
    let refused = env
        .channel
        .queue_declare(
            format!("{prefix}no-such-queue").as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(refused.is_err(), "a passive declaration of a missing queue");

    env.teardown().await?;

    let queues = harness::broker_admin::local_queue_names(&prefix).await;
    let exchanges = harness::broker_admin::local_exchange_names(&prefix).await;
    assert!(queues.is_empty(), "queues left behind: {queues:?}");
    assert!(exchanges.is_empty(), "exchanges left behind: {exchanges:?}");
    Ok(())
}

#[tokio::test]
async fn a_started_binarys_log_is_kept_with_the_build() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::quick_all_online()).await?;
    let mut settings = env.process_env();
    settings.retain(|(key, _)| *key != "RUST_LOG");
    settings.push(("RUST_LOG", "info".into()));
    let mut sweeper = e2e::process::start("sweeper", &settings)?;
    let log = sweeper.log().to_owned();
    // The sweeper's own words, not only the header the harness writes.
    let running = env
        .eventually(Duration::from_secs(30), || async {
            Ok(std::fs::read_to_string(&log)?.contains("sweeper running"))
        })
        .await?;
    sweeper.stop(Duration::from_secs(10)).await;
    env.teardown().await?;

    let build = e2e::process::binaries()?;
    assert!(
        log.starts_with(&build),
        "{} is not under {}",
        log.display(),
        build.display()
    );
    assert!(running, "{} holds no 'sweeper running' line", log.display());
    Ok(())
}
