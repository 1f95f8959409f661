//! The broker as a harness or test inspects it: exact counts of a queue over AMQP (a
//! passive declare) and the management API's view of every queue (unacked messages,
//! consumers, the redelivery counter). One client for chaos, bench and the e2e tests.

use std::time::Duration;

use anyhow::Context;
use lapin::Connection;
use lastseen::amqp::QueueCounts;
use serde::Deserialize;
use tokio::sync::Mutex;

/// Longest wait for one answer of the management API.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// One queue as the management API describes it (RabbitMQ refreshes these figures every
/// `collect_statistics_interval`, 5 s by default).
#[derive(Debug, Clone, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    /// Ready + unacked.
    #[serde(default)]
    pub messages: u64,
    /// Absent until the node has collected its first statistics.
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
    #[serde(default)]
    pub consumers: u64,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

impl QueueInfo {
    /// Deliveries to consumers flagged `redelivered` since the node started.
    pub fn redelivered(&self) -> Option<u64> {
        self.message_stats.as_ref().and_then(|s| s.redeliver)
    }
}

#[derive(Debug, Clone, Deserialize)]
struct MessageStats {
    #[serde(default)]
    redeliver: Option<u64>,
}

/// A read-only look at one broker: AMQP for exact counts, the management API for the rest.
/// The AMQP connection is opened on first use and again after the broker restarts.
pub struct BrokerAdmin {
    amqp_url: String,
    connection: Mutex<Option<Connection>>,
    management: Option<Management>,
}

/// The management API of the broker's virtual host, with the AMQP URL's credentials.
struct Management {
    http: reqwest::Client,
    /// `{base}/api`.
    api_url: String,
    /// The virtual host as the API spells it in a path.
    vhost: String,
    user: String,
    password: String,
}

impl BrokerAdmin {
    /// Inspects the broker at `amqp_url` over AMQP only.
    pub fn new(amqp_url: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            connection: Mutex::new(None),
            management: None,
        }
    }

    /// Also reads the management API at `management_url` (e.g. `http://127.0.0.1:15672`),
    /// as the AMQP URL's user, in its virtual host.
    pub fn with_management(mut self, management_url: &str) -> anyhow::Result<Self> {
        // The credentials and virtual host of the first node when the URL lists several.
        let first = self.amqp_url.split(',').next().unwrap_or_default();
        let amqp = reqwest::Url::parse(first).context("AMQP URL is not a URL")?;
        let user = match amqp.username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };
        let password = amqp.password().unwrap_or("guest").to_owned();
        // The default virtual host is `/`, which the API spells `%2F`; any other is
        // already percent-encoded in the AMQP URL's path.
        let vhost = match amqp.path().trim_start_matches('/') {
            "" => "%2F",
            named => named,
        };
        self.management = Some(Management {
            http: lastseen::tls::http_client()
                .timeout(MANAGEMENT_TIMEOUT)
                .build()?,
            api_url: format!("{}/api", management_url.trim_end_matches('/')),
            vhost: vhost.to_owned(),
            user,
            password,
        });
        Ok(self)
    }

    /// `queue`'s ready messages and consumers, exact at the moment of asking. With no
    /// consumer attached every message is ready, so counted.
    pub async fn counts(&self, queue: &str) -> anyhow::Result<QueueCounts> {
        let mut connection = self.connection.lock().await;
        if !connection.as_ref().is_some_and(|c| c.status().connected()) {
            *connection = Some(
                lastseen::amqp::connect(&self.amqp_url.as_str().into(), "broker-admin").await?,
            );
        }
        let connection = connection
            .as_ref()
            .expect("the connection was opened just above");
        // A passive declare of a missing queue closes its channel: one channel a question.
        let channel = connection.create_channel().await?;
        let counts = lastseen::amqp::queue_counts(&channel, queue).await;
        if counts.is_ok() {
            let _ = channel.close(200, "counted".into()).await;
        }
        counts.with_context(|| format!("cannot count queue {queue}"))
    }

    /// Every queue of the virtual host, from the management API.
    pub async fn queues(&self) -> anyhow::Result<Vec<QueueInfo>> {
        let vhost = &self.management()?.vhost;
        self.management_get(&format!("queues/{vhost}")).await
    }

    /// One queue, from the management API.
    pub async fn queue(&self, name: &str) -> anyhow::Result<QueueInfo> {
        let vhost = &self.management()?.vhost;
        self.management_get(&format!("queues/{vhost}/{name}")).await
    }

    /// Channels open on the connection named `name` (its `connection_name` property), if
    /// such a connection is open.
    pub async fn channels_of_connection(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let connections: Vec<serde_json::Value> = self.management_get("connections").await?;
        Ok(connections
            .iter()
            .find(|c| c["user_provided_name"] == name)
            .and_then(|c| c["channels"].as_u64()))
    }

    async fn management_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<T> {
        let management = self.management()?;
        management
            .http
            .get(format!("{}/{path}", management.api_url))
            .basic_auth(&management.user, Some(&management.password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("unreadable answer of the management API")
    }

    fn management(&self) -> anyhow::Result<&Management> {
        self.management
            .as_ref()
            .context("no management URL was given to the broker admin")
    }

    /// Closes the AMQP connection, if one is open.
    pub async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// Names of the local node's queues that start with `prefix`, from `rabbitmqctl
/// list_queues` (for cleaning up after a run); empty when it cannot run.
pub async fn local_queue_names(prefix: &str) -> Vec<String> {
    local_names("list_queues", prefix).await
}

/// Names of the local node's exchanges that start with `prefix`, from `rabbitmqctl
/// list_exchanges`; empty when it cannot run.
pub async fn local_exchange_names(prefix: &str) -> Vec<String> {
    local_names("list_exchanges", prefix).await
}

/// The names `rabbitmqctl {list}` prints that start with `prefix`.
async fn local_names(list: &str, prefix: &str) -> Vec<String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args([list, "name", "--quiet", "--no-table-headers"])
        .output()
        .await;
    let Ok(output) = output else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|q| q.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Deletes the local node's queues named `{prefix}.…` (a run's own), over `amqp_url`;
/// best effort, for cleaning up after a run.
pub async fn delete_local_queues(amqp_url: &str, prefix: &str) {
    let Ok(conn) = lastseen::amqp::connect(&amqp_url.into(), "harness-cleanup").await else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        for q in local_queue_names(&format!("{prefix}.")).await {
            let _ = channel
                .queue_delete(q.as_str().into(), Default::default())
                .await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}
