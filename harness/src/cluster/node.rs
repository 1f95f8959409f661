//! One RabbitMQ node of the scenario's cluster, in its own network namespace: node
//! `rabbit-{i}@{address}` (long names, so nodes find each other by address), on the
//! standard ports of its own address, with its data and logs under the scenario's folder.
//!
//! The machine's RabbitMQ setup (`/etc/rabbitmq/rabbitmq-env.conf`) binds the Erlang
//! distribution and epmd to 127.0.0.1, which other hosts cannot reach: each node gets its
//! own environment file instead, and an epmd of its own in its namespace. Every
//! `rabbitmqctl` call runs inside the node's namespace with that file too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::NODES;
use crate::chaos::tools;

/// Longest wait for the cluster to show every node running after a node came back.
const RUNNING_LIMIT: Duration = Duration::from_secs(300);

/// Longest wait for a node to boot, join or stop. A node that paused as the minority of
/// a partition took 2 min 40 s to start again once healed in one run (RabbitMQ 3.10 on
/// OTP 25: its "global hang workaround", then 23 waits for Mnesia tables), while the
/// other two served the pipeline.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// One node.
pub struct ClusterNode {
    pub index: usize,
    /// Seconds before a silent peer node counts as down (RabbitMQ's `net_ticktime`).
    net_ticktime: u32,
    namespace: String,
    address: String,
    base: PathBuf,
    logs: PathBuf,
}

impl ClusterNode {
    pub fn new(
        index: usize,
        namespace: &str,
        address: &str,
        base: &Path,
        logs: &Path,
        net_ticktime: u32,
    ) -> Self {
        Self {
            index,
            net_ticktime,
            namespace: namespace.to_owned(),
            address: address.to_owned(),
            base: base.join(format!("rabbit-{index}")),
            logs: logs.join(format!("rabbit-{index}")),
        }
    }

    /// The node's Erlang name.
    pub fn name(&self) -> String {
        format!("rabbit-{}@{}", self.index, self.address)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}:5672/%2f", self.address)
    }

    pub fn management_url(&self) -> String {
        format!("http://{}:15672", self.address)
    }

    fn env_file(&self) -> PathBuf {
        self.base.join("rabbitmq-env.conf")
    }

    fn env(&self) -> Vec<(String, String)> {
        let path = |p: &str| self.base.join(p).display().to_string();
        vec![
            ("RABBITMQ_CONF_ENV_FILE".into(), path("rabbitmq-env.conf")),
            ("RABBITMQ_USE_LONGNAME".into(), "true".into()),
            ("RABBITMQ_NODENAME".into(), self.name()),
            ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq.conf")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                path("enabled_plugins"),
            ),
            ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), self.logs.display().to_string()),
        ]
    }

    /// Wipes the node's data and writes its configuration.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        if self.base.exists() {
            std::fs::remove_dir_all(&self.base)
                .with_context(|| format!("cannot wipe {}", self.base.display()))?;
        }
        for dir in [&self.base.join("mnesia"), &self.logs] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let config = format!(
            "# A node of the cluster scenario (written by `harness cluster-chaos`).\n\
             listeners.tcp.1 = {address}:5672\n\
             management.tcp.ip = {address}\n\
             management.tcp.port = 15672\n\
             # The scenario's clients reach the node over the bridge, not loopback.\n\
             loopback_users.guest = false\n\
             # A node cut off from the majority stops serving until it is back.\n\
             cluster_partition_handling = pause_minority\n\
             # A node cut off counts as down after this (RabbitMQ's default is 60 s):\n\
             # until then, declarations that involve every node wait for it.\n\
             net_ticktime = {ticktime}\n\
             collect_statistics_interval = 1000\n",
            address = self.address,
            ticktime = self.net_ticktime,
        );
        write(&self.base.join("rabbitmq.conf"), &config)?;
        write(
            &self.base.join("enabled_plugins"),
            "[rabbitmq_management].\n",
        )?;
        // Not the machine's file: no 127.0.0.1-only distribution or epmd.
        write(
            &self.env_file(),
            &format!("NODENAME={}\nUSE_LONGNAME=true\n", self.name()),
        )?;
        for dir in [&self.base, &self.logs] {
            let dir = dir.display().to_string();
            tools::run(
                "chown",
                &["-R", "rabbitmq:rabbitmq", &dir],
                &[],
                Duration::from_secs(30),
            )
            .await?;
        }
        Ok(())
    }

    /// Starts the node (and its namespace's epmd, if not running) and waits until AMQP
    /// and the management API answer; returns how long that took.
    pub async fn start(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let epmd = format!("epmd -daemon -address {},127.0.0.1", self.address);
        // Idempotent: a second epmd on the same port exits at once.
        let _ = self
            .in_namespace("su", &["rabbitmq", "-s", "/bin/sh", "-c", &epmd], &[])
            .await;
        self.in_namespace("rabbitmq-server", &["-detached"], &self.env())
            .await?;
        self.wait_up(started).await?;
        Ok(started.elapsed())
    }

    /// Waits until the node takes AMQP connections and its management API answers.
    pub async fn wait_up(&self, since: Instant) -> anyhow::Result<()> {
        let http = lastseen::tls::http_client()
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            let amqp_up =
                match lastseen::amqp::connect(&self.amqp_url().as_str().into(), "cluster-probe")
                    .await
                {
                    Ok(conn) => {
                        let _ = conn.close(200, "up".into()).await;
                        true
                    }
                    Err(_) => false,
                };
            let api_up = amqp_up
                && http
                    .get(format!("{}/api/overview", self.management_url()))
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            if api_up {
                return Ok(());
            }
            if since.elapsed() > BOOT_LIMIT {
                anyhow::bail!(
                    "RabbitMQ node {} did not come up within {BOOT_LIMIT:?}; see {}",
                    self.name(),
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Joins the cluster of `seed` (a node name): stop_app, join_cluster, start_app.
    pub async fn join(&self, seed: &str) -> anyhow::Result<()> {
        self.ctl(&["stop_app"]).await?;
        self.ctl(&["join_cluster", seed]).await?;
        self.ctl(&["start_app"]).await?;
        Ok(())
    }

    /// `rabbitmqctl` against this node, from inside its namespace.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let name = self.name();
        let mut all = vec!["-q", "-l", "-n", name.as_str()];
        all.extend_from_slice(args);
        self.in_namespace("rabbitmqctl", &all, &self.env()).await
    }

    /// A clean stop of the node (not of its epmd).
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.ctl(&["shutdown"])
            .await
            .with_context(|| format!("cannot stop RabbitMQ node {}", self.name()))
            .map(|_| ())
    }

    /// `kill -9` of the node's Erlang VM.
    pub async fn kill9(&self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("no pid file for {}", self.name()))?;
        tools::run("kill", &["-KILL", &pid], &[], Duration::from_secs(5)).await?;
        let started = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < BOOT_LIMIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn pid(&self) -> Option<String> {
        let file = self
            .base
            .join("mnesia")
            .join(format!("{}.pid", self.name()));
        let pid = std::fs::read_to_string(file).ok()?;
        let pid = pid.trim();
        (!pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit())).then(|| pid.to_owned())
    }

    async fn in_namespace(
        &self,
        program: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.namespace.as_str(), program];
        all.extend_from_slice(args);
        tools::run("ip", &all, env, BOOT_LIMIT).await
    }
}

/// Boots the three nodes, joins the second and third to the first, and waits until
/// every node sees all three running.
pub async fn form(nodes: &[ClusterNode]) -> anyhow::Result<()> {
    for node in nodes {
        node.prepare().await?;
    }
    let boots = futures::future::try_join_all(nodes.iter().map(ClusterNode::start)).await?;
    let seed = nodes[0].name();
    for node in &nodes[1..] {
        node.join(&seed).await?;
    }
    for node in nodes {
        wait_all_running(node).await?;
    }
    eprintln!(
        "[cluster] 3 nodes up (boot {}) and clustered",
        boots
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Waits until `node`'s management API shows every node of the cluster running.
pub async fn wait_all_running(node: &ClusterNode) -> anyhow::Result<()> {
    let http = lastseen::tls::http_client()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        let running = match http
            .get(format!("{}/api/nodes", node.management_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        {
            Ok(response) => response
                .json::<Vec<serde_json::Value>>()
                .await
                .map(|all| all.iter().filter(|n| n["running"] == true).count())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if running == NODES {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < RUNNING_LIMIT,
            "{} saw {running} of {NODES} nodes running after {RUNNING_LIMIT:?}",
            node.name()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
