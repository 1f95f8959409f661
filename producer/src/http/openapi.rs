//! The producer's OpenAPI document, served at `GET /openapi.json`: the callback request,
//! its answers with their JSON error bodies, the health endpoints and the read API. The paths are
//! described next to their handlers (`#[utoipa::path]` in `handlers`), the bodies in
//! `schemas`; this module gathers them.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::schemas::{ErrorBody, ErrorCode, Health, Readiness, ReadinessStatus};
use super::{handlers, reads};
use crate::callback::ObjectIdSchema;
use lastseen::store::reads::{Event, Expiry, ObjectState, Stretch};

/// The document: paths from the handlers, schemas from their bodies.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lastseen producer",
        description = "Accepts callbacks of object ids and publishes them durably to RabbitMQ, \
                       for the consumers to check each id against the status service, and answers \
                       what is known about the objects (the read API)."
    ),
    paths(
        handlers::callback,
        handlers::healthz,
        handlers::readyz,
        reads::object,
        reads::objects,
        reads::history,
        reads::events,
        reads::event_stream
    ),
    modifiers(&ApiKeyScheme),
    components(schemas(
        ObjectIdSchema,
        ErrorBody,
        ErrorCode,
        Health,
        Readiness,
        ReadinessStatus,
        ObjectState,
        Expiry,
        Stretch,
        Event,
        reads::ObjectPage,
        reads::HistoryPage,
        reads::EventPage
    )),
    tags(
        (name = "callbacks", description = "Batches of object ids seen alive"),
        (name = "health", description = "Liveness and readiness probes"),
        (name = "reads", description = "What is known: objects, their history and the transitions, from PostgreSQL (READ_DATABASE_URL)"),
    )
)]
pub struct ApiDoc;

/// The `api_key` security scheme: `Authorization: Bearer <key>`, needed by `/callback`
/// only when the producer has keys.
struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON for a producer whose `MAX_TTL_SECS` is `max_ttl_secs`: the
/// `ttl_secs` maximum it states is the one this producer enforces.
pub fn document_json(max_ttl_secs: u32) -> String {
    let mut document = serde_json::to_value(ApiDoc::openapi())
        .expect("the OpenAPI document is plain data and always serializes");
    let maximum = document
        .pointer_mut("/components/schemas/CallbackRequest/properties/ttl_secs/maximum")
        .expect("the callback request schema states a ttl_secs maximum");
    *maximum = serde_json::Value::from(max_ttl_secs);
    serde_json::to_string_pretty(&document).expect("a JSON value always serializes")
}

/// `GET /openapi.json`: the document, built once at start.
pub async fn document(json: Arc<str>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
}
