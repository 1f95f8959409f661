//! The producer's OpenAPI document, served at `GET /openapi.json`: the callback request,
//! its answers with their JSON error bodies, and the health endpoints. The paths are
//! described next to their handlers (`#[utoipa::path]` in `routes`); this module gathers
//! them and holds the schemas of bodies that the handlers build with `json!`.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// The document: paths from the handlers, schemas from their bodies.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lastseen producer",
        description = "Accepts callbacks of object ids and publishes them durably to RabbitMQ, \
                       for the consumers to check each id against the status service."
    ),
    paths(crate::routes::callback, crate::routes::healthz, crate::routes::readyz),
    components(schemas(ObjectIdSchema, ErrorBody, ErrorCode, Health, Readiness, ReadinessStatus)),
    tags(
        (name = "callbacks", description = "Batches of object ids seen alive"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once: it is the same for the life of the process.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document is plain data and always serializes")
});

/// `GET /openapi.json`: the document.
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// An object id: an integer from 0 to 2^63-1, the range PostgreSQL's BIGINT holds.
///
/// `lastseen::ObjectId` is the real type; it lives in the shared library, which does not
/// depend on utoipa, so its schema is written here.
pub struct ObjectIdSchema;

impl PartialSchema for ObjectIdSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(i64::MAX))
            .description(Some(
                "An object id: an integer from 0 to 2^63-1 (PostgreSQL BIGINT). A whole number \
                 written with a fraction or exponent (7.0, 7e0) is taken below 2^53 only.",
            ))
            .into()
    }
}

impl ToSchema for ObjectIdSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ObjectId".into()
    }
}

/// The body of every error answer of `POST /callback`.
#[derive(ToSchema)]
#[schema(example = json!({"error": "malformed_json", "message": "malformed JSON: EOF while parsing a list at line 1 column 17"}))]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub error: ErrorCode,
    /// What went wrong, for people: the reason and the offending value.
    pub message: String,
}

/// What went wrong, one code per cause: `malformed_json` (400, not JSON or cut short),
/// `unreadable_body` (400, the client broke off the body), `body_timeout` (408, the body
/// took longer than REQUEST_BODY_TIMEOUT_MS), `request_timeout` (408, no answer in 30 s),
/// `body_too_large` (413, over MAX_BODY_BYTES), `unsupported_media_type` (415, not
/// application/json), `invalid_callback` (422, JSON but not a callback), `unavailable`
/// (503, not accepted now; retry after Retry-After).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    UnreadableBody,
    BodyTimeout,
    RequestTimeout,
    BodyTooLarge,
    UnsupportedMediaType,
    InvalidCallback,
    Unavailable,
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
