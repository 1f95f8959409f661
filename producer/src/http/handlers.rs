//! The handlers: `POST /callback`, `/healthz` and `/readyz`.

use lastseen::contract::metric;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use lastseen::contract::header::REQUEST_ID;

use super::error::CallbackError;
use crate::callback::{CallbackRequest, check_messages};
use crate::publisher::CallbackPublisher;
use crate::spool::Spool;
use lastseen::progress::Unsettled;

/// Longest request id carried into messages and logs; a longer one is cut.
const REQUEST_ID_MAX_CHARS: usize = 128;

/// What every handler shares.
pub struct AppState {
    pub publisher: Arc<CallbackPublisher>,
    pub spool: Arc<Spool>,
    /// The `accepted_at` of every callback being published or spooled, for the progress
    /// reports.
    pub in_hand: Unsettled,
    pub ids_per_message: usize,
    pub publish_timeout: Duration,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    /// `MAX_TTL_SECS`.
    pub max_ttl_secs: u32,
    /// `MAX_BODY_BYTES_IN_FLIGHT`.
    pub max_body_bytes_in_flight: u64,
    /// The read API, when `READ_DATABASE_URL` is set.
    pub reads: Option<super::ReadApi>,
}

/// The 202 answer: how many distinct ids were accepted, and whether they went to the
/// local spool (RabbitMQ unavailable; they are published when it is back).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: usize,
    pub spooled: bool,
}

/// A missing content type is taken as JSON (some clients send none); any other than
/// `application/json` (or `application/*+json`) is refused.
fn check_content_type(headers: &HeaderMap) -> Result<(), CallbackError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(CallbackError::UnsupportedMediaType(text.to_owned()))
    }
}

/// `POST /callback`: validate, de-duplicate, publish with confirms (or, when RabbitMQ
/// cannot confirm in time, commit to the local spool), then answer 202.
#[utoipa::path(
    post,
    path = "/callback",
    tag = "callbacks",
    summary = "Report objects seen alive",
    security((), ("api_key" = [])),
    description = "Validates the body, removes duplicate ids and answers 202 once the ids are durable. \
                   Every error is answered with a JSON body `{\"error\": code, \"message\": text}`.",
    request_body(
        content = CallbackRequest,
        content_type = "application/json",
        description = "The ids of objects seen alive; duplicates are allowed and removed. \
                       A missing Content-Type is taken as JSON.",
    ),
    responses(
        (status = 202, body = Accepted,
            description = "Accepted and durable: `accepted` distinct ids were published to RabbitMQ \
                           with confirms, or, when `spooled` is true, written to the producer's \
                           local durable spool because RabbitMQ was unavailable; spooled ids are \
                           published once RabbitMQ is back.",
            example = json!({"accepted": 3, "spooled": false})),
        (status = 400, body = super::schemas::ErrorBody,
            description = "`malformed_json`: not JSON or cut short; `unreadable_body`: the body \
                           could not be read (the client broke off). Nothing is published.",
            example = json!({"error": "malformed_json", "message": "malformed JSON: EOF while parsing a list at line 1 column 17"})),
        (status = 401, body = super::schemas::ErrorBody,
            description = "Only with API keys on (CALLBACK_API_KEYS or CALLBACK_API_KEYS_FILE): \
                           `missing_api_key`: no `Authorization: Bearer <key>` header; \
                           `invalid_api_key`: not one of the producer's keys. Nothing is read or published.",
            headers(("WWW-Authenticate" = String, description = "`Bearer`")),
            example = json!({"error": "invalid_api_key", "message": "the API key is not one of this producer's keys"})),
        (status = 408, body = super::schemas::ErrorBody,
            description = "`body_timeout`: the body was not received in full within \
                           REQUEST_BODY_TIMEOUT_MS (5 s by default); nothing is published. \
                           `request_timeout`: no answer within 30 s; the callback may or may not \
                           have been accepted, and retrying it is safe (a repeated id is checked twice).",
            example = json!({"error": "body_timeout", "message": "the request body was not received in full within 5s (REQUEST_BODY_TIMEOUT_MS)"})),
        (status = 413, body = super::schemas::ErrorBody,
            description = "`body_too_large`: the body exceeds MAX_BODY_BYTES. Nothing is published.",
            example = json!({"error": "body_too_large", "message": "request body is larger than the limit of 1048576 bytes"})),
        (status = 415, body = super::schemas::ErrorBody,
            description = "`unsupported_media_type`: a Content-Type other than application/json \
                           (or application/*+json). Nothing is published.",
            example = json!({"error": "unsupported_media_type", "message": "content type must be application/json, got \"text/plain\""})),
        (status = 422, body = super::schemas::ErrorBody,
            description = "`invalid_callback`: JSON, but `object_ids` is missing, not an array, or \
                           holds an id that is negative, fractional, above 2^63-1 or not a number. \
                           `ttl_too_long`: `ttl_secs` is above the producer's MAX_TTL_SECS \
                           (7 days by default). Nothing is published.",
            example = json!({"error": "invalid_callback", "message": "invalid callback: invalid value: integer `-1`, expected an object id: an integer from 0 to 9223372036854775807 at line 1 column 17"})),
        (status = 503, body = super::schemas::ErrorBody,
            description = "`unavailable`: RabbitMQ could not take the callback and neither could the \
                           spool. `overloaded`: the producer is already reading as many bodies as \
                           MAX_BODY_BYTES_IN_FLIGHT allows, or holds MAX_CONNECTIONS connections. \
                           Nothing was accepted; retrying is safe.",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying")),
            example = json!({"error": "unavailable", "message": "RabbitMQ is unavailable and the spool could not take the callback; retry it later: the spool is full"})),
    )
)]
pub async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), CallbackError> {
    check_content_type(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CallbackError::TooLarge {
                limit: state.max_body_bytes,
            }
        } else if is_body_timeout(&rejection) {
            CallbackError::BodyTimeout(state.body_timeout)
        } else {
            CallbackError::Body(rejection.body_text())
        }
    })?;
    let request = CallbackRequest::parse(&body)?;
    if let Some(ttl) = request.ttl_secs.filter(|ttl| *ttl > state.max_ttl_secs) {
        return Err(CallbackError::TtlTooLong {
            ttl,
            max: state.max_ttl_secs,
        });
    }
    let ids = request.distinct_ids();
    let accepted_at = Utc::now();
    // Reported as unsettled until RabbitMQ confirmed it or the spool holds it.
    let _in_hand = state.in_hand.hold(accepted_at);
    let mut messages = check_messages(&ids, state.ids_per_message, accepted_at);
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(|id| id.chars().take(REQUEST_ID_MAX_CHARS).collect::<String>());
    for message in &mut messages {
        message.request_id.clone_from(&request_id);
        message.ttl_secs = request.ttl_secs;
        message.stale_after_secs = request.stale_after_secs;
    }
    // The bound is per 1,000 messages, so a 10,000-id callback gets the time it needs
    // while an ordinary one is answered well within a client's 1 s timeout.
    let thousands = u32::try_from(messages.len().div_ceil(1000).max(1)).unwrap_or(u32::MAX);
    let bound = state.publish_timeout.saturating_mul(thousands);
    let spooled = if messages.is_empty() {
        false
    } else if !state.publisher.takes_callbacks() {
        true
    } else if let Err(err) = state.publisher.publish(&messages, bound).await {
        tracing::warn!(error = %err, ids = ids.len(), "publish failed; spooling the callback");
        true
    } else {
        false
    };
    if spooled {
        state.spool.append(&messages).await?;
        metrics::counter!(metric::IDS_SPOOLED_TOTAL).increment(ids.len() as u64);
    }
    let outcome = if spooled { "spooled" } else { "published" };
    metrics::counter!(metric::CALLBACKS_TOTAL, "outcome" => outcome).increment(1);
    metrics::counter!(metric::IDS_ACCEPTED_TOTAL).increment(ids.len() as u64);
    tracing::debug!(
        ids = ids.len(),
        messages = messages.len(),
        spooled,
        "callback accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: ids.len(),
            spooled,
        }),
    ))
}

/// Whether reading the body failed because its deadline (`RequestBodyDeadlineLayer`)
/// passed, rather than because the client broke off.
fn is_body_timeout(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// `GET /healthz`: the process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    responses((status = 200, body = super::schemas::Health, description = "Alive", example = json!({"status": "ok"})))
)]
pub async fn healthz() -> Response {
    lastseen::ops::healthz().await
}

/// `GET /readyz`: 200 "ready" when RabbitMQ answers and the spool is empty; 200
/// "degraded" while callbacks go to (or wait in) the spool, since callbacks are still
/// accepted; 503 "not ready" only when RabbitMQ is down and the spool cannot write.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: whether callbacks are accepted",
    responses(
        (status = 200, body = super::schemas::Readiness,
            description = "Callbacks are accepted: `ready`, or `degraded` while they go to or wait \
                           in the local spool (RabbitMQ unavailable).",
            example = json!({"status": "ready"})),
        (status = 503, body = super::schemas::Readiness,
            description = "`not ready`: callbacks are not accepted now.",
            example = json!({"status": "not ready", "reason": "the spool cannot write", "rabbitmq": "not connected; reconnecting with backoff"})),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let connected = state.publisher.is_connected();
    let spool = &state.spool;
    let rabbitmq = if connected {
        "connected"
    } else {
        "not connected; reconnecting with backoff"
    };
    if connected && spool.pending_callbacks() == 0 {
        return Json(json!({ "status": "ready" })).into_response();
    }
    let body = json!({
        "status": if spool.is_writable() { "degraded" } else { "not ready" },
        "reason": if spool.is_writable() { "spooling" } else { "the spool cannot write" },
        "rabbitmq": rabbitmq,
        "spool": {
            "pending_callbacks": spool.pending_callbacks(),
            "pending_ids": spool.pending_ids(),
        },
    });
    let status = if spool.is_writable() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
