//! The status page's figures: objects online, events per minute over the last hour
//! (followed along the event log, each event counted once), notifications not yet
//! published, the expiry hold, the work backlog, this producer's spool and the latest
//! events. One task refreshes them every 2 s for every viewer, from a view until 5 minutes
//! without one; nothing of it runs on a producer nobody looks at.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use lapin::Channel;
use lastseen::session::SessionKeeper;
use lastseen::store::reads::{self, EventSeq};
use lastseen::topology::{EXPIRED_ROUTING_KEY, LAGGING_ROUTING_KEY, ONLINE_ROUTING_KEY};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::spool::Spool;

/// How often the figures are refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// The task stops when nobody asked for the figures this long (the next view starts it
/// again, counting the hour back afresh).
const IDLE_STOP: Duration = Duration::from_secs(300);
/// Minutes the chart covers.
const MINUTES: i64 = 60;
/// Events the page lists.
const LATEST_EVENTS: i64 = 25;
/// Most events counted back at the first view: the last hour, or this many events of it
/// (then the chart starts later; `counted_since` says where).
const BACKFILL_EVENTS: i64 = 500_000;

/// What the page shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// When they were taken (null before the first refresh).
    pub at: Option<DateTime<Utc>>,
    /// Objects online now (stale ones included: not expired).
    pub online: Option<i64>,
    /// Of them, the stale ones (silent past their stale deadline).
    pub stale: Option<i64>,
    /// Notifications the relay has not published yet.
    pub unpublished: Option<i64>,
    /// Check messages ready in the work queue (not yet taken by a consumer).
    pub backlog: Option<u32>,
    /// Ids in this producer's spool, waiting for RabbitMQ.
    pub spool_ids: u64,
    /// The latest `pipeline.lagging` notification's body while expiry is held (`state`
    /// `started`); null when expiry runs.
    pub expiry_hold: Option<serde_json::Value>,
    /// The last hour by minute, oldest first.
    pub minutes: Vec<Minute>,
    /// The first minute the counts cover completely.
    pub counted_since: Option<DateTime<Utc>>,
    /// The latest events, the newest first.
    pub latest_events: Vec<reads::Event>,
    /// What failed at the last refresh, if anything.
    pub error: Option<String>,
}

/// The events of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    pub at: DateTime<Utc>,
    pub online: i64,
    pub expired: i64,
}

/// The figures, and the task that keeps them.
pub struct Dashboard {
    figures: Mutex<Figures>,
    /// The refreshing task runs.
    running: AtomicBool,
    /// When the figures were last asked for.
    viewed: Mutex<tokio::time::Instant>,
    pool: PgPool,
    spool: Arc<Spool>,
    session: Arc<SessionKeeper>,
    checks_queue: String,
    shutdown: CancellationToken,
}

impl Dashboard {
    pub fn new(
        pool: PgPool,
        spool: Arc<Spool>,
        session: Arc<SessionKeeper>,
        checks_queue: String,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            figures: Mutex::new(Figures::default()),
            running: AtomicBool::new(false),
            viewed: Mutex::new(tokio::time::Instant::now()),
            pool,
            spool,
            session,
            checks_queue,
            shutdown,
        })
    }

    /// The latest figures; starts the refreshing task when it is not running, and waits
    /// for its first refresh (at most 5 s).
    pub async fn figures(self: &Arc<Self>) -> Figures {
        *self
            .viewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
        if !self.running.swap(true, Ordering::SeqCst) {
            *self
                .figures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Figures::default();
            tokio::spawn(self.clone().keep());
        }
        if self.snapshot().at.is_none() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while self.snapshot().at.is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.snapshot()
    }

    fn snapshot(&self) -> Figures {
        self.figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn keep(self: Arc<Self>) {
        let mut follower = Follower::default();
        let mut channel: Option<Channel> = None;
        loop {
            let mut figures = Figures {
                spool_ids: self.spool.pending_ids(),
                ..Figures::default()
            };
            if let Err(err) = follower.follow(&self.pool).await {
                figures.error = Some(format!("PostgreSQL: {err}"));
            }
            figures.minutes = follower.minutes(Utc::now());
            figures.counted_since = follower.counted_since;
            figures.expiry_hold = follower
                .latest_lagging
                .clone()
                .filter(|hold| hold["state"] == "started");
            match tokio::try_join!(
                reads::online_count(&self.pool),
                reads::stale_count(&self.pool),
                reads::unpublished_count(&self.pool)
            ) {
                Ok((online, stale, unpublished)) => {
                    figures.online = Some(online);
                    figures.stale = Some(stale);
                    figures.unpublished = Some(unpublished);
                }
                Err(err) => figures.error = Some(format!("PostgreSQL: {err}")),
            }
            match latest_events(&self.pool).await {
                Ok(events) => figures.latest_events = events,
                Err(err) => figures.error = Some(format!("PostgreSQL: {err}")),
            }
            figures.backlog = self.backlog(&mut channel).await;
            figures.at = Some(Utc::now());
            *self
                .figures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = figures;
            let idle = self
                .viewed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed();
            if idle > IDLE_STOP {
                self.running.store(false, Ordering::SeqCst);
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Ready messages of the work queue, on a channel kept between refreshes (none while
    /// RabbitMQ is away).
    async fn backlog(&self, channel: &mut Option<Channel>) -> Option<u32> {
        if !channel.as_ref().is_some_and(|c| c.status().connected()) {
            *channel = match self.session.current() {
                Some(session) => session.channel().await.ok(),
                None => None,
            };
        }
        let counts = lastseen::amqp::queue_counts(channel.as_ref()?, &self.checks_queue).await;
        match counts {
            Ok(counts) => Some(counts.ready),
            Err(_) => {
                *channel = None;
                None
            }
        }
    }
}

/// The latest [`LATEST_EVENTS`] final events, the newest first: two index reads, whatever
/// the rate of events (the page shows these rather than a stream of every event, which at
/// thousands a second would cost the browser and the producer more than the page is worth).
async fn latest_events(pool: &PgPool) -> sqlx::Result<Vec<reads::Event>> {
    let from = reads::events_back(pool, LATEST_EVENTS - 1)
        .await?
        .predecessor();
    let mut events = reads::events(pool, from, LATEST_EVENTS).await?;
    events.reverse();
    Ok(events)
}

/// Counts along the event log: each refresh counts the events that became final since
/// the last one, by minute and type.
#[derive(Debug, Default)]
struct Follower {
    at: Option<EventSeq>,
    counts: BTreeMap<DateTime<Utc>, Minute>,
    counted_since: Option<DateTime<Utc>>,
    latest_lagging: Option<serde_json::Value>,
}

impl Follower {
    async fn follow(&mut self, pool: &PgPool) -> sqlx::Result<()> {
        let now = Utc::now();
        let hour_ago = minute_of(now) - TimeDelta::minutes(MINUTES - 1);
        let after = match self.at {
            Some(at) => at,
            None => {
                let start = reads::events_back(pool, BACKFILL_EVENTS).await?;
                self.counted_since = (start == EventSeq::START).then_some(hour_ago);
                start
            }
        };
        let end = reads::events_end(pool).await?;
        if end > after {
            // Both read before either is applied: a failure leaves the range to count
            // whole at the next refresh, never half counted twice.
            let counts = reads::minute_counts(pool, after, end, hour_ago).await?;
            let lagging = reads::latest_of_kind(pool, LAGGING_ROUTING_KEY, after, end).await?;
            if self.at.is_none() {
                self.counts.clear();
            }
            for count in counts {
                let minute = self.counts.entry(count.minute).or_insert(Minute {
                    at: count.minute,
                    ..Minute::default()
                });
                match count.kind.as_str() {
                    ONLINE_ROUTING_KEY => minute.online += count.count,
                    EXPIRED_ROUTING_KEY => minute.expired += count.count,
                    _ => {}
                }
            }
            if let Some(lagging) = lagging {
                self.latest_lagging = Some(lagging.payload);
            }
        }
        if self.at.is_none() && self.counted_since.is_none() {
            // The backfill stopped short of the hour: its first full minute on.
            self.counted_since = self
                .counts
                .keys()
                .next()
                .map(|first| *first + TimeDelta::minutes(1));
        }
        self.at = Some(end.max(after));
        self.counts = self.counts.split_off(&hour_ago);
        Ok(())
    }

    /// The last hour by minute, oldest first, with the minutes that had no events.
    fn minutes(&self, now: DateTime<Utc>) -> Vec<Minute> {
        let last = minute_of(now);
        (0..MINUTES)
            .rev()
            .map(|back| {
                let at = last - TimeDelta::minutes(back);
                self.counts.get(&at).copied().unwrap_or(Minute {
                    at,
                    ..Minute::default()
                })
            })
            .collect()
    }
}

fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_sixty_minutes_ending_now_with_the_counted_ones_in_place() {
        let now: DateTime<Utc> = "2026-12-01T10:30:45Z".parse().unwrap();
        let mut follower = Follower::default();
        let at: DateTime<Utc> = "2026-12-01T10:29:00Z".parse().unwrap();
        follower.counts.insert(
            at,
            Minute {
                at,
                online: 3,
                expired: 1,
            },
        );
        let minutes = follower.minutes(now);
        assert_eq!(minutes.len(), 60);
        assert_eq!(
            minutes[59].at,
            "2026-12-01T10:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            minutes[0].at,
            "2026-12-01T09:31:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!((minutes[58].online, minutes[58].expired), (3, 1));
        assert_eq!(minutes.iter().map(|m| m.online).sum::<i64>(), 3);
    }
}
