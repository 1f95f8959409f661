//! A webhook receiver standing in for a user's endpoint: it records every request (its
//! headers and body), answers after a set delay, and may fail the first few requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One request as received.
pub type Received = (HeaderMap, Bytes);

#[derive(Default)]
struct Record {
    requests: Vec<Received>,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// How long each request takes before its answer.
    pub delay: Duration,
    /// Requests answered 500 before the others get 204.
    pub fail_first: usize,
}

/// A running receiver at `{url}` (path `/hook`).
pub struct WebhookReceiver {
    url: String,
    record: Arc<Mutex<Record>>,
}

impl WebhookReceiver {
    /// Listens on `addr` (port 0 picks one) until the runtime stops.
    pub async fn start(addr: SocketAddr, behaviour: Behaviour) -> anyhow::Result<Self> {
        Self::start_with(addr, behaviour, None).await
    }

    /// [`Self::start`], serving HTTPS with `tls` when given.
    pub async fn start_with(
        addr: SocketAddr,
        behaviour: Behaviour,
        tls: Option<rustls::ServerConfig>,
    ) -> anyhow::Result<Self> {
        let record: Arc<Mutex<Record>> = Arc::default();
        let app = Router::new()
            .route(
                "/hook",
                post(
                    move |State(record): State<Arc<Mutex<Record>>>,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        // Recorded on arrival: a sender that gives up (or is killed)
                        // during the delay has still sent it.
                        let fail = {
                            let mut record = record.lock().unwrap_or_else(|e| e.into_inner());
                            record.requests.push((headers, body));
                            record.requests.len() <= behaviour.fail_first
                        };
                        tokio::time::sleep(behaviour.delay).await;
                        if fail {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::NO_CONTENT
                        }
                    },
                ),
            )
            .with_state(record.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let url = match tls {
            Some(config) => {
                let listener = crate::tls_listener::TlsListener::new(listener, config)?;
                tokio::spawn(async move { axum::serve(listener, app).await });
                format!("https://{local}/hook")
            }
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await });
                format!("http://{local}/hook")
            }
        };
        Ok(Self { url, record })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.lock().requests.clone()
    }

    /// How often each `webhook-id` was received (requests without one are left out).
    pub fn per_webhook_id(&self) -> HashMap<String, usize> {
        let mut per_id = HashMap::new();
        for (headers, _) in &self.lock().requests {
            if let Some(id) = headers
                .get(lastseen::contract::header::WEBHOOK_ID)
                .and_then(|v| v.to_str().ok())
            {
                *per_id.entry(id.to_owned()).or_default() += 1;
            }
        }
        per_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}
