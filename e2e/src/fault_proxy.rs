//! A TCP proxy in front of the machine's RabbitMQ or PostgreSQL that a test can cut
//! (connections dropped, new ones refused), freeze (bytes held, so confirms stop arriving)
//! and restore: a component meets an outage without the shared server being stopped.

use std::net::SocketAddr;
use std::sync::Mutex;

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

    /// Accepts and forwards again after [`Self::cut`] or [`Self::freeze`].
    pub async fn restore(&self) -> anyhow::Result<()> {
        self.frozen.send_replace(false);
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
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    () = token.cancelled() => return,
                };
                let (token, upstream, frozen) = (token.clone(), upstream.clone(), frozen.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = forward_both(client, server, frozen) => {}
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

async fn forward_both(client: TcpStream, server: TcpStream, frozen: watch::Receiver<bool>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = forward(client_read, server_write, frozen.clone()) => {}
        () = forward(server_read, client_write, frozen) => {}
    }
}

/// Copies bytes one way, holding them while the proxy is frozen.
async fn forward(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
