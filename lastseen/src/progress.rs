//! Progress reports: every producer and consumer says, several times a second, the oldest
//! acceptance time (`accepted_at`) of the work it held unsettled lately, so the sweeper
//! can tell the *watermark*: the acceptance time before which every accepted callback is
//! settled (see the sweeper's `watermark` module and ARCHITECTURE.md).
//!
//! A report covers a window, not an instant: it names the oldest `accepted_at` held at
//! any moment of the last [`WINDOW`]. A message handed from one process to the next
//! (producer → queue → consumer) is held by the one or the other at every moment but for
//! the hand-over itself, which is far shorter than the window, so a report that covers a
//! moment with a margin on each side misses nothing held at that moment.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::amqp::AmqpError;
use crate::session::{Session, SessionKeeper};
use crate::topology::Topology;

/// How often a process reports: often, since the watermark trails now by about one and
/// a half of these (a report is ~300 bytes, not persisted, dropped after [`WINDOW`]).
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// The span a report covers, ending when it is sent.
pub const WINDOW: Duration = Duration::from_secs(1);

/// What a process is, for the sweeper: a consumer's deliveries go back to the work queue
/// when its connection goes; a producer's spool stays where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Producer,
    Consumer,
}

/// One report, published to the progress exchange (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// Who reports: stable across restarts for a producer (its spool), one per process
    /// for a consumer.
    pub reporter: String,
    pub role: Role,
    /// The window covered: from ...
    pub from: DateTime<Utc>,
    /// ... to when the report was made.
    pub at: DateTime<Utc>,
    /// The oldest `accepted_at` the reporter held unsettled at any moment of the window;
    /// `None` when it held nothing.
    pub oldest_unsettled: Option<DateTime<Utc>>,
    /// How long after its last report the sweeper may take the reporter as gone, its
    /// work back in the queue (a consumer: RabbitMQ requeues its deliveries once its
    /// connection is found dead, within about three heartbeats). `None`: never by
    /// itself (a producer's spool outlives the process); `MAX_EXPIRY_HOLD_SECS` bounds it.
    pub gone_after_secs: Option<u64>,
    /// A consumer's alive queue (see [`Reporter::alive_queue`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive_queue: Option<String>,
    /// The reporter stops and holds nothing: forget it.
    #[serde(default)]
    pub leaving: bool,
}

/// The acceptance times a process holds unsettled: a count per time, and the oldest held
/// in each recent period, so a report can name the oldest of its whole window.
#[derive(Debug, Clone, Default)]
pub struct Unsettled(Arc<Mutex<Tally>>);

#[derive(Debug, Default)]
struct Tally {
    held: BTreeMap<DateTime<Utc>, usize>,
    /// The oldest held during the current period, and in the periods before it that the
    /// window still covers (newest last).
    periods: VecDeque<(DateTime<Utc>, Option<DateTime<Utc>>)>,
}

impl Tally {
    fn add(&mut self, at: DateTime<Utc>) {
        *self.held.entry(at).or_default() += 1;
        match self.periods.back_mut() {
            Some((_, oldest)) => *oldest = Some(oldest.map_or(at, |o| o.min(at))),
            None => self.periods.push_back((Utc::now(), Some(at))),
        }
    }

    fn remove(&mut self, at: DateTime<Utc>) {
        if let Some(count) = self.held.get_mut(&at) {
            *count -= 1;
            if *count == 0 {
                self.held.remove(&at);
            }
        }
    }

    fn oldest_held(&self) -> Option<DateTime<Utc>> {
        self.held.keys().next().copied()
    }
}

impl Unsettled {
    /// Holds `accepted_at` until the returned guard is dropped.
    pub fn hold(&self, accepted_at: DateTime<Utc>) -> Held {
        self.add(accepted_at);
        Held {
            unsettled: self.clone(),
            accepted_at,
        }
    }

    /// Counts `accepted_at` as held until [`Self::remove`] takes it away.
    pub fn add(&self, accepted_at: DateTime<Utc>) {
        self.tally().add(accepted_at);
    }

    /// Takes away one count of `accepted_at`.
    pub fn remove(&self, accepted_at: DateTime<Utc>) {
        self.tally().remove(accepted_at);
    }

    /// Replaces everything held by `held` (a spool counted afresh).
    pub fn reset(&self, held: impl IntoIterator<Item = DateTime<Utc>>) {
        let mut tally = self.tally();
        tally.held.clear();
        for at in held {
            tally.add(at);
        }
    }

    /// The oldest time held now.
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.tally().oldest_held()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.tally().held.is_empty()
    }

    /// The oldest time held at any moment of the last `periods` periods, and when the
    /// first of them began (`now` if none was kept yet); then starts a new period at
    /// `now`.
    fn roll(&self, periods: usize, now: DateTime<Utc>) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        let mut tally = self.tally();
        let now_held = tally.oldest_held();
        let began = tally.periods.front().map_or(now, |(began, _)| *began);
        let window = tally
            .periods
            .iter()
            .filter_map(|(_, oldest)| *oldest)
            .chain(now_held)
            .min();
        tally.periods.push_back((now, now_held));
        while tally.periods.len() > periods {
            tally.periods.pop_front();
        }
        (began, window)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.0.lock().expect("the tally lock is never poisoned")
    }
}

/// One `accepted_at` held; released when dropped.
#[derive(Debug)]
pub struct Held {
    unsettled: Unsettled,
    accepted_at: DateTime<Utc>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.unsettled.remove(self.accepted_at);
    }
}

/// Who reports, and what.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub name: String,
    pub role: Role,
    /// Everything the process holds, one tally per part (a producer: callbacks being
    /// published, and its spool).
    pub sources: Vec<Unsettled>,
    /// A consumer's *alive queue*: exclusive to its current connection, so RabbitMQ
    /// deletes it when that connection is gone, and the sweeper, finding it gone, knows
    /// the consumer's deliveries are back in the work queue.
    pub alive_queue: Arc<Mutex<Option<String>>>,
}

impl Reporter {
    pub fn new(name: String, role: Role, sources: Vec<Unsettled>) -> Self {
        Self {
            name,
            role,
            sources,
            alive_queue: Arc::default(),
        }
    }

    /// A consumer's name: one per consumer (a process may run several, as tests do).
    pub fn consumer_name() -> String {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("consumer@{}:{}/{nth}", host_name(), std::process::id())
    }

    /// A producer's name: the same after a restart on the same spool.
    pub fn producer_name(spool: &std::path::Path) -> String {
        let spool = std::fs::canonicalize(spool).unwrap_or_else(|_| spool.to_owned());
        format!("producer@{}:{}", host_name(), spool.display())
    }

    /// True when none of its parts holds anything.
    pub fn holds_nothing(&self) -> bool {
        self.sources.iter().all(Unsettled::is_empty)
    }

    /// Declares a new alive queue on `session` (a consumer, at each new session) and
    /// reports it from now on.
    pub async fn declare_alive_queue(
        &self,
        session: &Session,
        topology: &Topology,
    ) -> Result<(), AmqpError> {
        let channel = session.channel().await?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = topology.alive_queue(&format!("{}.{}.{nth}", host_name(), std::process::id()));
        let options = lapin::options::QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..lapin::options::QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), options, crate::amqp::no_args())
            .await?;
        *self
            .alive_queue
            .lock()
            .expect("the alive queue lock is never poisoned") = Some(name);
        Ok(())
    }

    /// Sends one report now, then waits long enough for the sweepers to have it: before
    /// a consumer takes deliveries, so no sweeper judges a moment without it.
    pub async fn announce(&self, session: &Session, topology: &Topology) {
        let report = self.report(1, session.heartbeat(), false);
        if let Ok(channel) = session.channel().await {
            publish(&channel, topology, &report).await;
            let _ = channel.close(200, "announced".into()).await;
        }
        tokio::time::sleep(REPORT_EVERY * 2).await;
    }

    /// Reports every [`REPORT_EVERY`] on the session `keeper` keeps until `stop`; then,
    /// if nothing is held, once more with `leaving` on the same channel (after the last
    /// report, so the sweepers forget it). Cancel `stop` only once the process's
    /// deliveries are acked or back in the queue (its consume channel closed) and its
    /// spool closed. A report that cannot be sent is skipped: the sweeper holds expiry
    /// while it hears nothing.
    pub async fn run(
        self,
        keeper: Arc<SessionKeeper>,
        topology: Topology,
        stop: CancellationToken,
    ) {
        let periods = (WINDOW.as_millis() / REPORT_EVERY.as_millis()).max(1) as usize;
        let mut channel: Option<lapin::Channel> = None;
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break,
            }
            let heartbeat = keeper.current().map_or(0, |s| s.heartbeat());
            let report = self.report(periods, heartbeat, false);
            send(&keeper, &topology, &mut channel, &report).await;
        }
        if self.holds_nothing() {
            let report = self.report(periods, 0, true);
            send(&keeper, &topology, &mut channel, &report).await;
        } else {
            tracing::info!("stopping with work unsettled; the sweepers hold expiry for it");
        }
        if let Some(channel) = channel {
            let _ = channel.close(200, "reporting stopped".into()).await;
        }
    }

    fn report(&self, periods: usize, heartbeat: u16, leaving: bool) -> ProgressReport {
        let at = Utc::now();
        let mut from = at;
        let mut oldest_unsettled = None;
        for source in &self.sources {
            let (began, oldest) = source.roll(periods, at);
            from = from.min(began);
            oldest_unsettled = oldest_unsettled.into_iter().chain(oldest).min();
        }
        let gone_after_secs = match self.role {
            Role::Producer => None,
            Role::Consumer => (heartbeat > 0).then(|| 3 * u64::from(heartbeat) + 2),
        };
        ProgressReport {
            reporter: self.name.clone(),
            role: self.role,
            from,
            at,
            oldest_unsettled,
            gone_after_secs,
            alive_queue: self
                .alive_queue
                .lock()
                .expect("the alive queue lock is never poisoned")
                .clone(),
            leaving,
        }
    }
}

/// Publishes one report on the current session (opening a channel for it when needed).
async fn send(
    keeper: &SessionKeeper,
    topology: &Topology,
    channel: &mut Option<lapin::Channel>,
    report: &ProgressReport,
) {
    let Some(session) = keeper.current() else {
        *channel = None;
        return;
    };
    if !channel.as_ref().is_some_and(|c| c.status().connected()) {
        *channel = session.channel().await.ok();
    }
    if let Some(open) = channel.as_ref()
        && !publish(open, topology, report).await
    {
        *channel = None;
    }
}

/// Publishes one report (transient, expiring after [`WINDOW`]); false if it failed.
async fn publish(channel: &lapin::Channel, topology: &Topology, report: &ProgressReport) -> bool {
    let body = serde_json::to_vec(report).expect("a report always serializes");
    let published = channel
        .basic_publish(
            topology.progress_exchange.as_str().into(),
            "".into(),
            lapin::options::BasicPublishOptions::default(),
            &body,
            lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_expiration(WINDOW.as_millis().to_string().into()),
        )
        .await;
    if let Err(err) = &published {
        tracing::debug!(error = %err, "progress report not sent");
    }
    published.is_ok()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_report_names_the_oldest_held_in_its_window_even_if_released() {
        let unsettled = Unsettled::default();
        let held = unsettled.hold(t(5));
        let other = unsettled.hold(t(9));
        drop(held);
        // Released during the period: still the window's oldest.
        assert_eq!(unsettled.roll(2, Utc::now()).1, Some(t(5)));
        // One period later it is still in the window (2 periods).
        assert_eq!(unsettled.roll(2, Utc::now()).1, Some(t(5)));
        // Then it has left the window.
        assert_eq!(unsettled.roll(2, Utc::now()).1, Some(t(9)));
        drop(other);
        assert_eq!(unsettled.roll(2, Utc::now()).1, Some(t(9)));
        assert_eq!(unsettled.roll(2, Utc::now()).1, Some(t(9)));
        assert_eq!(unsettled.roll(2, Utc::now()).1, None);
        assert!(unsettled.is_empty());
    }

    #[test]
    fn counts_each_time_held_twice_and_resets() {
        let unsettled = Unsettled::default();
        unsettled.add(t(1));
        unsettled.add(t(1));
        unsettled.remove(t(1));
        assert_eq!(unsettled.oldest(), Some(t(1)));
        unsettled.reset([t(7), t(3)]);
        assert_eq!(unsettled.oldest(), Some(t(3)));
        unsettled.remove(t(3));
        assert_eq!(unsettled.oldest(), Some(t(7)));
    }

    #[test]
    fn a_report_round_trips() {
        let report = ProgressReport {
            reporter: "consumer@h:1".into(),
            role: Role::Consumer,
            from: t(0),
            at: t(1),
            oldest_unsettled: Some(t(-3)),
            gone_after_secs: Some(32),
            alive_queue: Some("lastseen.alive.x".into()),
            leaving: false,
        };
        let back: ProgressReport =
            serde_json::from_slice(&serde_json::to_vec(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
