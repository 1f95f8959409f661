//! The spool drain: once RabbitMQ answers again, publishes spooled callbacks oldest first
//! with confirms, and removes them from the spool only after RabbitMQ confirmed them.

use std::sync::Arc;
use std::time::Duration;

use lastseen::CheckMessage;
use lastseen::backoff::Retries;
use tokio_util::sync::CancellationToken;

use crate::publisher::{CallbackPublisher, PublishError};
use crate::spool::{Spool, SpoolError};

/// Messages published per drain round (one confirm wait, one spool commit).
const DRAIN_BATCH_MESSAGES: usize = 1_000;

/// How long a drain round may wait for its confirms before it is retried.
const DRAIN_PUBLISH_BOUND: Duration = Duration::from_secs(30);

/// How often the drain looks at the spool when nothing woke it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Why a drain round stopped short; the round is retried after a backoff.
#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Drains the spool into RabbitMQ until `shutdown`. What is left stays in the spool
/// file for the next start.
pub async fn drain_spool(
    spool: Arc<Spool>,
    publisher: Arc<CallbackPublisher>,
    shutdown: CancellationToken,
) {
    let mut retries = Retries::new();
    if spool.pending_callbacks() > 0 {
        tracing::info!(
            callbacks = spool.pending_callbacks(),
            ids = spool.pending_ids(),
            "the spool holds callbacks from an earlier run; draining them"
        );
    }
    while !shutdown.is_cancelled() {
        if spool.pending_callbacks() == 0 || !publisher.is_connected() {
            tokio::select! {
                () = spool.appended.notified() => {}
                () = tokio::time::sleep(if spool.pending_callbacks() == 0 { IDLE_CHECK } else { Duration::from_millis(200) }) => {}
                () = shutdown.cancelled() => break,
            }
            continue;
        }
        match drain_round(&spool, &publisher).await {
            Ok(callbacks) => {
                retries.succeeded();
                tracing::info!(
                    callbacks,
                    left = spool.pending_callbacks(),
                    "published spooled callbacks"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "draining the spool failed; retrying");
                if !retries.pause(&shutdown).await {
                    break;
                }
            }
        }
    }
}

/// Publishes the oldest spooled callbacks and removes them once confirmed.
async fn drain_round(spool: &Spool, publisher: &CallbackPublisher) -> Result<usize, DrainError> {
    let batch = spool.oldest(DRAIN_BATCH_MESSAGES).await?;
    let messages: Vec<CheckMessage> = batch
        .iter()
        .flat_map(|callback| callback.messages.iter().cloned())
        .collect();
    publisher
        .publish_spooled(&messages, DRAIN_PUBLISH_BOUND)
        .await?;
    spool.remove(&batch).await?;
    Ok(batch.len())
}
