//! Running the sweeper: sweep when the next deadline is due, relay the outbox, and on
//! shutdown finish the current batch.

use lastseen::contract::metric;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use lastseen::amqp::Broker;
use lastseen::ops::WorkerOps;
use lastseen::session::SessionKeeper;
use lastseen::store::{notifications, objects};
use lastseen::topology::Topology;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::expiry;
use crate::lagging::Announcer;
use crate::relay::Relay;
use crate::retention;
use crate::watermark::Watermark;
use crate::webhook::{self, WebhookSettings};

/// Pause after a failed round, so an outage is retried without spinning.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How often the relay looks for pending notifications when no sweep woke it.
const RELAY_POLL: Duration = Duration::from_millis(100);

/// How often the `notifications_pending` and `objects_stale` gauges are refreshed.
const PENDING_GAUGE_EVERY: Duration = Duration::from_secs(1);

/// Longest a relay round may take (connect, publish, confirms) before it is abandoned.
const RELAY_ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// A sweeper process, built from its configuration.
pub struct Application {
    config: Config,
}

impl Application {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Sweeps and relays until `shutdown` fires; the transactions and webhook requests
    /// in progress are finished first, and the sweeper stops within
    /// [`Config::stop_limit`] of it. Stops the same way, and returns the error, when
    /// RabbitMQ refuses the settings.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let limit = self.config.stop_limit();
        lastseen::shutdown::bounded(self.run(shutdown.clone()), &shutdown, limit)
            .await
            .unwrap_or(Ok(()))
    }

    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        // Cancelled by the signal, or by the relay when no retry can fix its error.
        let shutdown = shutdown.child_token();
        config.tls.check()?;
        let webhook = webhook_settings(&config)?;
        let ops = WorkerOps::serve(
            config.metrics_addr,
            "the notification relay is not connected",
        )
        .await?;
        let Some(pool) = ops
            .connect_database(&config.database, &config.tls, &shutdown)
            .await?
        else {
            return Ok(());
        };
        let topology = Topology::new(&config.topology);
        let sessions = SessionKeeper::new(
            Broker::new(&config.amqp.amqp_url, &config.tls),
            "sweeper",
            topology.clone(),
        );
        // An error no retry can fix (refused credentials) stops the sweeper like a signal.
        let keeper = tokio::spawn({
            let (sessions, shutdown) = (sessions.clone(), shutdown.clone());
            async move {
                let kept = sessions.run(shutdown.clone()).await;
                if kept.is_err() {
                    shutdown.cancel();
                }
                kept
            }
        });
        let max_hold = Duration::from_secs(config.max_expiry_hold_secs);
        let watermark = Watermark::new(max_hold);
        ops.tell({
            let watermark = watermark.clone();
            let alert_after = config.expiry_hold_alert_secs as f64;
            Arc::new(move || watermark.readiness(alert_after))
        });
        // Who was heard before this start holds expiry too, until heard again or gone.
        watermark.recall(&pool).await;
        let remember_task =
            tokio::spawn(watermark.clone().remember(pool.clone(), shutdown.clone()));
        let watermark_task = tokio::spawn(watermark.clone().follow(
            sessions.clone(),
            topology.clone(),
            shutdown.clone(),
        ));
        let mut announcer = Announcer::new(Duration::from_secs(config.expiry_hold_alert_secs));
        let relay = Relay::new(
            sessions.clone(),
            topology,
            config.relay_batch,
            config.notify_webhook_url.is_some(),
        );
        // The relay runs beside expiry: publishing never delays the next sweep, and a
        // slow or blocked broker never stops expiry.
        let expired = Arc::new(Notify::new());
        let relay_task = tokio::spawn(relay_outbox(
            relay,
            pool.clone(),
            expired.clone(),
            shutdown.clone(),
        ));
        let readiness_task = tokio::spawn(follow_session(
            sessions.clone(),
            ops.rabbitmq_up(),
            shutdown.clone(),
        ));
        let webhook_task = webhook
            .map(|settings| tokio::spawn(webhook::run(settings, pool.clone(), shutdown.clone())));
        let retention_task = tokio::spawn(retention::run(
            pool.clone(),
            retention::Retention {
                notifications: Duration::from_secs(config.notification_retention_secs),
                history: config
                    .history_retention_days
                    .map(|days| Duration::from_secs(u64::from(days) * 86_400)),
                max_hold,
            },
            shutdown.clone(),
        ));
        tracing::info!("sweeper running");
        while !shutdown.is_cancelled() {
            let mut failed = false;
            if let Err(err) = announcer.update(&pool, &watermark.judgement()).await {
                tracing::warn!(error = %err, "cannot record whether expiry is held; will retry");
            }
            let swept = watermark.judgement().before;
            match expiry::sweep(
                &pool,
                config.sweep_batch,
                config.sweep_workers,
                &watermark,
                max_hold,
                &shutdown,
            )
            .await
            {
                Ok((0, 0)) => {}
                Ok((stale, n)) => {
                    if stale > 0 {
                        tracing::info!(stale, "objects marked stale");
                    }
                    if n > 0 {
                        tracing::info!(expired = n, "objects expired");
                    }
                    expired.notify_one();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "sweep failed");
                    failed = true;
                }
            }
            let pause = if failed {
                ERROR_PAUSE
            } else {
                expiry::pause_before_next(
                    &pool,
                    config.sweep_interval_ms,
                    swept,
                    watermark.judgement().before,
                )
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cannot read the next deadline");
                    ERROR_PAUSE
                })
            };
            tracing::trace!(?pause, "sleeping until the next sweep");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => {}
            }
        }
        let _ = relay_task.await;
        let _ = readiness_task.await;
        let _ = watermark_task.await;
        let _ = remember_task.await;
        let _ = retention_task.await;
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        // The keeper has stopped (it opens no session after this), and every channel on
        // the session is closed by now.
        let kept = keeper.await;
        sessions.close("sweeper shutting down").await;
        ops.stop().await;
        pool.close().await;
        tracing::info!("sweeper stopped");
        match kept {
            Ok(Err(refused)) => Err(refused.into()),
            _ => Ok(()),
        }
    }
}

/// The webhook's settings, when `NOTIFY_WEBHOOK_URL` is set; a TLS setting its client
/// refuses is an error.
fn webhook_settings(config: &Config) -> anyhow::Result<Option<WebhookSettings>> {
    let Some(url) = config.notify_webhook_url.clone() else {
        return Ok(None);
    };
    let client = config
        .tls
        .http_client()?
        .timeout(config.notify_webhook_timeout_ms)
        .build()
        .context("cannot build the webhook client")?;
    Ok(Some(WebhookSettings {
        url,
        client,
        // clap requires the secret with the URL.
        key: config
            .notify_webhook_secret
            .clone()
            .map(|key| key.0)
            .unwrap_or_default(),
        max_attempts: config.notify_webhook_max_attempts,
        timeout: config.notify_webhook_timeout_ms,
        retry_base: config.notify_webhook_retry_base_ms,
    }))
}

/// How often `/readyz` looks at the RabbitMQ session.
const READINESS_EVERY: Duration = Duration::from_millis(250);

/// Keeps `connected` (RabbitMQ's part of `/readyz`) equal to whether the sweeper has a
/// usable session, until `shutdown`: the session itself, not the relay's last round,
/// which may be seconds old (the relay pauses between rounds, longer after a failure).
async fn follow_session(
    sessions: Arc<SessionKeeper>,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        connected.store(sessions.current().is_some(), Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(READINESS_EVERY) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// Publishes the outbox until `shutdown`: right after a sweep expired something, and
/// every [`RELAY_POLL`] otherwise (another sweeper's rows, rows of consumers'
/// `object.online`, rows left by a crash).
async fn relay_outbox(
    mut relay: Relay,
    pool: PgPool,
    expired: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut last_count = tokio::time::Instant::now() - PENDING_GAUGE_EVERY;
    while !shutdown.is_cancelled() {
        // Each round is bounded, and the whole is abandoned on shutdown: a blocked broker
        // (memory or disk alarm) must not hold shutdown. Unconfirmed rows stay pending.
        let relayed = tokio::select! {
            r = relay.drain(&pool, RELAY_ROUND_TIMEOUT) => r,
            () = shutdown.cancelled() => break,
        };
        let mut failed = false;
        match relayed {
            Ok(0) => {}
            Ok(n) => tracing::debug!(published = n, "notifications published"),
            Err(err) => {
                tracing::warn!(error = %err, "notification relay failed; will retry");
                failed = true;
            }
        }
        // Counting is a scan of the pending (and the stale) rows: at most once a second,
        // not every poll.
        if last_count.elapsed() >= PENDING_GAUGE_EVERY {
            last_count = tokio::time::Instant::now();
            if let Ok(pending) = notifications::count_pending(&pool).await {
                metrics::gauge!(metric::NOTIFICATIONS_PENDING).set(pending as f64);
            }
            if let Ok(stale) = objects::stale_count(&pool).await {
                metrics::gauge!(metric::OBJECTS_STALE).set(stale as f64);
            }
        }
        let pause = if failed { ERROR_PAUSE } else { RELAY_POLL };
        tokio::select! {
            () = expired.notified(), if !failed => {}
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => break,
        }
    }
    relay.close().await;
}
