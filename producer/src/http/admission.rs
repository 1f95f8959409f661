//! Admission of callbacks by the memory their bodies may take. A body is read only with
//! budget reserved for it (its `Content-Length`, or `MAX_BODY_BYTES` when it gives none),
//! so however many clients send large bodies slowly, at most `MAX_BODY_BYTES_IN_FLIGHT`
//! are buffered at once; a callback beyond it gets 503 `overloaded` at once. A quarter of
//! the budget is kept for small bodies, so ordinary callbacks are still taken while large
//! ones fill the rest.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::CallbackError;

/// A body up to this size is small: it may use the part of the budget kept for small ones.
/// A callback of 2,000 ids is about 16 KiB.
const SMALL_BODY_BYTES: u64 = 64 * 1024;

/// The budget is counted in KiB, so a semaphore's permits can hold any sensible size.
const UNIT_BYTES: u64 = 1024;

/// The bytes all request bodies being read may take together.
#[derive(Clone)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    /// Units only small bodies may take.
    kept_for_small: usize,
    max_body_bytes: u64,
}

impl BodyBudget {
    /// A budget of `total_bytes` for bodies of at most `max_body_bytes` each.
    pub fn new(total_bytes: u64, max_body_bytes: u64) -> Self {
        let units = usize::try_from(total_bytes.div_ceil(UNIT_BYTES)).unwrap_or(usize::MAX);
        Self {
            units: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            kept_for_small: units / 4,
            max_body_bytes,
        }
    }
}

/// Reads the callback's body only if the budget has room for it; answers 503 otherwise.
pub async fn admit(State(budget): State<BodyBudget>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body over the limit is refused (413) by the handler after reading at most the
    // limit: that much is what it can take.
    let bytes = declared.map_or(budget.max_body_bytes, |n| n.min(budget.max_body_bytes));
    let units = u32::try_from(bytes.div_ceil(UNIT_BYTES).max(1)).unwrap_or(u32::MAX);
    let Ok(permit) = budget.units.clone().try_acquire_many_owned(units) else {
        return CallbackError::Overloaded.into_response();
    };
    if bytes > SMALL_BODY_BYTES && budget.units.available_permits() < budget.kept_for_small {
        // Large bodies must leave the small ones their part.
        return CallbackError::Overloaded.into_response();
    }
    let response = next.run(request).await;
    drop(permit);
    response
}
