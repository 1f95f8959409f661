//! Running the sweeper: sweep when the next deadline is due, relay the outbox, and on
//! shutdown finish the current batch.

use lastseen::contract::metric;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lastseen::ops::WorkerOps;
use lastseen::session::SessionKeeper;
use lastseen::store::notifications;
use lastseen::topology::Topology;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::expiry;
use crate::relay::Relay;
use crate::retention;
use crate::webhook::{self, WebhookSettings};

/// Pause after a failed round, so an outage is retried without spinning.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How often the relay looks for pending notifications when no sweep woke it.
const RELAY_POLL: Duration = Duration::from_millis(100);

/// How often the `notifications_pending` gauge is refreshed.
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

    /// Sweeps and relays until `shutdown` fires; a round in progress is finished first.
    /// Stops the same way, and returns the error, when RabbitMQ refuses the settings.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        // Cancelled by the signal, or by the relay when no retry can fix its error.
        let shutdown = shutdown.child_token();
        let ops = WorkerOps::serve(
            config.metrics_addr,
            "the notification relay is not connected",
        )
        .await?;
        let Some(pool) = ops.connect_database(&config.database, &shutdown).await? else {
            return Ok(());
        };
        let topology = Topology::new(&config.topology);
        let sessions = SessionKeeper::new(&config.amqp.amqp_url, "sweeper", topology.clone());
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
        let relay = Relay::new(
            sessions,
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
            ops.rabbitmq_up(),
            shutdown.clone(),
        ));
        let webhook_task = webhook_settings(&config)
            .map(|settings| tokio::spawn(webhook::run(settings, pool.clone(), shutdown.clone())));
        let retention_task = tokio::spawn(retention::run(
            pool.clone(),
            Duration::from_secs(config.notification_retention_secs),
            shutdown.clone(),
        ));
        tracing::info!("sweeper running");
        while !shutdown.is_cancelled() {
            let mut failed = false;
            match expiry::sweep(&pool, config.sweep_batch).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(expired = n, "objects expired");
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
                expiry::pause_before_next(&pool, config.sweep_interval_ms)
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
        let _ = retention_task.await;
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        ops.stop().await;
        pool.close().await;
        tracing::info!("sweeper stopped");
        match keeper.await {
            Ok(Err(refused)) => Err(refused.into()),
            _ => Ok(()),
        }
    }
}

/// The webhook's settings, when `NOTIFY_WEBHOOK_URL` is set.
fn webhook_settings(config: &Config) -> Option<WebhookSettings> {
    let url = config.notify_webhook_url.clone()?;
    Some(WebhookSettings {
        url,
        // clap requires the secret with the URL.
        key: config
            .notify_webhook_secret
            .clone()
            .map(|key| key.0)
            .unwrap_or_default(),
        max_attempts: config.notify_webhook_max_attempts,
        timeout: config.notify_webhook_timeout_ms,
        retry_base: config.notify_webhook_retry_base_ms,
    })
}

/// Publishes the outbox until `shutdown`: right after a sweep expired something, and
/// every [`RELAY_POLL`] otherwise (another sweeper's rows, rows of consumers'
/// `object.online`, rows left by a crash).
async fn relay_outbox(
    mut relay: Relay,
    pool: PgPool,
    expired: Arc<Notify>,
    connected: Arc<AtomicBool>,
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
        connected.store(relay.is_connected(), Ordering::Relaxed);
        // Counting is a scan of the pending rows: at most once a second, not every poll.
        if last_count.elapsed() >= PENDING_GAUGE_EVERY {
            last_count = tokio::time::Instant::now();
            if let Ok(pending) = notifications::count_pending(&pool).await {
                metrics::gauge!(metric::NOTIFICATIONS_PENDING).set(pending as f64);
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
