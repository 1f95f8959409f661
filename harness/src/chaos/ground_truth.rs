//! The ground truth of a chaos run: every id of every callback the producer accepted (a
//! 2xx), with the time its callback was sent, and what happened to the others.
//!
//! Only a 2xx is a promise, so only ids of 2xx callbacks are held to it; ids of callbacks
//! that got an error or no answer are remembered too, so a dead letter holding them can
//! still be traced back to this run's load.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use tester::callback::Answer;

/// Totals over every callback sent, by the load and by the recovery probes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallbackCounts {
    pub sent: u64,
    pub accepted_direct: u64,
    pub accepted_spooled: u64,
    /// Non-2xx answers (e.g. 503 while RabbitMQ was down and nothing could be spooled).
    pub refused: u64,
    /// Timeouts (1 s) and connection failures (e.g. the producer was killed).
    pub no_answer: u64,
    /// Sum over accepted callbacks of their `accepted` count.
    pub ids_accepted: u64,
    /// Accepted callbacks whose `accepted` count differed from the distinct ids sent.
    pub accepted_count_mismatches: u64,
}

/// What the verifier needs, taken once the load stopped.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Each accepted id with the send times of the accepted callbacks holding it.
    pub accepted: HashMap<i64, Vec<DateTime<Utc>>>,
    /// Every id sent in any callback, accepted or not.
    pub sent: HashSet<i64>,
    pub counts: CallbackCounts,
}

/// The record, shared by the callback tasks.
#[derive(Debug, Default)]
pub struct GroundTruth {
    record: Mutex<Snapshot>,
}

impl GroundTruth {
    /// Records one callback of distinct `ids`, sent at `sent_at`, and its answer.
    pub fn record(&self, ids: &[i64], sent_at: DateTime<Utc>, answer: Answer) {
        // A poisoned lock means a callback task panicked mid-record; the counts are
        // still the best record there is.
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.counts.sent += 1;
        record.sent.extend(ids.iter().copied());
        match answer {
            Answer::Accepted { accepted, spooled } => {
                if spooled {
                    record.counts.accepted_spooled += 1;
                } else {
                    record.counts.accepted_direct += 1;
                }
                record.counts.ids_accepted += accepted;
                if accepted != ids.len() as u64 {
                    record.counts.accepted_count_mismatches += 1;
                }
                for &id in ids {
                    record.accepted.entry(id).or_default().push(sent_at);
                }
            }
            Answer::Refused { .. } => record.counts.refused += 1,
            Answer::Unanswered { .. } => record.counts.no_answer += 1,
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> CallbackCounts {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone()
    }

    /// Takes the whole record (call once the load and the probes stopped).
    pub fn take(&self) -> Snapshot {
        std::mem::take(&mut *self.record.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_accepted_callbacks_become_ground_truth() {
        let truth = GroundTruth::default();
        let t = Utc::now();
        truth.record(
            &[1, 2],
            t,
            Answer::Accepted {
                accepted: 2,
                spooled: false,
            },
        );
        truth.record(
            &[2, 3],
            t,
            Answer::Accepted {
                accepted: 2,
                spooled: true,
            },
        );
        truth.record(
            &[4],
            t,
            Answer::Refused {
                status: 503,
                body: String::new(),
            },
        );
        truth.record(
            &[5],
            t,
            Answer::Unanswered {
                error: String::new(),
            },
        );
        let snapshot = truth.take();
        assert_eq!(snapshot.accepted.len(), 3);
        assert_eq!(snapshot.accepted[&2].len(), 2);
        assert_eq!(snapshot.sent.len(), 5);
        assert_eq!(snapshot.counts.accepted_direct, 1);
        assert_eq!(snapshot.counts.accepted_spooled, 1);
        assert_eq!(snapshot.counts.refused, 1);
        assert_eq!(snapshot.counts.no_answer, 1);
        assert_eq!(snapshot.counts.ids_accepted, 4);
    }
}
