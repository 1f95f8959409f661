//! Shutdown: one `CancellationToken` per process, cancelled on SIGTERM or SIGINT, that
//! every long-running task watches, and a stop limit past which a service stops whatever
//! it still waits for.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT (Ctrl-C).
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop this process with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
        trigger.cancel();
    });
    token
}

/// What a service's stop limit allows beyond the grace it gives its work in flight: for
/// closing its connections and its last report.
pub const STOP_MARGIN: Duration = Duration::from_secs(3);

/// Runs a service to its end, but no longer than `limit` after `shutdown` fired: a stop
/// that waits on a peer gone silent (RabbitMQ answering nothing holds a channel's close
/// until the heartbeat gives up, ~20 s) is cut off there, so a supervisor's grace (or an
/// operator) is not left waiting. Nothing is lost by it: messages not acked go back to
/// their queue, transactions not committed roll back, outbox rows not marked stay
/// pending, spooled callbacks stay in the spool. Returns `None` when cut off.
pub async fn bounded<T>(
    run: impl Future<Output = T>,
    shutdown: &CancellationToken,
    limit: Duration,
) -> Option<T> {
    tokio::select! {
        ended = run => Some(ended),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(limit).await;
        } => {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "not stopped within the stop limit; stopping now (what is unfinished is delivered again)"
            );
            None
        }
    }
}
