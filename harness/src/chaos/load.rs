//! The chaos load: callbacks of random ids posted to the producer at a steady rate with
//! the original tester's 1 s client timeout, each answer written to the ground truth.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tester::callback::CallbackClient;

use super::ground_truth::GroundTruth;

/// Callbacks in flight at once. At 20 callbacks/s with a 1 s timeout about 20 can be
/// outstanding; beyond this the load skips a tick rather than piling up.
const MAX_CALLBACKS_IN_FLIGHT: usize = 64;

/// Shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub callbacks_per_sec: u32,
    pub max_ids: usize,
    pub id_space: i64,
}

/// What the load did beyond the ground truth.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOutcome {
    /// Ticks skipped because `MAX_CALLBACKS_IN_FLIGHT` callbacks were outstanding.
    pub skipped: u64,
}

/// Sends callbacks until `stop`, then waits for the outstanding ones.
pub async fn run(
    client: CallbackClient,
    shape: LoadShape,
    truth: Arc<GroundTruth>,
    stop: CancellationToken,
) -> LoadOutcome {
    let slots = Arc::new(Semaphore::new(MAX_CALLBACKS_IN_FLIGHT));
    let tasks = TaskTracker::new();
    let period = Duration::from_secs_f64(1.0 / f64::from(shape.callbacks_per_sec.max(1)));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut outcome = LoadOutcome::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            outcome.skipped += 1;
            continue;
        };
        let ids = random_ids(shape);
        let client = client.clone();
        let truth = truth.clone();
        tasks.spawn(async move {
            let sent_at = Utc::now();
            let answer = client.post(&ids).await;
            truth.record(&ids, sent_at, answer);
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
    outcome
}

/// 1 to `max_ids` distinct ids from `0..id_space`.
fn random_ids(shape: LoadShape) -> Vec<i64> {
    let mut rng = rand::rng();
    let n = rng.random_range(1..=shape.max_ids.max(1));
    let mut ids = HashSet::with_capacity(n);
    while ids.len() < n.min(shape.id_space.max(1) as usize) {
        ids.insert(rng.random_range(0..shape.id_space.max(1)));
    }
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_distinct_and_in_range() {
        let shape = LoadShape {
            callbacks_per_sec: 1,
            max_ids: 200,
            id_space: 100,
        };
        for _ in 0..50 {
            let ids = random_ids(shape);
            let distinct: HashSet<i64> = ids.iter().copied().collect();
            assert_eq!(distinct.len(), ids.len());
            assert!(!ids.is_empty() && ids.len() <= 100);
            assert!(ids.iter().all(|id| (0..100).contains(id)));
        }
    }
}
