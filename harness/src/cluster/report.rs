//! The result of a cluster scenario: the verdict with its reasons, the figures table
//! (markdown, printed and written to `result.md`) and the same as `result.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::chaos::ground_truth::CallbackCounts;
use crate::chaos::logs::LogFigures;
use crate::chaos::verify::Verdict;
use crate::process::UnexpectedExit;

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
    pub passed: bool,
    pub failures: Vec<String>,
    pub run_secs: f64,
    pub callbacks_per_sec: u32,
    pub load_secs: f64,
    pub load_ticks_skipped: u64,
    /// Nodes holding a replica of the work queue (quorum members).
    pub work_queue_replicas: usize,
    pub faults: Vec<FaultRecord>,
    pub callbacks: CallbackCounts,
    pub probe_callbacks: u64,
    pub verdict: Verdict,
    pub notifications: u64,
    pub notifications_published: u64,
    pub drained_after_secs: Option<f64>,
    pub logs: LogFigures,
    pub unexpected_exits: Vec<UnexpectedExit>,
    pub logs_dir: String,
}

impl ClusterResult {
    /// Sets `passed` and lists every check that failed.
    pub fn judge(&mut self) {
        let mut failures = Vec::new();
        let v = &self.verdict;
        if v.ids_lost > 0 {
            failures.push(format!("{} accepted ids lost", v.ids_lost));
        }
        if v.offline_rows + v.unexpected_rows > 0 {
            failures.push(format!(
                "{} rows of offline ids, {} of ids never sent",
                v.offline_rows, v.unexpected_rows
            ));
        }
        if v.dead_letters_unaccounted > 0 {
            failures.push(format!(
                "{} dead letters unaccounted for",
                v.dead_letters_unaccounted
            ));
        }
        if self.callbacks.refused + self.callbacks.no_answer > 0 {
            failures.push(format!(
                "callbacks not answered 2xx: {} refused, {} unanswered (1 s)",
                self.callbacks.refused, self.callbacks.no_answer
            ));
        }
        if self.notifications_published < self.notifications {
            failures.push(format!(
                "{} of {} notifications never published",
                self.notifications - self.notifications_published,
                self.notifications
            ));
        }
        if self.drained_after_secs.is_none() {
            failures.push("the work and retry queues did not drain".into());
        }
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
        if !self.unexpected_exits.is_empty() {
            failures.push(format!(
                "{} processes exited unexpectedly",
                self.unexpected_exits.len()
            ));
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }
}

/// Writes `result.json` and `result.md` to `out`; returns the markdown.
pub fn write(out: &Path, result: &ClusterResult) -> anyhow::Result<String> {
    let json = serde_json::to_string_pretty(result)?;
    std::fs::write(out.join("result.json"), json).context("cannot write result.json")?;
    let md = markdown(result);
    std::fs::write(out.join("result.md"), &md).context("cannot write result.md")?;
    Ok(md)
}

fn secs(value: Option<f64>) -> String {
    value.map_or("never".to_owned(), |s| format!("{s:.1} s"))
}

/// The report as a markdown table.
pub fn markdown(r: &ClusterResult) -> String {
    let mut md = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        md,
        "## Cluster scenario: {verdict} ({:.0} s, {} callbacks/s over 2 producers for {:.0} s, work queue on {} nodes)\n",
        r.run_secs, r.callbacks_per_sec, r.load_secs, r.work_queue_replicas
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
    let c = &r.callbacks;
    let v = &r.verdict;
    let _ = writeln!(md);
    let _ = writeln!(md, "| figure | value |");
    let _ = writeln!(md, "|---|---|");
    let rows = [
        ("callbacks sent (load)", c.sent.to_string()),
        (
            "answered 2xx direct / spooled",
            format!("{} / {}", c.accepted_direct, c.accepted_spooled),
        ),
        (
            "refused / unanswered",
            format!("{} / {}", c.refused, c.no_answer),
        ),
        ("recovery probes", r.probe_callbacks.to_string()),
        (
            "distinct ids accepted (online)",
            format!("{} ({})", v.ids_accepted, v.online_ids_accepted),
        ),
        ("online ids stored", v.ids_stored.to_string()),
        ("dead-lettered ids", v.ids_dead_lettered.to_string()),
        ("**lost ids**", format!("**{}**", v.ids_lost)),
        (
            "notifications published",
            format!("{} of {}", r.notifications_published, r.notifications),
        ),
        ("queues drained after load", secs(r.drained_after_secs)),
        (
            "ERROR lines in logs",
            r.logs.errors.values().sum::<u64>().to_string(),
        ),
        ("unexpected exits", r.unexpected_exits.len().to_string()),
    ];
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\nFailures: {}", r.failures.join("; "));
    }
    md
}
