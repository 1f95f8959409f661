//! Our own lag never expires an object: objects named in callbacks that keep coming are
//! not expired while the consumers are stopped, the status service fails, or PostgreSQL
//! is away, however long past their deadline; they still expire once the callbacks stop.
//!
//! Sizes are a smoke run by default; `make expiry-hold-check` runs the sizes
//! (HOLD_OBJECTS=1000 HOLD_PERIOD_SECS=5 HOLD_TTL_SECS=30 HOLD_OUTAGE_SECS=60).

use std::time::Duration;

use e2e::fault_proxy::FaultProxy;
use e2e::process::{free_port, scrape, start};
use e2e::{Status, TestEnv, readiness, until_readiness};
use harness::process::Process;
use tokio_util::sync::CancellationToken;

/// The scenario's sizes, from the environment.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    objects: i64,
    period: Duration,
    ttl_secs: u64,
    outage: Duration,
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Sizes {
    fn from_env() -> Self {
        Self {
            objects: setting("HOLD_OBJECTS", 200) as i64,
            period: Duration::from_secs(setting("HOLD_PERIOD_SECS", 1)),
            ttl_secs: setting("HOLD_TTL_SECS", 6),
            outage: Duration::from_secs(setting("HOLD_OUTAGE_SECS", 12)),
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    ConsumersStopped,
    StatusFailing,
    PostgresStopped,
}

/// The pipeline as processes: what the scenario strikes.
struct Pipeline {
    _producer: Process,
    callback_url: String,
    consumer: Process,
    consumer_env: Vec<(&'static str, String)>,
    _sweeper: Process,
    sweeper_metrics: String,
    /// Between the consumer and sweeper and PostgreSQL (the producer has none).
    postgres: FaultProxy,
}

async fn start_pipeline(env: &TestEnv, alert_secs: u64) -> anyhow::Result<Pipeline> {
    let postgres = FaultProxy::start(e2e::postgres_server().host()).await?;
    let database = env.database_name().to_owned();
    let through_proxy = postgres.postgres_url(&database);
    let with = |extra: Vec<(&'static str, String)>| {
        let mut all = env.process_env();
        all.extend(extra);
        all
    };
    let callback_port = free_port()?;
    let producer = start(
        "producer",
        &with(vec![(
            "CALLBACK_ADDR",
            format!("127.0.0.1:{callback_port}"),
        )]),
    )?;
    let consumer_env = with(vec![
        ("DATABASE_URL", through_proxy.clone()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let consumer = start("consumer", &consumer_env)?;
    let sweeper_port = free_port()?;
    let sweeper = start(
        "sweeper",
        &with(vec![
            ("DATABASE_URL", through_proxy),
            ("METRICS_ADDR", format!("127.0.0.1:{sweeper_port}")),
            ("EXPIRY_HOLD_ALERT_SECS", alert_secs.to_string()),
            // Set to 1 to see the scenario without the watermark (it fails).
            (
                "MAX_EXPIRY_HOLD_SECS",
                setting("HOLD_MAX_EXPIRY_HOLD_SECS", 300).to_string(),
            ),
        ]),
    )?;
    let callback_base = format!("http://127.0.0.1:{callback_port}");
    until_readiness(&callback_base, "ready", Duration::from_secs(60)).await?;
    let sweeper_base = format!("http://127.0.0.1:{sweeper_port}");
    until_readiness(&sweeper_base, "ready", Duration::from_secs(60)).await?;
    Ok(Pipeline {
        _producer: producer,
        callback_url: format!("{callback_base}/callback"),
        consumer,
        consumer_env,
        _sweeper: sweeper,
        sweeper_metrics: format!("{sweeper_base}/metrics"),
        postgres,
    })
}

/// Posts every id with the TTL each period until `stop`; returns the callbacks that were
/// not accepted.
async fn drive(url: String, sizes: Sizes, stop: CancellationToken) -> anyhow::Result<u64> {
    let ids: Vec<i64> = (0..sizes.objects).collect();
    let body = serde_json::json!({ "object_ids": ids, "ttl_secs": sizes.ttl_secs }).to_string();
    let mut refused = 0;
    let mut ticks = tokio::time::interval(sizes.period);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let (code, _) = e2e::post_callback(&url, Some("application/json"), body.clone()).await?;
        if code != 202 {
            refused += 1;
        }
    }
    Ok(refused)
}

async fn count(env: &TestEnv, sql: &'static str, objects: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .bind(objects)
        .fetch_one(&env.pool)
        .await?)
}

/// Stretches of one object that overlap: each stretch runs from `first_seen` to its
/// deadline, expired ones in `object_expiries`, the current one in `objects`.
const OVERLAPPING_STRETCHES: &str = "
    WITH stretches AS (
        SELECT object_id, first_seen, expires_at, 'expired-' || expired_at::text AS which
        FROM object_expiries WHERE object_id < $1
        UNION ALL
        SELECT id, first_seen, expires_at, 'current' FROM objects WHERE id < $1
    )
    SELECT count(*) FROM stretches a JOIN stretches b
        ON a.object_id = b.object_id AND a.which < b.which
       AND a.first_seen < b.expires_at AND b.first_seen < a.expires_at";

async fn scenario(outage: Outage) -> anyhow::Result<()> {
    let sizes = Sizes::from_env();
    let env = TestEnv::start(Status {
        delay_min_ms: 100,
        delay_max_ms: 500,
        online: "all",
        ..Status::default()
    })
    .await?;
    // Lagging is told once the watermark is this far behind; the status delay is 0.5 s.
    let alert_secs = 5;
    let mut pipeline = start_pipeline(&env, alert_secs).await?;
    let stop_driving = CancellationToken::new();
    let driver = tokio::spawn(drive(
        pipeline.callback_url.clone(),
        sizes,
        stop_driving.clone(),
    ));
    let n = sizes.objects;
    let all_stored = env
        .eventually(Duration::from_secs(60), || async {
            Ok(count(&env, "SELECT count(*) FROM objects WHERE id < $1", n).await? == n)
        })
        .await?;
    assert!(
        all_stored,
        "the objects were not all stored before the outage"
    );

    // An object no callback names, due in the middle of the outage: it is silent, and
    // expires on time unless the whole pipeline's expiry is held.
    let silent = 1_000_000_000_i64;
    let silent_deadline =
        chrono::Utc::now() + chrono::Duration::from_std(sizes.outage / 2).unwrap_or_default();
    env.insert_objects(&[silent], silent_deadline).await?;

    // The outage, with the sweeper's hold watched once a second.
    let started = tokio::time::Instant::now();
    match outage {
        Outage::ConsumersStopped => {
            pipeline.consumer.stop(Duration::from_secs(15)).await;
        }
        Outage::StatusFailing => env
            .status_outage
            .store(true, std::sync::atomic::Ordering::Relaxed),
        Outage::PostgresStopped => pipeline.postgres.cut(),
    }
    let mut held_seen = 0.0_f64;
    let mut expiry_said = String::new();
    while started.elapsed() < sizes.outage {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(samples) = scrape(&pipeline.sweeper_metrics).await {
            held_seen = held_seen.max(samples.get("lastseen_expiry_held").copied().unwrap_or(0.0));
        }
        let (_, body) = readiness(pipeline.sweeper_metrics.trim_end_matches("/metrics")).await;
        if let Some(said) = body["checks"]["expiry"].as_str() {
            expiry_said = said.to_owned();
        }
    }
    let silent_expired_in_outage = !env.stored(&[silent]).await?;
    match outage {
        Outage::ConsumersStopped => {
            pipeline.consumer = start("consumer", &pipeline.consumer_env)?;
        }
        Outage::StatusFailing => env
            .status_outage
            .store(false, std::sync::atomic::Ordering::Relaxed),
        Outage::PostgresStopped => pipeline.postgres.restore().await?,
    }
    let ended = tokio::time::Instant::now();

    // Recovery: every object is seen again after the outage; then a TTL more, in which a
    // false expiry would show.
    let fresh = env
        .eventually(Duration::from_secs(120), || async {
            let since = chrono::Utc::now()
                - chrono::Duration::from_std(ended.elapsed()).unwrap_or_default();
            let fresh: i64 =
                sqlx::query_scalar("SELECT count(*) FROM objects WHERE id < $1 AND last_seen > $2")
                    .bind(n)
                    .bind(since)
                    .fetch_one(&env.pool)
                    .await?;
            Ok(fresh == n)
        })
        .await?;
    assert!(fresh, "not every object was seen again after the outage");
    tokio::time::sleep(sizes.ttl() + sizes.period * 2).await;
    let lagging: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'state' FROM notifications WHERE routing_key = 'pipeline.lagging' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await?;
    stop_driving.cancel();
    let refused = driver.await??;

    let expired = count(
        &env,
        "SELECT count(*) FROM notifications WHERE routing_key = 'object.expired' AND object_id < $1",
        n,
    )
    .await?;
    let stored = count(&env, "SELECT count(*) FROM objects WHERE id < $1", n).await?;
    let overlapping = count(&env, OVERLAPPING_STRETCHES, n).await?;
    eprintln!(
        "{outage:?}: {n} objects, outage {:?}; object.expired during it and after: {expired}; stored after: {stored}; overlapping stretches: {overlapping}; silent object expired during it: {silent_expired_in_outage}; lastseen_expiry_held seen: {held_seen}; /readyz expiry during it: {expiry_said:?}; pipeline.lagging: {lagging:?}; callbacks refused: {refused}",
        sizes.outage
    );
    assert_eq!(
        expired, 0,
        "objects were expired while callbacks naming them kept coming"
    );
    assert_eq!(stored, n, "every object is stored after the outage");
    assert_eq!(overlapping, 0, "stretches of one object overlap");
    assert_eq!(refused, 0, "callbacks were refused");
    if outage == Outage::StatusFailing {
        // Failed ids wait in retry queues, each held on its own: the rest of the
        // pipeline is current, and a silent object expires on time.
        assert!(
            silent_expired_in_outage,
            "a silent object was held by others' retries"
        );
        assert_eq!(
            held_seen, 0.0,
            "expiry was held for everyone: /readyz said {expiry_said:?}"
        );
        assert!(lagging.is_empty(), "pipeline.lagging raised: {lagging:?}");
    } else {
        // The pipeline itself lagged: expiry was held, and said so.
        assert!(
            !silent_expired_in_outage,
            "expired while the pipeline was behind"
        );
        assert_eq!(held_seen, 1.0, "the held gauge never showed the hold");
        assert!(
            expiry_said.starts_with("held"),
            "/readyz said {expiry_said:?}"
        );
        assert_eq!(
            lagging,
            ["started", "ended"],
            "one pipeline.lagging start and end"
        );
    }

    // Objects that stop appearing in callbacks still expire.
    let all_expired = env
        .eventually(sizes.ttl() + Duration::from_secs(30), || async {
            Ok(count(&env, "SELECT count(*) FROM objects WHERE id < $1", n).await? == 0)
        })
        .await?;
    assert!(all_expired, "silent objects did not expire");
    let overlapping = count(&env, OVERLAPPING_STRETCHES, n).await?;
    assert_eq!(
        overlapping, 0,
        "stretches of one object overlap after expiry"
    );
    drop(pipeline);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_not_expired_while_the_consumers_are_stopped() -> anyhow::Result<()> {
    scenario(Outage::ConsumersStopped).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_not_expired_while_the_status_service_fails() -> anyhow::Result<()> {
    scenario(Outage::StatusFailing).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_not_expired_while_postgres_is_away() -> anyhow::Result<()> {
    scenario(Outage::PostgresStopped).await
}

/// POSTs `ids` with a TTL; returns whether the callback was spooled.
async fn post_with_ttl(url: &str, ids: &[i64], ttl_secs: u64) -> anyhow::Result<bool> {
    let body = serde_json::json!({ "object_ids": ids, "ttl_secs": ttl_secs }).to_string();
    let (code, answer) = e2e::post_callback(url, Some("application/json"), body).await?;
    anyhow::ensure!(code == 202, "callback answered {code}: {answer}");
    Ok(answer["spooled"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sweeper_waits_for_a_producer_it_cannot_hear() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let broker = FaultProxy::start(e2e::amqp_server().host()).await?;
    let url = env
        .start_connected_producer(&[&format!("--amqp-url={}", broker.amqp_url())])
        .await?;
    env.start_consumer(&[])?;
    let sweeper = env.start_sweeper(&[])?;
    let ids: Vec<i64> = (0..10).map(|i| i * 2).collect();
    let ttl_secs = 4;
    post_with_ttl(&url, &ids, ttl_secs).await?;
    assert!(env.stored_within(&ids, Duration::from_secs(20)).await?);
    // The sweeper has heard the producer, and keeps it in PostgreSQL.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The producer loses RabbitMQ: its callbacks go to its spool, its reports stop.
    broker.cut();
    let cut_at = chrono::Utc::now();
    assert!(
        post_with_ttl(&url, &ids, ttl_secs).await?,
        "the callback was not spooled"
    );
    // A sweeper started now has never heard the producer.
    env.stop(sweeper).await?;
    env.start_sweeper(&[])?;
    tokio::time::sleep(Duration::from_secs(ttl_secs + 4)).await;
    let held = env.stored(&ids).await?;

    broker.restore().await?;
    let fresh = env
        .eventually(Duration::from_secs(30), || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM objects WHERE id = ANY($1) AND last_seen > $2",
            )
            .bind(&ids)
            .bind(cut_at)
            .fetch_one(&env.pool)
            .await?;
            Ok(n == ids.len() as i64)
        })
        .await?;
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE routing_key = 'object.expired' AND object_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&env.pool)
    .await?;
    assert!(
        held,
        "the restarted sweeper expired objects whose callback waits in a spool"
    );
    assert!(
        fresh,
        "the spooled callback was not checked after RabbitMQ came back"
    );
    assert_eq!(
        expired, 0,
        "objects expired while their callback waited in the spool"
    );
    env.teardown().await
}

/// The error and warning lines of a JSON log.
fn loud_lines(log: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map(|v| matches!(v["level"].as_str(), Some("ERROR" | "WARN")))
                .unwrap_or(true)
        })
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn a_sweeper_forgets_a_gone_consumer_and_stops_without_an_error_line() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::quick_all_online()).await?;
    // A consumer heard before this start, gone since: its alive queue does not exist.
    sqlx::query(
        "INSERT INTO progress_reporters (name, role, alive_queue, last_heard)
         VALUES ('consumer@gone:1/0', 'consumer', $1, now() - interval '2 seconds')",
    )
    .bind(format!("{}.alive.gone.1.0", env.prefix))
    .execute(&env.pool)
    .await?;
    let mut settings = env.process_env();
    settings.extend([
        ("METRICS_ADDR", format!("127.0.0.1:{}", free_port()?)),
        ("RUST_LOG", "info,sqlx=warn".into()),
        ("LOG_FORMAT", "json".into()),
    ]);
    // Stopped at several points of its work: closing its session under a channel
    // still in use made lapin log an error now and then.
    for round in 0..4 {
        let mut sweeper = start("sweeper", &settings)?;
        // First it recalls the gone consumer and looks for its alive queue.
        let awaited = if round == 0 {
            "forgetting it"
        } else {
            "sweeper running"
        };
        let seen = env
            .eventually(Duration::from_secs(15), || async {
                Ok(std::fs::read_to_string(sweeper.log())?.contains(awaited))
            })
            .await?;
        assert!(seen, "round {round}: no {awaited:?} in the sweeper's log");
        tokio::time::sleep(Duration::from_millis(500 + 300 * round)).await;
        let stopped = sweeper.stop(Duration::from_secs(15)).await;
        assert!(
            matches!(stopped, harness::process::Stopped::Exited(status) if status.success()),
            "the sweeper did not stop cleanly: {stopped:?}"
        );
        let loud = loud_lines(sweeper.log())?;
        assert!(loud.is_empty(), "round {round}: {loud:#?}");
    }
    env.teardown().await
}
