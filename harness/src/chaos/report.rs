//! The result of a chaos run: the pass/fail verdict with its reasons, the figures table
//! (markdown, printed and written to `result.md`) and the same as `result.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::deadlines::DeadlineVerdict;
use super::faults::FaultRecord;
use super::ground_truth::CallbackCounts;
use super::logs::LogFigures;
use super::verify::Verdict;
use super::webhook::WebhookFigures;
use crate::process::UnexpectedExit;

/// How the load was shaped.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSettings {
    pub callbacks_per_sec: u32,
    pub max_ids: usize,
    pub id_space: i64,
    pub load_secs: f64,
    pub status_fail_rate: f64,
    pub status_hang_rate: f64,
}

/// A work or retry queue's exact depth at the end (or why it could not be read).
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub messages: Option<u32>,
    pub error: Option<String>,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosResult {
    pub passed: bool,
    pub failures: Vec<String>,
    pub run_secs: f64,
    pub load: LoadSettings,
    pub faults: Vec<FaultRecord>,
    pub callbacks: CallbackCounts,
    pub probe_callbacks: u64,
    pub load_ticks_skipped: u64,
    pub verdict: Verdict,
    /// The objects whose deadlines passed while PostgreSQL was down.
    pub deadlines: Option<DeadlineVerdict>,
    /// The two sweepers' deliveries to the slow webhook.
    pub webhook: WebhookFigures,
    pub redeliveries: u64,
    pub logs: LogFigures,
    pub drained_after_secs: Option<f64>,
    pub final_depths: Vec<QueueDepth>,
    pub unexpected_exits: Vec<UnexpectedExit>,
    pub logs_dir: String,
}

impl ChaosResult {
    /// Fills `passed` and `failures` from the figures.
    pub fn judge(&mut self) {
        let mut failures = std::mem::take(&mut self.failures);
        failures.extend(self.verdict.failures());
        if self.callbacks.accepted_count_mismatches > 0 {
            failures.push(format!(
                "{} callbacks answered 2xx with an `accepted` count other than their distinct ids",
                self.callbacks.accepted_count_mismatches
            ));
        }
        if self.drained_after_secs.is_none() {
            failures.push("the work and retry queues did not drain in time".into());
        }
        for depth in &self.final_depths {
            match (depth.messages, &depth.error) {
                (Some(0), _) => {}
                (Some(n), _) => failures.push(format!("{} holds {n} messages", depth.queue)),
                (None, error) => failures.push(format!(
                    "cannot count {}: {}",
                    depth.queue,
                    error.as_deref().unwrap_or("unknown error")
                )),
            }
        }
        for fault in &self.faults {
            if fault.recovery_secs.is_none() {
                failures.push(format!("no recovery after: {}", fault.fault));
            }
        }
        for exit in &self.unexpected_exits {
            failures.push(exit.to_string());
        }
        for file in &self.logs.panics {
            failures.push(format!("a panic in {file}"));
        }
        match &self.deadlines {
            Some(deadlines) => failures.extend(deadlines.failures()),
            None => failures.push("the deadline batch was not planted".into()),
        }
        failures.extend(self.webhook.failures());
        if self.callbacks.accepted_direct == 0 {
            failures.push("no callback was accepted: the load never got through".into());
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }
}

/// Writes `result.json` and `result.md` into `out`; returns the markdown.
pub fn write(out: &Path, result: &ChaosResult) -> anyhow::Result<String> {
    let md = markdown(result);
    let json = serde_json::to_string_pretty(result).context("cannot serialize the result")?;
    std::fs::write(out.join("result.json"), json).context("cannot write result.json")?;
    std::fs::write(out.join("result.md"), &md).context("cannot write result.md")?;
    Ok(md)
}

fn n(x: u64) -> String {
    let digits = x.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The markdown report.
pub fn markdown(r: &ChaosResult) -> String {
    let c = &r.callbacks;
    let v = &r.verdict;
    let mut s = String::new();
    let outcome = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(s, "## Chaos run: {outcome} in {:.0} s\n", r.run_secs);
    for failure in &r.failures {
        let _ = writeln!(s, "- FAILED: {failure}");
    }
    if !r.failures.is_empty() {
        s.push('\n');
    }
    let accepted = c.accepted_direct + c.accepted_spooled;
    let reasons = if v.dead_letter_reasons.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = v
            .dead_letter_reasons
            .iter()
            .map(|(reason, count)| format!("{count}× {reason}"))
            .collect();
        format!("; {}", list.join(", "))
    };
    let accounted = if v.dead_letters_unaccounted == 0 {
        "all accounted for".to_owned()
    } else {
        format!("{} NOT accounted for", v.dead_letters_unaccounted)
    };
    let queues = match r.drained_after_secs {
        Some(secs) if r.final_depths.iter().all(|d| d.messages == Some(0)) => {
            format!("empty (drained {secs:.1} s after the load stopped)")
        }
        _ => "NOT empty (see the failures)".to_owned(),
    };
    let rows = [
        (
            "faults injected".to_owned(),
            format!(
                "{} (below), and the status service failing {:.0}% and hanging {:.0}% of calls throughout",
                r.faults.len(),
                r.load.status_fail_rate * 100.0,
                r.load.status_hang_rate * 100.0
            ),
        ),
        (
            "callbacks sent".to_owned(),
            format!(
                "{} in {:.0} s ({}/s of 1-{} ids from 0..{}), {} of them recovery probes",
                n(c.sent),
                r.load.load_secs,
                r.load.callbacks_per_sec,
                r.load.max_ids,
                r.load.id_space,
                n(r.probe_callbacks)
            ),
        ),
        (
            "callbacks accepted (direct / spooled)".to_owned(),
            format!(
                "{} ({} / {})",
                n(accepted),
                n(c.accepted_direct),
                n(c.accepted_spooled)
            ),
        ),
        (
            "callbacks not accepted (non-2xx / no answer in 1 s)".to_owned(),
            format!("{} / {}", n(c.refused), n(c.no_answer)),
        ),
        (
            "ids accepted".to_owned(),
            format!(
                "{} in accepted callbacks; {} distinct ({} online, {} offline)",
                n(c.ids_accepted),
                n(v.ids_accepted),
                n(v.online_ids_accepted),
                n(v.offline_ids_accepted)
            ),
        ),
        (
            "ids stored".to_owned(),
            format!(
                "{} of {} accepted online ids",
                n(v.ids_stored),
                n(v.online_ids_accepted)
            ),
        ),
        ("offline ids stored".to_owned(), n(v.offline_rows)),
        ("redeliveries".to_owned(), n(r.redeliveries)),
        (
            "retries".to_owned(),
            format!(
                "{} messages ({} ids)",
                n(r.logs.retried_messages),
                n(r.logs.retried_ids)
            ),
        ),
        (
            "dead letters".to_owned(),
            format!(
                "{} ({} ids), {accounted}{reasons}; {} accepted online ids answered for only by a dead letter",
                n(v.dead_letters),
                n(v.dead_letter_ids),
                n(v.ids_dead_lettered)
            ),
        ),
        ("**lost ids**".to_owned(), format!("**{}**", n(v.ids_lost))),
        (
            "**false expiries**".to_owned(),
            format!(
                "**{}** of {} expiries of objects the load named ({} with a callback sent within 1 s of the deadline, not judged); the fleet ({} objects, TTL {} s, a callback every {} s): {} of {} callbacks accepted",
                n(v.false_expiries),
                n(v.expiries_checked),
                n(v.expiries_too_close_to_judge),
                super::fleet::SIZE,
                super::fleet::TTL_SECS,
                super::fleet::PERIOD.as_secs(),
                n(v.fleet_callbacks_accepted),
                n(v.fleet_callbacks_sent)
            ),
        ),
        (
            "deadlines passed while PostgreSQL was down".to_owned(),
            r.deadlines.as_ref().map_or("not run".to_owned(), |d| {
                format!(
                    "{} of {} objects' deadlines in the outage ({} online ids dead-lettered, {} lost); expired exactly once: {} (twice or more: {}, never: {}); `object.expired` notifications {}, unpublished {}",
                    n(d.deadlines_during_outage),
                    n(d.online_ids),
                    n(d.dead_lettered),
                    n(d.lost),
                    n(d.expired_once),
                    n(d.expired_twice_or_more),
                    n(d.never_expired),
                    n(d.expired_notifications),
                    n(d.unpublished_notifications)
                )
            }),
        ),
        ("work + retry queues at the end".to_owned(), queues),
        (
            format!(
                "webhook ({} s per request, two sweepers)",
                super::webhook::RECEIVER_DELAY.as_secs()
            ),
            format!(
                "{} requests for {} notifications ({} received more than once); delivered in one attempt {}, in more {}; failed {}; pending at the end {}",
                n(r.webhook.requests),
                n(r.webhook.distinct_ids),
                n(r.webhook.ids_received_twice_or_more),
                n(r.webhook.delivered_in_one_attempt),
                n(r.webhook.delivered_in_more),
                n(r.webhook.failed),
                n(r.webhook.pending)
            ),
        ),
    ];
    s.push_str("| | |\n|---|---|\n");
    for (name, value) in rows {
        let _ = writeln!(s, "| {name} | {value} |");
    }
    s.push_str("\n| fault | at | lasted | recovery |\n|---|---|---|---|\n");
    for f in &r.faults {
        let recovery = f
            .recovery_secs
            .map_or("**none**".to_owned(), |x| format!("{x:.1} s"));
        let _ = writeln!(
            s,
            "| {} | +{:.0} s | {:.1} s | {recovery} |",
            f.fault, f.injected_at_secs, f.fault_secs
        );
    }
    if let Some(longest) = r
        .faults
        .iter()
        .filter_map(|f| f.recovery_secs.map(|x| (x, &f.fault)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
    {
        let _ = writeln!(
            s,
            "| **longest recovery** | | | **{:.1} s** ({}) |",
            longest.0, longest.1
        );
    }
    s.push_str(FOOTNOTES);
    if !v.lost_sample.is_empty() {
        s.push_str("\nLost ids (first few): ");
        let ids: Vec<String> = v.lost_sample.iter().map(|l| l.id.to_string()).collect();
        s.push_str(&ids.join(", "));
        s.push_str(" (details in result.json)\n");
    }
    if !v.false_expiry_sample.is_empty() {
        s.push_str("\nFalsely expired ids (first few): ");
        let ids: Vec<String> = v
            .false_expiry_sample
            .iter()
            .map(|f| f.id.to_string())
            .collect();
        s.push_str(&ids.join(", "));
        s.push_str(" (details in result.json)\n");
    }
    if !r.logs.errors.is_empty() {
        let files: Vec<String> = r
            .logs
            .errors
            .iter()
            .map(|(file, count)| format!("{file}: {count}"))
            .collect();
        let _ = writeln!(s, "\nERROR log lines: {}", files.join(", "));
    }
    s
}

const FOOTNOTES: &str = "
- *accepted*: answered 2xx within the 1 s client timeout; *spooled*: the 202 said
  `\"spooled\": true` (kept in the producer's local spool while RabbitMQ was unreachable).
  Only accepted callbacks are ground truth.
- *ids stored*: online (even) accepted ids whose row has `last_seen` at or after the send
  time of the latest accepted callback holding them.
- *redeliveries*: deliveries of the work queue flagged redelivered (RabbitMQ's counter,
  read every second and summed across broker restarts).
- *retries*: check messages the consumers sent to a retry queue (from their logs; a
  `kill -9` between RabbitMQ's confirm and the log line can hide one).
- *lost*: an accepted online id with no row seen after one of its accepted callbacks and
  no dead letter answering for that callback. The messages that were ready in the work
  queue when the fault deleted it count as dead letters with the reason \"deleted with
  the work queue\": an admin's deletion removes them, not the pipeline.
- *deadlines*: 1,000 ids (500 online) sent with a 20 s TTL before PostgreSQL is stopped,
  2 s before the first of their deadlines still ahead once they are stored (up to 180 s);
  each stored must be expired exactly once, with one `object.expired` notification,
  published; an online id never stored must be in a dead letter (else it is lost).
- *webhook*: two sweepers deliver every notification to a receiver that takes 3 s over
  each request; far more notifications are made than it can take in the run, so many are
  pending at the end. None may be given up on; a second request for one comes only
  after a sweeper lost its claim (killed mid-request, or PostgreSQL down).
- *lasted*: from the injection until the process was restarted, or the service answered
  again. RabbitMQ refuses connections from the start of its shutdown; it is started again
  the outage (10 s) after that, or once the shutdown ended if later, and then boots.
  PostgreSQL: stop, the outage, start.
- *recovery*: from the end of the fault until a probe callback (one fresh online id, one
  every 500 ms) answered directly, not spooled, had its row in `objects`; it includes one
  status check of 50-500 ms, and its retries if the simulator failed or hung it.
";

/// Prints a run's table and where its report and logs are; an error naming `what` and
/// its `failures` unless it `passed`. `in_logs` says what the logs hold.
pub fn conclude(
    what: &str,
    md: &str,
    (out, logs): (&Path, &Path),
    passed: bool,
    failures: &[String],
    in_logs: &str,
) -> anyhow::Result<()> {
    println!("{md}");
    println!(
        "report: {}/result.md, result.json; logs: {}",
        out.display(),
        logs.display()
    );
    if passed {
        return Ok(());
    }
    anyhow::bail!(
        "{what} FAILED: {}. Look at {}/result.json (lost ids, dead letters) and the logs in {} ({in_logs})",
        failures.join("; "),
        out.display(),
        logs.display()
    )
}
