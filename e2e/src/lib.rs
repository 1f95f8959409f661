//! The test harness: `TestEnv::start()` gives each test its own database, its own
//! RabbitMQ names and its own status simulator, and runs the real components in-process
//! on random ports; `teardown()` removes everything it created.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Channel, Connection};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod certs;
pub mod cli_checks;
pub mod fault_proxy;
pub mod private_postgres;
pub mod process;
pub mod servers;

pub use servers::{amqp_server, amqp_url, management_url, postgres_server};

/// Status simulator settings for a test.
#[derive(Debug, Clone)]
pub struct Status {
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    pub online: &'static str,
    pub fail_rate: f64,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            delay_min_ms: 300,
            delay_max_ms: 4300,
            online: "even",
            fail_rate: 0.0,
            tls: None,
        }
    }
}

impl Status {
    /// Every object online, answered in 1 to 10 ms: for tests about what happens after
    /// the check, not about the check.
    pub fn quick_all_online() -> Self {
        Self {
            delay_min_ms: 1,
            delay_max_ms: 10,
            online: "all",
            ..Self::default()
        }
    }

    /// Every object online, answered in 1.5 to 2 s: for tests that strike while a check
    /// is surely in flight.
    pub fn slow_all_online() -> Self {
        Self {
            delay_min_ms: 1500,
            delay_max_ms: 2000,
            online: "all",
            ..Self::default()
        }
    }
}

/// A running component: its name, its stop token, and its task until stopped.
type Component = (
    String,
    CancellationToken,
    Option<JoinHandle<anyhow::Result<()>>>,
);

/// One isolated pipeline.
pub struct TestEnv {
    pub name: String,
    pub database_url: String,
    pub prefix: String,
    pub notifications_exchange: String,
    pub status_url: String,
    /// Where this test's producers keep their spool (removed at teardown).
    pub spool_dir: PathBuf,
    pub pool: PgPool,
    pub amqp: Connection,
    pub channel: Channel,
    /// Exact queue counts.
    pub broker: harness::broker_admin::BrokerAdmin,
    /// Set it to make the status service answer 500 to everything.
    pub status_outage: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
    components: Vec<Component>,
    status_task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEnv {
    /// Creates the database and topology names and starts a status simulator.
    pub async fn start(status: Status) -> anyhow::Result<Self> {
        let name = format!("t{}", uuid::Uuid::new_v4().simple());
        let database_url = postgres_server().with_database(&format!("lastseen_test_{name}"));
        let prefix = format!("test-{name}");
        let notifications_exchange = format!("{prefix}.notifications-x");
        let shutdown = CancellationToken::new();

        let simulator = tester::serve::StatusSimulator::bind(tester::serve::ServeArgs {
            addr: "127.0.0.1:0".parse()?,
            delay_min_ms: status.delay_min_ms,
            delay_max_ms: status.delay_max_ms,
            online: match status.online {
                "all" => tester::serve::OnlineRule::All,
                "none" => tester::serve::OnlineRule::None,
                "odd" => tester::serve::OnlineRule::Odd,
                _ => tester::serve::OnlineRule::Even,
            },
            fail_rate: status.fail_rate,
            hang_rate: 0.0,
            delay_by_id: false,
            tls_cert: status.tls.as_ref().map(|(cert, _)| cert.clone()),
            tls_key: status.tls.as_ref().map(|(_, key)| key.clone()),
        })
        .await?;
        let scheme = if status.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let status_url = format!("{scheme}://{}", simulator.addr());
        let status_outage = simulator.outage.clone();
        let status_task = tokio::spawn(simulator.run_until_stopped(shutdown.clone()));

        let db_args = lastseen::config::DatabaseArgs {
            database_url: database_url.clone(),
            database_max_connections: 4,
        };
        let pool =
            lastseen::db::connect_and_migrate(&db_args, &Default::default(), &shutdown).await?;
        let amqp = lastseen::amqp::connect(&amqp_url().as_str().into(), "e2e-test").await?;
        let channel = amqp.create_channel().await?;
        let spool_dir = std::env::temp_dir().join(format!("lastseen-test-{name}"));
        let env = Self {
            name,
            database_url,
            prefix,
            notifications_exchange,
            status_url,
            spool_dir,
            pool,
            amqp,
            channel,
            broker: harness::broker_admin::BrokerAdmin::new(&amqp_url()),
            status_outage,
            shutdown,
            components: Vec::new(),
            status_task: Some(status_task),
        };
        // Declare the topology up front so queue counts can be read before any component runs.
        let topology = lastseen::topology::Topology::new(&env.topology_args());
        topology.declare(&env.channel).await?;
        Ok(env)
    }

    /// The name of this test's database (the last part of its URL).
    pub fn database_name(&self) -> &str {
        self.database_url
            .rsplit('/')
            .next()
            .expect("a database URL ends with the database name")
    }

    pub fn topology_args(&self) -> lastseen::topology::TopologyArgs {
        lastseen::topology::TopologyArgs {
            topology_prefix: self.prefix.clone(),
            notifications_exchange: self.notifications_exchange.clone(),
            delivery_limit: 20,
            notifications_queue_max_length: 100_000,
            quorum_replicas: None,
        }
    }

    pub fn topology(&self) -> lastseen::topology::Topology {
        lastseen::topology::Topology::new(&self.topology_args())
    }

    /// The environment a spawned binary needs to join this test's pipeline. Its metrics
    /// listen on a port of the system's choosing, never the default one a `make run` on
    /// the same machine (or another test) may hold.
    pub fn process_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("METRICS_ADDR", "127.0.0.1:0".into()),
            ("AMQP_URL", amqp_url()),
            ("DATABASE_URL", self.database_url.clone()),
            ("TOPOLOGY_PREFIX", self.prefix.clone()),
            (
                "NOTIFICATIONS_EXCHANGE",
                self.notifications_exchange.clone(),
            ),
            ("STATUS_URL", self.status_url.clone()),
            (
                "SPOOL_PATH",
                self.spool_dir.join("producer.redb").display().to_string(),
            ),
            ("RUST_LOG", "warn".into()),
        ]
    }

    fn common_args(&self) -> Vec<String> {
        vec![
            format!("--amqp-url={}", amqp_url()),
            format!("--topology-prefix={}", self.prefix),
            format!("--notifications-exchange={}", self.notifications_exchange),
            "--rust-log=warn".into(),
        ]
    }

    /// The command line of `program`: its own first flags, the test's names, the
    /// database (if `database`), then the test's extra flags (which override).
    fn args(&self, program: &str, first: &[String], database: bool, extra: &[&str]) -> Vec<String> {
        let mut args = vec![program.to_owned()];
        args.extend(first.iter().cloned());
        args.extend(self.common_args());
        if database {
            args.push(format!("--database-url={}", self.database_url));
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Runs a component until its token (a child of the test's) is cancelled; returns its
    /// index for [`Self::stop`].
    fn run<F>(&mut self, name: &str, run: impl FnOnce(CancellationToken) -> F) -> usize
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.shutdown.child_token();
        let handle = tokio::spawn(run(token.clone()));
        self.components.push((name.into(), token, Some(handle)));
        self.components.len() - 1
    }

    /// Starts a producer on a random port, with the test's spool file; returns its
    /// callback URL.
    pub async fn start_producer(&mut self, extra: &[&str]) -> anyhow::Result<String> {
        let spool = format!(
            "--spool-path={}",
            self.spool_dir.join("producer.redb").display()
        );
        let args = self.args(
            "producer",
            &["--callback-addr=127.0.0.1:0".into(), spool],
            false,
            extra,
        );
        let app = producer::Application::build(producer::Config::try_parse_from(args)?).await?;
        let url = format!("http://127.0.0.1:{}/callback", app.port());
        self.run("producer", |token| app.run_until_stopped(token));
        Ok(url)
    }

    /// Starts a producer like [`Self::start_producer`] and waits until it is connected
    /// to RabbitMQ, for tests that assert a callback was published rather than spooled.
    /// Its publish bound is 5 s unless `extra` sets one: the product's 200 ms is about a
    /// healthy broker, and a CI runner busy with the other tests can miss it once.
    pub async fn start_connected_producer(&mut self, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = extra.to_vec();
        if !args.iter().any(|a| a.starts_with("--publish-timeout-ms")) {
            args.push("--publish-timeout-ms=5000");
        }
        let url = self.start_producer(&args).await?;
        until_readiness(base_of(&url), "ready", Duration::from_secs(30)).await?;
        Ok(url)
    }

    /// Starts a consumer; returns its index for [`Self::stop`].
    pub fn start_consumer(&mut self, extra: &[&str]) -> anyhow::Result<usize> {
        let status = format!("--status-url={}", self.status_url);
        let first = [status, "--metrics-addr=127.0.0.1:0".into()];
        let config = consumer::Config::try_parse_from(self.args("consumer", &first, true, extra))?;
        Ok(self.run("consumer", |token| {
            consumer::Application::new(config).run_until_stopped(token)
        }))
    }

    /// Starts a sweeper; returns its index for [`Self::stop`].
    pub fn start_sweeper(&mut self, extra: &[&str]) -> anyhow::Result<usize> {
        let first = ["--metrics-addr=127.0.0.1:0".into()];
        let config = sweeper::Config::try_parse_from(self.args("sweeper", &first, true, extra))?;
        Ok(self.run("sweeper", |token| {
            sweeper::Application::new(config).run_until_stopped(token)
        }))
    }

    /// How many components were started; the last one's index is one less.
    pub fn components(&self) -> usize {
        self.components.len()
    }

    /// Stops one component gracefully and waits for it.
    pub async fn stop(&mut self, index: usize) -> anyhow::Result<()> {
        let (name, token, handle) = &mut self.components[index];
        token.cancel();
        let Some(handle) = handle.take() else {
            return Ok(());
        };
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .with_context(|| format!("{name} did not stop within 30 s"))???;
        Ok(())
    }

    /// Ready messages in a queue (messages held unacked by a consumer are not counted).
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self.broker.counts(queue).await?.ready)
    }

    /// Waits until `count` consumers subscribe to `queue` (the consumer processes are up),
    /// at most 30 s.
    pub async fn wait_for_consumers(&self, queue: &str, count: u32) -> anyhow::Result<()> {
        let subscribed = self
            .eventually(Duration::from_secs(30), || async {
                Ok(self.broker.counts(queue).await?.consumers >= count)
            })
            .await?;
        anyhow::ensure!(
            subscribed,
            "{count} consumers did not subscribe to {queue} within 30 s"
        );
        Ok(())
    }

    /// Publishes one check message of `ids`, accepted now, to the work queue as a producer
    /// would (confirmed, mandatory).
    pub async fn publish_check(&self, ids: &[i64]) -> anyhow::Result<()> {
        let body = serde_json::json!({ "object_ids": ids, "accepted_at": chrono::Utc::now() });
        let channel = lastseen::amqp::confirm_channel(&self.amqp).await?;
        lastseen::amqp::publish_mandatory(
            &channel,
            &self.topology().callbacks_exchange,
            lastseen::topology::CHECK_ROUTING_KEY,
            body.to_string().as_bytes(),
            lastseen::amqp::persistent_json(),
        )
        .await?
        .await?;
        let _ = channel.close(200, "published".into()).await;
        Ok(())
    }

    /// Dead-letters a check message of `ids` as the consumer leaves one after
    /// `MAX_ATTEMPTS` (10 attempts, `reason` in `x-reason`, request id `req-7`).
    pub async fn dead_letter(&self, ids: &[i64], reason: &str) -> anyhow::Result<()> {
        use lapin::types::{AMQPValue, FieldTable};
        let mut headers = FieldTable::default();
        headers.insert("x-attempt".into(), AMQPValue::LongLongInt(10));
        headers.insert("x-reason".into(), AMQPValue::LongString(reason.into()));
        headers.insert("x-request-id".into(), AMQPValue::LongString("req-7".into()));
        let body = serde_json::json!({ "object_ids": ids, "accepted_at": chrono::Utc::now() });
        self.channel
            .basic_publish(
                self.topology().dead_letter_exchange.as_str().into(),
                "".into(),
                lapin::options::BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                lastseen::amqp::persistent_json().with_headers(headers),
            )
            .await?
            .await?;
        Ok(())
    }

    /// Puts objects `ids` straight into `objects`, first and last seen 30 s before
    /// `deadline`: for tests of what happens at and after a deadline.
    pub async fn insert_objects(
        &self,
        ids: &[i64],
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO objects (id, first_seen, last_seen, expires_at)
             SELECT id, $2, $2, $3 FROM UNNEST($1::bigint[]) AS id",
        )
        .bind(ids)
        .bind(deadline - chrono::Duration::seconds(30))
        .bind(deadline)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether every one of `ids` has a row in `objects`.
    pub async fn stored(&self, ids: &[i64]) -> anyhow::Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM objects WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(&self.pool)
            .await?;
        Ok(n == ids.len() as i64)
    }

    /// Waits until every one of `ids` has a row in `objects`, at most `within`.
    pub async fn stored_within(&self, ids: &[i64], within: Duration) -> anyhow::Result<bool> {
        self.eventually(within, || self.stored(ids)).await
    }

    /// Takes every message from a queue (acking each), returning bodies and properties.
    pub async fn drain(&self, queue: &str) -> anyhow::Result<Vec<lapin::message::Delivery>> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            msg.delivery.acker.ack(BasicAckOptions::default()).await?;
            out.push(msg.delivery);
        }
        Ok(out)
    }

    /// This test's database as the read-only `analyst` login, which this creates if the
    /// machine lacks it (`make test` creates it too, in scripts/services.sh).
    pub async fn analyst_url(&self) -> anyhow::Result<String> {
        sqlx::raw_sql(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
                 CREATE ROLE analyst LOGIN PASSWORD 'analyst' IN ROLE lastseen_analyst;
               END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$",
        )
        .execute(&self.pool)
        .await?;
        Ok(postgres_server()
            .with_login("analyst", "analyst")
            .with_database(self.database_name()))
    }

    /// The ids in `objects`, sorted.
    pub async fn object_ids(&self) -> anyhow::Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT id FROM objects ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Polls `check` every 100 ms until it returns true or `within` passes.
    pub async fn eventually<F, Fut>(&self, within: Duration, mut check: F) -> anyhow::Result<bool>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<bool>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if check().await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops everything and removes the database, queues and exchanges of this test.
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for (name, _, handle) in self.components.drain(..) {
            let Some(handle) = handle else { continue };
            match tokio::time::timeout(Duration::from_secs(30), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => anyhow::bail!("{name} failed: {err:#}"),
                Ok(Err(join)) => anyhow::bail!("{name} panicked: {join}"),
                Err(_) => anyhow::bail!("{name} did not stop within 30 s"),
            }
        }
        if let Some(task) = self.status_task.take() {
            let _ = task.await;
        }
        let topology = self.topology();
        self.delete_topology(&topology).await;
        self.broker.close().await;
        let _ = self.amqp.close(200, "teardown".into()).await;
        self.pool.close().await;
        let _ = std::fs::remove_dir_all(&self.spool_dir);
        let admin = PgPool::connect(&postgres_server().with_database("postgres")).await?;
        // The name is ours (a UUID), not input: safe to splice into DDL.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"lastseen_test_{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }

    /// Deletes this test's queues and exchanges, on a connection of its own: a test may
    /// have closed `self.channel` with a channel error (a declaration refused on
    /// purpose), or `self.amqp` may have missed its heartbeats while the test's thread
    /// was busy (building the binaries), and every deletion on them would then fail
    /// unseen, leaving them on the shared broker. Best effort: a broker it cannot reach
    /// is reported on stderr and the rest of the teardown goes on.
    async fn delete_topology(&self, topology: &lastseen::topology::Topology) {
        if let Err(err) = self.try_delete_topology(topology).await {
            eprintln!("teardown: the test's queues and exchanges stay: {err}");
        }
    }

    async fn try_delete_topology(
        &self,
        topology: &lastseen::topology::Topology,
    ) -> anyhow::Result<()> {
        let cleanup = lastseen::amqp::connect(&amqp_url().as_str().into(), "e2e-teardown").await?;
        let channel = cleanup.create_channel().await?;
        let mut queues = vec![
            topology.checks_queue.clone(),
            topology.dead_letter_queue.clone(),
            topology.notifications_queue.clone(),
        ];
        queues.extend(self.retry_queue_names().await);
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            &topology.callbacks_exchange,
            &topology.dead_letter_exchange,
            &topology.notifications_exchange,
            &topology.progress_exchange,
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = cleanup.close(200, "teardown".into()).await;
        Ok(())
    }

    /// Retry queues this test's consumers may have declared (found by listing them).
    async fn retry_queue_names(&self) -> Vec<String> {
        harness::broker_admin::local_queue_names(&format!("{}.checks.retry.", self.prefix)).await
    }
}

/// How long the tests' callbacks may take (far more than the producer ever needs).
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// POSTs `{"object_ids": ids}` as JSON and asserts it was accepted (202).
pub async fn post_ids(url: &str, ids: &[i64]) -> anyhow::Result<()> {
    let body = serde_json::json!({ "object_ids": ids }).to_string();
    let (code, answer) = post_callback(url, Some("application/json"), body).await?;
    anyhow::ensure!(code == 202, "callback answered {code}: {answer}");
    Ok(())
}

/// `GET {base}/readyz`: its status code and body (0 and the error text when nothing
/// answered).
pub async fn readiness(base: &str) -> (u16, serde_json::Value) {
    match lastseen::tls::get(format!("{base}/readyz")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or_default())
        }
        Err(err) => (0, serde_json::Value::String(err.to_string())),
    }
}

/// Polls `{base}/readyz` until its `status` field is `wanted`; returns how long that
/// took and the body that said it.
pub async fn until_readiness(
    base: &str,
    wanted: &str,
    within: Duration,
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let started = tokio::time::Instant::now();
    loop {
        let (_, body) = readiness(base).await;
        if body["status"] == wanted {
            return Ok((started.elapsed(), body));
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{base}/readyz did not say {wanted:?} within {within:?}; last: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The base URL (scheme, host and port) of a producer's callback URL.
pub fn base_of(callback_url: &str) -> &str {
    callback_url.trim_end_matches("/callback")
}

/// POSTs a JSON callback; returns the status and the body as JSON (or Null).
pub async fn post_callback(
    url: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    tester::callback::CallbackClient::new(url, CALLBACK_TIMEOUT)?
        .post_raw(content_type, body)
        .await
}
