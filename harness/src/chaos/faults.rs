//! The faults, injected one after another while the load runs, each followed by a
//! recovery measurement and a quiet spell: `kill -9` of a consumer, of the producer and
//! of the sweeper (each restarted), the RabbitMQ node stopped and PostgreSQL stopped for
//! `outage` each (then started again; PostgreSQL just before 500 objects' deadlines,
//! see `deadlines`), a RabbitMQ memory alarm (publishers blocked) for
//! `outage`, the spool's disk full, then freed, while such an alarm sends callbacks
//! to the spool, and the work queue deleted (see `work_queue`). The status simulator's 20% failed and 5% hung
//! calls are not on this list: they last the whole run.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::broker::BrokerNode;
use super::database::DatabaseCluster;
use super::queues::QueueWatch;
use super::recovery::Prober;
use super::spool_disk::SpoolDisk;
use crate::process::Supervisor;

/// How long a killed consumer stays dead before its restart; long enough for RabbitMQ to
/// notice the dropped connection and redeliver its unacked messages to the other one.
const CONSUMER_DEAD_FOR: Duration = Duration::from_secs(2);
/// How long the killed producer and sweeper stay dead before their restart.
const PROCESS_DEAD_FOR: Duration = Duration::from_secs(1);

/// How long a memory alarm runs before the spool's disk is filled, and after it is
/// freed: callbacks are being spooled by then.
const SPOOLING_LEAD: Duration = Duration::from_secs(3);

/// The consumer that gets killed (the other keeps consuming).
pub const KILLED_CONSUMER: &str = "consumer-1";

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillConsumer,
    KillProducer,
    KillSweeper,
    StopRabbitMq,
    StopPostgres,
    MemoryAlarm,
    SpoolDiskFull,
    WorkQueueDeleted,
}

impl Fault {
    /// The order of a run. The spool's disk fills before any other fault spooled
    /// anything: pages the spool once used are its own, and a full disk would not stop it
    /// writing there. The work queue goes next, early: a retry dead-lettered while it was
    /// gone waits in its retry queue for RabbitMQ's next attempt (minutes), and must be
    /// back before the drain ends.
    pub const SCHEDULE: [Fault; 8] = [
        Fault::SpoolDiskFull,
        Fault::WorkQueueDeleted,
        Fault::KillConsumer,
        Fault::KillProducer,
        Fault::KillSweeper,
        Fault::StopRabbitMq,
        Fault::StopPostgres,
        Fault::MemoryAlarm,
    ];

    pub fn describe(self, outage: Duration) -> String {
        let secs = |d: Duration| d.as_secs();
        match self {
            Self::KillConsumer => format!(
                "kill -9 {KILLED_CONSUMER}, restarted after {} s",
                secs(CONSUMER_DEAD_FOR)
            ),
            Self::KillProducer => format!(
                "kill -9 producer, restarted after {} s",
                secs(PROCESS_DEAD_FOR)
            ),
            Self::KillSweeper => format!(
                "kill -9 {} (of two), restarted after {} s",
                super::webhook::SWEEPERS[0],
                secs(PROCESS_DEAD_FOR)
            ),
            Self::StopRabbitMq => format!("RabbitMQ stopped for {} s, started", secs(outage)),
            Self::StopPostgres => format!(
                "PostgreSQL stopped for {} s across 500 objects' deadlines, started",
                secs(outage)
            ),
            Self::MemoryAlarm => format!(
                "RabbitMQ memory alarm (publishers blocked) for {} s, cleared",
                secs(outage)
            ),
            Self::WorkQueueDeleted => {
                "work queue deleted (ready messages recorded), declared again by the pipeline"
                    .to_owned()
            }
            Self::SpoolDiskFull => format!(
                "spool disk full for {} s, then freed, during a RabbitMQ memory alarm of {} s",
                secs(outage / 2),
                secs(outage + SPOOLING_LEAD * 2)
            ),
        }
    }
}

/// What happened to one fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: String,
    /// Seconds from the start of the load to the injection.
    pub injected_at_secs: f64,
    /// From the injection to the end of the fault: the process restarted, or the service
    /// started and answering again (RabbitMQ: the outage from the start of its shutdown,
    /// then its boot).
    pub fault_secs: f64,
    /// From the end of the fault until a probe answered directly was stored; `None` if
    /// that did not happen within the recovery limit.
    pub recovery_secs: Option<f64>,
}

/// Everything a fault touches.
pub struct Chaos<'a> {
    pub pipeline: &'a mut Supervisor,
    pub broker: &'a BrokerNode,
    pub database: &'a DatabaseCluster,
    pub spool_disk: &'a SpoolDisk,
    pub queues: &'a QueueWatch,
    pub prober: &'a Prober,
    pub outage: Duration,
    /// The work queue's names.
    pub topology: lastseen::topology::Topology,
    /// Sends the deadline batch before PostgreSQL is stopped.
    pub client: tester::callback::CallbackClient,
    pub pool: sqlx::PgPool,
    /// The deadline batch and when PostgreSQL was down, once that fault ran.
    pub deadlines: Option<super::deadlines::Planted>,
    /// Messages that were ready in the work queue when a fault deleted it.
    pub removed: Vec<super::dead_letters::DeadLetter>,
    /// Quiet time before the first fault and after each recovery.
    pub settle: Duration,
    pub load_started: Instant,
}

impl Chaos<'_> {
    /// Injects every fault of the schedule in turn; stops early on `shutdown`.
    pub async fn run_schedule(
        &mut self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<FaultRecord>> {
        let mut records = Vec::new();
        pause(self.settle, shutdown).await?;
        for fault in Fault::SCHEDULE {
            let description = fault.describe(self.outage);
            self.prepare(fault).await?;
            let injected = Instant::now();
            eprintln!(
                "[chaos] +{:>5.1} s  fault: {description}",
                self.since_start(injected)
            );
            self.inject(fault, shutdown).await?;
            let ended = Instant::now();
            let recovery = self.prober.measure(ended).await;
            match recovery {
                Some(r) => eprintln!(
                    "[chaos] +{:>5.1} s  recovered {:.1} s after the fault ended",
                    self.since_start(Instant::now()),
                    r.as_secs_f64()
                ),
                None => eprintln!(
                    "[chaos] +{:>5.1} s  NOT recovered within {:?} of the fault's end",
                    self.since_start(Instant::now()),
                    super::recovery::RECOVERY_LIMIT
                ),
            }
            self.pipeline.check_exits();
            records.push(FaultRecord {
                fault: description,
                injected_at_secs: self.since_start(injected),
                fault_secs: (ended - injected).as_secs_f64(),
                recovery_secs: recovery.map(|r| r.as_secs_f64()),
            });
            pause(self.settle, shutdown).await?;
        }
        Ok(records)
    }

    fn since_start(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.load_started).as_secs_f64()
    }

    /// What a fault needs in place before it is injected (not counted in its time).
    async fn prepare(&mut self, fault: Fault) -> anyhow::Result<()> {
        if fault == Fault::StopPostgres {
            let planted = super::deadlines::plant(&self.client, &self.pool).await?;
            self.deadlines = Some(planted);
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault, shutdown: &CancellationToken) -> anyhow::Result<()> {
        match fault {
            Fault::KillConsumer => {
                self.kill_and_restart(KILLED_CONSUMER, CONSUMER_DEAD_FOR, shutdown)
                    .await
            }
            Fault::KillProducer => {
                self.kill_and_restart("producer", PROCESS_DEAD_FOR, shutdown)
                    .await
            }
            Fault::KillSweeper => {
                self.kill_and_restart(super::webhook::SWEEPERS[0], PROCESS_DEAD_FOR, shutdown)
                    .await
            }
            Fault::StopRabbitMq => {
                // The counter restarts with the node: read it right before.
                self.queues.sample_redeliveries().await;
                // The outage counts from when the node stopped taking connections.
                let down_since = self.broker.stop().await?;
                pause(self.outage.saturating_sub(down_since.elapsed()), shutdown).await?;
                self.broker.start().await?;
                self.queues.broker_restarted();
                Ok(())
            }
            Fault::StopPostgres => {
                let down = Utc::now();
                self.database.stop().await?;
                pause(self.outage, shutdown).await?;
                self.database.start().await?;
                if let Some(planted) = &mut self.deadlines {
                    planted.outage = Some((down, Utc::now()));
                }
                Ok(())
            }
            Fault::MemoryAlarm => {
                self.broker.memory_alarm(true).await?;
                pause(self.outage, shutdown).await?;
                self.broker.memory_alarm(false).await
            }
            Fault::WorkQueueDeleted => {
                let deleted = super::work_queue::delete(self.broker, &self.topology).await?;
                eprintln!(
                    "[chaos]          {} messages were ready in the deleted work queue ({} more deleted unrecorded)",
                    deleted.recorded.len(),
                    deleted.unrecorded
                );
                self.removed.extend(deleted.recorded);
                Ok(())
            }
            Fault::SpoolDiskFull => {
                // Callbacks reach the spool only when RabbitMQ cannot take them.
                self.broker.memory_alarm(true).await?;
                pause(SPOOLING_LEAD, shutdown).await?;
                self.spool_disk.fill()?;
                pause(self.outage / 2, shutdown).await?;
                self.spool_disk.free()?;
                pause(self.outage / 2 + SPOOLING_LEAD, shutdown).await?;
                self.broker.memory_alarm(false).await
            }
        }
    }

    async fn kill_and_restart(
        &mut self,
        name: &str,
        dead_for: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        self.pipeline.kill9(name).await?;
        pause(dead_for, shutdown).await?;
        self.pipeline.restart(name)
    }
}

/// Sleeps for `d`, or fails at once when the suite is interrupted.
pub async fn pause(d: Duration, shutdown: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = shutdown.cancelled() => anyhow::bail!("interrupted"),
    }
}
