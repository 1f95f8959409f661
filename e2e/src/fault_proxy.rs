//! A TCP proxy in front of the machine's RabbitMQ or PostgreSQL that a test can cut
//! (connections dropped, new ones refused), freeze (bytes held, so confirms stop arriving),
//! slow (every byte delivered a fixed time late, each way) and restore: a component meets
//! an outage or a slow server without the shared server being stopped.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The proxy: one listening port, forwarding to the server while it is up.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: String,
    /// Cancelled to cut: stops the listener and drops every proxied connection.
    running: Mutex<Option<CancellationToken>>,
    frozen: watch::Sender<bool>,
    /// How late every byte is delivered, each way.
    latency: watch::Sender<Duration>,
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<random port>` to `upstream` (host:port).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            upstream: upstream.to_owned(),
            running: Mutex::new(None),
            frozen: watch::Sender::new(false),
            latency: watch::Sender::new(Duration::ZERO),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    /// The AMQP URL that reaches the broker through this proxy.
    pub fn amqp_url(&self) -> String {
        crate::servers::amqp_server()
            .with_host(self.addr)
            .to_string()
    }

    /// The URL of `database` on the PostgreSQL server behind this proxy.
    pub fn postgres_url(&self, database: &str) -> String {
        crate::servers::postgres_server()
            .with_host(self.addr)
            .with_database(database)
    }

    /// Drops every connection and refuses new ones, as a stopped server would.
    pub fn cut(&self) {
        if let Some(token) = self.lock().take() {
            token.cancel();
        }
    }

    /// Delivers every byte `latency` late, each way (a round trip takes twice that), as a
    /// slow or far broker would; throughput is not limited.
    pub fn slow(&self, latency: Duration) {
        self.latency.send_replace(latency);
    }

    /// Accepts and forwards again, at full speed, after [`Self::cut`], [`Self::freeze`]
    /// or [`Self::slow`].
    pub async fn restore(&self) -> anyhow::Result<()> {
        self.frozen.send_replace(false);
        self.latency.send_replace(Duration::ZERO);
        if self.lock().is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("cannot listen on {} again", self.addr))?;
        self.serve(listener);
        Ok(())
    }

    /// Keeps connections open but holds every byte, as a broker under a resource alarm
    /// that stops answering would: publishes go out, confirms never come back.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CancellationToken>> {
        self.running
            .lock()
            .expect("the proxy's lock is never poisoned")
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.lock() = Some(token.clone());
        let upstream = self.upstream.clone();
        let frozen = self.frozen.subscribe();
        let latency = self.latency.subscribe();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    () = token.cancelled() => return,
                };
                let (token, upstream, frozen, latency) = (
                    token.clone(),
                    upstream.clone(),
                    frozen.clone(),
                    latency.clone(),
                );
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = forward_both(client, server, frozen, latency) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn forward_both(
    client: TcpStream,
    server: TcpStream,
    frozen: watch::Receiver<bool>,
    latency: watch::Receiver<Duration>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = forward(client_read, server_write, frozen.clone(), latency.clone()) => {}
        () = forward(server_read, client_write, frozen, latency) => {}
    }
}

/// Copies bytes one way, holding them while the proxy is frozen and delivering each chunk
/// `latency` after it was read (reading goes on meanwhile, as on a long wire).
async fn forward(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
    latency: watch::Receiver<Duration>,
) {
    let (chunks, mut due) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let reading = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let deliver_at = tokio::time::Instant::now() + *latency.borrow();
            if chunks.send((deliver_at, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writing = async move {
        while let Some((deliver_at, chunk)) = due.recv().await {
            tokio::time::sleep_until(deliver_at).await;
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reading, writing);
}
