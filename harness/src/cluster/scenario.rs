//! The cluster scenario's phases, in order: the cluster formed, the pipeline started on
//! it, the load and the three faults, the drain, and what the verdict needs collected.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::network::Network;
use super::node::{self, ClusterNode};
use super::report::ClusterResult;
use super::{ClusterArgs, NODES};
use crate::chaos::queues::QueueWatch;
use crate::pipeline::{CONSUMERS, Ending, Layout, Load};
use crate::process::Supervisor;

/// Prefix of the run's queues and exchanges.
const PREFIX: &str = "cluster";
/// Longest wait for the pipeline to answer or subscribe after its start, and for the
/// cluster to show every node running after a node came back.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// What a run works with.
pub struct Setup<'a> {
    pub args: &'a ClusterArgs,
    pub logs: &'a Path,
    pub network: &'a Network,
    pub nodes: &'a [ClusterNode],
}

impl Setup<'_> {
    /// Every node's AMQP URL, starting with node `first` (0-based), so the processes
    /// spread over the nodes.
    fn nodes_from(&self, first: usize) -> String {
        (0..NODES)
            .map(|k| self.nodes[(first + k) % NODES].amqp_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs every phase up to the verdict; teardown is the caller's.
    pub async fn run(
        &self,
        pipeline: &mut Supervisor,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ClusterResult> {
        node::form(self.nodes).await?;
        let pool = crate::database::fresh(&self.args.database_url, "CLUSTER_DATABASE_URL").await?;
        let layout = self.layout();
        layout
            .start(pipeline, &|first| self.nodes_from(first))
            .await?;
        // The last node's management API watches the queues (it is the last to restart).
        let watcher = &self.nodes[NODES - 1];
        let queues = Arc::new(
            QueueWatch::new(
                &self.nodes_from(NODES - 1),
                &watcher.management_url(),
                PREFIX,
            )?
            .with_spools(layout.producer_ports()),
        );
        queues
            .wait_consumers(CONSUMERS.len() as u64, READY_LIMIT)
            .await?;
        let replicas = self.replicas(&queues.work_queue()).await?;
        eprintln!(
            "[cluster] pipeline up after {:.0} s, work queue on {replicas} nodes; load and faults begin",
            started.elapsed().as_secs_f64()
        );

        let mut load = Load::start(
            &layout,
            self.args.rate,
            self.args.max_ids,
            self.args.id_space,
            &pool,
        )?;
        let faults = self.faults(&load, shutdown).await;
        let run = load.stop(self.args.rate).await?;
        let faults = faults?;
        eprintln!(
            "[cluster] +{:>5.1} s  load stopped; draining",
            run.load_secs
        );
        let amqp_url = self.nodes_from(0);
        let ending = Ending {
            queues: &queues,
            amqp_url: &amqp_url,
            prefix: PREFIX,
            drain: Duration::from_secs(self.args.drain_secs),
            logs: self.logs,
            tag: "[cluster]",
        };
        let outcome = ending.collect(pipeline, &pool, &load).await?;
        pool.close().await;
        Ok(ClusterResult {
            run,
            work_queue_replicas: replicas,
            faults,
            outcome,
        })
    }

    fn layout(&self) -> Layout<'_> {
        Layout {
            database_url: &self.args.database_url,
            prefix: PREFIX,
            callback_port: self.args.callback_port,
            status_port: self.args.status_port,
            logs: self.logs,
        }
    }

    /// How many nodes hold a replica of quorum queue `queue`.
    async fn replicas(&self, queue: &str) -> anyhow::Result<usize> {
        let node = &self.nodes[0];
        let info: serde_json::Value = lastseen::tls::http_client()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("{}/api/queues/%2F/{queue}", node.management_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(info["members"].as_array().map_or(0, Vec::len))
    }
}
