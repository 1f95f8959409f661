//! Webhook delivery (when `NOTIFY_WEBHOOK_URL` is set): every outbox notification is
//! POSTed as JSON, signed with HMAC-SHA256, retried with growing delays, and recorded as
//! delivered or, after `NOTIFY_WEBHOOK_MAX_ATTEMPTS`, failed. It runs beside expiry and the
//! RabbitMQ relay, so a slow or dead webhook holds neither.

use lastseen::contract::{header, metric};
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use lastseen::store::notifications::{self, WebhookAttempt, WebhookDue};
use sha2::Sha256;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Notifications taken per round.
const ROUND_ROWS: i64 = 100;
/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// How often to look for due notifications when the last round found none.
const POLL: Duration = Duration::from_millis(200);
/// Longest delay between two attempts of one notification.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Where and how notifications are delivered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
    pub max_attempts: u32,
    pub timeout: Duration,
    /// Delay after the first failed attempt; it doubles up to [`MAX_RETRY_DELAY`].
    pub retry_base: Duration,
}

/// The signature header's value for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How one attempt ended.
struct Attempt {
    id: i64,
    attempts: i32,
    /// `None`: delivered; else why not.
    error: Option<String>,
}

/// Delivers due notifications until `shutdown`.
pub async fn run(settings: WebhookSettings, pool: PgPool, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the webhook client; webhooks are off");
            return;
        }
    };
    tracing::info!(
        url = %lastseen::config::url_origin(&settings.url),
        "delivering notifications to the webhook"
    );
    while !shutdown.is_cancelled() {
        let pause = match round(&settings, &client, &pool).await {
            Ok(0) => POLL,
            Ok(_) => Duration::ZERO,
            Err(err) => {
                tracing::warn!(error = %err, "webhook round failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// Sends the due notifications of one round and records how each attempt ended.
async fn round(
    settings: &WebhookSettings,
    client: &reqwest::Client,
    pool: &PgPool,
) -> sqlx::Result<usize> {
    // Claim due rows with a lease (their next attempt moved past the request timeout),
    // in one short statement: no row lock is held while the webhook answers, so the
    // RabbitMQ relay never waits for it. A crash leaves the lease to expire: retried.
    let lease = (settings.timeout * 2).as_secs_f64() + 1.0;
    let due = notifications::claim_webhook_due(pool, ROUND_ROWS, lease).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let attempts: Vec<Attempt> = futures::stream::iter(due)
        .map(|row| deliver(settings, client, row))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let mut ended = Vec::with_capacity(attempts.len());
    for attempt in &attempts {
        let outcome = match &attempt.error {
            None => Some("delivered"),
            Some(_) if attempt.attempts >= settings.max_attempts as i32 => Some("failed"),
            Some(_) => None,
        };
        let label = outcome.unwrap_or("retry");
        metrics::counter!(metric::WEBHOOK_DELIVERIES_TOTAL, "outcome" => label).increment(1);
        if outcome == Some("failed") {
            tracing::warn!(
                id = attempt.id,
                attempts = attempt.attempts,
                error = attempt.error.as_deref().unwrap_or(""),
                "webhook delivery failed for the last time"
            );
        }
        ended.push(WebhookAttempt {
            id: attempt.id,
            attempts: attempt.attempts,
            outcome,
            error: attempt.error.clone(),
            next_in: retry_delay(settings.retry_base, attempt.attempts),
        });
    }
    notifications::record_webhook_attempts(pool, &ended).await?;
    Ok(attempts.len())
}

/// The delay after failed attempt `attempts` (1-based): base, 2 base, 4 base, ... capped.
fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let attempts = u32::try_from(attempts).unwrap_or(0);
    lastseen::backoff::doubling(base, attempts, MAX_RETRY_DELAY)
}

async fn deliver(settings: &WebhookSettings, client: &reqwest::Client, row: WebhookDue) -> Attempt {
    let body = serde_json::to_vec(&row.payload).expect("a JSON value always serializes");
    let started = std::time::Instant::now();
    let sent = client
        .post(&settings.url)
        .header("content-type", "application/json")
        .header(header::WEBHOOK_EVENT, &row.routing_key)
        .header(header::WEBHOOK_DELIVERY, row.id.to_string())
        .header(
            header::WEBHOOK_SIGNATURE,
            signature(settings.secret.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await;
    metrics::histogram!(metric::WEBHOOK_SECONDS).record(started.elapsed().as_secs_f64());
    let error = match sent {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("the webhook answered {}", response.status())),
        // Never the URL: its user info, path or query may be the receiver's key, and
        // `webhook_error` is readable by analysts.
        Err(err) => Some(format!(
            "the webhook could not be reached: {}",
            lastseen::config::error_line(&err.without_url())
        )),
    };
    Attempt {
        id: row.id,
        attempts: row.webhook_attempts + 1,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retry_delays_double_up_to_five_minutes() {
        let base = Duration::from_secs(1);
        let secs: Vec<u64> = [1, 2, 3, 10, 30]
            .iter()
            .map(|&a| retry_delay(base, a).as_secs())
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 300, 300]);
    }
}
