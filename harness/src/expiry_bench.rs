//! `harness expiry-bench` (`make expiry-bench`): the sweepers under a mass expiry.
//!
//! Scenario "together": N objects (100,000) share one deadline 2 s ahead; two release
//! sweepers run, and one is killed with SIGKILL while the sweep is under way. It checks
//! that every object expired within 5 s of its deadline and that a queue of the bench's
//! own, bound to `object.expired` on the notifications exchange, holds exactly one
//! `object.expired` per object after de-duplication by `message_id`,
//! and reports the duplicates before it.
//! Scenario "steady": N deadlines spread at 10,000 per second; it reports the lag from
//! deadline to expiry and from deadline to notification published (p50, p99, max).
//!
//! With `EXPIRY_BENCH_STALE_SECS` set, each object first goes stale at the scenario's
//! deadline and expires that many seconds later: both scenarios then also check exactly
//! one `object.stale` per object (the kill of "together" falls in the stale marking) and
//! report its lags.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lastseen::amqp::no_args;
use lastseen::topology::{EXPIRED_ROUTING_KEY, STALE_ROUTING_KEY, Topology, TopologyArgs};
use sqlx::PgPool;

use crate::process::Supervisor;

const PREFIX: &str = "expirybench";
/// The two sweepers that race for the same deadlines; the first is killed mid-sweep.
const SWEEPERS: [&str; 2] = ["sweeper-1", "sweeper-2"];

/// Settings of `harness expiry-bench`.
#[derive(Debug, Clone, Args)]
pub struct ExpiryBenchArgs {
    /// Objects per scenario.
    #[arg(long, env = "EXPIRY_BENCH_OBJECTS", default_value_t = 100_000)]
    pub objects: u32,
    /// Deadlines per second in the steady scenario.
    #[arg(long, env = "EXPIRY_BENCH_RATE", default_value_t = 10_000)]
    pub rate: u32,
    /// The PostgreSQL server; the bench uses its own database on it.
    #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    pub postgres: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Stale on: each object goes stale at its deadline and expires this many seconds
    /// later. Unset: no stale state (the objects only expire).
    #[arg(long, env = "EXPIRY_BENCH_STALE_SECS", value_parser = clap::value_parser!(u32).range(1..=600))]
    pub stale_secs: Option<u32>,
    /// The "together" scenario fails when an object expired later than this after its
    /// deadline: 5 s is the acceptance bound (issue 5). CI on a shared machine raises it
    /// (see `.ci/run`): there it catches a gross regression, not the noise of other work.
    #[arg(long, env = "EXPIRY_BENCH_MAX_LAG_MS", default_value = "5000", value_parser = lastseen::config::parse_positive_millis)]
    pub max_lag_ms: Duration,
    /// Folder of the release binaries.
    #[arg(long, default_value = "target/release")]
    pub bin: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "target/expiry-bench")]
    pub out: PathBuf,
}

/// Percentiles of a list of seconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Spread {
    p50: f64,
    p99: f64,
    max: f64,
}

/// What one scenario measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    scenario: &'static str,
    objects: u64,
    expired: u64,
    deadline_to_expiry_secs: Spread,
    deadline_to_published_secs: Spread,
    expired_messages: u64,
    distinct_message_ids: u64,
    duplicates: u64,
    objects_with_one_message: u64,
    missing: u64,
    sweeper_killed: bool,
    /// With stale on: the `object.stale` events.
    stale: Option<StaleOutcome>,
}

/// What one scenario measured of the objects going stale.
#[derive(Debug, Clone, serde::Serialize)]
struct StaleOutcome {
    marked: u64,
    deadline_to_stale_secs: Spread,
    deadline_to_published_secs: Spread,
    stale_messages: u64,
    duplicates: u64,
    objects_with_one_message: u64,
    missing: u64,
}

/// Runs both scenarios, prints the table, writes `result.json` and `result.md`.
pub async fn run(args: ExpiryBenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let together = scenario(&args, "together", None).await?;
    let steady = scenario(&args, "steady", Some(args.rate)).await?;
    let table = report(&[&together, &steady]);
    println!("{table}");
    std::fs::write(args.out.join("result.md"), &table)?;
    std::fs::write(
        args.out.join("result.json"),
        serde_json::to_string_pretty(&[&together, &steady])?,
    )?;
    let mut problems = Vec::new();
    for o in [&together, &steady] {
        if o.missing > 0 || o.objects_with_one_message != o.objects || o.expired != o.objects {
            problems.push(format!("{}: not exactly one expiry per object", o.scenario));
        }
        if let Some(stale) = &o.stale
            && (stale.missing > 0
                || stale.objects_with_one_message != o.objects
                || stale.marked != o.objects)
        {
            problems.push(format!(
                "{}: not exactly one stale event per object",
                o.scenario
            ));
        }
    }
    let bound = args.max_lag_ms.as_secs_f64();
    if together.deadline_to_expiry_secs.max > bound {
        problems.push(format!(
            "together: an object expired more than {bound} s after its deadline (EXPIRY_BENCH_MAX_LAG_MS)"
        ));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "expiry-bench FAILED: {}",
        problems.join("; ")
    );
    println!("expiry-bench passed");
    Ok(())
}

async fn scenario(
    args: &ExpiryBenchArgs,
    name: &'static str,
    rate: Option<u32>,
) -> anyhow::Result<Outcome> {
    let database = format!("lastseen_{PREFIX}");
    let admin = PgPool::connect(&format!("{}/postgres", args.postgres)).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    let database_url = format!("{}/{database}", args.postgres);
    let db_args = lastseen::config::DatabaseArgs {
        database_url: database_url.clone(),
        database_max_connections: 4,
    };
    let pool =
        lastseen::db::connect_and_migrate(&db_args, &Default::default(), &Default::default())
            .await?;
    let topology = Topology::new(&TopologyArgs {
        topology_prefix: PREFIX.into(),
        notifications_exchange: format!("{PREFIX}.notifications"),
        delivery_limit: 20,
        // The bench reads every event from a queue of its own (as a reader that must
        // see each one does), not from the bounded convenience queue.
        notifications_queue_max_length: 0,
        quorum_replicas: None,
    });
    let reader = format!("{PREFIX}.expiry-bench-reader");
    let amqp = lastseen::amqp::connect(&args.amqp_url.as_str().into(), "expiry-bench").await?;
    let channel = amqp.create_channel().await?;
    // The reader, and the pipeline's convenience queue an older bench read from: a
    // leftover queue of hundreds of thousands of events slows the whole broker.
    for queue in [reader.as_str(), topology.notifications_queue.as_str()] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let channel = amqp.create_channel().await?;
    topology.declare(&channel).await?;
    declare_reader(&channel, &reader, &topology.notifications_exchange).await?;

    // The objects: one shared deadline 2 s ahead, or deadlines `rate` per second. With
    // stale on, that deadline is the stale one and each expires `stale_secs` after it.
    let start = Utc::now() + chrono::Duration::seconds(2);
    let step_micros = rate.map_or(0, |r| 1_000_000 / i64::from(r.max(1)));
    let stale_gap = args.stale_secs.map(f64::from);
    sqlx::query(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at, stale_at)
         SELECT i, $1 - interval '30 seconds', $1 - interval '30 seconds',
                d + make_interval(secs => coalesce($4, 0)),
                CASE WHEN $4 IS NULL THEN NULL ELSE d END
         FROM generate_series(0, $3 - 1) AS i,
              LATERAL (SELECT $1 + make_interval(secs => (i * $2)::float8 / 1000000.0) AS d) deadline",
    )
    .bind(start)
    .bind(step_micros)
    .bind(i64::from(args.objects))
    .bind(stale_gap)
    .execute(&pool)
    .await?;
    // Statistics, as autovacuum would have gathered by then on a server that runs it
    // (this machine's has it off): without them the sweep's plans guess.
    sqlx::query("ANALYZE objects").execute(&pool).await?;
    let last_deadline = start
        + chrono::Duration::microseconds(step_micros * i64::from(args.objects))
        + chrono::Duration::seconds(i64::from(args.stale_secs.unwrap_or(0)));

    let logs = args.out.join(format!("{name}-logs"));
    std::fs::create_dir_all(&logs)?;
    let mut sweepers = Supervisor::new(&args.bin, &logs);
    let env = [
        ("DATABASE_URL", database_url.clone()),
        ("AMQP_URL", args.amqp_url.clone()),
        ("TOPOLOGY_PREFIX", PREFIX.to_owned()),
        ("NOTIFICATIONS_EXCHANGE", format!("{PREFIX}.notifications")),
        ("NOTIFICATIONS_QUEUE_MAX_LENGTH", "0".to_owned()),
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    for sweeper in SWEEPERS {
        sweepers.start(sweeper, "sweeper", &[], &env)?;
    }
    // Kill one sweeper once the sweep is under way (some expired, some not; with stale
    // on, some marked stale and some not).
    let mut killed = false;
    if rate.is_none() {
        let (done_sql, what) = if args.stale_secs.is_some() {
            (
                "SELECT (SELECT count(*) FROM objects WHERE stale_since IS NOT NULL),
                        (SELECT count(*) FROM objects WHERE stale_since IS NULL)",
                "marked stale",
            )
        } else {
            (
                "SELECT (SELECT count(*) FROM object_expiries), (SELECT count(*) FROM objects)",
                "expired",
            )
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (done, left): (i64, i64) = sqlx::query_as(done_sql).fetch_one(&pool).await?;
            if done > 0 && left > 0 {
                sweepers.kill9(SWEEPERS[0]).await?;
                killed = true;
                println!("{name}: sweeper-1 killed (SIGKILL) with {done} {what} and {left} left");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Wait for every expiry and every notification to be published.
    let wait_until = last_deadline + chrono::Duration::seconds(120);
    loop {
        let (left, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM objects),
                    (SELECT count(*) FROM notifications WHERE published_at IS NULL)",
        )
        .fetch_one(&pool)
        .await?;
        if left == 0 && pending == 0 {
            break;
        }
        anyhow::ensure!(
            Utc::now() < wait_until,
            "{name}: {left} objects and {pending} notifications still pending"
        );
        // Not more often: the lags come from the rows' own timestamps, and these counts
        // took ~6% of PostgreSQL's CPU at 100 ms, taken from the sweep being measured.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for sweeper in SWEEPERS {
        // The killed one is gone already.
        let _ = sweepers.kill9(sweeper).await;
    }

    let expiry_lags: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM expired_at - expires_at)::float8 FROM object_expiries",
    )
    .fetch_all(&pool)
    .await?;
    let publish_lags: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM published_at - (payload->>'expires_at')::timestamptz)::float8
         FROM notifications WHERE routing_key = 'object.expired'",
    )
    .fetch_all(&pool)
    .await?;
    let mut read = read_messages(&channel, &reader).await?;
    let stale = match args.stale_secs {
        None => None,
        Some(_) => {
            let lags: Vec<(f64, f64)> = sqlx::query_as(
                "SELECT extract(epoch FROM (payload->>'marked_at')::timestamptz
                                           - (payload->>'stale_at')::timestamptz)::float8,
                        extract(epoch FROM published_at
                                           - (payload->>'stale_at')::timestamptz)::float8
                 FROM notifications WHERE routing_key = 'object.stale'",
            )
            .fetch_all(&pool)
            .await?;
            let (messages, per_object) = read.remove(STALE_ROUTING_KEY).unwrap_or_default();
            let distinct: HashSet<&String> = messages.iter().map(|(id, _)| id).collect();
            Some(StaleOutcome {
                marked: lags.len() as u64,
                deadline_to_stale_secs: spread(lags.iter().map(|l| l.0).collect()),
                deadline_to_published_secs: spread(lags.iter().map(|l| l.1).collect()),
                stale_messages: messages.len() as u64,
                duplicates: (messages.len() - distinct.len()) as u64,
                objects_with_one_message: per_object.values().filter(|n| **n == 1).count() as u64,
                missing: u64::from(args.objects).saturating_sub(per_object.len() as u64),
            })
        }
    };
    let (messages, per_object) = read.remove(EXPIRED_ROUTING_KEY).unwrap_or_default();
    let distinct: HashSet<&String> = messages.iter().map(|(id, _)| id).collect();
    let outcome = Outcome {
        scenario: name,
        objects: u64::from(args.objects),
        expired: expiry_lags.len() as u64,
        deadline_to_expiry_secs: spread(expiry_lags),
        deadline_to_published_secs: spread(publish_lags),
        expired_messages: messages.len() as u64,
        distinct_message_ids: distinct.len() as u64,
        duplicates: (messages.len() - distinct.len()) as u64,
        objects_with_one_message: per_object.values().filter(|n| **n == 1).count() as u64,
        missing: u64::from(args.objects).saturating_sub(per_object.len() as u64),
        sweeper_killed: killed,
        stale,
    };
    let _ = channel
        .queue_delete(reader.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = amqp.close(200, "done".into()).await;
    pool.close().await;
    Ok(outcome)
}

/// The bench's own queue of every `object.expired` notification, unbounded; a quorum
/// queue, as the pipeline's own are, so confirms cost what they cost there.
async fn declare_reader(
    channel: &lapin::Channel,
    reader: &str,
    exchange: &str,
) -> anyhow::Result<()> {
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut quorum = no_args();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(reader.into(), durable, quorum)
        .await?;
    for key in [EXPIRED_ROUTING_KEY, STALE_ROUTING_KEY] {
        channel
            .queue_bind(
                reader.into(),
                exchange.into(),
                key.into(),
                Default::default(),
                no_args(),
            )
            .await?;
    }
    Ok(())
}

/// The messages of one routing key: `message_id`s and object ids in arrival order, and
/// how many distinct messages each object got.
type Received = (Vec<(String, i64)>, HashMap<i64, u32>);

/// Every `object.expired` and `object.stale` message in the bench's reader queue (taken
/// off it), by routing key.
async fn read_messages(
    channel: &lapin::Channel,
    reader: &str,
) -> anyhow::Result<HashMap<&'static str, Received>> {
    channel.basic_qos(5_000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            reader.into(),
            "expiry-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            no_args(),
        )
        .await?;
    let mut messages: HashMap<&'static str, Vec<(String, i64)>> = HashMap::new();
    let mut ids_by_message: HashMap<&'static str, HashMap<String, i64>> = HashMap::new();
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
    {
        let delivery = delivery?;
        let Some(key) = [EXPIRED_ROUTING_KEY, STALE_ROUTING_KEY]
            .into_iter()
            .find(|key| delivery.routing_key.as_str() == *key)
        else {
            continue;
        };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        let id = body["object_id"].as_i64().unwrap_or(-1);
        ids_by_message
            .entry(key)
            .or_default()
            .insert(message_id.clone(), id);
        messages.entry(key).or_default().push((message_id, id));
    }
    Ok(messages
        .into_iter()
        .map(|(key, messages)| {
            let mut per_object: HashMap<i64, u32> = HashMap::new();
            for id in ids_by_message.remove(key).unwrap_or_default().values() {
                *per_object.entry(*id).or_default() += 1;
            }
            (key, (messages, per_object))
        })
        .collect())
}

fn spread(mut secs: Vec<f64>) -> Spread {
    if secs.is_empty() {
        return Spread {
            p50: 0.0,
            p99: 0.0,
            max: 0.0,
        };
    }
    secs.sort_by(f64::total_cmp);
    let at = |q: f64| secs[((secs.len() - 1) as f64 * q).round() as usize];
    Spread {
        p50: at(0.5),
        p99: at(0.99),
        max: secs[secs.len() - 1],
    }
}

fn report(outcomes: &[&Outcome]) -> String {
    let mut table = String::from(
        "| scenario | objects | expired | deadline→expiry p50 / p99 / max s | deadline→published p50 / p99 / max s | expired messages | duplicates (same message_id) | objects with exactly one | missing | sweeper killed |\n|---|---:|---:|---|---|---:|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        let (e, p) = (o.deadline_to_expiry_secs, o.deadline_to_published_secs);
        table.push_str(&format!(
            "| {} | {} | {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            o.objects,
            o.expired,
            e.p50,
            e.p99,
            e.max,
            p.p50,
            p.p99,
            p.max,
            o.expired_messages,
            o.duplicates,
            o.objects_with_one_message,
            o.missing,
            if o.sweeper_killed { "yes (SIGKILL)" } else { "no" },
        ));
    }
    if outcomes.iter().any(|o| o.stale.is_some()) {
        table.push_str(
            "\n| scenario | marked stale | stale deadline→marked p50 / p99 / max s | stale deadline→published p50 / p99 / max s | stale messages | duplicates (same message_id) | objects with exactly one | missing |\n|---|---:|---|---|---:|---:|---:|---:|\n",
        );
        for o in outcomes {
            let Some(stale) = &o.stale else { continue };
            let (m, p) = (
                stale.deadline_to_stale_secs,
                stale.deadline_to_published_secs,
            );
            table.push_str(&format!(
                "| {} | {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {} | {} | {} | {} |\n",
                o.scenario,
                stale.marked,
                m.p50,
                m.p99,
                m.max,
                p.p50,
                p.p99,
                p.max,
                stale.stale_messages,
                stale.duplicates,
                stale.objects_with_one_message,
                stale.missing,
            ));
        }
    }
    table
}
