//! `lastseenctl replay-dead-letters` moves dead letters back to work, and their ids are then
//! stored.

use std::time::Duration;

use clap::Parser;
use e2e::{Status, TestEnv};
use lapin::options::BasicPublishOptions;

/// The command line of the replay, as an admin would type it.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    replay: lastseenctl::replay::ReplayArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_go_back_to_work_and_their_ids_are_stored() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let topology = env.topology();
    // Two letters as the consumer leaves them after MAX_ATTEMPTS.
    for ids in [vec![1, 2, 3], vec![40, 41]] {
        env.dead_letter(&ids, "status service answered 500").await?;
    }
    let dead = topology.dead_letter_queue.clone();
    let arrived = env
        .eventually(Duration::from_secs(5), || async {
            Ok(env.ready(&dead).await? == 2)
        })
        .await?;
    assert!(arrived, "the letters did not reach the dead-letter queue");

    let cli = Cli::try_parse_from([
        "replay-dead-letters".to_owned(),
        format!("--amqp-url={}", e2e::amqp_url()),
        format!("--topology-prefix={}", env.prefix),
        format!("--notifications-exchange={}", env.notifications_exchange),
    ])?;
    let replayed = lastseenctl::replay::run(cli.replay).await?;
    assert_eq!(
        replayed,
        lastseenctl::replay::Replayed {
            messages: 2,
            ids: 5,
            unreadable: 0
        }
    );
    assert_eq!(env.ready(&dead).await?, 0);

    // Replayed letters start over: the attempt count is gone.
    let work = env.drain(&topology.checks_queue).await?;
    assert_eq!(work.len(), 2);
    for letter in &work {
        let attempt = letter
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-attempt").cloned());
        assert_eq!(attempt, None);
    }
    // Put them back (as the replay left them) and let a consumer store them.
    for letter in &work {
        env.channel
            .basic_publish(
                topology.callbacks_exchange.as_str().into(),
                lastseen::topology::CHECK_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &letter.data,
                lastseen::amqp::persistent_json(),
            )
            .await?
            .await?;
    }
    env.start_consumer(&[])?;
    let stored = env
        .eventually(Duration::from_secs(20), || async {
            Ok(env.object_ids().await? == vec![1, 2, 3, 40, 41])
        })
        .await?;
    assert!(stored, "stored: {:?}", env.object_ids().await?);
    env.teardown().await
}
