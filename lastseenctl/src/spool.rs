//! `lastseenctl spool status`: what a producer holds in its spool (callbacks RabbitMQ
//! could not take yet), from its `/metrics`. The spool file itself is the producer's
//! alone (it holds its lock); while the producer is down, only the file's size and age
//! are told, and the producer drains it when it starts.

use std::path::PathBuf;

use clap::Args;
use lastseen::contract::metric;

/// Settings of `spool status`.
#[derive(Debug, Clone, Args)]
pub struct SpoolArgs {
    /// The producer (its /metrics).
    #[arg(long, env = "PRODUCER_URL", default_value = "http://127.0.0.1:9090")]
    pub producer_url: String,
    /// The producer's spool file, for when the producer does not answer.
    #[arg(long, env = "SPOOL_PATH", default_value = "spool/producer.redb")]
    pub spool_path: PathBuf,
}

/// The spool's state as text.
pub async fn status(args: &SpoolArgs) -> anyhow::Result<String> {
    let url = format!("{}/metrics", args.producer_url.trim_end_matches('/'));
    let answer = async {
        let response = lastseen::tls::http_client()
            .timeout(std::time::Duration::from_secs(5))
            .build()?
            .get(&url)
            .send()
            .await?
            .error_for_status()?;
        anyhow::Ok(response.text().await?)
    }
    .await;
    match answer {
        Ok(text) => {
            let callbacks = metric::read(&text, metric::SPOOL_PENDING_CALLBACKS);
            let ids = metric::read(&text, metric::SPOOL_PENDING_IDS);
            match (callbacks, ids) {
                (Some(0), _) => Ok(format!(
                    "the spool of {} is empty: every accepted callback is in RabbitMQ",
                    args.producer_url
                )),
                (Some(callbacks), Some(ids)) => Ok(format!(
                    "the spool of {} holds {callbacks} callbacks ({ids} ids) waiting for RabbitMQ; \
                     the producer publishes them as soon as RabbitMQ takes them",
                    args.producer_url
                )),
                _ => anyhow::bail!("{url} does not report {}", metric::SPOOL_PENDING_CALLBACKS),
            }
        }
        Err(err) => {
            let file = match std::fs::metadata(&args.spool_path) {
                Ok(meta) => format!(
                    "its spool file {} is {} bytes, last written {}",
                    args.spool_path.display(),
                    meta.len(),
                    meta.modified()
                        .map(|at| chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339())
                        .unwrap_or_else(|_| "?".into())
                ),
                Err(_) => format!("no spool file at {}", args.spool_path.display()),
            };
            anyhow::bail!(
                "the producer at {} does not answer ({err}); {file}; the producer drains it when it starts",
                args.producer_url
            )
        }
    }
}
