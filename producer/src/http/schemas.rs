//! The schemas of the bodies the handlers build with `json!` (errors, health), for the
//! OpenAPI document.
// Only the OpenAPI document reads these types; the handlers build the bodies with `json!`.
#![allow(dead_code)]

use std::collections::HashMap;

use utoipa::ToSchema;

/// The body of every error answer.
#[derive(ToSchema)]
#[schema(example = json!({"error": "malformed_json", "message": "malformed JSON: EOF while parsing a list at line 1 column 17"}))]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub error: ErrorCode,
    /// What went wrong, for people: the reason and the offending value.
    pub message: String,
}

/// What went wrong, one code per cause: `missing_api_key` and `invalid_api_key` (401,
/// with API keys on: no `Authorization: Bearer` key, or not a valid one), `malformed_json` (400, not JSON or cut short),
/// `unreadable_body` (400, the client broke off the body), `body_timeout` (408, the body
/// took longer than REQUEST_BODY_TIMEOUT_MS), `request_timeout` (408, no answer in 30 s),
/// `body_too_large` (413, over MAX_BODY_BYTES), `unsupported_media_type` (415, not
/// application/json), `invalid_callback` (422, JSON but not a callback), `ttl_too_long`
/// (422, `ttl_secs` above MAX_TTL_SECS), `unavailable` (503, not accepted now; retry after
/// Retry-After), `overloaded` (503, MAX_BODY_BYTES_IN_FLIGHT, MAX_CONNECTIONS or
/// READ_MAX_STREAMS reached; retry after Retry-After). The read API's: `invalid_parameter`
/// (400, a path or query parameter it cannot take, named in the message), `unknown_object`
/// (404), `reads_off` (503, READ_DATABASE_URL unset), `database_unavailable` (503,
/// PostgreSQL did not answer the read).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MissingApiKey,
    InvalidApiKey,
    MalformedJson,
    UnreadableBody,
    BodyTimeout,
    RequestTimeout,
    BodyTooLarge,
    UnsupportedMediaType,
    InvalidCallback,
    TtlTooLong,
    Unavailable,
    Overloaded,
    InvalidParameter,
    UnknownObject,
    ReadsOff,
    DatabaseUnavailable,
}

/// The process is alive.
#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// Whether callbacks are accepted, and if not, or only into the spool, why.
#[derive(ToSchema)]
pub struct Readiness {
    pub status: ReadinessStatus,
    /// Per component (`rabbitmq`, `spool`, …): what is wrong with it, when something is.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub components: HashMap<String, serde_json::Value>,
}

/// `ready`: RabbitMQ is connected and callbacks are published at once; `degraded`:
/// callbacks are accepted into the local spool (RabbitMQ unavailable) and published once it
/// is back; `not ready`: callbacks are not accepted now.
#[derive(ToSchema)]
pub enum ReadinessStatus {
    #[serde(rename = "ready")]
    Ready,
    #[serde(rename = "degraded")]
    Degraded,
    #[serde(rename = "not ready")]
    NotReady,
}
