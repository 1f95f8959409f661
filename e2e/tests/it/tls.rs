//! TLS to every dependency, with certificates made by the test: the status service and
//! the webhook over HTTPS, PostgreSQL with `ssl = on` and `sslmode=verify-full`. Each
//! works with the right CA (`TLS_CA_FILE`), and fails with a clear error, losing
//! nothing, with the wrong one.

use std::time::Duration;

use chrono::Utc;
use e2e::certs::TestCerts;
use e2e::private_postgres::PrivatePostgres;
use e2e::process::{free_port, start};
use e2e::{Status, TestEnv};
use harness::chaos::broker::{BrokerNode, TlsListener};
use tester::webhook_receiver::{Behaviour, WebhookReceiver};

/// Starts `program` with TLS `settings` that cannot work, and checks that it stops at
/// once with exit code 2 and a line `invalid configuration: {setting}: TLS …{reason}…`,
/// never showing `secret`.
async fn refused_at_start(
    program: &str,
    settings: &[(&str, String)],
    setting: &str,
    reason: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let mut process = start(program, settings)?;
    let stopped = process.wait_or_kill(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(process.log())?;
    assert!(
        matches!(stopped, harness::process::Stopped::Exited(status) if status.code() == Some(2)),
        "{stopped:?}: {log}"
    );
    let expected = format!("invalid configuration: {setting}: TLS");
    assert!(
        log.lines()
            .any(|line| line.starts_with(&expected) && line.contains(reason)),
        "{log}"
    );
    assert!(!log.contains(secret), "the password was shown: {log}");
    Ok(())
}

fn tls_status(certs: &TestCerts) -> Status {
    Status {
        tls: Some(certs.server()),
        ..Status::quick_all_online()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_checks_over_https_fail_clearly_with_the_wrong_ca_and_lose_nothing()
-> anyhow::Result<()> {
    let certs = TestCerts::new()?;
    let mut env = TestEnv::start(tls_status(&certs)).await?;
    assert!(env.status_url.starts_with("https://"), "{}", env.status_url);
    let url = env.start_producer(&[]).await?;

    // A consumer that trusts another CA: every check fails, and says why.
    let mut settings = env.process_env();
    settings.extend([
        ("TLS_CA_FILE", certs.wrong_ca().display().to_string()),
        ("METRICS_ADDR", format!("127.0.0.1:{}", free_port()?)),
        ("RETRY_BASE_MS", "200".into()),
        ("RUST_LOG", "info,sqlx=warn".into()),
    ]);
    let mut wrong = start("consumer", &settings)?;
    let ids = [2, 4, 6];
    let (status, _) = e2e::post_callback(&url, None, r#"{"object_ids":[2,4,6]}"#).await?;
    assert_eq!(status, 202);
    let said = env
        .eventually(Duration::from_secs(20), || async {
            Ok(std::fs::read_to_string(wrong.log())?.contains("UnknownIssuer"))
        })
        .await?;
    let stored_then = env.stored(&ids).await?;
    wrong.stop(Duration::from_secs(15)).await;
    assert!(
        said,
        "the consumer's log does not say the certificate is not trusted: {}",
        std::fs::read_to_string(wrong.log())?
    );
    assert!(!stored_then, "stored although no check could succeed");

    // The right CA: the same callback's ids, waiting in the retry queues, are checked.
    env.start_consumer(&[&format!("--tls-ca-file={}", certs.ca().display())])?;
    assert!(
        env.stored_within(&ids, Duration::from_secs(30)).await?,
        "the ids were not checked over HTTPS with the right CA"
    );
    env.teardown().await
}

async fn delivered(env: &TestEnv, outcome: &'static str, rows: i64) -> anyhow::Result<bool> {
    env.eventually(Duration::from_secs(20), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE webhook_outcome = $1")
                .bind(outcome)
                .fetch_one(&env.pool)
                .await?;
        Ok(n == rows)
    })
    .await
}

/// Certificates, a test environment and a webhook receiver serving HTTPS with them.
async fn with_https_receiver() -> anyhow::Result<(TestCerts, TestEnv, WebhookReceiver)> {
    let certs = TestCerts::new()?;
    let env = TestEnv::start(Status::quick_all_online()).await?;
    let receiver = WebhookReceiver::start_with(
        "127.0.0.1:0".parse()?,
        Behaviour::default(),
        Some(certs.server_config()?),
    )
    .await?;
    Ok((certs, env, receiver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_over_https_is_delivered_signed_with_the_right_ca() -> anyhow::Result<()> {
    let (certs, mut env, receiver) = with_https_receiver().await?;
    assert!(receiver.url().starts_with("https://"));
    env.start_sweeper(&[
        &format!("--notify-webhook-url={}", receiver.url()),
        "--notify-webhook-secret=s3cret",
        &format!("--tls-ca-file={}", certs.ca().display()),
    ])?;
    env.insert_objects(&[1, 2], Utc::now()).await?;
    // Two object.expired and one digest.
    assert!(
        delivered(&env, "delivered", 3).await?,
        "not delivered over HTTPS"
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for (headers, body) in &requests {
        let id = headers["webhook-id"].to_str()?;
        let timestamp: i64 = headers["webhook-timestamp"].to_str()?.parse()?;
        assert_eq!(
            headers["webhook-signature"],
            sweeper::webhook::signature(b"s3cret", id, timestamp, body).as_str()
        );
    }
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_with_the_wrong_ca_fails_with_the_reason_recorded() -> anyhow::Result<()> {
    let (certs, mut env, receiver) = with_https_receiver().await?;
    env.start_sweeper(&[
        &format!("--notify-webhook-url={}", receiver.url()),
        "--notify-webhook-secret=s3cret",
        "--notify-webhook-max-attempts=1",
        &format!("--tls-ca-file={}", certs.wrong_ca().display()),
    ])?;
    env.insert_objects(&[1], Utc::now()).await?;
    assert!(
        delivered(&env, "failed", 2).await?,
        "the attempts did not end in failed"
    );
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT webhook_error FROM notifications ORDER BY id")
            .fetch_all(&env.pool)
            .await?;
    for error in &errors {
        assert!(error.contains("UnknownIssuer"), "{error}");
    }
    // Published to RabbitMQ all the same: the webhook is one more way out, not the only.
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE published_at IS NOT NULL")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(published, 2);
    assert!(
        receiver.requests().is_empty(),
        "a request got through the wrong CA"
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_postgres_with_verify_full_and_refuses_the_wrong_ca()
-> anyhow::Result<()> {
    let certs = TestCerts::new()?;
    let (cert, key) = certs.server();
    let postgres = PrivatePostgres::start_tls("pw", &cert, &key)?;
    let env = TestEnv::start(Status::quick_all_online()).await?;
    let database_url = format!("{}?sslmode=verify-full", postgres.url("pw", "lastseen_tls"));
    let consumer_port = free_port()?;
    let with = |ca: &std::path::Path| {
        let mut settings = env.process_env();
        settings.extend([
            ("DATABASE_URL", database_url.clone()),
            ("TLS_CA_FILE", ca.display().to_string()),
            ("METRICS_ADDR", format!("127.0.0.1:{consumer_port}")),
        ]);
        settings
    };

    // The wrong CA: the consumer stops at once, exit code 2, one line naming the setting.
    refused_at_start(
        "consumer",
        &with(&certs.wrong_ca()),
        "DATABASE_URL",
        "UnknownIssuer",
        "pw@",
    )
    .await?;

    // The right CA: callbacks stored over TLS, the connections encrypted.
    let callback_port = free_port()?;
    let _producer = start(
        "producer",
        &[
            env.process_env(),
            vec![("CALLBACK_ADDR", format!("127.0.0.1:{callback_port}"))],
        ]
        .concat(),
    )?;
    let _consumer = start("consumer", &with(&certs.ca()))?;
    let url = format!("http://127.0.0.1:{callback_port}");
    e2e::until_readiness(&url, "ready", Duration::from_secs(60)).await?;
    // Ready once it reached PostgreSQL (over TLS) and created the database.
    e2e::until_readiness(
        &format!("http://127.0.0.1:{consumer_port}"),
        "ready",
        Duration::from_secs(60),
    )
    .await?;
    let (status, _) = e2e::post_callback(
        &format!("{url}/callback"),
        None,
        r#"{"object_ids":[10,12]}"#,
    )
    .await?;
    assert_eq!(status, 202);

    let options: sqlx::postgres::PgConnectOptions =
        format!("{database_url}&sslrootcert={}", certs.ca().display()).parse()?;
    let pool = sqlx::PgPool::connect_with(options).await?;
    let stored = env
        .eventually(Duration::from_secs(30), || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM objects WHERE id IN (10, 12)")
                .fetch_one(&pool)
                .await?;
            Ok(n == 2)
        })
        .await?;
    assert!(stored, "the ids were not stored over TLS");
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE ssl AND datname = 'lastseen_tls' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&pool)
    .await?;
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE NOT ssl AND datname = 'lastseen_tls'",
    )
    .fetch_one(&pool)
    .await?;
    assert!(encrypted > 0, "no connection of the consumer uses TLS");
    assert_eq!(plain, 0, "a connection without TLS");
    pool.close().await;
    env.teardown().await
}

/// A RabbitMQ node of the test's own with a TLS listener, shut down when dropped.
struct TlsNode {
    node: BrokerNode,
    _dir: tempfile::TempDir,
}

impl TlsNode {
    async fn start(certs: &TestCerts) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lastseen-tls-node-")
            .tempdir()?;
        // The node's management and distribution ports sit 10,000 and 20,000 above (out
        // of the ephemeral range, which starts at 32768).
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let amqp_port = (0..1000)
            .map(|_| rand::random_range(15_000..25_000u16))
            .find(|&p| free(p) && free(p + 10_000) && free(p + 20_000))
            .ok_or_else(|| anyhow::anyhow!("no free ports for a RabbitMQ node"))?;
        let (cert, key) = certs.server();
        let node = BrokerNode::new(
            &dir.path().join("node"),
            &dir.path().join("logs"),
            amqp_port,
        )
        .named(&format!("lastseen-tls-{amqp_port}"))
        .with_tls(TlsListener {
            port: free_port()?,
            ca: certs.ca(),
            cert,
            key,
            require_client_cert: true,
        });
        node.prepare().await?;
        let node = Self { node, _dir: dir };
        node.node.start().await?;
        Ok(node)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", self.node.name(), "shutdown"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_rabbitmq_over_amqps_and_refuses_the_wrong_ca() -> anyhow::Result<()> {
    let certs = TestCerts::new()?;
    let node = TlsNode::start(&certs).await?;
    let env = TestEnv::start(Status::quick_all_online()).await?;
    let amqps = node
        .node
        .amqps_url("127.0.0.1")
        .expect("the node has a TLS listener");
    let callback_port = free_port()?;
    let (client_cert, client_key) = certs.client();
    let with = |ca: &std::path::Path| {
        let mut settings = env.process_env();
        settings.extend([
            ("AMQP_URL", amqps.clone()),
            ("TLS_CLIENT_CERT", client_cert.display().to_string()),
            ("TLS_CLIENT_KEY", client_key.display().to_string()),
            ("TLS_CA_FILE", ca.display().to_string()),
            ("CALLBACK_ADDR", format!("127.0.0.1:{callback_port}")),
            (
                "METRICS_ADDR",
                format!("127.0.0.1:{}", free_port().unwrap_or(0)),
            ),
        ]);
        settings
    };

    // The wrong CA: the producer stops at once, exit code 2, one line naming the setting.
    refused_at_start(
        "producer",
        &with(&certs.wrong_ca()),
        "AMQP_URL",
        "UnknownIssuer",
        "guest:guest",
    )
    .await?;

    // No client certificate: the node, which asks for one, refuses the connection.
    let without_identity: Vec<(&str, String)> = with(&certs.ca())
        .into_iter()
        .filter(|(name, _)| !name.starts_with("TLS_CLIENT"))
        .collect();
    refused_at_start(
        "producer",
        &without_identity,
        "AMQP_URL",
        "alert",
        "guest:guest",
    )
    .await?;

    // The right CA and the client certificate: callbacks published over amqps, checked
    // and stored.
    let _producer = start("producer", &with(&certs.ca()))?;
    let _consumer = start("consumer", &with(&certs.ca()))?;
    let url = format!("http://127.0.0.1:{callback_port}");
    e2e::until_readiness(&url, "ready", Duration::from_secs(60)).await?;
    let (status, body) = e2e::post_callback(
        &format!("{url}/callback"),
        None,
        r#"{"object_ids":[20,22]}"#,
    )
    .await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["spooled"], false,
        "published to the TLS node, not spooled"
    );
    assert!(
        env.stored_within(&[20, 22], Duration::from_secs(30))
            .await?,
        "the ids were not stored through the TLS node"
    );
    env.teardown().await
}

#[tokio::test]
async fn a_client_key_that_is_not_the_certificates_stops_every_binary_with_exit_2()
-> anyhow::Result<()> {
    let certs = TestCerts::new()?;
    let (client_cert, _) = certs.client();
    let (_, other_key) = certs.server();
    for program in ["producer", "consumer", "sweeper"] {
        let settings = [
            ("TLS_CLIENT_CERT", client_cert.display().to_string()),
            ("TLS_CLIENT_KEY", other_key.display().to_string()),
            ("CALLBACK_ADDR", format!("127.0.0.1:{}", free_port()?)),
            ("METRICS_ADDR", format!("127.0.0.1:{}", free_port()?)),
        ];
        let mut process = start(program, &settings)?;
        let stopped = process.wait_or_kill(Duration::from_secs(30)).await;
        let log = std::fs::read_to_string(process.log())?;
        assert!(
            matches!(stopped, harness::process::Stopped::Exited(status) if status.code() == Some(2)),
            "{program}: {stopped:?}: {log}"
        );
        assert!(
            log.lines().any(|line| line.starts_with(
                "invalid configuration: TLS_CLIENT_KEY: not the key of the client certificate"
            )),
            "{program}: {log}"
        );
    }
    Ok(())
}
