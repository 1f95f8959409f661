//! The result of a failover scenario: the verdict with its reasons, the figures table
//! (markdown, printed and written to `result.md`) and the same as `result.json`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::chaos::deadlines::DeadlineVerdict;
use crate::cluster::report::Window;
use crate::pipeline::{Outcome, RunFigures, ScenarioResult, secs};

/// One kill of the primary and how the cluster and the pipeline came through it.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRecord {
    /// The member killed (it was the primary).
    pub killed: String,
    /// The member Patroni made the primary.
    pub promoted: String,
    /// When the kill came, in seconds since the load started.
    pub at_secs: f64,
    /// From the kill until a connection through HAProxy reached a writable primary.
    pub writable_after_secs: Option<f64>,
    /// From the kill until a callback answered directly was stored.
    pub working_after_secs: Option<f64>,
    /// From the killed member's restart until it was the synchronous standby again.
    pub rejoined_after_secs: Option<f64>,
    /// Callbacks answered from the kill to the member's return.
    pub callbacks: Window,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverResult {
    #[serde(flatten)]
    pub run: RunFigures,
    pub kills: Vec<FailoverRecord>,
    /// The batch whose deadlines passed during the first failover.
    pub deadlines: DeadlineVerdict,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl ScenarioResult for FailoverResult {
    fn run_figures(&mut self) -> &mut RunFigures {
        &mut self.run
    }

    fn failures(&self) -> Vec<String> {
        // Late answers are reported, not judged: the producer never waits on
        // PostgreSQL, and on one machine the failover's disk work (the promotion's
        // checkpoint, pg_rewind, the standby catching up) delays RabbitMQ's confirms and
        // the spool's writes, which share the disk (docs/scaling.md). The cluster
        // scenario, whose faults are on the ingest path, judges them.
        let mut failures = self.outcome.failures(false);
        failures.extend(self.deadlines.failures());
        for kill in &self.kills {
            let steps = [
                ("no writable primary", kill.writable_after_secs),
                ("the pipeline did not work again", kill.working_after_secs),
                (
                    "the killed member did not come back as the synchronous standby",
                    kill.rejoined_after_secs,
                ),
            ];
            for (what, took) in steps {
                if took.is_none() {
                    failures.push(format!("{what} after {} was killed", kill.killed));
                }
            }
            if kill.promoted == kill.killed || kill.promoted == "none" {
                failures.push(format!("no other member took over from {}", kill.killed));
            }
        }
        failures
    }

    fn markdown(&self) -> String {
        markdown(self)
    }
}

/// The report as markdown tables.
fn markdown(r: &FailoverResult) -> String {
    let mut md = String::new();
    let verdict = if r.run.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        md,
        "## PostgreSQL failover: {verdict} ({:.0} s, {} callbacks/s over 2 producers for {:.0} s; Patroni, 2 members, synchronous replication)\n",
        r.run.run_secs, r.run.callbacks_per_sec, r.run.load_secs
    );
    let _ = writeln!(
        md,
        "| primary killed | at | promoted | writable again | pipeline working again | back as synchronous standby | direct | spooled | refused | unanswered |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for k in &r.kills {
        let _ = writeln!(
            md,
            "| {} | +{:.0} s | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.killed,
            k.at_secs,
            k.promoted,
            secs(k.writable_after_secs),
            secs(k.working_after_secs),
            secs(k.rejoined_after_secs),
            k.callbacks.direct,
            k.callbacks.spooled,
            k.callbacks.refused,
            k.callbacks.unanswered
        );
    }
    let d = &r.deadlines;
    let _ = writeln!(
        md,
        "\nDeadline batch: {} online ids, {} deadlines passed during the first failover; expired exactly once: {}, twice or more: {}, never: {}; `object.expired` notifications: {} ({} unpublished).\n",
        d.online_ids,
        d.deadlines_during_outage,
        d.expired_once,
        d.expired_twice_or_more,
        d.never_expired,
        d.expired_notifications,
        d.unpublished_notifications
    );
    r.outcome.figures(&mut md);
    if r.outcome.callbacks.no_answer > 0 {
        let _ = writeln!(
            md,
            "\n{} callbacks got no answer within the client's 1 s timeout: reported, not judged here (see docs/scaling.md).",
            r.outcome.callbacks.no_answer
        );
    }
    if !r.run.failures.is_empty() {
        let _ = writeln!(md, "\nFailures: {}", r.run.failures.join("; "));
    }
    md
}
