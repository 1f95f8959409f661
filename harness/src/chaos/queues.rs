//! The work and retry queues as the suite watches them: depths and the redelivery counter
//! from the chaos node's management API while the run goes on, and at the end an exact
//! count with an AMQP passive declare once no consumer holds anything unacked.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How often the redelivery counter is read. RabbitMQ refreshes it every second (the
/// node's `collect_statistics_interval`).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The backlog must read zero this many times in a row (a second apart) to count as
/// drained: a retry in its TTL wait shows in its retry queue, but a message moving
/// between queues may briefly show nowhere.
const DRAINED_SAMPLES: u32 = 3;

/// One queue as the management API describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    /// Ready + unacked.
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub consumers: u64,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

#[derive(Debug, Clone, Deserialize)]
struct MessageStats {
    /// Deliveries to consumers flagged `redelivered` since the node started.
    #[serde(default)]
    redeliver: Option<u64>,
}

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
    http: reqwest::Client,
    queues_url: String,
    prefix: String,
    redeliveries: Mutex<Tally>,
}

impl QueueWatch {
    pub fn new(management_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            http,
            queues_url: format!("{management_url}/api/queues/%2F"),
            prefix: prefix.to_owned(),
            redeliveries: Mutex::new(Tally::default()),
        })
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
        self.http
            .get(&self.queues_url)
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("unreadable answer of the management API")
    }

    /// Messages (ready + unacked) in the work and retry queues.
    pub async fn backlog(&self) -> anyhow::Result<u64> {
        Ok(self
            .queues()
            .await?
            .iter()
            .filter(|q| self.is_work_or_retry(&q.name))
            .map(|q| q.messages)
            .sum())
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
            .and_then(|q| q.message_stats.as_ref())
            .and_then(|s| s.redeliver);
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
}

/// Exact message counts of `queues` by AMQP passive declare. With no consumer attached,
/// every message is ready and so counted; a missing queue reads as an error.
pub async fn exact_depths(
    amqp_url: &str,
    queues: &[String],
) -> anyhow::Result<Vec<(String, Result<u32, String>)>> {
    let conn = lastseen::amqp::connect(amqp_url, "chaos-verifier").await?;
    let mut depths = Vec::new();
    for queue in queues {
        // A failed passive declare closes its channel: one channel per queue.
        let channel = conn.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let depth = channel
            .queue_declare(queue.as_str().into(), options, Default::default())
            .await
            .map(|q| q.message_count())
            .map_err(|err| err.to_string());
        let _ = channel.close(200, "counted".into()).await;
        depths.push((queue.clone(), depth));
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(depths)
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
