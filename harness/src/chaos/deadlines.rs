//! Deadlines that pass while PostgreSQL is down. Before that outage a batch of ids of a
//! range of their own is sent with a short TTL, the outage starts just before their
//! deadlines, and they pass while the database is gone. After the run each online id of
//! the batch must have been expired exactly once, with exactly one `object.expired`
//! notification, published, and no row left; an online id never stored must be in a
//! dead letter (its status calls failed `MAX_ATTEMPTS` times: the pipeline gave up on
//! it, as it says), else it was lost.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::time::Duration;

use tester::callback::CallbackClient;

use super::dead_letters::DeadLetter;

/// The batch's ids: far above the load's and the recovery probes'.
const FIRST_ID: i64 = 2_000_000_000;
/// Ids in the batch; the even half is online.
const IDS: i64 = 1000;
/// The batch's TTL. Ids stored early may expire before the outage (each must still be
/// expired exactly once); the outage is timed to the first deadline still ahead once
/// every id is stored, and the last id stored always has one 20 s ahead.
const TTL_SECS: u64 = 20;
/// The outage starts this long before the first deadline still ahead.
const LEAD: Duration = Duration::from_secs(2);
/// Longest wait for the batch to be stored; the outage then goes ahead with the ids
/// stored, and the rest must turn up among the dead letters. It is sent right after
/// RabbitMQ's restart, whose backlog every retry waits behind: with 25% of status calls
/// failing or hung, each attempt took 8-26 s to come round (2026-12-02), and the
/// unluckiest of 500 ids needs 5 or 6 attempts. 90 s failed five runs in six with this
/// session's consumer defaults (487-499 of 500 stored, every retry still under way); the
/// one that passed took 86.8 s. With 240 s, one id of 500 failed all 10 attempts and was
/// dead-lettered 130 s after the batch was accepted.
const STORE_LIMIT: Duration = Duration::from_secs(180);

/// The batch, once stored.
#[derive(Debug, Clone)]
pub struct Planted {
    deadlines: Vec<DateTime<Utc>>,
    /// When PostgreSQL was down (stopped, then started again).
    pub outage: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Sends the batch and waits until every online id is stored and until shortly before
/// the first deadline; the caller then stops PostgreSQL.
pub async fn plant(client: &CallbackClient, pool: &PgPool) -> anyhow::Result<Planted> {
    let ids: Vec<i64> = (FIRST_ID..FIRST_ID + IDS).collect();
    let body = serde_json::json!({ "object_ids": ids, "ttl_secs": TTL_SECS }).to_string();
    // Sent again if not accepted (the same ids: a repeat is harmless).
    let mut tries = 0;
    loop {
        tries += 1;
        match client
            .post_raw(Some("application/json"), body.clone())
            .await
        {
            Ok((202, _)) => break,
            Ok((status, answer)) if tries >= 3 => {
                anyhow::bail!("the deadline batch was not accepted: {status} {answer}")
            }
            Err(err) if tries >= 3 => {
                return Err(err.context("the deadline batch was not accepted"));
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    let started = tokio::time::Instant::now();
    let deadlines = loop {
        // Stored, and perhaps expired already: the first stretch of each id.
        let deadlines: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(expires_at) FROM object_history WHERE object_id >= $1 AND object_id < $2
             GROUP BY object_id ORDER BY 1",
        )
        .bind(FIRST_ID)
        .bind(FIRST_ID + IDS)
        .fetch_all(pool)
        .await?;
        let all = deadlines.len() as i64 == IDS / 2;
        if all || started.elapsed() >= STORE_LIMIT {
            eprintln!(
                "[chaos]          deadline batch: {} of its {} online ids stored {:.1} s after it was accepted{}",
                deadlines.len(),
                IDS / 2,
                started.elapsed().as_secs_f64(),
                if all {
                    ""
                } else {
                    " (the rest must be dead letters)"
                }
            );
            anyhow::ensure!(
                !deadlines.is_empty(),
                "no id of the deadline batch was stored"
            );
            break deadlines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The deadlines are in order; the first far enough ahead to stop PostgreSQL before it.
    let lead = chrono::Duration::from_std(LEAD)?;
    let now = Utc::now();
    let past = deadlines.iter().filter(|d| **d - lead <= now).count();
    if let Some(first) = deadlines.get(past) {
        eprintln!(
            "[chaos]          deadline batch: {past} of its deadlines passed before the outage; it starts {:.1} s before the next",
            LEAD.as_secs_f64()
        );
        if let Ok(wait) = (*first - lead - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(Planted {
        deadlines,
        outage: None,
    })
}

/// What became of the batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadlineVerdict {
    /// Online ids of the batch stored (by the end of the run).
    pub online_ids: u64,
    /// Online ids never stored, each in a dead letter (given up after `MAX_ATTEMPTS`).
    pub dead_lettered: u64,
    /// Online ids neither stored nor in a dead letter: lost.
    pub lost: u64,
    /// Of their deadlines, those that passed while PostgreSQL was down.
    pub deadlines_during_outage: u64,
    pub expired_once: u64,
    pub expired_twice_or_more: u64,
    pub never_expired: u64,
    /// `object.expired` notifications of the batch, and those never published.
    pub expired_notifications: u64,
    pub unpublished_notifications: u64,
}

impl DeadlineVerdict {
    /// Why the batch's checks fail, if they do.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.expired_once != self.online_ids {
            failures.push(format!(
                "deadline batch: {} of {} ids expired exactly once ({} twice or more, {} never)",
                self.expired_once, self.online_ids, self.expired_twice_or_more, self.never_expired
            ));
        }
        if self.expired_notifications != self.online_ids || self.unpublished_notifications > 0 {
            failures.push(format!(
                "deadline batch: {} object.expired notifications for {} ids, {} unpublished",
                self.expired_notifications, self.online_ids, self.unpublished_notifications
            ));
        }
        if self.lost > 0 {
            failures.push(format!(
                "deadline batch: {} online ids neither stored nor dead-lettered (lost)",
                self.lost
            ));
        }
        if self.deadlines_during_outage == 0 {
            failures.push("deadline batch: no deadline passed while PostgreSQL was down".into());
        }
        failures
    }
}

/// Judges the batch after the run, with the run's dead letters.
pub async fn verify(
    planted: &Planted,
    pool: &PgPool,
    dead: &[DeadLetter],
) -> anyhow::Result<DeadlineVerdict> {
    let range = (FIRST_ID, FIRST_ID + IDS);
    // Stored at any time (an id stored after the plant stopped waiting counts too).
    let stored: HashSet<i64> = sqlx::query_scalar(
        "SELECT DISTINCT object_id FROM object_history WHERE object_id >= $1 AND object_id < $2",
    )
    .bind(range.0)
    .bind(range.1)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let dead_ids: HashSet<i64> = dead
        .iter()
        .flat_map(|letter| letter.object_ids.iter().copied())
        .collect();
    let never_stored: Vec<i64> = (range.0..range.1)
        .filter(|id| id % 2 == 0 && !stored.contains(id))
        .collect();
    let dead_lettered = never_stored
        .iter()
        .filter(|id| dead_ids.contains(id))
        .count() as u64;
    let expiries: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM object_expiries WHERE object_id >= $1 AND object_id < $2
         GROUP BY object_id",
    )
    .bind(range.0)
    .bind(range.1)
    .fetch_all(pool)
    .await?;
    let (expired, unpublished): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM notifications
         WHERE routing_key = 'object.expired' AND object_id >= $1 AND object_id < $2",
    )
    .bind(range.0)
    .bind(range.1)
    .fetch_one(pool)
    .await?;
    let online_ids = stored.len() as u64;
    let expired_once = expiries.iter().filter(|n| **n == 1).count() as u64;
    let expired_twice_or_more = expiries.iter().filter(|n| **n > 1).count() as u64;
    Ok(DeadlineVerdict {
        online_ids,
        dead_lettered,
        lost: never_stored.len() as u64 - dead_lettered,
        deadlines_during_outage: planted.outage.map_or(0, |(down, up)| {
            planted
                .deadlines
                .iter()
                .filter(|d| **d >= down && **d <= up)
                .count() as u64
        }),
        expired_once,
        expired_twice_or_more,
        never_expired: online_ids.saturating_sub(expiries.len() as u64),
        expired_notifications: u64::try_from(expired).unwrap_or(0),
        unpublished_notifications: u64::try_from(unpublished).unwrap_or(0),
    })
}
