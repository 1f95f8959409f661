//! Building the producer from its configuration and running it until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use lastseen::topology::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::publisher::CallbackPublisher;
use crate::routes::{self, AppState};

/// Bound on a whole request, so no client holds a connection's resources forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for in-flight callbacks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A producer bound to its port, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    publisher: Arc<CallbackPublisher>,
    keeper: tokio::task::JoinHandle<()>,
    keeper_stop: CancellationToken,
}

impl Application {
    /// Binds the listener. RabbitMQ need not be up: callbacks get 503 until it is.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let topology = Topology::new(&config.topology);
        let publisher = CallbackPublisher::new(
            config.amqp.amqp_url.clone(),
            topology,
            config.publish_channels as usize,
        );
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(publisher.clone().keep_connected(keeper_stop.clone()));
        // Give the first connection a moment, so the first callbacks find it ready.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !publisher.is_connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !publisher.is_connected() {
            tracing::warn!("RabbitMQ is not reachable yet; callbacks get 503 until it is");
        }
        let state = Arc::new(AppState {
            publisher: publisher.clone(),
            ids_per_message: config.ids_per_message as usize,
            publish_timeout: config.publish_timeout_ms,
            max_body_bytes: config.max_body_bytes,
        });
        let body_limit = usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX);
        let router = Router::new()
            .route("/callback", post(routes::callback))
            .route("/healthz", get(routes::healthz))
            .route("/readyz", get(routes::readyz))
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(RequestBodyTimeoutLayer::new(config.request_body_timeout_ms))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
            ))
            .layer(TraceLayer::new_for_http())
            .with_state(state);
        let listener = TcpListener::bind(config.callback_addr)
            .await
            .with_context(|| format!("cannot listen on CALLBACK_ADDR {}", config.callback_addr))?;
        Ok(Self {
            listener,
            router,
            publisher,
            keeper,
            keeper_stop,
        })
    }

    /// The port actually bound (useful with port 0 in tests).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` fires, then finishes in-flight callbacks and closes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "producer listening");
        let stopping = shutdown.clone();
        let server = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stopping.cancelled().await });
        tokio::select! {
            result = server => result.context("HTTP server failed")?,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!("in-flight callbacks did not finish within the grace period"),
        }
        self.keeper_stop.cancel();
        let _ = self.keeper.await;
        self.publisher.close().await;
        tracing::info!("producer stopped");
        Ok(())
    }
}
