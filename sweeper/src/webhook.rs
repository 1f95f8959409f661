//! Webhook delivery (when `NOTIFY_WEBHOOK_URL` is set): every outbox notification is
//! POSTed as JSON, signed with HMAC-SHA256, retried with growing delays, and recorded as
//! delivered or, after `NOTIFY_WEBHOOK_MAX_ATTEMPTS`, failed. It runs beside expiry and the
//! RabbitMQ relay, so a slow or dead webhook holds neither.

use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// `sha256=<hex HMAC-SHA256 of the body with NOTIFY_WEBHOOK_SECRET>`.
pub const SIGNATURE_HEADER: &str = "x-lastseen-signature";
/// The notification's routing key (`object.online`, `object.expired`, `digest`).
pub const EVENT_HEADER: &str = "x-lastseen-event";
/// The notification's id, the same as the AMQP `message_id`: receivers de-duplicate on it.
pub const DELIVERY_HEADER: &str = "x-lastseen-delivery";

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

#[derive(sqlx::FromRow)]
struct Due {
    id: i64,
    routing_key: String,
    payload: serde_json::Value,
    webhook_attempts: i32,
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
    tracing::info!(url = %settings.url, "delivering notifications to the webhook");
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
    let due: Vec<Due> = sqlx::query_as(
        "UPDATE notifications n
         SET webhook_next_at = clock_timestamp() + make_interval(secs => $2)
         FROM (SELECT id FROM notifications
               WHERE webhook_outcome IS NULL AND webhook_next_at <= clock_timestamp()
               ORDER BY webhook_next_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED) due
         WHERE n.id = due.id
         RETURNING n.id, n.routing_key, n.payload, n.webhook_attempts",
    )
    .bind(ROUND_ROWS)
    .bind(lease)
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let attempts: Vec<Attempt> = futures::stream::iter(due)
        .map(|row| deliver(settings, client, row))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let mut ids = Vec::with_capacity(attempts.len());
    let mut counts = Vec::with_capacity(attempts.len());
    let mut outcomes: Vec<Option<&str>> = Vec::with_capacity(attempts.len());
    let mut errors = Vec::with_capacity(attempts.len());
    let mut delays = Vec::with_capacity(attempts.len());
    for attempt in &attempts {
        let outcome = match &attempt.error {
            None => Some("delivered"),
            Some(_) if attempt.attempts >= settings.max_attempts as i32 => Some("failed"),
            Some(_) => None,
        };
        let label = outcome.unwrap_or("retry");
        metrics::counter!("lastseen_webhook_deliveries_total", "outcome" => label).increment(1);
        if outcome == Some("failed") {
            tracing::warn!(
                id = attempt.id,
                attempts = attempt.attempts,
                error = attempt.error.as_deref().unwrap_or(""),
                "webhook delivery failed for the last time"
            );
        }
        ids.push(attempt.id);
        counts.push(attempt.attempts);
        outcomes.push(outcome);
        errors.push(attempt.error.clone());
        delays.push(retry_delay(settings.retry_base, attempt.attempts).as_secs_f64());
    }
    sqlx::query(
        "UPDATE notifications n
         SET webhook_attempts = u.attempts,
             webhook_outcome = u.outcome,
             webhook_error = u.error,
             webhook_next_at = clock_timestamp() + make_interval(secs => u.delay)
         FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::text[], $5::float8[])
              AS u(id, attempts, outcome, error, delay)
         WHERE n.id = u.id",
    )
    .bind(&ids)
    .bind(&counts)
    .bind(&outcomes)
    .bind(&errors)
    .bind(&delays)
    .execute(pool)
    .await?;
    Ok(attempts.len())
}

/// The delay after failed attempt `attempts` (1-based): base, 2 base, 4 base, ... capped.
fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

async fn deliver(settings: &WebhookSettings, client: &reqwest::Client, row: Due) -> Attempt {
    let body = serde_json::to_vec(&row.payload).expect("a JSON value always serializes");
    let started = std::time::Instant::now();
    let sent = client
        .post(&settings.url)
        .header("content-type", "application/json")
        .header(EVENT_HEADER, &row.routing_key)
        .header(DELIVERY_HEADER, row.id.to_string())
        .header(
            SIGNATURE_HEADER,
            signature(settings.secret.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await;
    metrics::histogram!("lastseen_webhook_seconds").record(started.elapsed().as_secs_f64());
    let error = match sent {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("the webhook answered {}", response.status())),
        Err(err) => Some(format!("the webhook could not be reached: {err}")),
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
