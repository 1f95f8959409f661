//! `harness bench`: runs the whole pipeline on this machine as `make run` does, loads it
//! at a target rate with one of two profiles (churn or fleet), and reports throughput,
//! latency, lag, backlog, resource use and CPU per id, next to the ceiling (the status
//! calls alone, measured in the same run) and the raw capacity of each part. With several
//! rates it finds the highest rate the pipeline sustains.

mod ceiling;
mod load;
pub mod lock_waits;
mod maintenance;
mod observe;
mod ports;
mod raw;
mod readers;
mod report;
mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::process::Supervisor;

pub use ceiling::{CallerArgs, run_caller};
pub use report::RunResult;

/// Settings of `harness bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Seconds of load per run.
    #[arg(long, env = "BENCH_SECS", default_value_t = 60)]
    pub secs: u64,
    /// Target rate, ids per second, of a single run.
    #[arg(long, env = "BENCH_RATE", default_value_t = 10_000)]
    pub rate: u64,
    /// Sweep mode: comma-separated rates (ids/s), one run each; finds the highest
    /// sustained without a growing backlog.
    #[arg(long, env = "BENCH_RATES", value_delimiter = ',')]
    pub rates: Vec<u64>,
    /// `churn`: ids drawn at random from BENCH_ID_SPACE, so most sightings are of objects
    /// new or back after expiring (each raises `object.online`, later an expiry, its
    /// history row, `object.expired` and a digest). `fleet`: a fixed fleet of BENCH_FLEET
    /// objects, known before the load starts, each reported once every BENCH_FLEET / rate
    /// seconds with a TTL above that, so nearly every sighting is a refresh.
    #[arg(long, env = "BENCH_PROFILE", value_enum, default_value_t = Profile::Churn)]
    pub profile: Profile,
    /// Objects in the `fleet` profile.
    #[arg(long, env = "BENCH_FLEET", default_value_t = 400_000)]
    pub fleet: u64,
    /// Seconds of the ceiling measurement (the status calls alone, after 5 s of warm-up);
    /// 0 skips it.
    #[arg(long, env = "BENCH_CEILING_SECS", default_value_t = 10)]
    pub ceiling_secs: u64,
    /// Status calls in flight per consumer, passed as MAX_CHECKS_IN_FLIGHT.
    #[arg(long, env = "BENCH_MAX_CHECKS_IN_FLIGHT", default_value_t = 13_000)]
    pub max_checks_in_flight: u32,
    /// Distinct ids in one callback.
    #[arg(long, env = "BENCH_IDS_PER_CALLBACK", default_value_t = 200)]
    pub ids_per_callback: usize,
    /// Ids are drawn from 0 to this value (exclusive).
    #[arg(long, env = "BENCH_ID_SPACE", default_value_t = 1_000_000)]
    pub id_space: u64,
    /// Most callbacks in flight at once (concurrent clients).
    #[arg(long, env = "BENCH_CLIENTS", default_value_t = 64)]
    pub clients: usize,
    /// Consumer processes.
    #[arg(long, env = "BENCH_CONSUMERS", default_value_t = 2)]
    pub consumers: usize,
    /// Status simulator processes (consumer i talks to simulator i mod n). One process
    /// holds at most its open-file limit of connections, one per call in flight.
    #[arg(long, env = "BENCH_STATUS_PROCS", default_value_t = 2)]
    pub status_procs: usize,
    /// Ids per check message, passed to the producer as IDS_PER_MESSAGE.
    #[arg(long, env = "BENCH_IDS_PER_MESSAGE", default_value_t = 50)]
    pub ids_per_message: u32,
    /// Prefetch per consumer, passed as PREFETCH.
    #[arg(long, env = "BENCH_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
    /// Status delay range (ms), as the status service's.
    #[arg(long, env = "BENCH_DELAY_MIN_MS", default_value_t = 300)]
    pub delay_min_ms: u64,
    #[arg(long, env = "BENCH_DELAY_MAX_MS", default_value_t = 4300)]
    pub delay_max_ms: u64,
    /// Skip measuring the raw capacity of each part.
    #[arg(long, env = "BENCH_SKIP_RAW", default_value_t = false)]
    pub skip_raw: bool,
    /// Where the release binaries are.
    #[arg(long, env = "BENCH_BIN", default_value = "target/release")]
    pub bin: PathBuf,
    /// Where the report goes.
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench")]
    pub out: PathBuf,
    /// The benchmark's own database (dropped and re-created).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/lastseen_bench"
    )]
    pub database_url: String,
    /// RabbitMQ.
    #[arg(
        long,
        env = "BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// RabbitMQ's management API, for the unacked count (optional).
    #[arg(
        long,
        env = "BENCH_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Readers beside the load: the status page open in headless chromium and an API
    /// client asking `/objects?state=online` every second (the producer reads as the
    /// `analyst` login).
    #[arg(long, env = "BENCH_READERS", value_parser = clap::builder::FalseyValueParser::new())]
    pub readers: bool,
}

/// What the load looks like (see [`BenchArgs::profile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Churn,
    Fleet,
}

/// Ports the benchmark's processes use, away from `make run`'s.
const CALLBACK_PORT: u16 = 19190;
pub(crate) const STATUS_PORT: u16 = 19110;

/// How the bench runs status simulator `i` (from 0), for the pipeline and for its
/// ceiling alike: its port, the run's delays derived from the id, every id online.
pub(crate) fn simulator_env(args: &BenchArgs, i: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "STATUS_ADDR",
            format!("127.0.0.1:{}", STATUS_PORT + i as u16),
        ),
        ("STATUS_DELAY_MIN_MS", args.delay_min_ms.to_string()),
        ("STATUS_DELAY_MAX_MS", args.delay_max_ms.to_string()),
        ("STATUS_ONLINE", "all".into()),
        ("STATUS_DELAY_BY_ID", "true".into()),
    ]
}
const RAW_STATUS_PORT: u16 = 19100;
const PREFIX: &str = "bench";

/// Runs the benchmark (one rate, or a sweep) and writes the report.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(args.out.join("logs")).context("cannot create the report folder")?;
    anyhow::ensure!(
        args.status_procs <= 80,
        "BENCH_STATUS_PROCS must be at most 80 (their ports, from {STATUS_PORT}, end below the callback port {CALLBACK_PORT})"
    );
    let mut listeners = vec![CALLBACK_PORT, RAW_STATUS_PORT];
    listeners.extend((0..args.status_procs.max(1)).map(|i| STATUS_PORT + i as u16));
    let exposed = ports::exposed_here(&listeners);
    if !exposed.is_empty() {
        anyhow::bail!(
            "the bench listens on {exposed:?}, inside net.ipv4.ip_local_port_range and not in \
             net.ipv4.ip_local_reserved_ports: an outgoing connection could take one; \
             reserve 19100-19199 (make bench does so as root) or narrow the range"
        );
    }
    lastseen::limits::raise_open_files();
    let raw = if args.skip_raw {
        None
    } else {
        eprintln!("measuring the raw capacity of each part...");
        Some(measure_raw(&args).await?)
    };
    if args.rates.is_empty() {
        let result = run_once(&args, args.rate, raw.clone(), &shutdown).await?;
        report::write_run(&args.out, &result)?;
        println!("{}", report::markdown(&result));
        println!(
            "report: {}/result.json, result.md, chart.svg",
            args.out.display()
        );
    } else {
        let mut results = Vec::new();
        for &rate in &args.rates {
            if shutdown.is_cancelled() {
                break;
            }
            let result = run_once(&args, rate, raw.clone(), &shutdown).await?;
            report::write_run(&args.out.join(format!("rate-{rate}")), &result)?;
            eprintln!("{}", report::sweep_row(&result));
            results.push(result);
        }
        let table = report::write_sweep(&args.out, &results)?;
        println!("{table}");
    }
    Ok(())
}

async fn measure_raw(args: &BenchArgs) -> anyhow::Result<raw::RawRates> {
    let pool = crate::database::fresh(&args.database_url, "BENCH_DATABASE_URL").await?;
    let (publish, consume, message_bytes) = raw::rabbitmq(
        &args.amqp_url,
        &format!("{PREFIX}.raw"),
        args.ids_per_message as usize,
        20_000,
    )
    .await
    .context("raw RabbitMQ rate")?;
    let upsert = raw::postgresql(&pool, 5000, args.id_space, Duration::from_secs(3))
        .await
        .context("raw PostgreSQL rate")?;
    pool.close().await;

    let mut sim = Supervisor::new(&args.bin, &args.out.join("logs"));
    sim.start(
        "raw-status",
        "tester",
        &["serve"],
        &[
            ("STATUS_ADDR", format!("127.0.0.1:{RAW_STATUS_PORT}")),
            ("STATUS_DELAY_MIN_MS", "0".into()),
            ("STATUS_DELAY_MAX_MS", "0".into()),
            ("RUST_LOG", "warn".into()),
        ],
    )?;
    let url = format!("http://127.0.0.1:{RAW_STATUS_PORT}");
    observe::wait_http(&format!("{url}/stats")).await?;
    let calls = raw::status_calls(&[url], 128, Duration::ZERO, Duration::from_secs(3)).await?;
    sim.stop_all(Duration::from_secs(5)).await;
    Ok(raw::RawRates {
        rabbitmq_publish_confirm_msgs_per_sec: publish,
        rabbitmq_consume_ack_msgs_per_sec: consume,
        postgresql_upsert_rows_per_sec: upsert,
        status_simulator_requests_per_sec: calls.per_sec,
        message_bytes,
    })
}

/// One run at `rate` ids/s: fresh database and queues, the pipeline's processes, the
/// load, the observation until the backlog drained, and the figures.
async fn run_once(
    args: &BenchArgs,
    rate: u64,
    raw: Option<raw::RawRates>,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunResult> {
    crate::broker_admin::delete_local_queues(&args.amqp_url, PREFIX).await;
    let pool = crate::database::fresh(&args.database_url, "BENCH_DATABASE_URL").await?;
    let logs = args.out.join("logs");
    let ceiling = if args.ceiling_secs > 0 {
        eprintln!("measuring the ceiling: the status calls alone...");
        Some(ceiling::measure(args).await?)
    } else {
        None
    };
    let ids = match args.profile {
        Profile::Churn => load::IdSource::Random {
            space: args.id_space,
        },
        Profile::Fleet => {
            let source = load::IdSource::fleet(args.fleet, rate);
            seed_fleet(&pool, &source, rate).await?;
            source
        }
    };
    // Each run starts with an empty spool: leftovers of an aborted run would skew it.
    let spool = args.out.join("spool").join("producer.redb");
    let _ = std::fs::remove_file(&spool);
    let common: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), args.database_url.clone()),
        ("AMQP_URL".into(), args.amqp_url.clone()),
        ("TOPOLOGY_PREFIX".into(), PREFIX.into()),
        (
            "NOTIFICATIONS_EXCHANGE".into(),
            format!("{PREFIX}.notifications"),
        ),
        ("RUST_LOG".into(), "warn".into()),
        ("LOG_FORMAT".into(), "text".into()),
        // Several consumers on one host: each takes a free port for its metrics.
        ("METRICS_ADDR".into(), "127.0.0.1:0".into()),
    ];
    let with = |extra: &[(&str, String)]| {
        let mut env = common.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let mut pipeline = Supervisor::new(&args.bin, &logs);
    let status_procs = args.status_procs.max(1);
    for i in 0..status_procs {
        pipeline.start(
            &format!("status-{}", i + 1),
            "tester",
            &["serve"],
            &with(&simulator_env(args, i)),
        )?;
    }
    pipeline.start(
        "producer",
        "producer",
        &[],
        &with(&[
            ("CALLBACK_ADDR", format!("127.0.0.1:{CALLBACK_PORT}")),
            ("IDS_PER_MESSAGE", args.ids_per_message.to_string()),
            ("SPOOL_PATH", spool.display().to_string()),
            ("READ_DATABASE_URL", analyst_url(&args.database_url)?),
        ]),
    )?;
    for i in 1..=args.consumers {
        pipeline.start(
            &format!("consumer-{i}"),
            "consumer",
            &[],
            &with(&[
                (
                    "STATUS_URL",
                    format!(
                        "http://127.0.0.1:{}",
                        STATUS_PORT + ((i - 1) % status_procs) as u16
                    ),
                ),
                // Each consumer's connections under a name of their own, so the lock
                // table tells waits inside one consumer from waits across consumers.
                (
                    "DATABASE_URL",
                    with_application_name(&args.database_url, &format!("lastseen-consumer-{i}"))?,
                ),
                ("PREFETCH", args.prefetch.to_string()),
                (
                    "MAX_CHECKS_IN_FLIGHT",
                    args.max_checks_in_flight.to_string(),
                ),
            ]),
        )?;
    }
    pipeline.start("sweeper", "sweeper", &[], &with(&[]))?;

    let status_stats: Vec<String> = (0..status_procs)
        .map(|i| format!("http://127.0.0.1:{}/stats", STATUS_PORT + i as u16))
        .collect();
    for url in &status_stats {
        observe::wait_http(url).await?;
    }
    observe::wait_http(&format!("http://127.0.0.1:{CALLBACK_PORT}/readyz")).await?;
    // Give the consumers a moment to subscribe.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let readers = if args.readers {
        Some(readers::start(
            &format!("http://127.0.0.1:{CALLBACK_PORT}"),
            &logs,
        )?)
    } else {
        None
    };
    let counters = Arc::new(load::LoadCounters::default());
    let (tracked_tx, tracked_rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = shutdown.child_token();
    let observer = observe::Observer {
        pool: pool.clone(),
        amqp_url: args.amqp_url.clone(),
        checks_queue: format!("{PREFIX}.checks"),
        management_url: args.management_url.clone(),
        status_stats,
        delay_min_ms: args.delay_min_ms,
        delay_max_ms: args.delay_max_ms,
    };
    let load_secs = Duration::from_secs(args.secs);
    let maintaining = tokio::spawn(maintenance::stand_in_for_autovacuum(
        pool.clone(),
        stop.clone(),
    ));
    let observing = tokio::spawn(observer.run(
        counters.clone(),
        tracked_rx,
        pipeline.pids(),
        load_secs,
        rate,
        stop.clone(),
    ));
    let outcome = load::run(
        format!("http://127.0.0.1:{CALLBACK_PORT}/callback"),
        rate,
        args.ids_per_callback,
        ids,
        args.clients,
        load_secs,
        counters.clone(),
        tracked_tx,
        stop.clone(),
    )
    .await?;
    let observed = observing.await.context("the observer panicked")??;
    stop.cancel();
    let vacuum_rounds = maintaining.await.unwrap_or(0);
    let read = match readers {
        Some(readers) => Some(readers.finish().await),
        None => None,
    };
    pipeline.stop_all(Duration::from_secs(15)).await;
    pool.close().await;
    crate::broker_admin::delete_local_queues(&args.amqp_url, PREFIX).await;
    let mut result = report::summarize(args, rate, &counters, outcome, observed, raw);
    result.readers = read;
    result.vacuum_rounds = vacuum_rounds;
    result.set_ceiling(ceiling);
    Ok(result)
}

/// The fleet, known before the load: every object online, each last seen one period
/// before the load will report it again (the load goes through the fleet in id order).
async fn seed_fleet(pool: &sqlx::PgPool, fleet: &load::IdSource, rate: u64) -> anyhow::Result<()> {
    let load::IdSource::Fleet { size, ttl_secs } = *fleet else {
        return Ok(());
    };
    let period = size as f64 / rate.max(1) as f64;
    sqlx::query(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at)
         SELECT i, seen - interval '1 hour', seen, seen + make_interval(secs => $3)
         FROM generate_series(0, $1 - 1) AS i,
              LATERAL (SELECT now() - make_interval(secs => $2 - i::float8 / $4) AS seen) s",
    )
    .bind(size as i64)
    .bind(period)
    .bind(f64::from(ttl_secs))
    .bind(rate.max(1) as f64)
    .execute(pool)
    .await
    .context("seeding the fleet")?;
    sqlx::query("ANALYZE objects").execute(pool).await?;
    Ok(())
}

/// `database_url` with its connections named `name` (`application_name`, which the
/// pipeline's processes keep when the URL gives one).
fn with_application_name(database_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(database_url).context("BENCH_DATABASE_URL is not a URL")?;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "application_name")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("application_name", name);
    Ok(url.to_string())
}

/// The run's database as the read-only `analyst` login (`make services` creates it).
fn analyst_url(database_url: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(database_url).context("BENCH_DATABASE_URL is not a URL")?;
    let _ = url.set_username("analyst");
    let _ = url.set_password(Some("analyst"));
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumers_url_names_its_connections_and_keeps_the_rest() {
        let url = with_application_name(
            "postgres://postgres@127.0.0.1:5432/lastseen_bench?sslmode=disable&application_name=old",
            "lastseen-consumer-2",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://postgres@127.0.0.1:5432/lastseen_bench?sslmode=disable&application_name=lastseen-consumer-2"
        );
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        assert_eq!(options.get_application_name(), Some("lastseen-consumer-2"));
        assert_eq!(options.get_database(), Some("lastseen_bench"));
    }
}
