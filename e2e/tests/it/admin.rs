//! `lastseenctl`, the real binary, against the test's queues and database: dead letters
//! listed and peeked without being taken, purged only when confirmed; an object and the
//! events as PostgreSQL has them; a producer's spool; `doctor` on a healthy and a broken
//! setup; completions and the man page.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::{Status, TestEnv, base_of};

/// Runs `lastseenctl args...` with the test's settings in its environment.
fn lastseenctl(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut command = Command::new(e2e::process::binaries().expect("built").join("lastseenctl"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AMQP_URL", e2e::amqp_url())
        .env("TOPOLOGY_PREFIX", &env.prefix)
        .env("NOTIFICATIONS_EXCHANGE", &env.notifications_exchange)
        .env("DATABASE_URL", &env.database_url)
        .env("STATUS_URL", &env.status_url)
        .env("LOG_FORMAT", "text")
        .stdin(Stdio::null())
        // Its own folder: no `.env` of the repository is read.
        .current_dir(std::env::temp_dir());
    for (key, value) in extra {
        command.env(key, value);
    }
    command.output().expect("lastseenctl runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_peeked_in_place_and_purged_only_when_confirmed()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    env.dead_letter(&[1, 2, 3], "status service answered 500")
        .await?;
    env.dead_letter(&[40, 41], "status service timed out after 10s")
        .await?;
    let dead = env.topology().dead_letter_queue;
    assert!(
        env.eventually(Duration::from_secs(5), || async {
            Ok(env.ready(&dead).await? == 2)
        })
        .await?
    );

    let listed = lastseenctl(&env, &["dead-letters", "list"], &[]);
    let shown = text(&listed);
    assert!(listed.status.success(), "{shown}");
    assert!(shown.starts_with("2 dead letters"), "{shown}");
    assert!(shown.contains("status service answered 500"), "{shown}");
    assert!(
        shown.contains("status service timed out after 10s"),
        "{shown}"
    );
    assert!(
        shown.contains("1,2,3") && shown.contains("40,41"),
        "{shown}"
    );
    let peeked = lastseenctl(&env, &["dead-letters", "peek", "2"], &[]);
    let shown = text(&peeked);
    assert!(peeked.status.success(), "{shown}");
    assert!(
        shown.contains("x-reason: status service timed out after 10s"),
        "{shown}"
    );
    assert!(shown.contains("\"object_ids\""), "{shown}");
    // Browsing took nothing and kept the order.
    let again = text(&lastseenctl(&env, &["dead-letters", "list"], &[]));
    let first_ids = |listing: &str| listing.lines().nth(2).map(str::to_owned);
    assert_eq!(first_ids(&again), first_ids(&text(&listed)), "{again}");
    assert!(
        env.eventually(Duration::from_secs(5), || async {
            Ok(env.ready(&dead).await? == 2)
        })
        .await?,
        "list and peek must leave the letters in place"
    );

    // No terminal to confirm on, no --yes: nothing is purged.
    let refused = lastseenctl(&env, &["dead-letters", "purge"], &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--yes"), "{}", text(&refused));
    assert_eq!(env.ready(&dead).await?, 2);
    let purged = lastseenctl(&env, &["dead-letters", "purge", "--yes"], &[]);
    assert!(purged.status.success(), "{}", text(&purged));
    assert!(
        text(&purged).contains("purged 2 dead letters"),
        "{}",
        text(&purged)
    );
    assert_eq!(env.ready(&dead).await?, 0);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_events_and_the_spool_are_told_as_they_are() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    sqlx::raw_sql(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at)
         VALUES (3, now() - interval '1 minute', now(), now() + interval '30 seconds');
         INSERT INTO object_expiries (object_id, first_seen, last_seen, expires_at, expired_at)
         VALUES (3, now() - interval '2 hours', now() - interval '90 minutes', now() - interval '89 minutes', now() - interval '88 minutes');
         INSERT INTO notifications (routing_key, object_id, payload)
         SELECT 'object.online', id, jsonb_build_object('object_id', id) FROM generate_series(1, 5) AS id;",
    )
    .execute(&env.pool)
    .await?;

    let object = lastseenctl(&env, &["object", "3"], &[]);
    let shown = text(&object);
    assert!(object.status.success(), "{shown}");
    assert!(shown.starts_with("object 3: online since"), "{shown}");
    assert_eq!(shown.matches(" -> ").count(), 2, "two stretches: {shown}");
    let unknown = lastseenctl(&env, &["object", "77"], &[]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown).contains("object 77 was never seen"),
        "{}",
        text(&unknown)
    );

    let tail = lastseenctl(&env, &["events", "tail", "--after", "0"], &[]);
    let shown = String::from_utf8_lossy(&tail.stdout).into_owned();
    assert!(tail.status.success(), "{}", text(&tail));
    let objects: Vec<&str> = shown
        .lines()
        .map(|line| line.split("  ").nth(3).unwrap_or_default())
        .collect();
    assert_eq!(objects, ["1", "2", "3", "4", "5"], "{shown}");
    let last_two = lastseenctl(&env, &["events", "tail", "--last", "2"], &[]);
    assert_eq!(String::from_utf8_lossy(&last_two.stdout).lines().count(), 2);

    let producer = base_of(&env.start_producer(&[]).await?).to_owned();
    let spool = lastseenctl(&env, &["spool", "status", "--producer-url", &producer], &[]);
    assert!(spool.status.success(), "{}", text(&spool));
    assert!(text(&spool).contains("is empty"), "{}", text(&spool));
    let away = lastseenctl(
        &env,
        &["spool", "status", "--producer-url", "http://127.0.0.1:9"],
        &[],
    );
    assert_eq!(away.status.code(), Some(1));
    assert!(text(&away).contains("does not answer"), "{}", text(&away));
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_working_setup_and_names_what_is_broken() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let producer = base_of(&env.start_producer(&[]).await?).to_owned();
    let analyst = env.analyst_url().await?;
    let management = e2e::management_url();
    let settings = [
        ("PRODUCER_URL", producer.as_str()),
        ("READ_DATABASE_URL", analyst.as_str()),
        ("MANAGEMENT_URL", management.as_str()),
    ];
    let healthy = lastseenctl(&env, &["doctor"], &settings);
    let shown = text(&healthy);
    assert!(healthy.status.success(), "{shown}");
    for line in [
        "ok    PostgreSQL ",
        "ok    schema current",
        "reads and cannot write",
        "takes connections",
        "ok    RabbitMQ 3.",
        "status service at",
        "producer at",
    ] {
        assert!(shown.contains(line), "no {line:?} in:\n{shown}");
    }
    assert!(!shown.contains("FAIL"), "{shown}");

    // RabbitMQ's port closed, the read login with a writer, the producer gone.
    let broken = lastseenctl(
        &env,
        &["doctor"],
        &[
            ("AMQP_URL", "amqp://guest:secretpw@127.0.0.1:9/%2f"),
            ("READ_DATABASE_URL", env.database_url.as_str()),
            ("PRODUCER_URL", "http://127.0.0.1:9"),
            ("MANAGEMENT_URL", management.as_str()),
        ],
    );
    let shown = text(&broken);
    assert_eq!(broken.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("FAIL  RabbitMQ node amqp://guest:***@127.0.0.1:9"),
        "{shown}"
    );
    assert!(
        shown.contains("may write: give the read API a read-only login"),
        "{shown}"
    );
    assert!(
        shown.contains("FAIL  producer at http://127.0.0.1:9/readyz does not answer"),
        "{shown}"
    );
    assert!(
        !shown.contains("secretpw"),
        "a password was shown:\n{shown}"
    );
    env.teardown().await
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    let bin = e2e::process::binaries().expect("built").join("lastseenctl");
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            script.contains("dead-letters") && script.contains("doctor"),
            "{shell}"
        );
    }
    let man = Command::new(&bin).arg("man").output().expect("runs");
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH lastseenctl 1"), "{page}");
    assert!(page.contains("dead\\-letters"), "{page}");
}
