//! The suite's own RabbitMQ node, so stopping it never disturbs the machine's shared one
//! (5672) that other tests use: node `lastseen-chaos@localhost` on its own AMQP,
//! management and distribution ports, with its data and logs under the chaos folder.
//!
//! It runs as the `rabbitmq` user (Debian's wrapper switches to it), so it shares the
//! Erlang cookie of the main node and `rabbitmqctl -n lastseen-chaos@localhost` works.
//! Its data is wiped before each start of a run, so every run begins with no queues.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::tools;

/// The node's name; `@localhost` matches the main node's naming on this machine.
pub const NODE_NAME: &str = "lastseen-chaos@localhost";

/// Longest wait for the node to boot or to shut down (a boot takes ~8 s here).
const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// The management API listens this far above the AMQP port, Erlang distribution 20000
/// above it (RabbitMQ's own convention for the distribution port).
const MANAGEMENT_PORT_OFFSET: u16 = 10_000;
const DIST_PORT_OFFSET: u16 = 20_000;

/// A listener with TLS (`amqps://`): its port and the PEM files it serves with.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse a client without a certificate signed by `ca`.
    pub require_client_cert: bool,
}

/// The chaos RabbitMQ node (or another of a test's own: [`BrokerNode::named`]).
pub struct BrokerNode {
    name: String,
    amqp_port: u16,
    tls: Option<TlsListener>,
    /// Holds the config, the plugin list and the node's data (`mnesia/`).
    base: PathBuf,
    logs: PathBuf,
}

impl BrokerNode {
    /// A node with its files under `base` (absolute) and its logs under `logs`.
    pub fn new(base: &Path, logs: &Path, amqp_port: u16) -> Self {
        Self {
            name: NODE_NAME.to_owned(),
            amqp_port,
            tls: None,
            base: base.to_owned(),
            logs: logs.join("rabbitmq"),
        }
    }

    /// The same node under another name (`name@localhost`), so several can run at once.
    pub fn named(mut self, name: &str) -> Self {
        self.name = format!("{name}@localhost");
        self
    }

    /// The node's name, for `rabbitmqctl -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node also listens with TLS.
    pub fn with_tls(mut self, tls: TlsListener) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The `amqps://` URL of its TLS listener, by `host` (the name its certificate bears).
    pub fn amqps_url(&self, host: &str) -> Option<String> {
        let tls = self.tls.as_ref()?;
        Some(format!("amqps://guest:guest@{host}:{}/%2f", tls.port))
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port())
    }

    fn management_port(&self) -> u16 {
        self.amqp_port.saturating_add(MANAGEMENT_PORT_OFFSET)
    }

    fn dist_port(&self) -> u16 {
        self.amqp_port.saturating_add(DIST_PORT_OFFSET)
    }

    /// The environment that makes `rabbitmq-server` start this node, not the main one.
    fn env(&self) -> Vec<(String, String)> {
        let path = |p: &str| self.base.join(p).display().to_string();
        vec![
            ("RABBITMQ_NODENAME".into(), self.name.clone()),
            ("RABBITMQ_NODE_PORT".into(), self.amqp_port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), self.dist_port().to_string()),
            ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq.conf")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
                path("advanced.config"),
            ),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                path("enabled_plugins"),
            ),
            ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), self.logs.display().to_string()),
        ]
    }

    /// Checks the tools and ports, stops a node left over by an interrupted run, wipes
    /// its data and writes its configuration. Safe to repeat.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        tools::require(&[
            ("rabbitmq-server", "rabbitmq-server"),
            ("rabbitmqctl", "rabbitmq-server"),
        ])?;
        if tools::port_open(self.amqp_port).await {
            // Most likely our node, left running by a run that was killed.
            let _ = self.shutdown().await;
        }
        for port in [self.amqp_port, self.management_port(), self.dist_port()] {
            if tools::port_open(port).await {
                anyhow::bail!(
                    "port {port} (for the chaos RabbitMQ node) is taken by another program: set CHAOS_AMQP_PORT to a port p with p, p+{MANAGEMENT_PORT_OFFSET} and p+{DIST_PORT_OFFSET} free"
                );
            }
        }
        let mnesia = self.base.join("mnesia");
        if mnesia.exists() {
            std::fs::remove_dir_all(&mnesia)
                .with_context(|| format!("cannot wipe {}", mnesia.display()))?;
        }
        for dir in [&self.base, &mnesia, &self.logs] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut config = format!(
            "# The chaos suite's own node (written by `harness chaos`).\n\
             listeners.tcp.1 = 127.0.0.1:{amqp}\n\
             management.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {management}\n\
             # Queue figures (depths, redeliveries) refreshed every second, not every 5 s.\n\
             collect_statistics_interval = 1000\n",
            amqp = self.amqp_port,
            management = self.management_port(),
        );
        if let Some(tls) = &self.tls {
            // The node reads its copies (the rabbitmq user owns the folder).
            let copy = |from: &Path, name: &str| -> anyhow::Result<String> {
                let to = self.base.join(name);
                std::fs::copy(from, &to)
                    .with_context(|| format!("cannot copy {}", from.display()))?;
                Ok(to.display().to_string())
            };
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {require}\n",
                port = tls.port,
                verify = if tls.require_client_cert {
                    "verify_peer"
                } else {
                    "verify_none"
                },
                require = tls.require_client_cert,
                ca = copy(&tls.ca, "ca.pem")?,
                cert = copy(&tls.cert, "server.pem")?,
                key = copy(&tls.key, "server.key")?,
            ));
        }
        write(&self.base.join("rabbitmq.conf"), &config)?;
        // Management gives unacked counts and redelivery counters without rabbitmqctl,
        // whose every call boots an Erlang VM (about a CPU second).
        write(
            &self.base.join("enabled_plugins"),
            "[rabbitmq_management].\n",
        )?;
        // The node runs as the rabbitmq user, who must own its files.
        for dir in [&self.base, &self.logs] {
            let dir = dir.display().to_string();
            let args = ["-R", "rabbitmq:rabbitmq", dir.as_str()];
            tools::run("chown", &args, &[], Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    /// Starts the node and waits until AMQP and the management API answer; returns how
    /// long the boot took.
    pub async fn start(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        tools::run(
            "rabbitmq-server",
            &["-detached"],
            &self.env(),
            Duration::from_secs(30),
        )
        .await?;
        let http = lastseen::tls::http_client()
            .timeout(Duration::from_secs(2))
            .build()?;
        let overview = format!("{}/api/overview", self.management_url());
        loop {
            let amqp_up = match lastseen::amqp::connect(
                &self.amqp_url().as_str().into(),
                "chaos-probe",
            )
            .await
            {
                Ok(conn) => {
                    let _ = conn.close(200, "up".into()).await;
                    true
                }
                Err(_) => false,
            };
            let management_up = amqp_up
                && http
                    .get(&overview)
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            if management_up {
                return Ok(started.elapsed());
            }
            if started.elapsed() > BOOT_LIMIT {
                anyhow::bail!(
                    "the RabbitMQ node {} did not start within {BOOT_LIMIT:?}; see {}",
                    self.name,
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the node (the Erlang VM too) and waits until it is gone.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        tools::run(
            "rabbitmqctl",
            &["-q", "-n", &self.name, "shutdown"],
            &[],
            BOOT_LIMIT,
        )
        .await
        .with_context(|| format!("cannot stop the RabbitMQ node {}", self.name))?;
        Ok(())
    }

    /// Raises (`true`) or clears a memory alarm: the node's memory high watermark set far
    /// below what it uses, or back to RabbitMQ's default, so it blocks every connection
    /// that publishes, as a broker short of memory does.
    pub async fn memory_alarm(&self, raised: bool) -> anyhow::Result<()> {
        let watermark = if raised { "0.000001" } else { "0.4" };
        tools::run(
            "rabbitmqctl",
            &[
                "-q",
                "-n",
                &self.name,
                "set_vm_memory_high_watermark",
                watermark,
            ],
            &[],
            BOOT_LIMIT,
        )
        .await
        .with_context(|| format!("cannot set the memory watermark of {}", self.name))?;
        Ok(())
    }

    /// Stops the node as a fault: returns once it is gone, with the moment it stopped
    /// taking connections (early in its shutdown, which then takes several seconds more).
    pub async fn stop(&self) -> anyhow::Result<Instant> {
        let refusing = async {
            let started = Instant::now();
            while tools::port_open(self.amqp_port).await && started.elapsed() < BOOT_LIMIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Instant::now()
        };
        let (stopped, refusing_since) = tokio::join!(self.shutdown(), refusing);
        stopped.map(|()| refusing_since)
    }

    /// Teardown: a clean shutdown, else SIGKILL to the pid the node wrote, so no stray
    /// Erlang VM outlives the suite.
    pub async fn teardown(&self) -> anyhow::Result<()> {
        if !tools::port_open(self.amqp_port).await && !self.pid_alive() {
            return Ok(());
        }
        let clean = self.shutdown().await;
        if clean.is_ok() && !self.pid_alive() {
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            let _ = tools::run("kill", &["-KILL", &pid], &[], Duration::from_secs(5)).await;
        }
        clean
    }

    fn pid(&self) -> Option<String> {
        let file = self.base.join("mnesia").join(format!("{}.pid", self.name));
        let pid = std::fs::read_to_string(file).ok()?;
        let pid = pid.trim();
        (!pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit())).then(|| pid.to_owned())
    }

    fn pid_alive(&self) -> bool {
        self.pid()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
