//! Webhook delivery (when `NOTIFY_WEBHOOK_URL` is set): every outbox notification is
//! POSTed as JSON, signed the Standard Webhooks way (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature` over `id.timestamp.body`, so a receiver can refuse a replay),
//! retried with growing delays, and recorded as delivered or, after
//! `NOTIFY_WEBHOOK_MAX_ATTEMPTS`, failed. It runs beside expiry and the RabbitMQ relay, so
//! a slow or dead webhook holds neither.
//!
//! Up to [`CONCURRENCY`] requests are in flight; a notification is claimed only when a
//! request slot is free and sent at once, so its lease (the request timeout and a margin)
//! always covers its request, however slow the receiver: no second sweeper sends it too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use lastseen::contract::{header, metric};
use lastseen::store::notifications::{self, WebhookAttempt, WebhookDue};
use sha2::Sha256;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// How often to look for due notifications when the last look found none.
const POLL: Duration = Duration::from_millis(200);
/// Longest delay between two attempts of one notification.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// A claim's lease beyond the request timeout: the time from claim to request, and to
/// recording the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Where and how notifications are delivered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    /// Built at start (with `TLS_CA_FILE` and the client certificate), so a setting it
    /// refuses stops the sweeper at once.
    pub client: reqwest::Client,
    /// The HMAC key ([`signing_key`] of `NOTIFY_WEBHOOK_SECRET`).
    pub key: Vec<u8>,
    pub max_attempts: u32,
    pub timeout: Duration,
    /// Delay after the first failed attempt; it doubles up to [`MAX_RETRY_DELAY`].
    pub retry_base: Duration,
}

/// The HMAC key of a webhook secret: a Standard Webhooks secret (`whsec_` and base64) is
/// its decoded bytes, any other the bytes of the text.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => BASE64
            .decode(encoded)
            .map_err(|e| format!("a whsec_ secret must be base64 after the prefix ({e})")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` value of a message: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under `key`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any size");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// How one attempt ended.
struct Attempt {
    id: i64,
    claim: i64,
    attempts: i32,
    /// `None`: delivered; else why not.
    error: Option<String>,
}

/// Delivers due notifications until `shutdown`; requests in flight then are finished
/// and recorded.
pub async fn run(settings: WebhookSettings, pool: PgPool, shutdown: CancellationToken) {
    let client = settings.client.clone();
    tracing::info!(
        url = %lastseen::config::url_origin(&settings.url),
        "delivering notifications to the webhook"
    );
    let lease = (settings.timeout + LEASE_MARGIN).as_secs_f64();
    let mut in_flight = FuturesUnordered::new();
    // Set when the last claim found fewer due rows than there were free slots: the next
    // claim waits for the poll interval (or a request to end).
    let mut drained = false;
    loop {
        let stopping = shutdown.is_cancelled();
        if stopping && in_flight.is_empty() {
            break;
        }
        let free = CONCURRENCY - in_flight.len();
        if !stopping && !drained && free > 0 {
            let claim: i64 = rand::random();
            match notifications::claim_webhook_due(&pool, free as i64, lease, claim).await {
                Ok(due) => {
                    drained = due.len() < free;
                    in_flight.extend(due.into_iter().map(|row| deliver(&settings, &client, row)));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim notifications for the webhook; retrying");
                    drained = true;
                }
            }
        }
        let first = tokio::select! {
            Some(attempt) = in_flight.next(), if !in_flight.is_empty() => Some(attempt),
            () = tokio::time::sleep(POLL), if drained || in_flight.len() == CONCURRENCY => {
                drained = false;
                None
            }
            () = shutdown.cancelled(), if !stopping => None,
        };
        let mut ended: Vec<Attempt> = first.into_iter().collect();
        while let Some(Some(attempt)) = in_flight.next().now_or_never() {
            ended.push(attempt);
        }
        if !ended.is_empty() {
            drained = false;
            record(&settings, &pool, &ended).await;
        }
    }
}

/// Records how attempts ended (a lost record only makes a row be sent again once its
/// lease runs out).
async fn record(settings: &WebhookSettings, pool: &PgPool, attempts: &[Attempt]) {
    let mut ended = Vec::with_capacity(attempts.len());
    for attempt in attempts {
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
            claim: attempt.claim,
            attempts: attempt.attempts,
            outcome,
            error: attempt.error.clone(),
            next_in: retry_delay(settings.retry_base, attempt.attempts),
        });
    }
    if let Err(err) = notifications::record_webhook_attempts(pool, &ended).await {
        tracing::warn!(error = %err, attempts = ended.len(), "cannot record webhook attempts; they are retried when their lease runs out");
    }
}

/// The delay after failed attempt `attempts` (1-based): base, 2 base, 4 base, ... capped.
fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let attempts = u32::try_from(attempts).unwrap_or(0);
    lastseen::backoff::doubling(base, attempts, MAX_RETRY_DELAY)
}

async fn deliver(settings: &WebhookSettings, client: &reqwest::Client, row: WebhookDue) -> Attempt {
    // The same bytes the relay publishes, as PostgreSQL gives them.
    let body = row.payload.into_bytes();
    // The same id on every attempt (and the AMQP message_id): receivers de-duplicate on it.
    let id = row.id.to_string();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let started = std::time::Instant::now();
    let sent = client
        .post(&settings.url)
        .header("content-type", "application/json")
        .header(header::WEBHOOK_ID, &id)
        .header(header::WEBHOOK_TIMESTAMP, timestamp.to_string())
        .header(
            header::WEBHOOK_SIGNATURE,
            signature(&settings.key, &id, timestamp, &body),
        )
        .header(header::WEBHOOK_EVENT, &row.routing_key)
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
        claim: row.webhook_claim,
        attempts: row.webhook_attempts + 1,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification and its libraries.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_plain_secret_is_its_bytes_and_a_bad_whsec_one_is_refused() {
        assert_eq!(signing_key("s3cret").unwrap(), b"s3cret");
        assert!(signing_key("whsec_not base64!").is_err());
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
