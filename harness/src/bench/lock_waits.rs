//! Lock waits among the pipeline's PostgreSQL backends, sampled from `pg_stat_activity`
//! a few times a second: how many of each client's backends wait on a lock, and whose
//! backends hold it (`pg_blocking_pids`), so a run shows when its writers wait on each
//! other or on the sweeper rather than on the CPU.

use std::collections::BTreeMap;

use serde::Serialize;

/// One client's backends waiting on a lock held by another client's, in one sample.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Waiting {
    /// The waiting backends' `application_name`.
    pub waiter: String,
    /// The `application_name`s of the backends holding the lock, comma-separated (more
    /// than one for a shared lock); empty when the holder is gone by the time it is
    /// looked up.
    pub blocker: String,
    pub backends: i64,
}

/// Every backend of the database waiting on a heavyweight lock, by waiter and blocker,
/// at this moment (the sampling connection itself left out).
pub async fn sample(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<Waiting>> {
    sqlx::query_as(
        "SELECT a.application_name AS waiter,
                coalesce((SELECT string_agg(DISTINCT b.application_name, ',')
                          FROM pg_stat_activity b
                          WHERE b.pid = ANY (pg_blocking_pids(a.pid))), '') AS blocker,
                count(*) AS backends
         FROM pg_stat_activity a
         WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
           AND a.pid <> pg_backend_pid()
         GROUP BY 1, 2",
    )
    .fetch_all(db)
    .await
}

/// What a run's samples add up to: per waiter and blocker, the backends waiting on
/// average over the samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LockWaitFigures {
    /// Samples taken.
    pub samples: u64,
    /// Mean backends waiting, by waiter, then by blocker.
    pub mean_waiting: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Adds up samples as they come.
#[derive(Debug, Default)]
pub struct LockWaits {
    samples: u64,
    waiting: BTreeMap<(String, String), i64>,
}

impl LockWaits {
    /// Counts one sample (an empty one too: nobody waited then).
    pub fn record(&mut self, sample: &[Waiting]) {
        self.samples += 1;
        for w in sample {
            *self
                .waiting
                .entry((w.waiter.clone(), w.blocker.clone()))
                .or_default() += w.backends;
        }
    }

    pub fn figures(&self) -> LockWaitFigures {
        let mut mean_waiting: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        if self.samples > 0 {
            for ((waiter, blocker), total) in &self.waiting {
                mean_waiting
                    .entry(waiter.clone())
                    .or_default()
                    .insert(blocker.clone(), *total as f64 / self.samples as f64);
            }
        }
        LockWaitFigures {
            samples: self.samples,
            mean_waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(waiter: &str, blocker: &str, backends: i64) -> Waiting {
        Waiting {
            waiter: waiter.into(),
            blocker: blocker.into(),
            backends,
        }
    }

    #[test]
    fn the_mean_counts_every_sample_including_those_where_nobody_waited() {
        let mut waits = LockWaits::default();
        waits.record(&[
            waiting("lastseen-consumer", "lastseen-consumer", 3),
            waiting("lastseen-consumer", "lastseen-sweeper", 1),
        ]);
        waits.record(&[waiting("lastseen-consumer", "lastseen-consumer", 1)]);
        waits.record(&[]);
        waits.record(&[waiting("lastseen-sweeper", "", 2)]);
        let figures = waits.figures();
        assert_eq!(figures.samples, 4);
        let consumer = &figures.mean_waiting["lastseen-consumer"];
        assert_eq!(consumer["lastseen-consumer"], 1.0);
        assert_eq!(consumer["lastseen-sweeper"], 0.25);
        assert_eq!(figures.mean_waiting["lastseen-sweeper"][""], 0.5);
        assert_eq!(figures.mean_waiting.len(), 2);
    }

    #[test]
    fn no_samples_give_no_means() {
        let figures = LockWaits::default().figures();
        assert_eq!(figures.samples, 0);
        assert!(figures.mean_waiting.is_empty());
    }
}
