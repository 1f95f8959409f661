//! The producer's OpenAPI document, served at `GET /openapi.json`: the callback request,
//! its answers with their JSON error bodies, and the health endpoints. The paths are
//! described next to their handlers (`#[utoipa::path]` in `handlers`), the bodies in
//! `schemas`; this module gathers them.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::handlers;
use super::schemas::{ErrorBody, ErrorCode, Health, Readiness, ReadinessStatus};
use crate::callback::ObjectIdSchema;

/// The document: paths from the handlers, schemas from their bodies.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lastseen producer",
        description = "Accepts callbacks of object ids and publishes them durably to RabbitMQ, \
                       for the consumers to check each id against the status service."
    ),
    paths(handlers::callback, handlers::healthz, handlers::readyz),
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
