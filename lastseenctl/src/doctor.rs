//! `lastseenctl doctor`: checks every dependency the pipeline needs with the settings it
//! is given (PostgreSQL and its schema, the read-only login, every RabbitMQ node, its
//! version and the topology, the status service, the producer) and says plainly what is
//! wrong and what to do. Exit code 1 when something fails.

use std::fmt;
use std::time::Duration;

use clap::Args;
use lastseen::amqp;
use lastseen::config::{AmqpArgs, DatabaseArgs, redact_url, split_urls};
use lastseen::tls::TlsArgs;
use lastseen::topology::{Topology, TopologyArgs};
use sqlx::Connection;

/// How long each check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The oldest RabbitMQ the pipeline runs on (quorum queues with `delivery-limit`).
const RABBITMQ_MIN: (u32, u32) = (3, 10);
/// The oldest PostgreSQL (`xid8` and `pg_snapshot_xmin` for the event log).
const POSTGRES_MIN: u32 = 130_000;

/// Settings of `doctor`: those of the processes it checks for.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The read API's read-only login (the producer's READ_DATABASE_URL), if any.
    #[arg(long, env = "READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// RabbitMQ's management API, for its version (optional: without it the version is
    /// not checked).
    #[arg(long, env = "MANAGEMENT_URL", default_value = "http://127.0.0.1:15672")]
    pub management_url: String,
    /// The status service the consumers ask.
    #[arg(long, env = "STATUS_URL", default_value = "http://127.0.0.1:9010")]
    pub status_url: String,
    /// The producer.
    #[arg(long, env = "PRODUCER_URL", default_value = "http://127.0.0.1:9090")]
    pub producer_url: String,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Warn(String),
    Fail(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok(text) => write!(f, "ok    {text}"),
            Self::Warn(text) => write!(f, "warn  {text}"),
            Self::Fail(text) => write!(f, "FAIL  {text}"),
        }
    }
}

/// Runs every check, printing each finding as it comes; true when none failed.
pub async fn run(args: &DoctorArgs) -> anyhow::Result<bool> {
    args.tls.check()?;
    let mut findings = Vec::new();
    let mut say = |finding: Finding| {
        println!("{finding}");
        findings.push(finding);
    };
    for finding in postgres(args).await {
        say(finding);
    }
    if let Some(url) = &args.read_database_url {
        say(read_login(url, &args.tls).await);
    } else {
        say(Finding::Warn(
            "READ_DATABASE_URL is unset: the read API and the status page answer 503 reads_off"
                .into(),
        ));
    }
    for finding in rabbitmq(args).await {
        say(finding);
    }
    say(http_check(
        "status service",
        &format!("{}/objects/0", args.status_url.trim_end_matches('/')),
        "the consumers retry every id until it answers (STATUS_URL)",
    )
    .await);
    say(http_check(
        "producer",
        &format!("{}/readyz", args.producer_url.trim_end_matches('/')),
        "callbacks are not taken: start the producer (PRODUCER_URL says where it is)",
    )
    .await);
    Ok(!findings.iter().any(|f| matches!(f, Finding::Fail(_))))
}

async fn postgres(args: &DoctorArgs) -> Vec<Finding> {
    let shown = redact_url(&args.database.database_url);
    let url = args.tls.postgres_url(&args.database.database_url);
    let connected = tokio::time::timeout(CHECK_TIMEOUT, sqlx::PgConnection::connect(&url)).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            return vec![Finding::Fail(format!(
                "PostgreSQL at {shown}: {err} (is it running? make services starts it; or fix DATABASE_URL)"
            ))];
        }
        Err(_) => {
            return vec![Finding::Fail(format!(
                "PostgreSQL at {shown}: no answer within {CHECK_TIMEOUT:?} (a firewall, or the wrong host in DATABASE_URL)"
            ))];
        }
    };
    let mut out = Vec::new();
    match sqlx::query_as::<_, (String, String)>(
        "SELECT current_setting('server_version'), current_setting('server_version_num')",
    )
    .fetch_one(&mut conn)
    .await
    {
        Ok((version, number)) if number.parse::<u32>().unwrap_or(0) >= POSTGRES_MIN => {
            out.push(Finding::Ok(format!("PostgreSQL {version} at {shown}")))
        }
        Ok((version, _)) => out.push(Finding::Fail(format!(
            "PostgreSQL {version} at {shown} is too old: 13 or later is needed"
        ))),
        Err(err) => out.push(Finding::Fail(format!("PostgreSQL at {shown}: {err}"))),
    }
    let known: Vec<i64> = lastseen::db::MIGRATOR.iter().map(|m| m.version).collect();
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut conn)
            .await;
    out.push(match applied {
        Err(_) => Finding::Warn(
            "the database has no schema yet: the first producer, consumer or sweeper to start creates it".into(),
        ),
        Ok(applied) if applied == known => {
            Finding::Ok(format!("schema current ({} migrations)", known.len()))
        }
        Ok(applied) if applied.iter().any(|v| !known.contains(v)) => Finding::Fail(format!(
            "the schema has migrations this build does not know ({:?}): a newer build migrated it; run that build",
            applied.iter().filter(|v| !known.contains(v)).collect::<Vec<_>>()
        )),
        Ok(applied) => Finding::Warn(format!(
            "the schema is at {} of {} migrations: the next process to start applies the rest",
            applied.len(),
            known.len()
        )),
    });
    let _ = conn.close().await;
    out
}

async fn read_login(url: &str, tls: &TlsArgs) -> Finding {
    let shown = redact_url(url);
    let connected = tokio::time::timeout(
        CHECK_TIMEOUT,
        sqlx::PgConnection::connect(&tls.postgres_url(url)),
    )
    .await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            return Finding::Fail(format!(
                "the read login {shown}: {err} (the read API and status page answer 503; make services creates analyst)"
            ));
        }
        Err(_) => return Finding::Fail(format!("the read login {shown}: no answer")),
    };
    // What the read API reads, and what a read-only login must not do to it.
    let rights: Result<(bool, bool), _> = sqlx::query_as(
        "SELECT bool_and(has_table_privilege(t, 'SELECT')),
                bool_or(has_table_privilege(t, 'INSERT, UPDATE, DELETE, TRUNCATE'))
         FROM unnest(ARRAY['objects', 'object_last_expiry', 'object_history', 'notifications']) AS t",
    )
    .fetch_one(&mut conn)
    .await;
    let _ = conn.close().await;
    match rights {
        Ok((true, false)) => Finding::Ok(format!("the read login {shown} reads and cannot write")),
        Ok((true, true)) => Finding::Warn(format!(
            "the read login {shown} may write: give the read API a read-only login (a member of lastseen_analyst)"
        )),
        Ok((false, _)) => Finding::Fail(format!(
            "the read login {shown} cannot read every table the read API reads: grant it lastseen_analyst"
        )),
        Err(err) => Finding::Fail(format!(
            "the read login {shown}: {err} (is the schema there? the first process to start creates it)"
        )),
    }
}

async fn rabbitmq(args: &DoctorArgs) -> Vec<Finding> {
    let mut out = Vec::new();
    let topology = Topology::new(&args.topology);
    let mut reached = None;
    for node in split_urls(&args.amqp.amqp_url) {
        let shown = redact_url(node);
        let broker = amqp::Broker::new(node, &args.tls);
        match tokio::time::timeout(CHECK_TIMEOUT, amqp::connect(&broker, "lastseenctl-doctor")).await {
            Ok(Ok(connection)) => {
                out.push(Finding::Ok(format!("RabbitMQ node {shown} takes connections")));
                reached.get_or_insert(connection);
            }
            Ok(Err(err)) => out.push(Finding::Fail(format!(
                "RabbitMQ node {shown}: {err} (is it running? make services starts it; or fix AMQP_URL)"
            ))),
            Err(_) => out.push(Finding::Fail(format!("RabbitMQ node {shown}: no answer within {CHECK_TIMEOUT:?}"))),
        }
    }
    out.push(rabbitmq_version(args).await);
    let Some(connection) = reached else {
        return out;
    };
    for (queue, what) in [
        (&topology.checks_queue, "work queue"),
        (&topology.dead_letter_queue, "dead-letter queue"),
    ] {
        let channel = match connection.create_channel().await {
            Ok(channel) => channel,
            Err(err) => {
                out.push(Finding::Fail(format!(
                    "RabbitMQ: cannot open a channel: {err}"
                )));
                break;
            }
        };
        out.push(match amqp::queue_counts(&channel, queue).await {
            Ok(counts) if what == "work queue" && counts.consumers == 0 => Finding::Warn(format!(
                "{what} {queue}: {} ready, no consumer: start the consumers", counts.ready
            )),
            Ok(counts) if what == "work queue" => Finding::Ok(format!(
                "{what} {queue}: {} ready, {} consumers", counts.ready, counts.consumers
            )),
            Ok(counts) if counts.ready > 0 => Finding::Warn(format!(
                "{what} {queue}: {} dead letters: lastseenctl dead-letters list shows why", counts.ready
            )),
            Ok(_) => Finding::Ok(format!("{what} {queue}: empty")),
            Err(_) => Finding::Warn(format!(
                "{what} {queue} does not exist yet: the first producer or consumer declares it (or TOPOLOGY_PREFIX differs)"
            )),
        });
        let _ = channel.close(200, "checked".into()).await;
    }
    let _ = connection.close(200, "checked".into()).await;
    out
}

async fn rabbitmq_version(args: &DoctorArgs) -> Finding {
    let first = split_urls(&args.amqp.amqp_url)
        .first()
        .copied()
        .unwrap_or_default();
    let (user, password) = url::Url::parse(first)
        .map(|u| {
            (
                percent(u.username()),
                percent(u.password().unwrap_or_default()),
            )
        })
        .unwrap_or_default();
    let url = format!("{}/api/overview", args.management_url.trim_end_matches('/'));
    let answer = async {
        let overview: serde_json::Value = lastseen::tls::http_client()
            .timeout(CHECK_TIMEOUT)
            .build()?
            .get(&url)
            .basic_auth(&user, Some(&password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok(
            overview["rabbitmq_version"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }
    .await;
    match answer {
        Ok(version) => match parse_version(&version) {
            Some(v) if v >= RABBITMQ_MIN => Finding::Ok(format!("RabbitMQ {version}")),
            Some(_) => Finding::Fail(format!(
                "RabbitMQ {version} is too old: {}.{} or later is needed",
                RABBITMQ_MIN.0, RABBITMQ_MIN.1
            )),
            None => Finding::Warn(format!(
                "RabbitMQ's version {version:?} is not one I can read"
            )),
        },
        Err(err) => Finding::Warn(format!(
            "RabbitMQ's version is not checked: its management API at {} did not answer ({}); {}.{} or later is needed",
            redact_url(&args.management_url),
            without_url(&err),
            RABBITMQ_MIN.0,
            RABBITMQ_MIN.1
        )),
    }
}

/// A URL's user or password as typed (percent-decoded; a `+` stays a `+`).
fn percent(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// An error's text with the URL reqwest puts in it shown redacted (it may hold a
/// password).
fn without_url(err: &anyhow::Error) -> String {
    let text = err.to_string();
    match err
        .downcast_ref::<reqwest::Error>()
        .and_then(reqwest::Error::url)
    {
        Some(url) => text.replace(url.as_str(), &redact_url(url.as_str())),
        None => text,
    }
}

/// "3.10.7" as (3, 10).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

async fn http_check(what: &str, url: &str, advice: &str) -> Finding {
    let answer = async {
        let response = lastseen::tls::http_client()
            .timeout(CHECK_TIMEOUT)
            .build()?
            .get(url)
            .send()
            .await?;
        anyhow::Ok(response.status())
    }
    .await;
    match answer {
        Ok(status) if status.is_success() => Finding::Ok(format!(
            "{what} at {} answers {}",
            redact_url(url),
            status.as_u16()
        )),
        Ok(status) => Finding::Fail(format!(
            "{what} at {} answers {status}: {advice}",
            redact_url(url)
        )),
        Err(err) => Finding::Fail(format!(
            "{what} at {} does not answer ({}): {advice}",
            redact_url(url),
            without_url(&err),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(parse_version("3.10.7"), Some((3, 10)));
        assert_eq!(parse_version("4.2.5"), Some((4, 2)));
        assert!(parse_version("3.9.29").unwrap() < RABBITMQ_MIN);
        assert!(parse_version("4.0.1").unwrap() >= RABBITMQ_MIN);
        assert_eq!(parse_version("x"), None);
    }
}
