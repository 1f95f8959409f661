//! The status service client: `GET {STATUS_URL}/objects/{id}` answers whether an
//! object is online.
//!
//! hyper's pooled client rather than reqwest's: a consumer holds one connection per
//! check in flight (thousands of them), and hyper lets each connection's read buffer be
//! sized to a status answer, where reqwest keeps hyper's 8 KiB default.

use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use lastseen::ObjectId;
use serde::Deserialize;

/// Each connection's read buffer, and so the largest response head (status line and
/// headers) taken: a status answer's is ~100 bytes; a head past this is an error.
pub const READ_BUFFER_BYTES: usize = 4096;

/// The largest answer body taken.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// An idle pooled connection is closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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

/// A pooled HTTP/1.1 client for the status service, over TLS for an `https://` URL.
#[derive(Debug, Clone)]
pub struct StatusClient {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// The URL up to its path (no trailing slash), without user or password.
    prefix: String,
    /// The URL's query, with its `?`, or empty.
    query: String,
    /// `Basic …` from the URL's user and password (sent as reqwest would).
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl StatusClient {
    /// A client for `base`, trusting what `tls` says. A client certificate that does not
    /// fit its key is refused, naming the setting.
    pub fn new(
        base: url::Url,
        timeout: Duration,
        tls: &lastseen::tls::TlsArgs,
    ) -> anyhow::Result<Self> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.client_config()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http1_read_buf_exact_size(READ_BUFFER_BYTES)
            .build(connector);
        let (prefix, query, authorization) = split_base(base)?;
        Ok(Self {
            http,
            prefix,
            query,
            authorization,
            timeout,
        })
    }

    /// Asks whether `id` is online.
    pub async fn is_online(&self, id: ObjectId) -> Result<bool, CheckError> {
        let uri = format!("{}/objects/{}{}", self.prefix, id, self.query);
        let mut request = hyper::Request::get(uri);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| CheckError::Malformed {
                id,
                reason: format!("cannot make the request: {e}"),
            })?;
        tokio::time::timeout(self.timeout, self.ask(id, request))
            .await
            .map_err(|_| CheckError::Timeout { id })?
    }

    async fn ask(
        &self,
        id: ObjectId,
        request: hyper::Request<Empty<Bytes>>,
    ) -> Result<bool, CheckError> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(id, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(CheckError::Status {
                id,
                status: status.as_u16(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    CheckError::Malformed {
                        id,
                        reason: format!("the answer is over {MAX_BODY_BYTES} bytes"),
                    }
                } else {
                    unreachable(id, e.as_ref())
                }
            })?
            .to_bytes();
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

/// A request about `id` that got no (whole) answer. The causes only: hyper's errors
/// never hold the URL, and the URL sent holds no password.
fn unreachable(id: ObjectId, source: &(dyn std::error::Error + 'static)) -> CheckError {
    CheckError::Unreachable {
        id,
        reason: lastseen::config::error_line(source),
    }
}

/// `base` as the prefix of every request's URL (no trailing slash), its query, and the
/// `Authorization` header of its user and password, which leave the URL.
fn split_base(mut base: url::Url) -> anyhow::Result<(String, String, Option<HeaderValue>)> {
    anyhow::ensure!(!base.cannot_be_a_base(), "STATUS_URL cannot take a path");
    let authorization = if base.username().is_empty() && base.password().is_none() {
        None
    } else {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let pair = format!(
            "{}:{}",
            decode(base.username()),
            decode(base.password().unwrap_or(""))
        );
        let mut value = HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))?;
        value.set_sensitive(true);
        Some(value)
    };
    let _ = base.set_username("");
    let _ = base.set_password(None);
    let query = base.query().map(|q| format!("?{q}")).unwrap_or_default();
    base.set_query(None);
    base.set_fragment(None);
    let prefix = base.as_str().trim_end_matches('/').to_owned();
    Ok((prefix, query, authorization))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, String, Option<HeaderValue>) {
        split_base(url::Url::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn the_base_url_keeps_its_path_and_query_and_loses_its_password() {
        let (prefix, query, auth) = split("http://127.0.0.1:9010");
        assert_eq!(
            (prefix.as_str(), query.as_str(), auth),
            ("http://127.0.0.1:9010", "", None)
        );
        let (prefix, query, _) = split("https://status.example/api/v2/?region=eu");
        assert_eq!(prefix, "https://status.example/api/v2");
        assert_eq!(query, "?region=eu");
        let (prefix, _, auth) = split("http://us%40r:p%3Ass@h:1/x");
        assert_eq!(prefix, "http://h:1/x");
        // base64("us@r:p:ss")
        assert_eq!(auth.unwrap(), "Basic dXNAcjpwOnNz");
    }
}
