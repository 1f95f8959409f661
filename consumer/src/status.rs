//! The status service client: `GET {STATUS_URL}/objects/{id}` answers whether an
//! object is online.

use std::time::Duration;

use lastseen::ObjectId;
use serde::Deserialize;

/// Why a status check gave no answer to act on; the message is then retried.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `reason` holds the causes, never the URL (it may carry a password).
    #[error("status service unreachable for id {id}: {reason}")]
    Unreachable { id: ObjectId, reason: String },
    #[error("status service timed out for id {id}")]
    Timeout { id: ObjectId },
    #[error("status service answered {status} for id {id}")]
    Status { id: ObjectId, status: u16 },
    #[error("status service answered a malformed body for id {id}: {reason}")]
    Malformed { id: ObjectId, reason: String },
}

/// `{"id":1,"online":true}`
#[derive(Debug, Deserialize)]
struct StatusAnswer {
    id: i64,
    online: bool,
}

/// A pooled HTTP client for the status service.
#[derive(Debug, Clone)]
pub struct StatusClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl StatusClient {
    /// A client for `base`, trusting what `tls` says. A client certificate that does not
    /// fit its key is refused, naming the setting.
    pub fn new(
        base: reqwest::Url,
        timeout: Duration,
        tls: &lastseen::tls::TlsArgs,
    ) -> anyhow::Result<Self> {
        let http = tls
            .http_client()?
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, base })
    }

    /// Asks whether `id` is online.
    pub async fn is_online(&self, id: ObjectId) -> Result<bool, CheckError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CheckError::Malformed {
                id,
                reason: "STATUS_URL cannot take a path".into(),
            })?
            .pop_if_empty()
            .extend(["objects", &id.to_string()]);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|source| request_failed(id, source))?;
        let status = response.status();
        if !status.is_success() {
            return Err(CheckError::Status {
                id,
                status: status.as_u16(),
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|source| request_failed(id, source))?;
        let answer: StatusAnswer =
            serde_json::from_slice(&body).map_err(|e| CheckError::Malformed {
                id,
                reason: e.to_string(),
            })?;
        if answer.id != id.get() {
            return Err(CheckError::Malformed {
                id,
                reason: format!("answer is about id {}", answer.id),
            });
        }
        Ok(answer.online)
    }
}

/// A request about `id` that got no (whole) answer: timed out, or the service was not
/// reached. Never the URL in the reason: it may carry a password.
fn request_failed(id: ObjectId, source: reqwest::Error) -> CheckError {
    if source.is_timeout() {
        CheckError::Timeout { id }
    } else {
        CheckError::Unreachable {
            id,
            reason: lastseen::config::error_line(&source.without_url()),
        }
    }
}
