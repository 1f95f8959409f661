//! The failover scenario's phases, in order: the PostgreSQL cluster and the pipeline
//! started, the load, two kills of the primary (each with its takeover and the old
//! primary's return as the standby), the drain, and what the verdict needs collected.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::FailoverArgs;
use super::patroni::{MEMBERS, PgCluster};
use super::report::{FailoverRecord, FailoverResult};
use crate::chaos::deadlines::{self, Planted};
use crate::chaos::faults::pause;
use crate::chaos::queues::QueueWatch;
use crate::chaos::recovery::RECOVERY_LIMIT;
use crate::cluster::report::Window;
use crate::pipeline::{CONSUMERS, Ending, Layout, Load};
use crate::process::Supervisor;
use tester::callback::{CallbackClient, ORIGINAL_TIMEOUT};

/// Prefix of the run's queues and exchanges.
pub const PREFIX: &str = "failover";
/// The run's database, made afresh through HAProxy.
const DATABASE: &str = "lastseen_failover";
/// Longest wait for the consumers to subscribe after their start.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for a restarted member to be the synchronous standby again.
const REJOIN_LIMIT: Duration = Duration::from_secs(120);

/// What a run works with.
pub struct Setup<'a> {
    pub args: &'a FailoverArgs,
    pub logs: &'a Path,
}

impl Setup<'_> {
    /// Runs every phase up to the verdict; teardown is the caller's.
    pub async fn run(
        &self,
        cluster: &mut PgCluster,
        pipeline: &mut Supervisor,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<FailoverResult> {
        cluster.start().await?;
        let database_url = cluster.database_url(DATABASE);
        let pool = crate::database::fresh(&database_url, "the cluster's database").await?;
        crate::broker_admin::delete_local_queues(&self.args.amqp_url, PREFIX).await;
        let layout = Layout {
            database_url: &database_url,
            prefix: PREFIX,
            callback_port: self.args.callback_port,
            status_port: self.args.status_port,
            logs: self.logs,
        };
        layout
            .start(pipeline, &|_| self.args.amqp_url.clone())
            .await?;
        let queues = QueueWatch::new(&self.args.amqp_url, &self.args.management_url, PREFIX)?
            .with_spools(layout.producer_ports());
        queues
            .wait_consumers(CONSUMERS.len() as u64, READY_LIMIT)
            .await?;
        eprintln!(
            "[failover] cluster and pipeline up after {:.0} s (pg1 primary, pg2 synchronous standby); load and kills begin",
            started.elapsed().as_secs_f64()
        );

        let batch_client =
            CallbackClient::new(layout.callback_urls()[1].clone(), ORIGINAL_TIMEOUT)?;
        let mut load = Load::start(
            &layout,
            self.args.rate,
            self.args.max_ids,
            self.args.id_space,
            &pool,
        )?;
        let kills = self
            .kills(cluster, &load, &batch_client, &pool, shutdown)
            .await;
        let run = load.stop(self.args.rate).await?;
        let (kills, planted) = kills?;
        eprintln!(
            "[failover] +{:>5.1} s  load stopped; draining",
            run.load_secs
        );
        let ending = Ending {
            queues: &queues,
            amqp_url: &self.args.amqp_url,
            prefix: PREFIX,
            drain: Duration::from_secs(self.args.drain_secs),
            logs: self.logs,
            tag: "[failover]",
        };
        let outcome = ending.collect(pipeline, &pool, &load).await?;
        let deadline_verdict = deadlines::verify(&planted, &pool, &outcome.dead_letters).await?;
        pool.close().await;
        Ok(FailoverResult {
            run,
            kills,
            deadlines: deadline_verdict,
            outcome,
        })
    }

    /// The kills, each preceded by a settle time; the first with the deadline batch due
    /// just after it.
    async fn kills(
        &self,
        cluster: &mut PgCluster,
        load: &Load,
        batch_client: &CallbackClient,
        pool: &sqlx::PgPool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Vec<FailoverRecord>, Planted)> {
        let settle = Duration::from_secs(self.args.settle_secs);
        let down = Duration::from_secs(self.args.down_secs);
        let mut records = Vec::new();
        let mut planted = None;
        for kill in 0..self.args.kills {
            pause(settle, shutdown).await?;
            if kill == 0 {
                eprintln!(
                    "[failover] +{:>5.1} s  deadline batch sent; waiting until just before its deadlines",
                    load.at()
                );
                planted = Some(deadlines::plant(batch_client, pool).await?);
            }
            let victim = cluster.primary().await.ok_or_else(|| {
                anyhow::anyhow!("no member is the primary before kill {}", kill + 1)
            })?;
            let survivor = (victim + 1) % MEMBERS;
            anyhow::ensure!(
                cluster.has_role(survivor, "sync").await,
                "{} is not the synchronous standby before kill {}",
                cluster.member_name(survivor),
                kill + 1
            );
            let before = load.truth.counts();
            let at = load.at();
            eprintln!(
                "[failover] +{at:>5.1} s  kill -9 the primary {} (Patroni and postmaster)",
                cluster.member_name(victim)
            );
            let down_at = Utc::now();
            let began = Instant::now();
            cluster.kill9(victim).await?;
            let (writable, working) = tokio::join!(
                cluster.wait_writable(RECOVERY_LIMIT),
                load.prober.measure(began)
            );
            let writable = writable.ok();
            if kill == 0
                && let Some(planted) = &mut planted
            {
                let up_at =
                    down_at + chrono::Duration::from_std(writable.unwrap_or(RECOVERY_LIMIT))?;
                planted.outage = Some((down_at, up_at));
            }
            let promoted = cluster.primary().await;
            tokio::time::sleep_until((began + down).into()).await;
            eprintln!(
                "[failover] +{:>5.1} s  {} started again",
                load.at(),
                cluster.member_name(victim)
            );
            cluster.restart(victim)?;
            let rejoined = cluster.wait_role(victim, "sync", REJOIN_LIMIT).await.ok();
            let record = FailoverRecord {
                killed: cluster.member_name(victim).to_owned(),
                promoted: promoted.map_or("none".to_owned(), |m| cluster.member_name(m).to_owned()),
                at_secs: at,
                writable_after_secs: writable.map(|d| d.as_secs_f64()),
                working_after_secs: working.map(|d| d.as_secs_f64()),
                rejoined_after_secs: rejoined.map(|d| d.as_secs_f64()),
                callbacks: Window::between(&before, &load.truth.counts()),
            };
            eprintln!(
                "[failover]          {} killed, {} promoted: writable after {}, pipeline working after {}; {} the synchronous standby {} after its restart; callbacks {} direct, {} spooled, {} refused, {} unanswered",
                record.killed,
                record.promoted,
                crate::pipeline::secs(record.writable_after_secs),
                crate::pipeline::secs(record.working_after_secs),
                record.killed,
                crate::pipeline::secs(record.rejoined_after_secs),
                record.callbacks.direct,
                record.callbacks.spooled,
                record.callbacks.refused,
                record.callbacks.unanswered,
            );
            records.push(record);
        }
        pause(settle, shutdown).await?;
        let planted = planted.ok_or_else(|| anyhow::anyhow!("no deadline batch was sent"))?;
        Ok((records, planted))
    }
}
