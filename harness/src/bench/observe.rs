//! Observation of a benchmark run, once a second: ids accepted and stored, the work
//! queue's backlog, checks in flight, resource use; every 250 ms, the PostgreSQL
//! backends waiting on a lock; and every 20 ms, the end-to-end lag of the ids the load
//! follows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::load::{LoadCounters, Tracked};
use super::lock_waits::{self, LockWaitFigures, LockWaits};
use super::usage::{PostgresClients, Usage, UsageSampler};
use crate::broker_admin::BrokerAdmin;
use tester::serve::delay_for_id;

/// Longest wait for the backlog to drain after the load stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// A followed id not stored after this long counts as not stored.
const LAG_GIVE_UP: Duration = Duration::from_secs(60);
/// How often the lock waits are sampled: a writer's wait is typically 0.1 to 2 s.
const LOCK_WAIT_EVERY: Duration = Duration::from_millis(250);

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_secs: f64,
    pub ids_accepted: u64,
    pub ids_stored: u64,
    pub ready: u32,
    pub unacked: Option<u64>,
    pub in_flight: u64,
    /// Lag p99 of the followed ids stored during this second (ms), if any.
    pub lag_p99_ms: Option<f64>,
}

/// What the observer saw.
pub struct Observed {
    pub samples: Vec<Sample>,
    pub lag_us: Histogram<u64>,
    pub lag_lost: u64,
    pub usage: HashMap<String, Usage>,
    /// The pipeline's PostgreSQL CPU seconds by client (see `UsageSampler`).
    pub postgres_by_client: HashMap<String, f64>,
    pub peak_in_flight: u64,
    pub drained_after: Option<Duration>,
    pub lock_waits: LockWaitFigures,
}

/// Where to look.
pub struct Observer {
    pub pool: PgPool,
    pub amqp_url: String,
    pub checks_queue: String,
    pub management_url: String,
    pub status_stats: Vec<String>,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

/// `last_seen` of those of `ids` that are in `objects`. One index lookup per id, planned
/// afresh each time: a plan cached while the table was small scanned all of it instead
/// (perf in a churn run: this query's backend took ~27% of a core, in
/// `ExecEvalScalarArrayOp`), so the bench would have slowed what it measured, and more
/// so the more ids were pending.
pub async fn last_seen_of(
    pool: &PgPool,
    ids: &[i64],
) -> sqlx::Result<Vec<(i64, chrono::DateTime<chrono::Utc>)>> {
    sqlx::query_as(
        "SELECT o.id, o.last_seen FROM unnest($1::bigint[]) AS t(id)
         JOIN objects o ON o.id = t.id",
    )
    .bind(ids)
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// Whom each PostgreSQL backend works for (its `application_name`, or for the server's
/// own processes its `backend_type`); empty when PostgreSQL does not answer.
async fn postgres_clients(pool: &PgPool) -> PostgresClients {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT pid, CASE WHEN backend_type = 'client backend' THEN application_name
                          ELSE backend_type END
         FROM pg_stat_activity",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .filter_map(|(pid, client)| Some((u32::try_from(pid).ok()?, client)))
        .collect()
}

/// Waits (up to 30 s) until `url` answers 2xx.
pub async fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = lastseen::tls::http_client().build()?;
    for _ in 0..300 {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not answer within 30 s; see target/bench/logs")
}

impl Observer {
    pub async fn run(
        self,
        counters: Arc<LoadCounters>,
        mut tracked: UnboundedReceiver<Tracked>,
        pids: Vec<(String, u32)>,
        load_for: Duration,
        rate: u64,
        stop: CancellationToken,
    ) -> anyhow::Result<Observed> {
        let http = lastseen::tls::http_client()
            .timeout(Duration::from_millis(800))
            .build()?;
        let broker = BrokerAdmin::new(&self.amqp_url).with_management(&self.management_url)?;
        let mut sampler = UsageSampler::new();
        let started = Instant::now();
        let bar = ProgressBar::new(load_for.as_secs());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{rate} ids/s"));

        let mut samples: Vec<Sample> = Vec::new();
        let mut lag_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut lag_second = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut lag_lost = 0;
        let mut pending: Vec<Tracked> = Vec::new();
        let mut peak_in_flight = 0;
        let mut drained_after = None;
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        let mut every_lag_poll = tokio::time::interval(Duration::from_millis(20));
        let mut every_lock_sample = tokio::time::interval(LOCK_WAIT_EVERY);
        let mut lock_waits = LockWaits::default();
        let stored_base = self.stored().await.unwrap_or(0);

        loop {
            tokio::select! {
                _ = every_lag_poll.tick() => {
                    while let Ok(t) = tracked.try_recv() {
                        pending.push(t);
                    }
                    if pending.is_empty() {
                        continue;
                    }
                    let ids: Vec<i64> = pending.iter().map(|t| t.id).collect();
                    let rows = last_seen_of(&self.pool, &ids).await.unwrap_or_default();
                    let seen: HashMap<i64, chrono::DateTime<chrono::Utc>> = rows.into_iter().collect();
                    let now = chrono::Utc::now();
                    pending.retain(|t| {
                        if let Some(last_seen) = seen.get(&t.id)
                            && *last_seen >= t.accepted_at - chrono::Duration::milliseconds(50)
                        {
                            let delay = delay_for_id(t.id, self.delay_min_ms, self.delay_max_ms) as i64;
                            let lag_ms = (now - t.accepted_at).num_milliseconds() - delay;
                            let us = (lag_ms.max(0) as u64 * 1000).max(1);
                            lag_us.saturating_record(us);
                            lag_second.saturating_record(us);
                            return false;
                        }
                        if (now - t.accepted_at).to_std().unwrap_or_default() > LAG_GIVE_UP {
                            lag_lost += 1;
                            return false;
                        }
                        true
                    });
                }
                _ = every_lock_sample.tick() => {
                    if let Ok(waiting) = lock_waits::sample(&self.pool).await {
                        lock_waits.record(&waiting);
                    }
                }
                _ = every_second.tick() => {
                    sampler.sample(&pids, &postgres_clients(&self.pool).await);
                    let t = started.elapsed();
                    let ready = broker.counts(&self.checks_queue).await.map_or(0, |c| c.ready);
                    let sim = self.simulator(&http).await;
                    let in_flight = sim.as_ref().map_or(0, |s| s.0);
                    peak_in_flight = peak_in_flight.max(sim.as_ref().map_or(0, |s| s.1));
                    let sample = Sample {
                        t_secs: t.as_secs_f64(),
                        ids_accepted: counters.ids_accepted.load(Ordering::Relaxed),
                        ids_stored: self.stored().await.unwrap_or(stored_base).saturating_sub(stored_base),
                        ready,
                        unacked: broker.queue(&self.checks_queue).await.ok().and_then(|q| q.messages_unacknowledged),
                        in_flight,
                        lag_p99_ms: (!lag_second.is_empty()).then(|| lag_second.value_at_quantile(0.99) as f64 / 1000.0),
                    };
                    lag_second.reset();
                    let previous = samples.last().cloned();
                    let (acc_rate, stored_rate) = previous.map_or((0, 0), |p| {
                        (sample.ids_accepted - p.ids_accepted, sample.ids_stored.saturating_sub(p.ids_stored))
                    });
                    bar.set_position(t.as_secs().min(load_for.as_secs()));
                    bar.set_message(format!(
                        "accepted {acc_rate} ids/s, stored {stored_rate} ids/s, ready {ready}, in flight {in_flight}"
                    ));
                    samples.push(sample);
                    if t > load_for {
                        if ready == 0 && in_flight == 0 && pending.is_empty() {
                            drained_after = Some(t - load_for);
                            break;
                        }
                        if t > load_for + DRAIN_LIMIT || stop.is_cancelled() {
                            break;
                        }
                    }
                }
            }
        }
        bar.finish_and_clear();
        // The statistics PostgreSQL keeps are flushed about once a second: one more look.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let (Some(last), Ok(stored)) = (samples.last_mut(), self.stored().await) {
            last.ids_stored = stored.saturating_sub(stored_base);
        }
        broker.close().await;
        lag_lost += pending.len() as u64;
        Ok(Observed {
            samples,
            lag_us,
            lag_lost,
            usage: sampler.usage(),
            postgres_by_client: sampler.postgres_by_client(),
            peak_in_flight,
            drained_after,
            lock_waits: lock_waits.figures(),
        })
    }

    /// Rows written to `objects` (inserted or updated) since the statistics began.
    async fn stored(&self) -> anyhow::Result<u64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT (n_tup_ins + n_tup_upd)::bigint FROM pg_stat_user_tables WHERE relname = 'objects'",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// (in flight, sum of the peaks in flight) over the status simulators.
    async fn simulator(&self, http: &reqwest::Client) -> Option<(u64, u64)> {
        let mut total = (0, 0);
        for url in &self.status_stats {
            let body: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            total.0 += body["in_flight"].as_u64()?;
            total.1 += body["peak_in_flight"].as_u64()?;
        }
        Some(total)
    }
}
