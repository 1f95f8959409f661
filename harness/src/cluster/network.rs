//! Three hosts on one machine: a network namespace per RabbitMQ node, each joined by a
//! veth pair to a bridge in the machine's own namespace, where the pipeline's processes
//! run. Taking a node's link down cuts it off from the other nodes and from every client
//! at once, as a network partition does; taking it up heals it.
//!
//! ```text
//!   host namespace: producers, consumers, sweepers, status simulator, PostgreSQL
//!        | lsc-br  {subnet}.254
//!   +----+-------------------+-------------------+
//!   lsc-1-h                  lsc-2-h             lsc-3-h       (link down = cut off)
//!   | netns lsc-1            | netns lsc-2       | netns lsc-3
//!   {subnet}.1 rabbit-1      {subnet}.2 rabbit-2 {subnet}.3 rabbit-3
//! ```

use std::time::Duration;

use crate::chaos::tools;

/// The bridge's name in the host namespace.
const BRIDGE: &str = "lsc-br";
/// Longest wait for one `ip` command.
const IP_LIMIT: Duration = Duration::from_secs(10);

/// The namespaces, links and addresses of the cluster's hosts.
pub struct Network {
    /// The first three octets, e.g. `10.231.0`.
    subnet: String,
    hosts: usize,
}

impl Network {
    pub fn new(subnet: &str, hosts: usize) -> Self {
        Self {
            subnet: subnet.to_owned(),
            hosts,
        }
    }

    /// The namespace of host `i` (1-based).
    pub fn namespace(&self, i: usize) -> String {
        format!("lsc-{i}")
    }

    /// The address of host `i` (1-based).
    pub fn address(&self, i: usize) -> String {
        format!("{}.{i}", self.subnet)
    }

    fn host_link(&self, i: usize) -> String {
        format!("lsc-{i}-h")
    }

    /// Creates the bridge, the namespaces and their links, after removing whatever an
    /// interrupted run left.
    pub async fn create(&self) -> anyhow::Result<()> {
        tools::require(&[("ip", "iproute2")])?;
        self.remove().await;
        ip(&["link", "add", BRIDGE, "type", "bridge"]).await?;
        let bridge_address = format!("{}.254/24", self.subnet);
        ip(&["addr", "add", &bridge_address, "dev", BRIDGE]).await?;
        ip(&["link", "set", BRIDGE, "up"]).await?;
        for i in 1..=self.hosts {
            let ns = self.namespace(i);
            let link = self.host_link(i);
            ip(&["netns", "add", &ns]).await?;
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])
            .await?;
            ip(&["link", "set", &link, "master", BRIDGE, "up"]).await?;
            let address = format!("{}/24", self.address(i));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"]).await?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
            ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
        }
        Ok(())
    }

    /// Cuts host `i` off from everyone.
    pub async fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_link(i), "down"]).await
    }

    /// Joins host `i` again.
    pub async fn heal(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_link(i), "up"]).await
    }

    /// Pids of every process in host `i`'s namespace.
    pub async fn pids(&self, i: usize) -> Vec<String> {
        tools::run("ip", &["netns", "pids", &self.namespace(i)], &[], IP_LIMIT)
            .await
            .map(|out| out.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Kills what still runs in the namespaces and removes them, their links and the
    /// bridge. Quiet about what is not there.
    pub async fn remove(&self) {
        for i in 1..=self.hosts {
            for pid in self.pids(i).await {
                let _ = tools::run("kill", &["-KILL", &pid], &[], IP_LIMIT).await;
            }
            let _ = ip(&["netns", "del", &self.namespace(i)]).await;
            let _ = ip(&["link", "del", &self.host_link(i)]).await;
        }
        let _ = ip(&["link", "del", BRIDGE]).await;
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    tools::run("ip", args, &[], IP_LIMIT).await.map(|_| ())
}
