//! What operators see, from the real binaries as separate processes: `/metrics` counts what
//! happened, and `/readyz` turns not ready within 5 s of PostgreSQL or RabbitMQ going
//! away (the producer: "degraded", since it spools) and ready again after they return;
//! a callback's request id shows up in the consumer's logs.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use e2e::fault_proxy::FaultProxy;
use e2e::process::{free_port, scrape};
use e2e::{Status, TestEnv, post_callback, post_ids, readiness, until_readiness};
use harness::process::Process;
use serde_json::Value;

/// Replaces (or adds) `key` in a process environment.
fn with(
    mut env: Vec<(&'static str, String)>,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    for (key, value) in extra {
        env.retain(|(k, _)| k != key);
        env.push((key, value.clone()));
    }
    env
}

/// Starts `program` with `env` and `extra` on a free port (the producer's callback port,
/// the others' metrics port); returns the process and that port's base URL. Drop the
/// process before the test's teardown: one still running declares its queues and
/// exchanges again once teardown has deleted them, and they would stay on the broker.
fn start_on_free_port(
    program: &str,
    env: &[(&'static str, String)],
    extra: &[(&'static str, String)],
) -> anyhow::Result<(Process, String)> {
    let port = free_port()?;
    let address = if program == "producer" {
        "CALLBACK_ADDR"
    } else {
        "METRICS_ADDR"
    };
    let mut settings = extra.to_vec();
    settings.push((address, format!("127.0.0.1:{port}")));
    let process = e2e::process::start(program, &with(env.to_vec(), &settings))?;
    Ok((process, format!("http://127.0.0.1:{port}")))
}

/// Polls `/readyz` until its `status` field is `wanted`; returns how long that took.
async fn until_status(base: &str, wanted: &str, within: Duration) -> anyhow::Result<Duration> {
    Ok(until_readiness(base, wanted, within).await?.0)
}

fn sample(metrics: &HashMap<String, f64>, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_serves_metrics_that_count_what_happened() -> anyhow::Result<()> {
    let env = TestEnv::start(Status {
        delay_min_ms: 1,
        delay_max_ms: 20,
        ..Status::default()
    })
    .await?;
    let base = env.process_env();
    // A 5 s publish bound: the counts below say "published", and a busy CI runner can
    // miss the default 200 ms once.
    let (_producer, producer) = start_on_free_port(
        "producer",
        &base,
        &[
            ("IDS_PER_MESSAGE", "50".into()),
            ("PUBLISH_TIMEOUT_MS", "5000".into()),
        ],
    )?;
    let (_consumer, consumer) =
        start_on_free_port("consumer", &base, &[("OBJECT_TTL_SECS", "2".into())])?;
    let (_sweeper, sweeper) = start_on_free_port("sweeper", &base, &[])?;
    for endpoint in [&producer, &consumer, &sweeper] {
        until_status(endpoint, "ready", Duration::from_secs(60)).await?;
    }

    // 200 ids accepted in two callbacks (50 shared), 75 distinct even (online) ones.
    let callback = format!("{producer}/callback");
    post_ids(&callback, &(0..100).collect::<Vec<i64>>()).await?;
    post_ids(&callback, &(50..150).collect::<Vec<i64>>()).await?;
    let (code, _) = post_callback(&callback, Some("application/json"), "{not json").await?;
    assert_eq!(code, 400);

    // Stored, then expired 2 s later, then every notification published.
    let pool = env.pool.clone();
    let settled = env
        .eventually(Duration::from_secs(30), || {
            let pool = pool.clone();
            async move {
                let (expired, pending): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE routing_key = 'object.expired'),
                            count(*) FILTER (WHERE published_at IS NULL)
                     FROM notifications",
                )
                .fetch_one(&pool)
                .await?;
                Ok(expired == 75 && pending == 0)
            }
        })
        .await?;
    assert!(settled, "75 expiries were not all published within 30 s");
    // The sweeper's gauge of pending notifications is set after its relay round.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let p = scrape(&format!("{producer}/metrics")).await?;
    assert_eq!(
        sample(&p, r#"lastseen_callbacks_total{outcome="published"}"#),
        2.0,
        "{p:?}"
    );
    assert_eq!(
        sample(&p, r#"lastseen_callbacks_total{outcome="malformed_json"}"#),
        1.0
    );
    assert_eq!(sample(&p, "lastseen_ids_accepted_total"), 200.0);
    assert_eq!(sample(&p, "lastseen_ids_published_total"), 200.0);
    assert_eq!(sample(&p, "lastseen_ids_spooled_total"), 0.0);
    assert_eq!(
        sample(
            &p,
            r#"lastseen_publish_confirm_seconds_count{outcome="confirmed"}"#
        ),
        2.0
    );

    let c = scrape(&format!("{consumer}/metrics")).await?;
    assert_eq!(
        sample(&c, r#"lastseen_status_checks_total{outcome="online"}"#),
        100.0,
        "{c:?}"
    );
    assert_eq!(
        sample(&c, r#"lastseen_status_checks_total{outcome="offline"}"#),
        100.0
    );
    assert_eq!(
        sample(
            &c,
            r#"lastseen_status_check_seconds_count{outcome="online"}"#
        ),
        100.0
    );
    assert_eq!(sample(&c, "lastseen_ids_stored_total"), 100.0);
    assert_eq!(sample(&c, "lastseen_objects_online_total"), 75.0);
    assert_eq!(
        sample(&c, r#"lastseen_deliveries_total{redelivered="false"}"#),
        4.0
    );
    assert_eq!(sample(&c, "lastseen_checks_in_flight"), 0.0);
    assert!(sample(&c, "lastseen_upsert_batch_rows_count") >= 1.0);
    assert_eq!(sample(&c, "lastseen_upsert_batch_rows_sum"), 100.0);

    let s = scrape(&format!("{sweeper}/metrics")).await?;
    assert_eq!(sample(&s, "lastseen_objects_expired_total"), 75.0, "{s:?}");
    assert_eq!(
        sample(
            &s,
            r#"lastseen_notifications_recorded_total{routing_key="object.expired"}"#
        ),
        75.0
    );
    // 75 object.online (recorded by the consumer), 75 object.expired, and a digest per
    // expiry transaction.
    let digests = sample(
        &s,
        r#"lastseen_notifications_recorded_total{routing_key="digest"}"#,
    );
    assert!(digests >= 1.0, "{s:?}");
    assert_eq!(
        sample(&s, "lastseen_notifications_published_total"),
        150.0 + digests
    );
    assert_eq!(sample(&s, "lastseen_notifications_pending"), 0.0);
    assert_eq!(sample(&s, "lastseen_expiry_lag_seconds_count"), 75.0);
    // The watermark: the producer and the consumer report; nothing held.
    assert_eq!(sample(&s, "lastseen_progress_reporters"), 2.0);
    assert_eq!(sample(&s, "lastseen_expiry_held"), 0.0);
    let lag = sample(&s, "lastseen_expiry_watermark_lag_seconds");
    assert!((0.0..5.0).contains(&lag), "watermark lag {lag} s");
    assert_eq!(sample(&s, "lastseen_expiry_hold_bound_reached_total"), 0.0);
    drop((_producer, _consumer, _sweeper));
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_not_ready_within_five_seconds_of_an_outage_and_ready_after()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let broker = FaultProxy::start(e2e::amqp_server().host()).await?;
    let postgres = FaultProxy::start(e2e::postgres_server().host()).await?;
    let database = env.database_name().to_owned();
    let base = with(
        env.process_env(),
        &[
            ("AMQP_URL", broker.amqp_url()),
            ("DATABASE_URL", postgres.postgres_url(&database)),
        ],
    );
    let (_producer, producer) = start_on_free_port("producer", &base, &[])?;
    let (_consumer, consumer) = start_on_free_port("consumer", &base, &[])?;
    let (_sweeper, sweeper) = start_on_free_port("sweeper", &base, &[])?;
    for endpoint in [&producer, &consumer, &sweeper] {
        until_status(endpoint, "ready", Duration::from_secs(60)).await?;
    }
    let five = Duration::from_secs(5);

    postgres.cut();
    for endpoint in [&consumer, &sweeper] {
        let took = until_status(endpoint, "not ready", five).await?;
        let (code, body) = readiness(endpoint).await;
        assert_eq!(code, 503, "{body}");
        assert_ne!(body["checks"]["postgresql"], "ok", "{body}");
        println!("{endpoint}: not ready {took:?} after PostgreSQL went away");
    }
    postgres.restore().await?;
    for endpoint in [&consumer, &sweeper] {
        let took = until_status(endpoint, "ready", Duration::from_secs(30)).await?;
        println!("{endpoint}: ready again {took:?} after PostgreSQL returned");
    }

    broker.cut();
    let took = until_status(&producer, "degraded", five).await?;
    println!("producer: degraded {took:?} after RabbitMQ went away");
    for endpoint in [&consumer, &sweeper] {
        let took = until_status(endpoint, "not ready", five).await?;
        let (_, body) = readiness(endpoint).await;
        assert_ne!(body["checks"]["rabbitmq"], "ok", "{body}");
        println!("{endpoint}: not ready {took:?} after RabbitMQ went away");
    }
    broker.restore().await?;
    for endpoint in [&producer, &consumer, &sweeper] {
        let took = until_status(endpoint, "ready", Duration::from_secs(60)).await?;
        println!("{endpoint}: ready again {took:?} after RabbitMQ returned");
    }
    drop((_producer, _consumer, _sweeper));
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_the_callback_into_the_consumer_logs() -> anyhow::Result<()> {
    // Every status call fails, so the consumer logs the retry of the callback's ids.
    let env = TestEnv::start(Status {
        delay_min_ms: 1,
        delay_max_ms: 5,
        fail_rate: 1.0,
        ..Status::default()
    })
    .await?;
    let base = with(
        env.process_env(),
        &[("LOG_FORMAT", "json".into()), ("RUST_LOG", "info".into())],
    );
    let (producer_process, producer) = start_on_free_port("producer", &base, &[])?;
    let (consumer, consumer_url) = start_on_free_port("consumer", &base, &[])?;
    until_status(&producer, "ready", Duration::from_secs(60)).await?;
    until_status(&consumer_url, "ready", Duration::from_secs(60)).await?;

    let client = lastseen::tls::http_client().build()?;
    let answer = client
        .post(format!("{producer}/callback"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-test-42")
        .body(r#"{"object_ids":[7]}"#)
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 202);
    assert_eq!(answer.headers()["x-request-id"], "req-test-42");
    // Without one, the producer makes one (a UUID) and answers with it.
    let answer = client
        .post(format!("{producer}/callback"))
        .header("content-type", "application/json")
        .body(r#"{"object_ids":[8]}"#)
        .send()
        .await?;
    let made = answer.headers()["x-request-id"].to_str()?.to_owned();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");

    let mut found = None;
    for _ in 0..100 {
        let log = std::fs::read_to_string(consumer.log())?;
        found = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|event| {
                event["message"] == "check failed, retrying later"
                    && event["span"]["request_id"] == "req-test-42"
            });
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = found.with_context(|| {
        format!(
            "no retry logged with request_id req-test-42 in {}",
            consumer.log().display()
        )
    })?;
    assert_eq!(event["span"]["name"], "delivery", "{event}");
    // LOG_FORMAT=json: every line of both logs is one JSON object with a level and a time.
    for log in [consumer.log(), producer_process.log()] {
        let text = std::fs::read_to_string(log)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("not JSON in {}: {line}", log.display()))?;
            assert!(
                value["level"].is_string() && value["timestamp"].is_string(),
                "{line}"
            );
        }
    }
    drop((producer_process, consumer));
    env.teardown().await
}

/// The `application_name` of every connection to the test's database, sorted.
async fn connection_names(env: &TestEnv) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT application_name FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid() ORDER BY 1",
    )
    .bind(env.database_name())
    .fetch_all(&env.pool)
    .await?)
}

/// An administrator tells in `pg_stat_activity` which process holds a connection: each
/// binary names its own (`lastseen-consumer`, `lastseen-sweeper`), and a name the
/// operator gave in `DATABASE_URL` is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_binary_names_its_postgresql_connections() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::quick_all_online()).await?;
    let base = env.process_env();
    let (_consumer, consumer) = start_on_free_port("consumer", &base, &[])?;
    let (_sweeper, sweeper) = start_on_free_port("sweeper", &base, &[])?;
    for endpoint in [&consumer, &sweeper] {
        until_status(endpoint, "ready", Duration::from_secs(60)).await?;
    }
    let wanted = ["lastseen-consumer", "lastseen-sweeper"];
    let named = env
        .eventually(Duration::from_secs(10), || async {
            let names = connection_names(&env).await?;
            Ok(wanted.iter().all(|w| names.iter().any(|n| n == w)))
        })
        .await?;
    assert!(
        named,
        "connections named {:?}, wanted {wanted:?} among them",
        connection_names(&env).await?
    );

    let separator = if env.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let own_name = format!(
        "{}{separator}application_name=night-sweeper",
        env.database_url
    );
    let (_named_sweeper, named_sweeper) =
        start_on_free_port("sweeper", &with(base, &[("DATABASE_URL", own_name)]), &[])?;
    until_status(&named_sweeper, "ready", Duration::from_secs(60)).await?;
    let kept = env
        .eventually(Duration::from_secs(10), || async {
            Ok(connection_names(&env)
                .await?
                .iter()
                .any(|n| n == "night-sweeper"))
        })
        .await?;
    assert!(
        kept,
        "the name in DATABASE_URL was not kept: connections named {:?}",
        connection_names(&env).await?
    );
    drop((_consumer, _sweeper, _named_sweeper));
    env.teardown().await
}
