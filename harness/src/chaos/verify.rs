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
//! - An expiry is *false* if an accepted callback naming its online object was sent
//!   after the stretch's last sighting and at least [`ANSWER_WITHIN`] before its
//!   deadline: that callback was accepted before the deadline, yet had not refreshed the
//!   object when it was expired (had it been settled, the stretch's last sighting would
//!   be at or after it). One sent within [`ANSWER_WITHIN`] of the deadline may have been
//!   accepted after it: counted apart, not a failure.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::dead_letters::DeadLetter;
use super::ground_truth::Snapshot;
use tester::serve::OnlineRule;

/// Lost ids quoted in the report.
const LOST_SAMPLES: usize = 20;

/// The load's client timeout: an accepted callback was accepted at most this long after
/// it was sent.
pub const ANSWER_WITHIN: chrono::Duration = chrono::Duration::seconds(1);

/// An expired stretch of an object, from `object_expiries`.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Stretch {
    pub object_id: i64,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired_at: DateTime<Utc>,
}

/// What the store holds at the end of a run: each object's `last_seen`, and every
/// expired stretch.
pub async fn read_store(
    pool: &sqlx::PgPool,
) -> anyhow::Result<(HashMap<i64, DateTime<Utc>>, Vec<Stretch>)> {
    use anyhow::Context;
    let rows = sqlx::query_as::<_, (i64, DateTime<Utc>)>("SELECT id, last_seen FROM objects")
        .fetch_all(pool)
        .await
        .context("cannot read the objects table")?
        .into_iter()
        .collect();
    let expiries =
        sqlx::query_as("SELECT object_id, last_seen, expires_at, expired_at FROM object_expiries")
            .fetch_all(pool)
            .await
            .context("cannot read the object_expiries table")?;
    Ok((rows, expiries))
}

/// A false expiry: the stretch, and the accepted callback it did not wait for.
#[derive(Debug, Clone, Serialize)]
pub struct FalseExpiry {
    pub id: i64,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired_at: DateTime<Utc>,
    pub callback_sent: DateTime<Utc>,
}

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
    /// Expiries of objects this run's load named.
    pub expiries_checked: u64,
    /// Expiries while an accepted callback naming the object was unsettled. Must be 0.
    pub false_expiries: u64,
    pub false_expiry_sample: Vec<FalseExpiry>,
    /// Expiries with a callback sent within [`ANSWER_WITHIN`] before the deadline (it
    /// may have been accepted after it): not judged.
    pub expiries_too_close_to_judge: u64,
    /// Callbacks of the fleet (see `fleet`) sent and accepted.
    pub fleet_callbacks_sent: u64,
    pub fleet_callbacks_accepted: u64,
}

impl Verdict {
    /// Every check of the store against the ground truth that failed, in words.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.ids_lost > 0 {
            failures.push(format!("{} accepted online ids lost", self.ids_lost));
        }
        if self.false_expiries > 0 {
            failures.push(format!(
                "{} objects expired while an accepted callback naming them was unsettled",
                self.false_expiries
            ));
        }
        if self.offline_rows > 0 {
            failures.push(format!("{} rows of offline ids", self.offline_rows));
        }
        if self.unexpected_rows > 0 {
            failures.push(format!("{} rows of ids never sent", self.unexpected_rows));
        }
        if self.dead_letters_unaccounted > 0 {
            failures.push(format!(
                "{} dead letters not accounted for",
                self.dead_letters_unaccounted
            ));
        }
        failures
    }

    /// Whether the data checks hold (the queues are judged elsewhere).
    pub fn holds(&self) -> bool {
        self.ids_lost == 0
            && self.false_expiries == 0
            && self.offline_rows == 0
            && self.unexpected_rows == 0
            && self.dead_letters_unaccounted == 0
    }
}

/// Checks the ground truth against `rows` (every row of `objects`), `dead_letters` and
/// `expiries` (every row of `object_expiries`).
pub fn verify(
    truth: &Snapshot,
    rows: &HashMap<i64, DateTime<Utc>>,
    dead_letters: &[DeadLetter],
    expiries: &[Stretch],
    online: OnlineRule,
) -> Verdict {
    let mut verdict = Verdict {
        ids_accepted: truth.accepted.len() as u64,
        dead_letters: dead_letters.len() as u64,
        ..Verdict::default()
    };
    judge_expiries(truth, expiries, online, &mut verdict);

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

/// Counts false expiries (see the module's documentation) of the objects `truth`
/// names into `verdict`.
pub fn judge_expiries(
    truth: &Snapshot,
    expiries: &[Stretch],
    online: OnlineRule,
    verdict: &mut Verdict,
) {
    for stretch in expiries {
        let Some(sends) = truth.accepted.get(&stretch.object_id) else {
            continue;
        };
        if !online.is_online(stretch.object_id) {
            continue;
        }
        verdict.expiries_checked += 1;
        let inside =
            |sent: &&DateTime<Utc>| **sent > stretch.last_seen && **sent <= stretch.expires_at;
        match sends
            .iter()
            .filter(inside)
            .min_by_key(|sent| (**sent + ANSWER_WITHIN > stretch.expires_at, **sent))
        {
            None => {}
            Some(sent) if *sent + ANSWER_WITHIN > stretch.expires_at => {
                verdict.expiries_too_close_to_judge += 1;
            }
            Some(sent) => {
                verdict.false_expiries += 1;
                if verdict.false_expiry_sample.len() < LOST_SAMPLES {
                    verdict.false_expiry_sample.push(FalseExpiry {
                        id: stretch.object_id,
                        last_seen: stretch.last_seen,
                        expires_at: stretch.expires_at,
                        expired_at: stretch.expired_at,
                        callback_sent: *sent,
                    });
                }
            }
        }
    }
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
        let verdict = verify(&snapshot, &rows, &letters, &[], OnlineRule::Even);
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
            &[],
            OnlineRule::Even,
        );
        assert_eq!(lost.ids_lost, 1);
        let accounted = verify(
            &snapshot,
            &HashMap::new(),
            &[letter(&[2], 11), letter(&[2], 21)],
            &[],
            OnlineRule::Even,
        );
        assert_eq!(accounted.ids_dead_lettered, 1);
        assert!(accounted.holds());
    }

    fn stretch(id: i64, last_seen: i64, expires_at: i64) -> Stretch {
        Stretch {
            object_id: id,
            last_seen: at(last_seen),
            expires_at: at(expires_at),
            expired_at: at(expires_at + 5),
        }
    }

    #[test]
    fn an_expiry_before_an_accepted_callback_inside_its_stretch_was_settled_is_false() {
        let truth = GroundTruth::default();
        accept(&truth, &[2], 10);
        accept(&truth, &[2], 25);
        accept(&truth, &[4], 10);
        accept(&truth, &[6], 10);
        accept(&truth, &[6], 40);
        let snapshot = truth.take();
        let rows = HashMap::from([(2, at(26)), (4, at(11)), (6, at(41))]);
        let expiries = [
            // 2: seen at 10, deadline 40, a callback sent at 25 not yet settled: false.
            stretch(2, 10, 40),
            // 4: nothing sent inside its stretch: a true expiry.
            stretch(4, 11, 41),
            // 6: the callback at 40 is within a second of the deadline: not judged.
            stretch(6, 10, 40),
        ];
        let verdict = verify(&snapshot, &rows, &[], &expiries, OnlineRule::Even);
        assert_eq!(verdict.expiries_checked, 3);
        assert_eq!(verdict.false_expiries, 1);
        assert_eq!(verdict.false_expiry_sample[0].id, 2);
        assert_eq!(verdict.false_expiry_sample[0].callback_sent, at(25));
        assert_eq!(verdict.expiries_too_close_to_judge, 1);
        assert!(!verdict.holds());
    }

    #[test]
    fn offline_rows_unknown_rows_and_foreign_dead_letters_fail() {
        let truth = GroundTruth::default();
        accept(&truth, &[3], 10);
        let snapshot = truth.take();
        let rows = HashMap::from([(3, at(11)), (100, at(11))]);
        let verdict = verify(&snapshot, &rows, &[letter(&[7], 11)], &[], OnlineRule::Even);
        assert_eq!(verdict.offline_rows, 1);
        assert_eq!(verdict.unexpected_rows, 1);
        assert_eq!(verdict.dead_letters_unaccounted, 1);
        assert!(!verdict.holds());
    }
}
