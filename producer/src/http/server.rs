//! Serving HTTP/1.1 connections: what `axum::serve` does, plus a bound on the time a
//! client may take to send its request headers, which `axum::serve` (axum 0.8) has no way
//! to set (without it, a client that sends part of its headers and stalls, or trickles
//! them (slowloris), holds a connection and its task forever), and a bound on the
//! connections open at once: one beyond it is answered 503 `overloaded` and closed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::error::CallbackError;

/// Pause after an accept error that is not one client's fault (such as running out of file
/// descriptors), so the accept loop does not spin while it lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting, lets every
/// open connection finish its request in flight, and returns once all are closed.
///
/// A connection whose request headers are not complete within `header_read_timeout` of the
/// first byte it is expected to send (also between keep-alive requests) is closed. At most
/// `max_connections` are served at once; one more gets 503 to its first request and is
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut refusing = http.clone();
    refusing.keep_alive(false);
    let open = Arc::new(Semaphore::new(max_connections));
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) if is_one_clients_error(&err) => continue,
                Err(err) => {
                    tracing::error!(error = %err, "cannot accept connections; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            let overloaded = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(CallbackError::Overloaded.into_response())
            });
            let connection = refusing.serve_connection(TokioIo::new(stream), overloaded);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(header_read_timeout * 2, connection).await;
            });
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Errors that concern only the connection being accepted: skip it and go on.
fn is_one_clients_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
