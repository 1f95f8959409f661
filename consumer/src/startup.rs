//! Running the consumer: connect (and reconnect) to RabbitMQ and PostgreSQL, consume
//! the work queue, and on shutdown drain in-flight checks within a bound.

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lastseen::amqp::{self, no_args};
use lastseen::topology::Topology;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::delivery::{self, Context};
use crate::retry::{Retrier, RetryPolicy};
use crate::status::StatusClient;
use crate::writer::LastSeenWriter;

/// A consumer process, built from its configuration.
pub struct Application {
    config: Config,
}

impl Application {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Consumes until `shutdown` fires, reconnecting after any RabbitMQ failure.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let open_files = lastseen::limits::raise_open_files();
        tracing::debug!(open_files, "open-file limit");
        let status = StatusClient::new(config.status_url.clone(), config.status_timeout_ms)
            .context("cannot build the status service client")?;
        let pool = match lastseen::db::connect_and_migrate(&config.database, &shutdown).await {
            Ok(pool) => pool,
            Err(lastseen::db::DbError::Cancelled) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        let topology = Topology::new(&config.topology);
        let policy = RetryPolicy {
            base: config.retry_base_ms,
            max: config.retry_max_ms,
            max_attempts: config.max_attempts,
        };
        let tracker = TaskTracker::new();
        let abandon = CancellationToken::new();
        let writer = LastSeenWriter::spawn(
            pool.clone(),
            config.batch_max_rows as usize,
            config.batch_flush_ms,
            abandon.clone(),
            &tracker,
        );

        let check_slots = Arc::new(tokio::sync::Semaphore::new(
            config.max_checks_in_flight as usize,
        ));
        let mut connection = None;
        let mut last_session = None;
        while !shutdown.is_cancelled() {
            let conn = match amqp::connect_with_retry(&config.amqp.amqp_url, "consumer", &shutdown)
                .await
            {
                Ok(conn) => conn,
                Err(amqp::AmqpError::Cancelled) => break,
                Err(err) => return Err(err.into()),
            };
            match consume(
                &conn,
                &config,
                &topology,
                policy,
                &status,
                &check_slots,
                &writer,
                &tracker,
                &shutdown,
            )
            .await
            {
                Ok(session) => last_session = Some(session),
                Err(err) => tracing::warn!(error = %err, "RabbitMQ session ended, reconnecting"),
            }
            connection = Some(conn);
            if !shutdown.is_cancelled() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }

        // Shutdown: the subscription is cancelled; let in-flight checks commit and ack.
        drop(writer);
        tracker.close();
        if tokio::time::timeout(config.shutdown_timeout_ms, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight checks did not finish in time; they will be redelivered");
            abandon.cancel();
        }
        if let Some(session) = last_session {
            let _ = session
                .channel
                .close(200, "consumer shutting down".into())
                .await;
            let _ = session
                .retrier
                .channel
                .close(200, "consumer shutting down".into())
                .await;
        }
        if let Some(conn) = connection {
            let _ = conn.close(200, "consumer shutting down".into()).await;
        }
        pool.close().await;
        tracing::info!("consumer stopped");
        Ok(())
    }
}

/// One AMQP session: declare, subscribe, dispatch deliveries until the stream ends or
/// shutdown; returns `Ok` (with the session, to close it once drained) only on shutdown.
#[allow(clippy::too_many_arguments)]
async fn consume(
    conn: &lapin::Connection,
    config: &Config,
    topology: &Topology,
    policy: RetryPolicy,
    status: &StatusClient,
    check_slots: &Arc<tokio::sync::Semaphore>,
    writer: &LastSeenWriter,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Context>> {
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    for delay in policy.delays() {
        topology.declare_retry_queue(&channel, delay).await?;
    }
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let ctx = Arc::new(Context {
        channel: channel.clone(),
        status: status.clone(),
        check_slots: check_slots.clone(),
        writer: writer.clone(),
        retrier: Retrier {
            channel: amqp::confirm_channel(conn).await?,
            topology: topology.clone(),
            policy,
        },
    });
    let mut consumer = channel
        .basic_consume(
            topology.checks_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await?;
    tracing::info!(queue = %topology.checks_queue, prefetch = config.prefetch, "consuming");
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tracker.spawn(delivery::handle(delivery, ctx.clone()));
                }
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("the subscription was closed by RabbitMQ"),
            },
            () = shutdown.cancelled() => {
                let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                return Ok(ctx);
            }
        }
    }
}
