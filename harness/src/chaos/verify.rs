//! The verdict on a run: the ground truth against the rows in `objects` and the dead
//! letters.
//!
//! - An accepted online id must have a row whose `last_seen` is at or after the send
//!   time of every accepted callback that held it (so after its latest one; all clocks
//!   are this host's). `last_seen` never moves backwards, so a later sighting also
//!   answers for an earlier callback.
//! - A callback of an online id that no row answers for is *dead-lettered* if a dead
//!   letter holds the id with an `accepted_at` at or after the callback's send time (each
//!   dead letter answering for one callback); otherwise the id is *lost*.
//! - An offline id must have no row at all, and no row may exist for an id never sent.
//! - A dead letter is accounted for if it parses and every id in it was sent by this run.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::dead_letters::DeadLetter;
use super::ground_truth::Snapshot;
use tester::serve::OnlineRule;

/// Lost ids quoted in the report.
const LOST_SAMPLES: usize = 20;

/// An id the pipeline lost, with what is known about it.
#[derive(Debug, Clone, Serialize)]
pub struct LostId {
    pub id: i64,
    pub accepted_sends: Vec<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// The outcome of the checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Distinct ids in accepted callbacks.
    pub ids_accepted: u64,
    pub online_ids_accepted: u64,
    pub offline_ids_accepted: u64,
    /// Accepted online ids whose row was seen after their latest accepted callback.
    pub ids_stored: u64,
    /// Accepted online ids not stored after some callback, each such callback answered
    /// for by a dead letter.
    pub ids_dead_lettered: u64,
    /// Accepted online ids neither stored nor dead-lettered. Must be 0.
    pub ids_lost: u64,
    pub lost_sample: Vec<LostId>,
    /// Rows of offline ids. Must be 0.
    pub offline_rows: u64,
    /// Rows of ids this run never sent. Must be 0.
    pub unexpected_rows: u64,
    pub dead_letters: u64,
    pub dead_letter_ids: u64,
    /// Dead letters that do not parse or hold an id never sent. Must be 0.
    pub dead_letters_unaccounted: u64,
    pub dead_letter_reasons: BTreeMap<String, u64>,
}

impl Verdict {
    /// Whether the data checks hold (the queues are judged elsewhere).
    pub fn holds(&self) -> bool {
        self.ids_lost == 0
            && self.offline_rows == 0
            && self.unexpected_rows == 0
            && self.dead_letters_unaccounted == 0
    }
}

/// Checks the ground truth against `rows` (every row of `objects`) and `dead_letters`.
pub fn verify(
    truth: &Snapshot,
    rows: &HashMap<i64, DateTime<Utc>>,
    dead_letters: &[DeadLetter],
    online: OnlineRule,
) -> Verdict {
    let mut verdict = Verdict {
        ids_accepted: truth.accepted.len() as u64,
        dead_letters: dead_letters.len() as u64,
        ..Verdict::default()
    };

    // When each id was dead-lettered, by accepted_at.
    let mut dead_by_id: HashMap<i64, Vec<DateTime<Utc>>> = HashMap::new();
    for letter in dead_letters {
        *verdict
            .dead_letter_reasons
            .entry(short_reason(&letter.reason))
            .or_default() += 1;
        verdict.dead_letter_ids += letter.object_ids.len() as u64;
        let accounted =
            !letter.unreadable && letter.object_ids.iter().all(|id| truth.sent.contains(id));
        if !accounted {
            verdict.dead_letters_unaccounted += 1;
        }
        if let Some(accepted_at) = letter.accepted_at {
            for id in &letter.object_ids {
                dead_by_id.entry(*id).or_default().push(accepted_at);
            }
        }
    }

    let mut accepted: Vec<(&i64, &Vec<DateTime<Utc>>)> = truth.accepted.iter().collect();
    accepted.sort_by_key(|(id, _)| **id);
    for (&id, sends) in accepted {
        if !online.is_online(id) {
            verdict.offline_ids_accepted += 1;
            continue;
        }
        verdict.online_ids_accepted += 1;
        let last_seen = rows.get(&id).copied();
        let mut unanswered: Vec<DateTime<Utc>> = sends
            .iter()
            .copied()
            .filter(|sent| last_seen.is_none_or(|seen| seen < *sent))
            .collect();
        if unanswered.is_empty() {
            verdict.ids_stored += 1;
            continue;
        }
        unanswered.sort();
        let mut letters = dead_by_id.get(&id).cloned().unwrap_or_default();
        letters.sort();
        if each_answered(&unanswered, &letters) {
            verdict.ids_dead_lettered += 1;
        } else {
            verdict.ids_lost += 1;
            if verdict.lost_sample.len() < LOST_SAMPLES {
                let mut accepted_sends = sends.clone();
                accepted_sends.sort();
                verdict.lost_sample.push(LostId {
                    id,
                    accepted_sends,
                    last_seen,
                });
            }
        }
    }

    for id in rows.keys() {
        if !online.is_online(*id) {
            verdict.offline_rows += 1;
        } else if !truth.sent.contains(id) {
            verdict.unexpected_rows += 1;
        }
    }
    verdict
}

/// Whether every send (sorted) can be paired with its own dead letter (sorted by
/// `accepted_at`) accepted at or after it; greedy pairing with the earliest such letter
/// is optimal for this.
fn each_answered(sends: &[DateTime<Utc>], letters: &[DateTime<Utc>]) -> bool {
    let mut next = 0;
    for sent in sends {
        while next < letters.len() && letters[next] < *sent {
            next += 1;
        }
        if next == letters.len() {
            return false;
        }
        next += 1;
    }
    true
}

/// The kind of a reason, without the id and details: "status service answered 500 for
/// id 42" becomes "status service answered 500".
fn short_reason(reason: &str) -> String {
    reason
        .split(" for id ")
        .next()
        .unwrap_or(reason)
        .chars()
        .take(80)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::ground_truth::{Answer, GroundTruth};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("a valid timestamp")
    }

    fn accept(truth: &GroundTruth, ids: &[i64], sent: i64) {
        let answer = Answer::Accepted {
            accepted: ids.len() as u64,
            spooled: false,
        };
        truth.record(ids, at(sent), answer);
    }

    fn letter(ids: &[i64], accepted_at: i64) -> DeadLetter {
        DeadLetter {
            object_ids: ids.to_vec(),
            accepted_at: Some(at(accepted_at)),
            reason: "status service answered 500 for id 2".into(),
            attempt: Some(10),
            unreadable: false,
        }
    }

    #[test]
    fn stored_dead_lettered_and_lost_ids_are_told_apart() {
        let truth = GroundTruth::default();
        accept(&truth, &[2, 4, 6, 8, 3], 10);
        accept(&truth, &[2], 20);
        let snapshot = truth.take();
        // 2: seen after both callbacks. 4: no row, dead-lettered. 6: row too old for its
        // callback and no dead letter: lost. 8: no row, no dead letter: lost.
        let rows = HashMap::from([(2, at(21)), (6, at(5))]);
        let letters = vec![letter(&[4], 11)];
        let verdict = verify(&snapshot, &rows, &letters, OnlineRule::Even);
        assert_eq!(verdict.ids_accepted, 5);
        assert_eq!(verdict.offline_ids_accepted, 1);
        assert_eq!(verdict.ids_stored, 1);
        assert_eq!(verdict.ids_dead_lettered, 1);
        assert_eq!(verdict.ids_lost, 2);
        assert_eq!(verdict.dead_letters_unaccounted, 0);
        assert_eq!(
            verdict.dead_letter_reasons["status service answered 500"],
            1
        );
        assert!(!verdict.holds());
    }

    #[test]
    fn one_dead_letter_answers_for_one_callback_only() {
        let truth = GroundTruth::default();
        accept(&truth, &[2], 10);
        accept(&truth, &[2], 20);
        let snapshot = truth.take();
        let lost = verify(
            &snapshot,
            &HashMap::new(),
            &[letter(&[2], 21)],
            OnlineRule::Even,
        );
        assert_eq!(lost.ids_lost, 1);
        let accounted = verify(
            &snapshot,
            &HashMap::new(),
            &[letter(&[2], 11), letter(&[2], 21)],
            OnlineRule::Even,
        );
        assert_eq!(accounted.ids_dead_lettered, 1);
        assert!(accounted.holds());
    }

    #[test]
    fn offline_rows_unknown_rows_and_foreign_dead_letters_fail() {
        let truth = GroundTruth::default();
        accept(&truth, &[3], 10);
        let snapshot = truth.take();
        let rows = HashMap::from([(3, at(11)), (100, at(11))]);
        let verdict = verify(&snapshot, &rows, &[letter(&[7], 11)], OnlineRule::Even);
        assert_eq!(verdict.offline_rows, 1);
        assert_eq!(verdict.unexpected_rows, 1);
        assert_eq!(verdict.dead_letters_unaccounted, 1);
        assert!(!verdict.holds());
    }
}
