//! The result of a cluster scenario: the verdict with its reasons, the figures table
//! (markdown, printed and written to `result.md`) and the same as `result.json`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::chaos::ground_truth::CallbackCounts;
use crate::pipeline::{Outcome, RunFigures, ScenarioResult, secs};

/// The callbacks answered between two moments.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    pub direct: u64,
    pub spooled: u64,
    pub refused: u64,
    pub unanswered: u64,
}

impl Window {
    pub fn between(before: &CallbackCounts, after: &CallbackCounts) -> Self {
        Self {
            direct: after.accepted_direct - before.accepted_direct,
            spooled: after.accepted_spooled - before.accepted_spooled,
            refused: after.refused - before.refused,
            unanswered: after.no_answer - before.no_answer,
        }
    }
}

/// One fault and how the pipeline came through it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: String,
    /// When it began, in seconds since the load started.
    pub at_secs: f64,
    /// From its start until the node was back and the cluster showed all nodes running.
    pub fault_secs: f64,
    /// From its start until a callback answered directly was stored (the pipeline works
    /// on the remaining nodes); none for the rolling restart.
    pub recovered_during_secs: Option<f64>,
    /// From its end until a callback answered directly was stored.
    pub recovered_after_secs: Option<f64>,
    /// Callbacks answered from its start to the end of its recovery.
    pub callbacks: Window,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterResult {
    #[serde(flatten)]
    pub run: RunFigures,
    /// Nodes holding a replica of the work queue (quorum members).
    pub work_queue_replicas: usize,
    pub faults: Vec<FaultRecord>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl ScenarioResult for ClusterResult {
    fn run_figures(&mut self) -> &mut RunFigures {
        &mut self.run
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = self.outcome.failures(true);
        if self.work_queue_replicas != super::NODES {
            failures.push(format!(
                "the work queue has {} replicas, not {}",
                self.work_queue_replicas,
                super::NODES
            ));
        }
        for fault in &self.faults {
            if fault.recovered_after_secs.is_none() {
                failures.push(format!("no recovery after {}", fault.fault));
            }
        }
        failures
    }

    fn markdown(&self) -> String {
        markdown(self)
    }
}

/// The report as a markdown table.
fn markdown(r: &ClusterResult) -> String {
    let mut md = String::new();
    let verdict = if r.run.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        md,
        "## Cluster scenario: {verdict} ({:.0} s, {} callbacks/s over 2 producers for {:.0} s, work queue on {} nodes)\n",
        r.run.run_secs, r.run.callbacks_per_sec, r.run.load_secs, r.work_queue_replicas
    );
    let _ = writeln!(
        md,
        "| fault | at | lasted | working again, into it | after it | direct | spooled | refused | unanswered |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for f in &r.faults {
        let _ = writeln!(
            md,
            "| {} | +{:.0} s | {:.1} s | {} | {} | {} | {} | {} | {} |",
            f.fault,
            f.at_secs,
            f.fault_secs,
            if f.fault.starts_with("rolling") {
                "-".to_owned()
            } else {
                secs(f.recovered_during_secs)
            },
            secs(f.recovered_after_secs),
            f.callbacks.direct,
            f.callbacks.spooled,
            f.callbacks.refused,
            f.callbacks.unanswered
        );
    }
    let _ = writeln!(md);
    r.outcome.figures(&mut md);
    if !r.run.failures.is_empty() {
        let _ = writeln!(md, "\nFailures: {}", r.run.failures.join("; "));
    }
    md
}
