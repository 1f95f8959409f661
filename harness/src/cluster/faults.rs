//! The cluster scenario's faults, one after another under the load: a node killed, a
//! node cut off, a rolling restart; each followed by its recovery and a settle time.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::node::{self, ClusterNode};
use super::report::{FaultRecord, Window};
use super::scenario::Setup;
use crate::chaos::recovery::Prober;
use crate::pipeline::{Load, secs};

impl Setup<'_> {
    /// The three faults, each followed by its recovery and a settle time.
    pub(super) async fn faults(
        &self,
        load: &Load,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<FaultRecord>> {
        let (prober, truth) = (&load.prober, &load.truth);
        let settle = Duration::from_secs(self.args.settle_secs);
        let mut records = Vec::new();
        for fault in ["kill", "cut", "rolling"] {
            if sleep_or_stop(settle, shutdown).await {
                anyhow::bail!("interrupted");
            }
            let before = truth.counts();
            let at = load.at();
            let began = Instant::now();
            let (name, during) = match fault {
                "kill" => {
                    let node = &self.nodes[0];
                    eprintln!("[cluster] +{at:>5.1} s  kill -9 {}", node.name());
                    node.kill9().await?;
                    let during =
                        measure_within(prober, began + Duration::from_secs(self.args.kill_secs))
                            .await;
                    sleep_until(began + Duration::from_secs(self.args.kill_secs)).await;
                    node.start().await?;
                    node::wait_all_running(node).await?;
                    (
                        format!("kill -9 {} for {} s", node.name(), self.args.kill_secs),
                        during,
                    )
                }
                "cut" => {
                    let node = &self.nodes[1];
                    eprintln!("[cluster] +{at:>5.1} s  cut {} off", node.name());
                    self.network.cut(node.index).await?;
                    let during =
                        measure_within(prober, began + Duration::from_secs(self.args.cut_secs))
                            .await;
                    sleep_until(began + Duration::from_secs(self.args.cut_secs)).await;
                    self.network.heal(node.index).await?;
                    let restarted = rejoin_or_restart(node).await?;
                    (
                        format!(
                            "{} cut off for {} s{}",
                            node.name(),
                            self.args.cut_secs,
                            if restarted {
                                format!(
                                    " (not back {} s after the heal: restarted)",
                                    REJOIN_LIMIT.as_secs()
                                )
                            } else {
                                String::new()
                            }
                        ),
                        during,
                    )
                }
                _ => {
                    eprintln!("[cluster] +{at:>5.1} s  rolling restart");
                    for node in self.nodes {
                        node.shutdown().await?;
                        node.start().await?;
                        node::wait_all_running(node).await?;
                    }
                    ("rolling restart of all 3 nodes".to_owned(), None)
                }
            };
            let fault_secs = began.elapsed().as_secs_f64();
            let after = prober.measure(Instant::now()).await;
            let counts = truth.counts();
            let record = FaultRecord {
                fault: name,
                at_secs: at,
                fault_secs,
                recovered_during_secs: during.map(|d| d.as_secs_f64()),
                recovered_after_secs: after.map(|d| d.as_secs_f64()),
                callbacks: Window::between(&before, &counts),
            };
            eprintln!(
                "[cluster]          {}: {:.1} s; working again {} into it, {} after it; callbacks {} direct, {} spooled, {} refused, {} unanswered",
                record.fault,
                record.fault_secs,
                secs(record.recovered_during_secs),
                secs(record.recovered_after_secs),
                record.callbacks.direct,
                record.callbacks.spooled,
                record.callbacks.refused,
                record.callbacks.unanswered,
            );
            records.push(record);
        }
        sleep_or_stop(settle, shutdown).await;
        Ok(records)
    }
}

/// How long a node cut off gets to rejoin by itself once healed.
const REJOIN_LIMIT: Duration = Duration::from_secs(120);

/// Waits for a healed node to rejoin; after [`REJOIN_LIMIT`] restarts it, as an operator
/// would: a node that paused as the minority sometimes takes minutes to start again on
/// RabbitMQ 3.10 (its "global hang workaround", then waits for Mnesia tables: 5 min 42 s
/// in one run), while the other two serve the pipeline. Returns whether it restarted it.
async fn rejoin_or_restart(node: &ClusterNode) -> anyhow::Result<bool> {
    let rejoined = tokio::time::timeout(REJOIN_LIMIT, async {
        node.wait_up(Instant::now()).await?;
        node::wait_all_running(node).await
    })
    .await;
    if matches!(rejoined, Ok(Ok(()))) {
        return Ok(false);
    }
    eprintln!(
        "[cluster]          {} not back {} s after the heal; restarting it",
        node.name(),
        REJOIN_LIMIT.as_secs()
    );
    node.kill9().await?;
    node.start().await?;
    node::wait_all_running(node).await?;
    Ok(true)
}

/// How long after now the pipeline works again, if it does before `deadline` (the end
/// of the fault): probes stop then, so the fault lasts what it should.
async fn measure_within(prober: &Prober, deadline: Instant) -> Option<Duration> {
    tokio::time::timeout_at(deadline.into(), prober.measure(Instant::now()))
        .await
        .ok()
        .flatten()
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

/// Sleeps `duration`; true if `shutdown` came first.
async fn sleep_or_stop(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = shutdown.cancelled() => true,
    }
}
