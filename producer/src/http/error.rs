//! Why a callback was not accepted: each cause maps to a status and a JSON body
//! `{"error": code, "message": text}`, and the 30 s backstop that answers in time.

use lastseen::contract::metric;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::callback::BodyError;
use crate::spool::SpoolError;

/// Why a callback was not accepted; each maps to a status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("this producer takes callbacks with an API key only: send Authorization: Bearer <key>")]
    MissingApiKey,
    #[error("the API key is not one of this producer's keys")]
    InvalidApiKey,
    #[error("content type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("could not read the request body: {0}")]
    Body(String),
    #[error("the request body was not received in full within {0:?} (REQUEST_BODY_TIMEOUT_MS)")]
    BodyTimeout(Duration),
    #[error(
        "the request was not answered within {0:?}; it may or may not have been accepted, so retry it"
    )]
    RequestTimeout(Duration),
    #[error(transparent)]
    Invalid(#[from] BodyError),
    #[error("ttl_secs {ttl} is above this producer's limit of {max} (MAX_TTL_SECS)")]
    TtlTooLong { ttl: u32, max: u32 },
    #[error(
        "the producer is taking as many callbacks as MAX_BODY_BYTES_IN_FLIGHT or MAX_CONNECTIONS allow; retry it shortly"
    )]
    Overloaded,
    #[error(
        "RabbitMQ is unavailable and the spool could not take the callback; retry it later: {0}"
    )]
    Unavailable(#[from] SpoolError),
}

impl CallbackError {
    fn code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingApiKey => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            Self::InvalidApiKey => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::Body(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Invalid(BodyError::Syntax(_)) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::Invalid(BodyError::Shape(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_callback")
            }
            Self::TtlTooLong { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "ttl_too_long"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let (status, code) = self.code();
        metrics::counter!(metric::CALLBACKS_TOTAL, "outcome" => code).increment(1);
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

/// Answers a request not answered within `limit` with 408 `request_timeout`, as JSON like
/// every other error. A backstop: the body deadline and the publish bound come first.
pub async fn answer_within(
    limit: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => CallbackError::RequestTimeout(limit).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn a_request_not_answered_in_time_gets_a_json_408() {
        let router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "too late"
                }),
            )
            .layer(axum::middleware::from_fn(|request, next| {
                answer_within(Duration::from_secs(30), request, next)
            }));
        let request = axum::http::Request::get("/slow")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "request_timeout");
        assert!(body["message"].as_str().unwrap().contains("30s"), "{body}");
    }
}
