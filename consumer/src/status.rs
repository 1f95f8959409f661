//! The status service client: `GET {STATUS_URL}/objects/{id}` answers whether an
//! object is online.
//!
//! On [`crate::http1`]'s lean pooled client: a consumer holds one connection per check in
//! flight (thousands of them), so what a connection holds while it waits is what a check
//! costs.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use lastseen::ObjectId;
use serde::Deserialize;

use crate::http1::{self, Endpoint, HttpError, Pool};

/// The largest response head (status line and headers) taken: a status answer's is ~100
/// bytes; a head past this is an error.
pub const READ_BUFFER_BYTES: usize = 4096;

/// The largest answer body taken.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// An idle pooled connection is closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Longest wait for a connection (and its TLS handshake) to the status service.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
#[derive(Clone)]
pub struct StatusClient {
    pool: Arc<Pool>,
    /// The URL's path (no trailing slash), without user or password.
    path: String,
    /// The URL's query, with its `?`, or empty.
    query: String,
    /// The headers every request carries, each line ending in CRLF: `Host`, and
    /// `Authorization: Basic …` from the URL's user and password.
    headers: String,
    timeout: Duration,
}

impl std::fmt::Debug for StatusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the headers: they may hold the password.
        f.debug_struct("StatusClient")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl StatusClient {
    /// A client for `base`, trusting what `tls` says. A client certificate that does not
    /// fit its key is refused, naming the setting.
    pub fn new(
        base: url::Url,
        timeout: Duration,
        tls: &lastseen::tls::TlsArgs,
    ) -> anyhow::Result<Self> {
        let target = split_base(base)?;
        let tls = match target.https {
            true => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| anyhow::anyhow!("STATUS_URL's host {:?}: {e}", target.host))?;
                Some((http1::tls_connector(tls.client_config()?), name))
            }
            false => None,
        };
        let pool = Pool::new(
            Endpoint {
                host: target.host,
                port: target.port,
                tls,
            },
            timeout.min(MAX_CONNECT_TIMEOUT),
            POOL_IDLE_TIMEOUT,
            READ_BUFFER_BYTES,
            MAX_BODY_BYTES,
        );
        let mut headers = format!("Host: {}\r\n", pool.host_header());
        if let Some(authorization) = target.authorization {
            headers.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        Ok(Self {
            pool: Arc::new(pool),
            path: target.path,
            query: target.query,
            headers,
            timeout,
        })
    }

    /// Asks whether `id` is online.
    pub async fn is_online(&self, id: ObjectId) -> Result<bool, CheckError> {
        let request = format!(
            "GET {}/objects/{}{} HTTP/1.1\r\n{}\r\n",
            self.path, id, self.query, self.headers
        );
        let answer = tokio::time::timeout(self.timeout, self.pool.send(request.as_bytes()))
            .await
            .map_err(|_| CheckError::Timeout { id })?
            .map_err(|e| match e {
                HttpError::BodyTooLarge(_) => CheckError::Malformed {
                    id,
                    reason: e.to_string(),
                },
                e => unreachable(id, &e),
            })?;
        if !(200..300).contains(&answer.status) {
            return Err(CheckError::Status {
                id,
                status: answer.status,
            });
        }
        let answer: StatusAnswer =
            serde_json::from_slice(&answer.body).map_err(|e| CheckError::Malformed {
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

/// A request about `id` that got no (whole) answer. The causes only: they never hold the
/// URL, and the request sent holds no password but in its `Authorization` header.
fn unreachable(id: ObjectId, source: &(dyn std::error::Error + 'static)) -> CheckError {
    CheckError::Unreachable {
        id,
        reason: lastseen::config::error_line(source),
    }
}

/// Where a status URL points, and what every request to it carries.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// The path, no trailing slash.
    path: String,
    /// The query, with its `?`, or empty.
    query: String,
    /// `Basic …` from the URL's user and password.
    authorization: Option<String>,
}

/// `base` split into what requests need; its user and password become `Authorization`.
fn split_base(base: url::Url) -> anyhow::Result<Target> {
    anyhow::ensure!(!base.cannot_be_a_base(), "STATUS_URL cannot take a path");
    let https = match base.scheme() {
        "https" => true,
        "http" => false,
        other => anyhow::bail!("STATUS_URL's scheme {other:?} is neither http nor https"),
    };
    let host = match base.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        Some(host) => host.to_string(),
        None => anyhow::bail!("STATUS_URL has no host"),
    };
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
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    };
    Ok(Target {
        https,
        port: base
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 }),
        host,
        path: base.path().trim_end_matches('/').to_owned(),
        query: base.query().map(|q| format!("?{q}")).unwrap_or_default(),
        authorization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> Target {
        split_base(url::Url::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn the_base_url_keeps_its_path_and_query_and_loses_its_password() {
        let plain = split("http://127.0.0.1:9010");
        assert_eq!(
            (
                plain.https,
                plain.host.as_str(),
                plain.port,
                plain.path.as_str()
            ),
            (false, "127.0.0.1", 9010, "")
        );
        assert_eq!((plain.query.as_str(), plain.authorization), ("", None));
        let deep = split("https://status.example/api/v2/?region=eu");
        assert_eq!(
            (
                deep.https,
                deep.host.as_str(),
                deep.port,
                deep.path.as_str()
            ),
            (true, "status.example", 443, "/api/v2")
        );
        assert_eq!(deep.query, "?region=eu");
        let secret = split("http://us%40r:p%3Ass@h:1/x");
        assert_eq!((secret.host.as_str(), secret.path.as_str()), ("h", "/x"));
        // base64("us@r:p:ss")
        assert_eq!(secret.authorization.unwrap(), "Basic dXNAcjpwOnNz");
        assert_eq!(split("http://[::1]:9010").host, "::1");
    }
}
