//! The watermark: the acceptance time before which every accepted callback is settled
//! (checked, and stored or found offline, or given up). An object is expired only when
//! its deadline is before it, so work our own pipeline still holds (in a producer or its
//! spool, in the work queue, in a consumer) never lets an object it names expire.
//!
//! How it is known. Every producer and consumer reports the oldest `accepted_at` it held
//! in the last second ([`lastseen::progress`]). Ten times a second the sweeper looks at
//! the work queue: a moment `q` at which it holds no ready message is a *moment of
//! account*: every callback unsettled at `q` was then in a producer (or its spool) or in
//! a consumer, since the retry queues' ids are held one by one in PostgreSQL
//! (`expiry_holds`). The broker counts at some instant between the look's request and
//! its answer, so a report must cover that whole span (and a margin on each side). Once
//! every reporter has sent one, the oldest `accepted_at` they name, or the request's
//! time, is a watermark: callbacks accepted after `q` are newer anyway. The watermark
//! only moves forward.
//!
//! While the queue has ready messages, or a reporter is silent, or RabbitMQ cannot be
//! reached, no moment completes and the watermark stays where it was: expiry is held.
//! A consumer silent longer than three heartbeats is forgotten (RabbitMQ has requeued its
//! deliveries by then; they are in the queue); a producer only after
//! `MAX_EXPIRY_HOLD_SECS`, which also bounds every hold: after it, expiry goes on and
//! says so.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::BasicConsumeOptions;
use lastseen::amqp::{self, no_args};
use lastseen::contract::metric;
use lastseen::ops::Dependency;
use lastseen::progress::{ProgressReport, REPORT_EVERY, Role, WINDOW};
use lastseen::session::{Session, SessionKeeper};
use lastseen::store::reporters::{self, KnownReporter};
use lastseen::topology::Topology;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Allowance on each side of a moment of account, for clock skew between hosts and for
/// a message's hand-over from one holder to the next.
const MARGIN: Duration = Duration::from_millis(100);

/// Time to listen after start before the first judgement, so every live reporter is
/// heard first: each reports ten times in it.
const STARTUP_GRACE: Duration = WINDOW;

/// Moments and reports older than this are dropped.
const KEEP: Duration = Duration::from_secs(5);

/// How long a follow round waits for the session keeper.
const SESSION_WAIT: Duration = Duration::from_secs(1);

/// How often the reporters heard are kept in PostgreSQL.
const REMEMBER_EVERY: Duration = Duration::from_secs(1);

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What a sweep may expire now, and why the watermark is where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Deadlines before this are due: the watermark, or `MAX_EXPIRY_HOLD_SECS` ago when
    /// it is further behind.
    pub before: DateTime<Utc>,
    /// How far the watermark is behind now (`before` is never further behind than
    /// `MAX_EXPIRY_HOLD_SECS`).
    pub lag: chrono::Duration,
    /// True when the watermark was further behind than the bound: expiry goes on.
    pub bound_reached: bool,
    /// What holds the watermark back, in words.
    pub reason: String,
}

/// One producer or consumer as the sweeper hears it.
#[derive(Debug)]
struct Reporter {
    role: Role,
    last_heard: DateTime<Utc>,
    gone_after: Option<Duration>,
    /// A consumer's alive queue: while it exists, so does the consumer's connection.
    alive_queue: Option<String>,
    last_alive_check: Option<DateTime<Utc>>,
    /// Its recent reports, oldest first.
    reports: VecDeque<ProgressReport>,
}

/// The sweeper's account of the pipeline's progress.
#[derive(Debug)]
pub struct Tracker {
    started: DateTime<Utc>,
    max_hold: Duration,
    reporters: HashMap<String, Reporter>,
    /// Moments the work queue held no ready message, waiting for their reports: the
    /// look's request and answer (the broker counted somewhere between the two).
    moments: VecDeque<(DateTime<Utc>, DateTime<Utc>)>,
    settled_before: Option<DateTime<Utc>>,
    /// The work queue's ready messages at the last look; `None`: RabbitMQ not reachable.
    ready: Option<u32>,
    /// Reporters forgotten (left or gone) since [`Self::take_memory`] last ran.
    forgotten: Vec<String>,
}

impl Tracker {
    pub fn new(started: DateTime<Utc>, max_hold: Duration) -> Self {
        Self {
            started,
            max_hold,
            reporters: HashMap::new(),
            moments: VecDeque::new(),
            settled_before: None,
            ready: None,
            forgotten: Vec::new(),
        }
    }

    /// Takes in the reporters other sweepers (or this one before a restart) heard: known
    /// from now on, silent since they were last heard, so none that has gone quiet (a
    /// producer cut off from RabbitMQ, its spool filling) is missed.
    pub fn recall(&mut self, known: Vec<KnownReporter>) {
        for row in known {
            let role = if row.role == "producer" {
                Role::Producer
            } else {
                Role::Consumer
            };
            self.reporters.entry(row.name).or_insert(Reporter {
                role,
                last_heard: row.last_heard,
                gone_after: None,
                alive_queue: row.alive_queue,
                last_alive_check: None,
                reports: VecDeque::new(),
            });
        }
    }

    /// The reporters to keep in PostgreSQL, and those to delete from it.
    pub fn take_memory(&mut self) -> (Vec<KnownReporter>, Vec<String>) {
        let known = self
            .reporters
            .iter()
            .map(|(name, r)| KnownReporter {
                name: name.clone(),
                role: match r.role {
                    Role::Producer => "producer".to_owned(),
                    Role::Consumer => "consumer".to_owned(),
                },
                alive_queue: r.alive_queue.clone(),
                last_heard: r.last_heard,
            })
            .collect();
        (known, std::mem::take(&mut self.forgotten))
    }

    /// Takes a report in, heard at `now`.
    pub fn heard(&mut self, report: ProgressReport, now: DateTime<Utc>) {
        if report.leaving {
            if self.reporters.remove(&report.reporter).is_some() {
                tracing::info!(reporter = %report.reporter, "reporter left");
            }
            self.forgotten.push(report.reporter);
            return;
        }
        let reporter = self
            .reporters
            .entry(report.reporter.clone())
            .or_insert_with(|| {
                tracing::info!(reporter = %report.reporter, role = ?report.role, "reporter heard");
                Reporter {
                    role: report.role,
                    last_heard: now,
                    gone_after: None,
                    alive_queue: None,
                    last_alive_check: None,
                    reports: VecDeque::new(),
                }
            });
        reporter.last_heard = now;
        reporter.gone_after = report.gone_after_secs.map(Duration::from_secs);
        reporter.alive_queue.clone_from(&report.alive_queue);
        reporter.reports.push_back(report);
        while reporter
            .reports
            .front()
            .is_some_and(|r| r.at < now - chrono(KEEP))
        {
            reporter.reports.pop_front();
        }
    }

    /// Takes in a look at the work queue, asked at `asked` and answered at `answered`:
    /// its ready messages, or `None` when it could not be looked at.
    pub fn looked(&mut self, ready: Option<u32>, asked: DateTime<Utc>, answered: DateTime<Utc>) {
        self.ready = ready;
        if ready == Some(0) {
            self.moments.push_back((asked, answered));
        }
    }

    /// Forgets gone reporters, completes the moments whose reports are in, and moves the
    /// watermark.
    pub fn judge(&mut self, now: DateTime<Utc>) {
        self.forget_gone(now);
        while self
            .moments
            .front()
            .is_some_and(|(asked, _)| *asked < now - chrono(KEEP))
        {
            self.moments.pop_front();
        }
        if now < self.started + chrono(STARTUP_GRACE) {
            return;
        }
        // The newest moment that completes settles everything the older ones would.
        let mut completed = None;
        for (index, moment) in self.moments.iter().enumerate() {
            if let Some(watermark) = self.account(*moment) {
                completed = Some((index, watermark));
            }
        }
        if let Some((index, watermark)) = completed {
            self.moments.drain(..=index);
            if self.settled_before.is_none_or(|w| watermark > w) {
                self.settled_before = Some(watermark);
            }
        }
        metrics::gauge!(metric::PROGRESS_REPORTERS).set(self.reporters.len() as f64);
    }

    /// The watermark a moment gives (the broker counted no ready message at some
    /// instant between `asked` and `answered`), if every reporter known now has a report
    /// covering the whole span (one that started since has none: its moments never
    /// complete; a consumer announces itself before it takes deliveries).
    fn account(&self, (asked, answered): (DateTime<Utc>, DateTime<Utc>)) -> Option<DateTime<Utc>> {
        let margin = chrono(MARGIN);
        let mut watermark = asked - margin;
        for reporter in self.reporters.values() {
            let covering = reporter
                .reports
                .iter()
                .find(|r| r.from <= asked - margin && r.at >= answered + margin)?;
            if let Some(oldest) = covering.oldest_unsettled {
                watermark = watermark.min(oldest);
            }
        }
        Some(watermark)
    }

    /// Silent consumers whose alive queue should be looked for now (once a second each):
    /// their names and queues.
    pub fn alive_checks(&mut self, now: DateTime<Utc>) -> Vec<(String, String)> {
        let mut due = Vec::new();
        for (name, reporter) in &mut self.reporters {
            let silent = now - reporter.last_heard > chrono(WINDOW);
            let checked_lately = reporter
                .last_alive_check
                .is_some_and(|at| now - at < chrono(Duration::from_secs(1)));
            if let (true, false, Some(queue)) = (silent, checked_lately, &reporter.alive_queue) {
                reporter.last_alive_check = Some(now);
                due.push((name.clone(), queue.clone()));
            }
        }
        due
    }

    /// Forgets a consumer whose alive queue is gone: its connection is, and RabbitMQ has
    /// requeued its deliveries.
    pub fn forget_dead(&mut self, name: &str) {
        self.forgotten.push(name.to_owned());
        if self.reporters.remove(name).is_some() {
            tracing::info!(reporter = %name, "consumer's connection is gone (its alive queue with it): its deliveries are back in the queue; forgetting it");
        }
    }

    fn forget_gone(&mut self, now: DateTime<Utc>) {
        let max_hold = self.max_hold;
        let mut forgotten = Vec::new();
        self.reporters.retain(|name, reporter| {
            let silent = (now - reporter.last_heard).to_std().unwrap_or_default();
            let gone_after = match (reporter.role, &reporter.alive_queue) {
                // Known dead only when its alive queue is gone (see `forget_dead`).
                (Role::Consumer, Some(_)) => max_hold,
                (Role::Consumer, None) => reporter.gone_after.unwrap_or(max_hold).min(max_hold),
                (Role::Producer, _) => max_hold,
            };
            let gone = silent > gone_after;
            if gone {
                match reporter.role {
                    Role::Consumer => tracing::info!(reporter = %name, ?silent, "consumer silent past three heartbeats: RabbitMQ has requeued its deliveries; forgetting it"),
                    Role::Producer => tracing::warn!(reporter = %name, ?silent, "producer silent past MAX_EXPIRY_HOLD_SECS: expiry no longer waits for its spool"),
                }
            }
            if gone {
                forgotten.push(name.clone());
            }
            !gone
        });
        self.forgotten.extend(forgotten);
    }

    /// What a sweep at `now` may expire.
    pub fn judgement(&self, now: DateTime<Utc>) -> Judgement {
        let floor = now - chrono(self.max_hold);
        let (before, bound_reached) = match self.settled_before.map(|w| w.min(now)) {
            // Until a first moment completes nothing is known: everything is held, to
            // the bound.
            None => (floor, now - self.started > chrono(self.max_hold)),
            Some(watermark) if watermark < floor => (floor, true),
            Some(watermark) => (watermark, false),
        };
        Judgement {
            before,
            lag: now - self.settled_before.unwrap_or(self.started).min(now),
            bound_reached,
            reason: self.reason(now),
        }
    }

    /// What holds the watermark back now, in words.
    fn reason(&self, now: DateTime<Utc>) -> String {
        let silent: Vec<String> = self
            .reporters
            .iter()
            .filter(|(_, r)| now - r.last_heard > chrono(WINDOW))
            .map(|(name, r)| {
                format!(
                    "no report from {name} for {:.0} s",
                    (now - r.last_heard).as_seconds_f64()
                )
            })
            .collect();
        let oldest = self
            .reporters
            .iter()
            .filter_map(|(name, r)| {
                let at = r.reports.back()?.oldest_unsettled?;
                Some((at, name))
            })
            .min();
        match self.ready {
            None => "RabbitMQ cannot be reached: the work queue's backlog is unknown".to_owned(),
            Some(ready) if ready > 0 => format!("{ready} messages wait in the work queue"),
            _ if !silent.is_empty() => silent.join("; "),
            _ => match oldest {
                Some((at, name)) => format!(
                    "{name} holds a callback accepted {:.1} s ago",
                    (now - at).as_seconds_f64()
                ),
                None => "nothing unsettled".to_owned(),
            },
        }
    }
}

/// The tracker, shared between its follower and the sweep loop.
#[derive(Clone)]
pub struct Watermark(Arc<Mutex<Tracker>>);

impl Watermark {
    pub fn new(max_hold: Duration) -> Self {
        Self(Arc::new(Mutex::new(Tracker::new(Utc::now(), max_hold))))
    }

    /// What a sweep may expire now; records the lag in the metrics.
    pub fn judgement(&self) -> Judgement {
        let judgement = self.tracker().judgement(Utc::now());
        metrics::gauge!(metric::EXPIRY_WATERMARK_LAG_SECONDS)
            .set(judgement.lag.as_seconds_f64().max(0.0));
        judgement
    }

    /// The `expiry` part of `/readyz`: the watermark's lag and whether expiry is held
    /// (further behind than `alert_after` seconds). Never makes the sweeper unready.
    pub fn readiness(&self, alert_after: f64) -> Dependency {
        let judged = self.tracker().judgement(Utc::now());
        let lag = judged.lag.as_seconds_f64();
        let state = if judged.bound_reached {
            "held past MAX_EXPIRY_HOLD_SECS, expiring regardless"
        } else if lag > alert_after {
            "held"
        } else {
            "current"
        };
        Dependency::telling(
            "expiry",
            format!("{state}: watermark {lag:.1} s behind ({})", judged.reason),
        )
    }

    /// Learns the reporters kept in PostgreSQL (heard within `MAX_EXPIRY_HOLD_SECS`):
    /// call before following, so the first judgement waits for the silent ones too.
    pub async fn recall(&self, pool: &PgPool) {
        let since = Utc::now() - chrono(self.tracker().max_hold);
        match reporters::heard_since(pool, since).await {
            Ok(known) => {
                tracing::info!(reporters = known.len(), "reporters recalled");
                self.tracker().recall(known);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot recall the reporters heard before this start; only those heard from now on hold expiry")
            }
        }
    }

    /// Keeps the reporters heard in PostgreSQL, every [`REMEMBER_EVERY`], until
    /// `shutdown`.
    pub async fn remember(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(REMEMBER_EVERY) => {}
                () = shutdown.cancelled() => break,
            }
            let (known, gone) = self.tracker().take_memory();
            if let Err(err) = reporters::remember(&pool, &known, &gone).await {
                tracing::warn!(error = %err, "cannot keep the reporters heard; will retry");
                self.tracker().forgotten.extend(gone);
            }
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.0.lock().expect("the tracker lock is never poisoned")
    }

    /// Hears reports and looks at the work queue until `shutdown`, on the sessions
    /// `keeper` keeps. While there is no session, nothing completes: expiry is held.
    pub async fn follow(
        self,
        keeper: Arc<SessionKeeper>,
        topology: Topology,
        shutdown: CancellationToken,
    ) {
        let mut retries = lastseen::backoff::Retries::new();
        while !shutdown.is_cancelled() {
            let Some(session) = keeper.wait(SESSION_WAIT, &shutdown).await else {
                self.look(None, Utc::now());
                continue;
            };
            match self.follow_session(&session, &topology, &shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "following the pipeline's progress failed; again on a new channel");
                    self.look(None, Utc::now());
                    if !session.is_usable() {
                        keeper.broken(&session);
                    }
                    if !retries.pause(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    fn look(&self, ready: Option<u32>, asked: DateTime<Utc>) {
        let now = Utc::now();
        let mut tracker = self.tracker();
        tracker.looked(ready, asked, now);
        tracker.judge(now);
    }

    async fn follow_session(
        &self,
        session: &Session,
        topology: &Topology,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let listening = session.channel().await?;
        let queue = topology.declare_progress_queue(&listening).await?;
        let mut reports = listening
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                no_args(),
            )
            .await?;
        let looking = session.channel().await?;
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = reports.next() => match next {
                    Some(Ok(delivery)) => match serde_json::from_slice::<ProgressReport>(&delivery.data) {
                        Ok(report) => self.tracker().heard(report, Utc::now()),
                        Err(err) => tracing::warn!(error = %err, "unreadable progress report dropped"),
                    },
                    Some(Err(err)) => return Err(err.into()),
                    None => anyhow::bail!("the subscription to progress reports ended"),
                },
                _ = ticks.tick() => {
                    let asked = Utc::now();
                    let counts = amqp::queue_counts(&looking, &topology.checks_queue).await?;
                    self.look(Some(counts.ready), asked);
                    let due = self.tracker().alive_checks(Utc::now());
                    for (name, queue) in due {
                        if !alive(session, &queue).await {
                            self.tracker().forget_dead(&name);
                        }
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        // Closed here, not dropped: a dropped channel is closed in the background, and
        // the session closed meanwhile makes lapin log a connection error.
        drop(reports);
        let _ = listening.close(200, "sweeper shutting down".into()).await;
        let _ = looking.close(200, "sweeper shutting down".into()).await;
        Ok(())
    }
}

/// Whether `queue` (an alive queue) exists: an empty mandatory message published to it
/// on a confirm channel of its own, which the broker returns unroutable when the queue is
/// gone. The message expires at once (`expiration` 0: the queue has no consumer), so a
/// live queue keeps nothing. A probe, unlike a passive declare, never makes the broker
/// close a channel, which lapin logs as an error. Any other failure counts as alive.
async fn alive(session: &Session, queue: &str) -> bool {
    let Ok(channel) = session.confirm_channel().await else {
        return true;
    };
    let probe = lapin::BasicProperties::default().with_expiration("0".into());
    let published = match amqp::publish_mandatory(&channel, "", queue, b"", probe).await {
        Ok(confirm) => confirm.await,
        Err(err) => Err(err),
    };
    let _ = channel.close(200, "looked".into()).await;
    !matches!(published, Err(amqp::AmqpError::Unroutable { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(300);

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn report(name: &str, role: Role, at: i64, oldest: Option<i64>) -> ProgressReport {
        ProgressReport {
            reporter: name.into(),
            role,
            from: t(at - 1000),
            at: t(at),
            oldest_unsettled: oldest.map(t),
            gone_after_secs: Some(32),
            alive_queue: None,
            leaving: false,
        }
    }

    /// A tracker past its startup grace, with a consumer and a producer heard.
    fn tracker() -> Tracker {
        let mut tracker = Tracker::new(t(0), HOLD);
        tracker.heard(report("c", Role::Consumer, 100, None), t(100));
        tracker.heard(report("p", Role::Producer, 100, None), t(100));
        tracker
    }

    #[test]
    fn a_moment_completes_with_the_oldest_unsettled_of_its_reports() {
        let mut tracker = tracker();
        tracker.looked(Some(0), t(3000), t(3000));
        tracker.judge(t(3000));
        assert_eq!(
            tracker.settled_before, None,
            "no report covers the moment yet"
        );
        tracker.heard(report("c", Role::Consumer, 3300, Some(1200)), t(3300));
        tracker.judge(t(3300));
        assert_eq!(
            tracker.settled_before, None,
            "the producer has not reported yet"
        );
        tracker.heard(report("p", Role::Producer, 3300, None), t(3300));
        tracker.judge(t(3300));
        assert_eq!(tracker.settled_before, Some(t(1200)));
        let judged = tracker.judgement(t(3300));
        assert_eq!(judged.before, t(1200));
        assert!(!judged.bound_reached);
    }

    #[test]
    fn with_nothing_unsettled_the_watermark_trails_the_moment_by_the_margin() {
        let mut tracker = tracker();
        tracker.looked(Some(0), t(3000), t(3000));
        tracker.heard(report("c", Role::Consumer, 3300, None), t(3300));
        tracker.heard(report("p", Role::Producer, 3300, None), t(3300));
        tracker.judge(t(3300));
        assert_eq!(tracker.settled_before, Some(t(2900)));
    }

    #[test]
    fn a_slow_look_needs_reports_covering_its_whole_span() {
        let mut tracker = tracker();
        // The broker counted somewhere between 3000 and 3600.
        tracker.looked(Some(0), t(3000), t(3600));
        tracker.heard(report("c", Role::Consumer, 3300, None), t(3300));
        tracker.heard(report("p", Role::Producer, 3300, None), t(3300));
        tracker.judge(t(3300));
        assert_eq!(
            tracker.settled_before, None,
            "these reports end inside the span"
        );
        tracker.heard(report("c", Role::Consumer, 3800, None), t(3800));
        tracker.heard(report("p", Role::Producer, 3800, None), t(3800));
        tracker.judge(t(3800));
        assert_eq!(tracker.settled_before, Some(t(2900)));
    }

    #[test]
    fn ready_messages_in_the_work_queue_hold_the_watermark() {
        let mut tracker = tracker();
        tracker.looked(Some(0), t(3000), t(3000));
        tracker.heard(report("c", Role::Consumer, 3300, None), t(3300));
        tracker.heard(report("p", Role::Producer, 3300, None), t(3300));
        tracker.judge(t(3300));
        for at in (3500..20_000).step_by(250) {
            tracker.looked(Some(7), t(at), t(at));
            tracker.heard(report("c", Role::Consumer, at, None), t(at));
            tracker.heard(report("p", Role::Producer, at, None), t(at));
            tracker.judge(t(at));
        }
        let judged = tracker.judgement(t(20_000));
        assert_eq!(judged.before, t(2900));
        assert_eq!(judged.reason, "7 messages wait in the work queue");
    }

    #[test]
    fn a_silent_producer_holds_the_watermark_until_the_bound() {
        let mut tracker = tracker();
        for at in (3000..10_000).step_by(250) {
            tracker.looked(Some(0), t(at), t(at));
            tracker.heard(report("c", Role::Consumer, at, None), t(at));
            tracker.judge(t(at));
        }
        assert_eq!(tracker.settled_before, None);
        assert!(
            tracker
                .judgement(t(10_000))
                .reason
                .contains("no report from p")
        );
        let late = 400_000;
        tracker.heard(report("c", Role::Consumer, late, None), t(late));
        let judged = tracker.judgement(t(late));
        assert!(judged.bound_reached);
        assert_eq!(judged.before, t(late) - chrono(HOLD));
        // Past the bound the producer is forgotten and moments complete again.
        tracker.judge(t(late));
        tracker.looked(Some(0), t(late + 10), t(late + 10));
        tracker.heard(report("c", Role::Consumer, late + 300, None), t(late + 300));
        tracker.judge(t(late + 300));
        assert_eq!(tracker.settled_before, Some(t(late + 10 - 100)));
    }

    #[test]
    fn a_consumer_silent_past_its_heartbeats_is_forgotten_and_one_that_left_at_once() {
        let mut tracker = tracker();
        tracker.heard(
            ProgressReport {
                leaving: true,
                ..report("p", Role::Producer, 200, None)
            },
            t(200),
        );
        tracker.judge(t(20_000));
        assert_eq!(tracker.reporters.len(), 1, "the producer left");
        tracker.judge(t(100 + 33_000));
        assert!(
            tracker.reporters.is_empty(),
            "the consumer is gone after 32 s"
        );
    }

    #[test]
    fn a_silent_consumer_with_an_alive_queue_stays_until_the_queue_is_gone() {
        let mut tracker = tracker();
        tracker.heard(
            ProgressReport {
                alive_queue: Some("q1".into()),
                ..report("c", Role::Consumer, 200, None)
            },
            t(200),
        );
        assert!(tracker.alive_checks(t(500)).is_empty(), "not silent yet");
        tracker.judge(t(100_000));
        assert_eq!(tracker.reporters.len(), 2, "kept past three heartbeats");
        assert_eq!(
            tracker.alive_checks(t(100_000)),
            [("c".to_owned(), "q1".to_owned())]
        );
        assert!(tracker.alive_checks(t(100_500)).is_empty(), "once a second");
        tracker.forget_dead("c");
        assert_eq!(tracker.reporters.len(), 1);
    }

    #[test]
    fn before_a_first_moment_everything_is_held_to_the_bound() {
        let tracker = tracker();
        let judged = tracker.judgement(t(1000));
        assert_eq!(judged.before, t(1000) - chrono(HOLD));
        assert!(!judged.bound_reached);
        assert_eq!(judged.lag, chrono(Duration::from_secs(1)));
    }

    #[test]
    fn a_reporter_heard_after_a_moment_must_cover_it_too() {
        let mut tracker = tracker();
        tracker.looked(Some(0), t(3000), t(3000));
        tracker.heard(report("c", Role::Consumer, 3300, None), t(3300));
        tracker.heard(report("p", Role::Producer, 3300, None), t(3300));
        // A consumer started just before the moment's judgement: its first report does
        // not cover the moment, so the moment never completes.
        let mut first = report("new", Role::Consumer, 3300, Some(2000));
        first.from = t(3300);
        tracker.heard(first, t(3300));
        tracker.judge(t(3300));
        assert_eq!(tracker.settled_before, None);
    }

    #[test]
    fn a_recalled_silent_producer_holds_the_first_moment() {
        let mut tracker = Tracker::new(t(0), HOLD);
        tracker.recall(vec![KnownReporter {
            name: "p".into(),
            role: "producer".into(),
            alive_queue: None,
            last_heard: t(-5000),
        }]);
        tracker.heard(report("c", Role::Consumer, 100, None), t(100));
        tracker.looked(Some(0), t(3000), t(3000));
        tracker.heard(report("c", Role::Consumer, 3300, None), t(3300));
        tracker.judge(t(3300));
        assert_eq!(tracker.settled_before, None, "the silent producer holds it");
        let (known, gone) = tracker.take_memory();
        assert_eq!(known.len(), 2);
        assert!(gone.is_empty());
    }

    #[test]
    fn nothing_completes_during_the_startup_grace_and_the_watermark_never_goes_back() {
        let mut tracker = tracker();
        tracker.looked(Some(0), t(500), t(500));
        tracker.heard(report("c", Role::Consumer, 800, None), t(800));
        tracker.heard(report("p", Role::Producer, 800, None), t(800));
        tracker.judge(t(800));
        assert_eq!(tracker.settled_before, None);
        tracker.looked(Some(0), t(3000), t(3000));
        tracker.heard(report("c", Role::Consumer, 3300, None), t(3300));
        tracker.heard(report("p", Role::Producer, 3300, None), t(3300));
        tracker.judge(t(3300));
        assert_eq!(tracker.settled_before, Some(t(2900)));
        // A later moment naming an older unsettled callback does not move it back.
        tracker.looked(Some(0), t(4000), t(4000));
        tracker.heard(report("c", Role::Consumer, 4300, Some(1000)), t(4300));
        tracker.heard(report("p", Role::Producer, 4300, None), t(4300));
        tracker.judge(t(4300));
        assert_eq!(tracker.settled_before, Some(t(2900)));
    }
}
