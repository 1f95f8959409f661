//! Running the consumer: connect (and reconnect) to RabbitMQ and PostgreSQL, consume
//! the work queue, and on shutdown drain in-flight checks within a bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lastseen::amqp::{AmqpError, Broker, no_args};
use lastseen::ops::WorkerOps;
use lastseen::progress::{Reporter, Role, Unsettled};
use lastseen::session::{Session, SessionKeeper};
use lastseen::topology::Topology;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::deadlines::Deadlines;
use crate::delivery::{self, Context};
use crate::orphans::{self, InHand};
use crate::redelivery::RenewPolicy;
use crate::retry::{Retrier, RetryPolicy, attempt_of};
use crate::status::StatusClient;
use crate::writer::LastSeenWriter;

/// A consumer process, built from its configuration.
pub struct Application {
    config: Config,
}

/// What every session of the process shares.
struct Shared {
    config: Config,
    topology: Topology,
    policy: RetryPolicy,
    deadlines: Deadlines,
    status: StatusClient,
    check_slots: Arc<Semaphore>,
    writer: LastSeenWriter,
    tracker: TaskTracker,
    /// True while a session consumes the work queue (for `/readyz`).
    consuming: Arc<AtomicBool>,
    /// The `accepted_at` of every delivery in hand, for the progress reports.
    unsettled: Unsettled,
    reporter: Reporter,
    pool: sqlx::PgPool,
}

impl Application {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Consumes until `shutdown` fires, reconnecting after any RabbitMQ failure, and
    /// stops within [`Config::stop_limit`] of it.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let limit = self.config.stop_limit();
        lastseen::shutdown::bounded(self.run(shutdown.clone()), &shutdown, limit)
            .await
            .unwrap_or(Ok(()))
    }

    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let deadlines = Deadlines::new(config.object_ttl_secs, config.object_stale_after_secs)?;
        let open_files = lastseen::limits::raise_open_files();
        tracing::debug!(open_files, "open-file limit");
        config.tls.check()?;
        let status = StatusClient::new(
            config.status_url.clone(),
            config.status_timeout_ms,
            &config.tls,
        )
        .context("cannot build the status service client")?;
        let ops = WorkerOps::serve(
            config.metrics_addr,
            "not consuming; reconnecting with backoff",
        )
        .await?;
        let Some(pool) = ops
            .connect_database(&config.database, &config.tls, &shutdown)
            .await?
        else {
            return Ok(());
        };
        let abandon = CancellationToken::new();
        let (writer, writer_task) = LastSeenWriter::spawn(
            pool.clone(),
            config.batch_writers as usize,
            config.batch_max_rows as usize,
            config.batch_flush_ms,
            abandon.clone(),
        );
        let unsettled = Unsettled::default();
        let shared = Shared {
            topology: Topology::new(&config.topology),
            policy: RetryPolicy {
                base: config.retry_base_ms,
                max: config.retry_max_ms,
                max_attempts: config.max_attempts,
            },
            deadlines,
            status,
            check_slots: Arc::new(Semaphore::new(config.max_checks_in_flight as usize)),
            writer,
            tracker: TaskTracker::new(),
            consuming: ops.rabbitmq_up(),
            reporter: Reporter::new(
                Reporter::consumer_name(),
                Role::Consumer,
                vec![unsettled.clone()],
            ),
            unsettled,
            pool: pool.clone(),
            config,
        };

        let sessions = SessionKeeper::new(
            Broker::new(&shared.config.amqp.amqp_url, &shared.config.tls),
            "consumer",
            shared.topology.clone(),
        );
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(sessions.clone().run(keeper_stop.clone()));
        // Reports go on until the consume channel is closed (what it had not acked is
        // back in the queue), so deliveries finishing during the shutdown's grace are
        // still reported.
        let reporting_stop = CancellationToken::new();
        let reporting = tokio::spawn(shared.reporter.clone().run(
            sessions.clone(),
            shared.topology.clone(),
            reporting_stop.clone(),
        ));
        // The session before the current one stays open until the current one ends, so
        // work in flight on it can still ack where its connection still works.
        let mut previous: Option<Arc<Session>> = None;
        let mut last_session = None;
        let mut refused = None;
        while let Some(session) = sessions.next(&shutdown).await {
            let consumed = consume(&session, &shared, &shutdown).await;
            shared.consuming.store(false, Ordering::Relaxed);
            match consumed {
                Ok(ctx) => last_session = Some(ctx),
                // A retry queue declared with other arguments: no reconnect can fix that.
                Err(err)
                    if err
                        .downcast_ref::<AmqpError>()
                        .is_some_and(AmqpError::is_fatal) =>
                {
                    refused = Some(err);
                    if let Some(old) = previous.replace(session) {
                        old.close("consumer stopping").await;
                    }
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "RabbitMQ session ended, reconnecting");
                    sessions.broken(&session);
                }
            }
            if let Some(old) = previous.replace(session)
                && !previous.as_ref().is_some_and(|s| Arc::ptr_eq(s, &old))
            {
                old.close("session renewed").await;
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        keeper_stop.cancel();
        // An error no retry can fix (refused credentials, a queue declared with other
        // arguments) ended the keeper: stop like on a signal, then report it.
        if let Ok(Err(err)) = keeper.await {
            refused = Some(err.into());
        }

        // Shutdown: the subscription is cancelled; let in-flight checks commit and ack.
        let Shared {
            config,
            writer,
            tracker,
            ..
        } = shared;
        drop(writer);
        tracker.close();
        let grace = config.shutdown_timeout_ms;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
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
        // The last writer handle is gone with the session: the writer finishes its batch.
        if tokio::time::timeout(grace, writer_task).await.is_err() {
            abandon.cancel();
        }
        // Now every delivery is acked or back in the queue: the last report says so.
        reporting_stop.cancel();
        let _ = reporting.await;
        if let Some(session) = previous {
            session.close("consumer shutting down").await;
        }
        sessions.close("consumer shutting down").await;
        ops.stop().await;
        pool.close().await;
        tracing::info!("consumer stopped");
        match refused {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// The `accepted_at` of a check message's body (`None` if malformed: it is dead-lettered).
fn accepted_at(body: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        accepted_at: chrono::DateTime<chrono::Utc>,
    }
    serde_json::from_slice::<Stamp>(body)
        .ok()
        .map(|stamp| stamp.accepted_at)
}

/// Subscribes to the work queue on `channel`.
async fn subscribe(channel: &lapin::Channel, shared: &Shared) -> anyhow::Result<lapin::Consumer> {
    let consumer = channel
        .basic_consume(
            shared.topology.checks_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await?;
    shared.consuming.store(true, Ordering::Relaxed);
    tracing::info!(queue = %shared.topology.checks_queue, prefetch = shared.config.prefetch, "consuming");
    Ok(consumer)
}

/// One AMQP session: declare, subscribe, dispatch deliveries until the session breaks, a
/// forward to retry fails, or shutdown (a subscription RabbitMQ cancels because the queue
/// was deleted is renewed on the same session). Returns the session (to close it once
/// drained) only on shutdown.
async fn consume(
    session: &Session,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Context>> {
    let channel = session.channel().await?;
    for delay in shared.policy.delays() {
        shared.topology.declare_retry_queue(&channel, delay).await?;
    }
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions::default())
        .await?;
    let ctx = Arc::new(Context {
        channel: channel.clone(),
        status: shared.status.clone(),
        check_slots: shared.check_slots.clone(),
        writer: shared.writer.clone(),
        retrier: Retrier::new(
            session.confirm_channel().await?,
            shared.topology.clone(),
            shared.policy,
        ),
        session_failed: CancellationToken::new(),
        deadlines: shared.deadlines,
        renew: RenewPolicy::new(shared.config.topology.delivery_limit),
        pool: shared.pool.clone(),
    });
    // Any way out but shutdown means the session broke: stop the work of the deliveries
    // of its subscription (RabbitMQ redelivers them). Not those of a subscription
    // RabbitMQ cancelled: their queue is gone, so nothing would redeliver them.
    let mut subscription = CancellationToken::new();
    let mut subscription_ended = subscription.clone().drop_guard();
    // Known to the sweepers, with an alive queue on this connection, before it takes
    // any delivery (see `lastseen::progress`).
    shared
        .reporter
        .declare_alive_queue(session, &shared.topology)
        .await?;
    shared.reporter.announce(session, &shared.topology).await;
    let in_hand = InHand::default();
    let mut consumer = subscribe(&channel, shared).await?;
    let mut resubscribing = lastseen::backoff::Retries::new();
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    resubscribing.succeeded();
                    // Held from the moment it is read, so no progress report misses it. A
                    // retry (attempt 2 on) is not: its ids are held one by one in
                    // PostgreSQL (`crate::holds`), and one failing id must not hold
                    // every object's expiry.
                    let held = (attempt_of(&delivery.properties) == 1)
                        .then(|| accepted_at(&delivery.data))
                        .flatten()
                        .map(|at| shared.unsettled.hold(at));
                    let kept = in_hand.keep(&delivery);
                    let handled =
                        delivery::handle(delivery, ctx.clone(), held, subscription.clone());
                    shared.tracker.spawn(async move {
                        handled.await;
                        drop(kept);
                    });
                }
                Some(Err(err)) => return Err(err.into()),
                // The connection went: the session broke.
                None if !session.is_usable() => {
                    anyhow::bail!("the subscription ended with the connection")
                }
                // RabbitMQ cancelled the subscription but the session is fine: the work
                // queue was deleted, and what this consumer held with it. The queue is
                // declared again at once and every delivery in hand re-published to it
                // (`crate::orphans`); the originals finish too (their acks go nowhere);
                // then the queue is consumed anew.
                None => {
                    shared.consuming.store(false, Ordering::Relaxed);
                    tracing::warn!(queue = %shared.topology.checks_queue, "RabbitMQ cancelled the subscription (was the queue deleted?); declaring it again");
                    subscription = CancellationToken::new();
                    std::mem::replace(&mut subscription_ended, subscription.clone().drop_guard())
                        .disarm();
                    let rehomed = async {
                        session.declare(&shared.topology).await?;
                        orphans::rehome(&in_hand, &ctx.retrier).await?;
                        anyhow::Ok(())
                    };
                    tokio::select! {
                        rehomed = rehomed => rehomed?,
                        () = shutdown.cancelled() => {
                            subscription_ended.disarm();
                            return Ok(ctx);
                        }
                    }
                    if !resubscribing.pause(shutdown).await {
                        subscription_ended.disarm();
                        return Ok(ctx);
                    }
                    session.declare(&shared.topology).await?;
                    consumer = subscribe(&channel, shared).await?;
                }
            },
            () = ctx.session_failed.cancelled() => {
                anyhow::bail!("forwarding a failed check to retry failed; renewing the session")
            }
            () = shutdown.cancelled() => {
                let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                subscription_ended.disarm();
                return Ok(ctx);
            }
        }
    }
}
