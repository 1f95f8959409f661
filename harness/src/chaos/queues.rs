//! The work and retry queues as the suite watches them: depths and the redelivery counter
//! from the chaos node's management API while the run goes on, and at the end an exact
//! count over AMQP once no consumer holds anything unacked. The producers' spools count
//! in the backlog too: a spooled callback is published later, into the work queue.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lastseen::contract::metric;
use tokio_util::sync::CancellationToken;

use crate::broker_admin::{BrokerAdmin, QueueInfo};

/// How often the redelivery counter is read. RabbitMQ refreshes it every second (the
/// node's `collect_statistics_interval`).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The backlog must read zero this many times in a row (a second apart) to count as
/// drained: a retry in its TTL wait shows in its retry queue, but a message moving
/// between queues may briefly show nowhere.
const DRAINED_SAMPLES: u32 = 3;

/// The counter of redeliveries, kept across broker restarts (which zero RabbitMQ's).
#[derive(Debug, Default)]
struct Tally {
    last: Option<u64>,
    total: u64,
}

impl Tally {
    fn update(&mut self, value: u64) {
        self.total += match self.last {
            Some(last) if value >= last => value - last,
            // First reading, or the node restarted and counts from zero again.
            _ => value,
        };
        self.last = Some(value);
    }
}

/// Watches the work queue `{prefix}.checks` and the retry queues `{prefix}.checks.retry.*`.
pub struct QueueWatch {
    broker: BrokerAdmin,
    prefix: String,
    redeliveries: Mutex<Tally>,
    /// The producers' `/metrics` URLs, whose spooled callbacks are still to be published.
    spools: Vec<String>,
    http: reqwest::Client,
}

impl QueueWatch {
    pub fn new(amqp_url: &str, management_url: &str, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            broker: BrokerAdmin::new(amqp_url).with_management(management_url)?,
            prefix: prefix.to_owned(),
            redeliveries: Mutex::new(Tally::default()),
            spools: Vec::new(),
            http: lastseen::tls::http_client()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    /// Counts the spools of the producers whose callback ports are `ports` in the
    /// backlog: the queues are not drained while a producer still holds a spooled
    /// callback it will publish.
    pub fn with_spools(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.spools = ports
            .into_iter()
            .map(|port| format!("http://127.0.0.1:{port}/metrics"))
            .collect();
        self
    }

    /// The work queue's name.
    pub fn work_queue(&self) -> String {
        format!("{}.checks", self.prefix)
    }

    /// Whether `name` is the work queue or one of its retry queues.
    pub fn is_work_or_retry(&self, name: &str) -> bool {
        name == self.work_queue() || name.starts_with(&format!("{}.checks.retry.", self.prefix))
    }

    /// Every queue of the node.
    pub async fn queues(&self) -> anyhow::Result<Vec<QueueInfo>> {
        self.broker.queues().await
    }

    /// Messages (ready + unacked) in the work and retry queues, and callbacks in the
    /// watched producers' spools.
    pub async fn backlog(&self) -> anyhow::Result<u64> {
        let queued: u64 = self
            .queues()
            .await?
            .iter()
            .filter(|q| self.is_work_or_retry(&q.name))
            .map(|q| q.messages)
            .sum();
        let mut spooled = 0;
        for url in &self.spools {
            let text = self
                .http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            spooled += metric::read(&text, metric::SPOOL_PENDING_CALLBACKS).ok_or_else(|| {
                anyhow::anyhow!("{url} has no {}", metric::SPOOL_PENDING_CALLBACKS)
            })?;
        }
        Ok(queued + spooled)
    }

    /// Waits (up to `limit`) until `consumers` consumers are subscribed to the work queue.
    pub async fn wait_consumers(&self, consumers: u64, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let work = self.work_queue();
        loop {
            let subscribed = self
                .queues()
                .await
                .ok()
                .and_then(|qs| qs.into_iter().find(|q| q.name == work))
                .map_or(0, |q| q.consumers);
            if subscribed >= consumers {
                return Ok(());
            }
            if started.elapsed() > limit {
                anyhow::bail!(
                    "{subscribed} of {consumers} consumers subscribed to {work} after {limit:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Reads the work queue's redelivery counter into the tally.
    pub async fn sample_redeliveries(&self) {
        let Ok(queues) = self.queues().await else {
            return;
        };
        let work = self.work_queue();
        let value = queues
            .iter()
            .find(|q| q.name == work)
            .and_then(QueueInfo::redelivered);
        if let Some(value) = value {
            self.tally().update(value);
        }
    }

    /// Tells the tally the node restarted: its next reading counts from zero.
    pub fn broker_restarted(&self) {
        self.tally().last = None;
    }

    /// Redeliveries from the work queue to consumers so far.
    pub fn redeliveries(&self) -> u64 {
        self.tally().total
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // Only this module touches the tally, and no update can panic half-way.
        self.redeliveries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Samples the redelivery counter every second until `stop`.
    pub async fn sample_until(&self, stop: CancellationToken) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => self.sample_redeliveries().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// Waits until the work and retry queues stay empty, up to `limit`; returns how long
    /// that took, or `None` if they never emptied.
    pub async fn wait_drained(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut zero_in_a_row = 0;
        while started.elapsed() <= limit {
            match self.backlog().await {
                Ok(0) => zero_in_a_row += 1,
                _ => zero_in_a_row = 0,
            }
            if zero_in_a_row >= DRAINED_SAMPLES {
                return Some(started.elapsed());
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        None
    }

    /// Exact message counts of `queues` over AMQP. With no consumer attached, every
    /// message is ready and so counted; a missing queue reads as an error.
    pub async fn exact_depths(&self, queues: &[String]) -> Vec<(String, Result<u32, String>)> {
        let mut depths = Vec::new();
        for queue in queues {
            let depth = self
                .broker
                .counts(queue)
                .await
                .map(|counts| counts.ready)
                .map_err(|err| format!("{err:#}"));
            depths.push((queue.clone(), depth));
        }
        self.broker.close().await;
        depths
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_survives_a_counter_reset() {
        let mut tally = Tally::default();
        for v in [0, 4, 9] {
            tally.update(v);
        }
        // The node restarted: its counter starts again from zero.
        for v in [2, 5] {
            tally.update(v);
        }
        assert_eq!(tally.total, 14);
    }
}
