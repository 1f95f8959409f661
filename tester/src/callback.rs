//! The callback client: POSTs `{"object_ids": [...]}` to the producer, as the original
//! challenge tester does, and classifies the answer. The one way the driver, the
//! harnesses' loads and the integration tests send callbacks.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// The client timeout of the original challenge tester.
pub const ORIGINAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How the producer answered one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: `accepted` distinct ids, `spooled` if the producer kept the callback in its
    /// local spool (RabbitMQ unreachable) rather than publishing it at once.
    Accepted { accepted: u64, spooled: bool },
    /// Any other status: not accepted.
    Refused { status: u16, body: String },
    /// No answer within the client's timeout, or no connection: not accepted.
    Unanswered { error: String },
}

impl Answer {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

/// The 202 body: `{"accepted": N}`, and `"spooled": true` when the producer kept the
/// callback in its local spool (an older producer does not send the field).
#[derive(Debug, serde::Deserialize)]
struct AcceptedBody {
    accepted: u64,
    #[serde(default)]
    spooled: bool,
}

/// Posts callbacks to one producer URL.
#[derive(Debug, Clone)]
pub struct CallbackClient {
    http: reqwest::Client,
    url: String,
    /// Sent as `Authorization: Bearer <key>` when set (a producer with API keys on).
    api_key: Option<String>,
}

impl CallbackClient {
    /// A client for `url` whose every callback gives up after `timeout`.
    pub fn new(url: impl Into<String>, timeout: Duration) -> anyhow::Result<Self> {
        Self::with_connections(url, timeout, usize::MAX)
    }

    /// The same, keeping at most `idle` idle connections to the producer.
    pub fn with_connections(
        url: impl Into<String>,
        timeout: Duration,
        idle: usize,
    ) -> anyhow::Result<Self> {
        let http = lastseen::tls::http_client()
            .timeout(timeout)
            .pool_max_idle_per_host(idle)
            .build()
            .context("cannot build the callback HTTP client")?;
        Ok(Self {
            http,
            url: url.into(),
            api_key: None,
        })
    }

    /// The same client, sending `key` as `Authorization: Bearer <key>` (none: no header).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    fn request(&self) -> reqwest::RequestBuilder {
        let request = self.http.post(&self.url);
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Posts `{"object_ids": ids}` and classifies the answer.
    pub async fn post<Id: Serialize>(&self, ids: &[Id]) -> Answer {
        self.post_json(ids.len(), &serde_json::json!({ "object_ids": ids }))
            .await
    }

    /// Posts `{"object_ids": ids, "ttl_secs": ttl_secs}` and classifies the answer.
    pub async fn post_with_ttl<Id: Serialize>(&self, ids: &[Id], ttl_secs: u32) -> Answer {
        let body = serde_json::json!({ "object_ids": ids, "ttl_secs": ttl_secs });
        self.post_json(ids.len(), &body).await
    }

    async fn post_json(&self, ids: usize, body: &serde_json::Value) -> Answer {
        let response = match self.request().json(body).send().await {
            Ok(response) => response,
            Err(err) => {
                return Answer::Unanswered {
                    error: err.to_string(),
                };
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Answer::Refused {
                status: status.as_u16(),
                body: response.text().await.unwrap_or_default(),
            };
        }
        // A 2xx whose body never arrives in time is, for a client, no answer either.
        match response.json::<AcceptedBody>().await {
            Ok(body) => Answer::Accepted {
                accepted: body.accepted,
                spooled: body.spooled,
            },
            Err(err) if err.is_timeout() => Answer::Unanswered {
                error: err.to_string(),
            },
            // A 2xx is the producer's promise even if its body is odd: hold it to it.
            Err(_) => Answer::Accepted {
                accepted: ids as u64,
                spooled: false,
            },
        }
    }

    /// [`Self::post`] (or [`Self::post_with_ttl`] with a TTL), and how long the answer
    /// took.
    pub async fn post_timed<Id: Serialize>(
        &self,
        ids: &[Id],
        ttl_secs: Option<u32>,
    ) -> (Answer, Duration) {
        let started = Instant::now();
        let answer = match ttl_secs {
            Some(ttl) => self.post_with_ttl(ids, ttl).await,
            None => self.post(ids).await,
        };
        (answer, started.elapsed())
    }

    /// Posts any body with any content type (for tests of bad input); returns the status
    /// and the body as JSON (`Null` when it is not JSON).
    pub async fn post_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self.request().body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }
}
