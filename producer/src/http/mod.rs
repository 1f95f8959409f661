//! The HTTP layer on top of the callback logic: the router with its limits and request
//! ids, the handlers, their JSON errors, the OpenAPI document and the connection server.
//! Nothing below it (`callback`, `publisher`, `spool`) knows HTTP.

mod admission;
mod api_keys;
mod error;
mod handlers;
mod openapi;
mod reads;
mod schemas;
mod server;
mod status_page;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use lastseen::contract::header::REQUEST_ID;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyDeadlineLayer;
use tower_http::trace::TraceLayer;

pub use api_keys::ApiKeys;
pub use handlers::AppState;
pub use reads::ReadApi;
pub use server::serve;

/// Bound on a whole request, so no client holds a connection's resources forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer's routes and layers. `body_timeout` bounds the time a client may take to
/// send its whole body.
pub fn router(state: AppState, keys: ApiKeys, body_timeout: Duration) -> Router {
    let body_limit = usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX);
    let document: Arc<str> = openapi::document_json(state.max_ttl_secs).into();
    let budget = admission::BodyBudget::new(state.max_body_bytes_in_flight, state.max_body_bytes);
    // The read API takes the same keys as callbacks, when the producer has keys.
    let read_routes = Router::new()
        .route("/objects", get(reads::objects))
        .route("/objects/{id}", get(reads::object))
        .route("/objects/{id}/history", get(reads::history))
        .route("/events", get(reads::events))
        .route("/events/stream", get(reads::event_stream))
        .route("/", get(status_page::root))
        .route("/status", get(status_page::page))
        .route("/status/figures", get(status_page::figures))
        .route_layer(axum::middleware::from_fn_with_state(
            keys.clone(),
            api_keys::authenticate,
        ));
    Router::new()
        .merge(read_routes)
        .route(
            "/callback",
            post(handlers::callback)
                .route_layer(axum::middleware::from_fn_with_state(
                    budget,
                    admission::admit,
                ))
                // Outermost: a request without a valid key takes no share of the budget.
                .route_layer(axum::middleware::from_fn_with_state(
                    keys,
                    api_keys::authenticate,
                )),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(lastseen::ops::metrics))
        .route(
            "/openapi.json",
            get(move || openapi::document(document.clone())),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        // A deadline on the whole body, not on the gap between bytes: a body trickled
        // at a byte a second must not hold the request open either.
        .layer(RequestBodyDeadlineLayer::new(body_timeout))
        .layer(axum::middleware::from_fn(|request, next| {
            error::answer_within(REQUEST_TIMEOUT, request, next)
        }))
        // Every request gets an id (the client's `x-request-id`, or a new UUID): it is in
        // the request's log span, in the answer, and in the check messages.
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(Arc::new(state))
}

/// The log span of one request, with its request id.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        request_id,
    )
}
