//! Running the sweeper: sweep when the next deadline is due, relay the outbox, and on
//! shutdown finish the current batch.

use std::time::Duration;

use chrono::Utc;
use lastseen::topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::expiry;
use crate::relay::Relay;

/// Pause after a failed round, so an outage is retried without spinning.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

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
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let ttl = Duration::from_secs(u64::from(config.object_ttl_secs));
        let pool = match lastseen::db::connect_and_migrate(&config.database, &shutdown).await {
            Ok(pool) => pool,
            Err(lastseen::db::DbError::Cancelled) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        let mut relay = Relay::new(
            config.amqp.amqp_url.clone(),
            Topology::new(&config.topology),
            config.relay_batch,
        );
        tracing::info!(ttl_secs = config.object_ttl_secs, "sweeper running");
        while !shutdown.is_cancelled() {
            let mut failed = false;
            match expiry::sweep(&pool, ttl, config.sweep_batch, Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "objects expired"),
                Err(err) => {
                    tracing::warn!(error = %err, "sweep failed");
                    failed = true;
                }
            }
            // Bounded, and abandoned on shutdown: a blocked broker (memory or disk alarm)
            // must not stop expiry or shutdown. Unconfirmed rows stay pending.
            let relayed = tokio::select! {
                r = tokio::time::timeout(RELAY_ROUND_TIMEOUT, relay.drain(&pool)) => r,
                () = shutdown.cancelled() => break,
            };
            match relayed {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(published = n, "notifications published"),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "notification relay failed; will retry");
                    failed = true;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?RELAY_ROUND_TIMEOUT, "notification relay timed out; reconnecting");
                    relay.reset();
                    failed = true;
                }
            }
            let pause = if failed {
                ERROR_PAUSE
            } else {
                expiry::pause_before_next(&pool, ttl, config.sweep_interval_ms)
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
        relay.close().await;
        pool.close().await;
        tracing::info!("sweeper stopped");
        Ok(())
    }
}
