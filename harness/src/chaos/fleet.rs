//! The fleet: a fixed set of online objects, all in one callback every [`PERIOD`] with a
//! [`TTL_SECS`] TTL, for as long as the load runs, through every fault. None may expire
//! while its callbacks keep coming: each expiry of one is judged against them
//! (`verify::judge_expiries`), so an object expired by our own lag fails the run.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tester::callback::CallbackClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ground_truth::GroundTruth;

/// The fleet's ids: even (online to the simulator), apart from the load's and the
/// deadline batch's.
pub const FIRST_ID: i64 = 3_000_000_000;
pub const SIZE: i64 = 200;
/// Shorter than every fault, so an outage that held no expiry back would expire the fleet.
pub const TTL_SECS: u32 = 10;
pub const PERIOD: Duration = Duration::from_secs(2);

/// The fleet's ids.
pub fn ids() -> Vec<i64> {
    (0..SIZE).map(|k| FIRST_ID + 2 * k).collect()
}

/// Posts the fleet every [`PERIOD`] until `stop`, each answer written to `truth`.
pub async fn run(client: CallbackClient, truth: Arc<GroundTruth>, stop: CancellationToken) {
    let ids = ids();
    let tasks = TaskTracker::new();
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let (client, truth, ids) = (client.clone(), truth.clone(), ids.clone());
        tasks.spawn(async move {
            let sent_at = Utc::now();
            let answer = client.post_with_ttl(&ids, TTL_SECS).await;
            truth.record(&ids, sent_at, answer);
        });
    }
    tasks.close();
    tasks.wait().await;
}
