//! Building the producer from its configuration and running it until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use lastseen::amqp::Broker;
use lastseen::progress::{Reporter, Role, Unsettled};
use lastseen::session::SessionKeeper;
use lastseen::topology::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::drain::drain_spool;
use crate::http::{self, AppState};
use crate::publisher::CallbackPublisher;
use crate::spool::Spool;

/// How long shutdown waits for in-flight callbacks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Longest stop after the signal: the grace, then closing (a spooled callback the drain
/// was publishing stays in the spool, published again on the next start).
pub const STOP_LIMIT: Duration = SHUTDOWN_GRACE.saturating_add(lastseen::shutdown::STOP_MARGIN);

/// A producer bound to its port, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    publisher: Arc<CallbackPublisher>,
    spool: Arc<Spool>,
    keeper: tokio::task::JoinHandle<Result<(), lastseen::amqp::AmqpError>>,
    drain: tokio::task::JoinHandle<()>,
    keeper_stop: CancellationToken,
    reporting: tokio::task::JoinHandle<()>,
    reporting_stop: CancellationToken,
    header_read_timeout: Duration,
    max_connections: usize,
    /// Ends the read API's live streams, so shutdown need not wait for their clients.
    reads_stop: CancellationToken,
}

impl Application {
    /// Opens the spool and binds the listener. RabbitMQ need not be up: callbacks go to
    /// the spool until it is.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.max_body_bytes_in_flight < config.max_body_bytes {
            return Err(lastseen::config::Misconfigured {
                setting: "MAX_BODY_BYTES_IN_FLIGHT",
                reason: format!(
                    "{} is below MAX_BODY_BYTES ({}): a callback of the largest size could never be read",
                    config.max_body_bytes_in_flight, config.max_body_bytes
                ),
            }
            .into());
        }
        config.tls.check()?;
        let keys = http::ApiKeys::new(
            config.callback_api_keys.as_deref(),
            config.callback_api_keys_file.as_deref(),
        )?;
        tracing::info!(
            api_keys = keys.required(),
            "{}",
            if keys.required() {
                "callbacks need an API key"
            } else {
                "callbacks need no API key"
            }
        );
        // Installed before anything is counted; served at /metrics.
        lastseen::ops::metrics_handle();
        let spool = Arc::new(Spool::open(&config.spool_path, config.spool_max_ids)?);
        let listener = TcpListener::bind(config.callback_addr)
            .await
            .with_context(|| format!("cannot listen on CALLBACK_ADDR {}", config.callback_addr))?;
        // Named by its address, so admins tell the producers of a host apart in the
        // management UI.
        let name = match listener.local_addr() {
            Ok(addr) => format!("producer {addr}"),
            Err(_) => "producer".to_owned(),
        };
        let topology = Topology::new(&config.topology);
        let session = SessionKeeper::new(
            Broker::new(&config.amqp.amqp_url, &config.tls),
            &name,
            topology.clone(),
        );
        let publisher = CallbackPublisher::new(
            session.clone(),
            topology.clone(),
            config.publish_channels as usize,
        );
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(session.clone().run(keeper_stop.clone()));
        // Give the first connection a moment, so the first callbacks find it ready.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !publisher.is_connected()
            && !keeper.is_finished()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !publisher.is_connected() {
            tracing::warn!("RabbitMQ is not reachable yet; callbacks go to the spool until it is");
        }
        // Callbacks in hand (being published or spooled) and the spool's, reported for
        // the sweepers' watermark.
        let in_hand = Unsettled::default();
        let reporter = Reporter::new(
            Reporter::producer_name(&config.spool_path),
            Role::Producer,
            vec![in_hand.clone(), spool.accepted()],
        );
        // Known to the sweepers before it takes a callback, when RabbitMQ is there.
        if let Some(current) = session.current() {
            reporter.announce(&current, &topology).await;
        }
        let reporting_stop = CancellationToken::new();
        let reporting = tokio::spawn(reporter.clone().run(
            session.clone(),
            topology.clone(),
            reporting_stop.clone(),
        ));
        let drain = tokio::spawn(drain_spool(
            spool.clone(),
            publisher.clone(),
            keeper_stop.clone(),
        ));
        let reads_stop = CancellationToken::new();
        let reads = match &config.read_database_url {
            Some(url) => {
                let pool = lastseen::db::read_pool(
                    url,
                    &config.tls,
                    config.read_database_max_connections,
                )?;
                Some(http::ReadApi {
                    dashboard: crate::dashboard::Dashboard::new(
                        pool.clone(),
                        spool.clone(),
                        session.clone(),
                        topology.checks_queue.clone(),
                        reads_stop.clone(),
                    ),
                    pool,
                    streams: Arc::new(tokio::sync::Semaphore::new(
                        config.read_max_streams as usize,
                    )),
                    shutdown: reads_stop.clone(),
                })
            }
            None => None,
        };
        tracing::info!(
            read_api = reads.is_some(),
            "read API {}",
            if reads.is_some() {
                "on"
            } else {
                "off (READ_DATABASE_URL unset)"
            }
        );
        let router = http::router(
            AppState {
                publisher: publisher.clone(),
                spool: spool.clone(),
                in_hand,
                ids_per_message: config.ids_per_message as usize,
                publish_timeout: config.publish_timeout_ms,
                max_body_bytes: config.max_body_bytes,
                body_timeout: config.request_body_timeout_ms,
                max_ttl_secs: config.max_ttl_secs,
                max_body_bytes_in_flight: config.max_body_bytes_in_flight,
                reads,
            },
            keys,
            config.request_body_timeout_ms,
        );
        Ok(Self {
            listener,
            router,
            publisher,
            spool,
            keeper,
            drain,
            keeper_stop,
            reporting,
            reporting_stop,
            header_read_timeout: config.header_read_timeout_ms,
            max_connections: config.max_connections as usize,
            reads_stop,
        })
    }

    /// The port actually bound (useful with port 0 in tests).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` fires, then finishes in-flight callbacks and closes. Stops
    /// the same way, and returns the error, when RabbitMQ refuses the settings: no retry
    /// can fix that, and callbacks must not pile up in the spool while nobody notices.
    /// Stops within [`STOP_LIMIT`] of `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let spool = self.spool.clone();
        match lastseen::shutdown::bounded(self.run(shutdown.clone()), &shutdown, STOP_LIMIT).await {
            Some(ended) => ended,
            // Cut short (a drain round waiting on a silent broker): the spool's writer
            // still commits what it was given (local disk only), as on a whole stop.
            None => {
                spool.close().await;
                Ok(())
            }
        }
    }

    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "producer listening");
        let stopping = shutdown.child_token();
        let (reads_stop, stopped) = (self.reads_stop.clone(), stopping.clone());
        tokio::spawn(async move {
            stopped.cancelled().await;
            reads_stop.cancel();
        });
        let server = http::serve(
            self.listener,
            self.router,
            self.header_read_timeout,
            self.max_connections,
            stopping.clone(),
        );
        let mut keeper = self.keeper;
        let mut keeper_ended = None;
        let serving = async {
            tokio::pin!(server);
            tokio::select! {
                () = &mut server => {}
                ended = &mut keeper => {
                    keeper_ended = Some(ended);
                    stopping.cancel();
                    server.await;
                }
            }
        };
        tokio::select! {
            () = serving => {}
            () = async {
                stopping.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!("in-flight callbacks did not finish within the grace period"),
        }
        self.keeper_stop.cancel();
        let _ = self.drain.await;
        let keeper_ended = match keeper_ended {
            Some(ended) => ended,
            None => keeper.await,
        };
        self.spool.close().await;
        // Its last report: leaving, if the spool is empty.
        self.reporting_stop.cancel();
        let _ = self.reporting.await;
        self.publisher.close().await;
        tracing::info!(
            spooled_callbacks_left = self.spool.pending_callbacks(),
            "producer stopped"
        );
        match keeper_ended {
            Ok(Err(refused)) => Err(refused.into()),
            _ => Ok(()),
        }
    }
}
