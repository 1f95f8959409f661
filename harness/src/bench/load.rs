//! The load of a benchmark run: callbacks of distinct ids (random, or a fleet's in turn)
//! at a target rate, with latency, accepted counts and a sample of ids for the
//! end-to-end lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tester::callback::{Answer, CallbackClient};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

/// One id to follow to its row: when its callback was accepted (wall clock).
#[derive(Debug, Clone, Copy)]
pub struct Tracked {
    pub id: i64,
    pub accepted_at: chrono::DateTime<chrono::Utc>,
}

/// Shared counters of the load, read by the observer every second.
#[derive(Default)]
pub struct LoadCounters {
    pub callbacks_accepted: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub ids_accepted: AtomicU64,
    /// Ticks skipped because every client was busy (the target rate was not offered).
    pub ticks_missed: AtomicU64,
}

/// Which ids the callbacks carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    /// Drawn at random from 0 to `space` (exclusive), distinct within a callback.
    Random { space: u64 },
    /// A fleet of `size` objects (ids 0 to `size` - 1) reported in turn, so each comes
    /// back once every `size` / rate seconds, with a TTL above that.
    Fleet { size: u64, ttl_secs: u32 },
}

impl IdSource {
    /// A fleet of `size` reported at `rate` ids/s: its TTL is twice the period between
    /// two reports of an object, and at least 60 s.
    pub fn fleet(size: u64, rate: u64) -> Self {
        let period = size as f64 / rate.max(1) as f64;
        Self::Fleet {
            size: size.max(1),
            ttl_secs: ((2.0 * period).ceil() as u32).max(60),
        }
    }
}

/// What the load run produced.
pub struct LoadOutcome {
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

/// Offers `rate` ids/s as callbacks of `ids_per_callback` ids for `duration`; ids it
/// chooses to follow are sent on `tracked`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    url: String,
    rate: u64,
    ids_per_callback: usize,
    source: IdSource,
    clients: usize,
    duration: Duration,
    counters: Arc<LoadCounters>,
    tracked: tokio::sync::mpsc::UnboundedSender<Tracked>,
    stop: CancellationToken,
) -> anyhow::Result<LoadOutcome> {
    let client = CallbackClient::with_connections(url, Duration::from_secs(5), clients)?;
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let permits = Arc::new(Semaphore::new(clients.max(1)));
    let per_sec = (rate as f64 / ids_per_callback as f64).max(0.1);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut fleet_cursor = 0u64;
    let ttl_secs = match source {
        IdSource::Fleet { ttl_secs, .. } => Some(ttl_secs),
        IdSource::Random { .. } => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < duration && !stop.is_cancelled() {
        ticker.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.ticks_missed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        sent += 1;
        // Follow two ids of every tenth callback.
        let follow = sent.is_multiple_of(10);
        let ids: Vec<u64> = match source {
            IdSource::Random { space } => {
                let mut rng = rand::rng();
                let amount = ids_per_callback.min(space as usize);
                rand::seq::index::sample(&mut rng, space as usize, amount)
                    .into_iter()
                    .map(|i| i as u64)
                    .collect()
            }
            IdSource::Fleet { size, .. } => {
                let amount = (ids_per_callback as u64).min(size);
                let ids = (fleet_cursor..fleet_cursor + amount)
                    .map(|i| i % size)
                    .collect();
                fleet_cursor = (fleet_cursor + amount) % size;
                ids
            }
        };
        let (client, latency, counters, tracked) = (
            client.clone(),
            latency.clone(),
            counters.clone(),
            tracked.clone(),
        );
        tasks.spawn(async move {
            let (answer, took) = client.post_timed(&ids, ttl_secs).await;
            let micros = took.as_micros() as u64;
            let accepted_at = chrono::Utc::now();
            drop(permit);
            latency.lock().await.saturating_record(micros.max(1));
            match answer {
                Answer::Accepted { .. } => {
                    counters.callbacks_accepted.fetch_add(1, Ordering::Relaxed);
                    counters
                        .ids_accepted
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    if follow {
                        for &id in ids.iter().take(2) {
                            let _ = tracked.send(Tracked {
                                id: id as i64,
                                accepted_at,
                            });
                        }
                    }
                }
                _ => {
                    counters.callbacks_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let latency_us = latency.lock().await.clone();
    Ok(LoadOutcome {
        elapsed,
        latency_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleets_ttl_is_twice_its_period_and_at_least_a_minute() {
        // 400,000 objects at 15,000 ids/s: each reported every 26.7 s.
        assert_eq!(
            IdSource::fleet(400_000, 15_000),
            IdSource::Fleet {
                size: 400_000,
                ttl_secs: 60
            }
        );
        assert_eq!(
            IdSource::fleet(400_000, 2_000),
            IdSource::Fleet {
                size: 400_000,
                ttl_secs: 400
            }
        );
    }
}
