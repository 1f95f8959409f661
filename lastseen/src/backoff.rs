//! Waiting between attempts, one way for the whole pipeline: [`reconnect`] (exponential
//! with jitter, no limit) for anything that waits for a server to come back, [`Retries`]
//! for a loop that retries a round and starts over once a round succeeds, and
//! [`doubling`] for the fixed schedules users configure (message retries, webhooks).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// First wait after a failure.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest wait before jitter; with the jitter (up to the delay itself), at most 5 s.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(2500);

/// The backoff for reconnecting to PostgreSQL or RabbitMQ and for retrying a write that
/// failed because of them: exponential from 100 ms, capped at 2.5 s, plus a random jitter
/// of up to the delay itself (so at most 5 s between attempts), never giving up.
pub fn reconnect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY)
        .with_jitter()
        .without_max_times()
}

/// The waits of a loop that retries failed rounds: [`reconnect`]'s delays, starting over
/// after a success.
pub struct Retries {
    delays: ExponentialBackoff,
}

impl Retries {
    pub fn new() -> Self {
        Self {
            delays: reconnect().build(),
        }
    }

    /// The next round succeeded (or a session lasted): the next failure waits briefly again.
    pub fn succeeded(&mut self) {
        self.delays = reconnect().build();
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(RECONNECT_MAX_DELAY * 2)
    }

    /// Sleeps [`Self::next_delay`]; false if `cancel` fired first.
    pub async fn pause(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = cancel.cancelled() => false,
        }
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self::new()
    }
}

/// The delay after failed attempt `attempt` (1-based) of a doubling schedule: `base`,
/// 2 `base`, 4 `base`, …, never more than `max`.
pub fn doubling(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_starts_at_the_base_and_stops_at_the_max() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=9).map(|a| doubling(base, a, max).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(doubling(base, 0, max), base);
        assert_eq!(doubling(base, u32::MAX, max), max);
    }

    #[test]
    fn retries_wait_at_most_five_seconds_and_start_over_after_a_success() {
        let mut retries = Retries::new();
        let waits: Vec<Duration> = (0..20).map(|_| retries.next_delay()).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(5)),
            "{waits:?}"
        );
        retries.succeeded();
        assert!(retries.next_delay() <= RECONNECT_MIN_DELAY * 2);
    }
}
