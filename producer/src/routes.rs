//! HTTP routes: `POST /callback`, `/healthz`, `/readyz`, and the JSON error responses.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::callback::{BodyError, CallbackRequest, check_messages};
use crate::publisher::{CallbackPublisher, PublishError};

/// What every handler shares.
pub struct AppState {
    pub publisher: Arc<CallbackPublisher>,
    pub ids_per_message: usize,
    pub publish_timeout: Duration,
    pub max_body_bytes: u64,
}

/// The 202 answer: how many distinct ids were accepted.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
}

/// Why a callback was not accepted; each maps to a status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("content type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("could not read the request body: {0}")]
    Body(String),
    #[error(transparent)]
    Invalid(#[from] BodyError),
    #[error("the callback was not accepted, retry it later: {0}")]
    Unavailable(#[from] PublishError),
}

impl CallbackError {
    fn code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::Body(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
            Self::Invalid(BodyError::Syntax(_)) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::Invalid(BodyError::Shape(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let (status, code) = self.code();
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        let mut response = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
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

/// `POST /callback`: validate, de-duplicate, publish with confirms, then answer 202.
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
        } else {
            CallbackError::Body(rejection.body_text())
        }
    })?;
    let request = CallbackRequest::parse(&body)?;
    let ids = request.distinct_ids();
    let messages = check_messages(&ids, state.ids_per_message, Utc::now());
    // The bound is per 1,000 messages, so a 10,000-id callback gets the time it needs
    // while an ordinary one is answered well within a client's 1 s timeout.
    let thousands = u32::try_from(messages.len().div_ceil(1000).max(1)).unwrap_or(u32::MAX);
    let bound = state.publish_timeout.saturating_mul(thousands);
    state.publisher.publish(&messages, bound).await?;
    tracing::debug!(
        ids = ids.len(),
        messages = messages.len(),
        "callback accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: ids.len(),
        }),
    ))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: RabbitMQ answers; otherwise 503 naming it.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.publisher.is_connected() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "rabbitmq": "not connected; reconnecting with backoff" })),
        )
            .into_response()
    }
}
