//! The read API: `GET /objects/{id}`, `/objects`, `/objects/{id}/history`, `/events` and
//! the live `/events/stream` (server-sent events), answered from PostgreSQL through their
//! own small read-only pool (`READ_DATABASE_URL`), never through anything ingest uses.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::Stream;
use lastseen::ObjectId;
use lastseen::store::reads::{self, Event, EventSeq, Listed, ObjectCursor, ObjectState, Order};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::AppState;

/// Page size when a request names none, and the largest it may name.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// How often a live stream looks for new events while there are none.
const STREAM_POLL: Duration = Duration::from_millis(500);
/// Pause of a live stream after PostgreSQL failed to answer, before it asks again.
const STREAM_RETRY: Duration = Duration::from_secs(2);

/// Later than every expiry (9999-12-31): the `before` that follows the current stretch.
const AFTER_EVERY_EXPIRY: DateTime<Utc> = DateTime::from_timestamp(253_402_300_799, 0).unwrap();

/// What the read endpoints share: the read-only pool, the bound on live streams, and the
/// producer's shutdown, which ends every live stream.
#[derive(Clone)]
pub struct ReadApi {
    pub pool: PgPool,
    /// The status page's figures.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
    pub streams: Arc<Semaphore>,
    pub shutdown: CancellationToken,
}

/// Why a read was not answered; each maps to a status and the JSON error body.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "the read API is off on this producer: set READ_DATABASE_URL to a read-only PostgreSQL login"
    )]
    Off,
    #[error("{name}: {reason}")]
    InvalidParameter { name: String, reason: String },
    #[error("object {0} was never seen, or its history is past retention")]
    UnknownObject(i64),
    #[error("as many live event streams are open as READ_MAX_STREAMS allows; retry later")]
    TooManyStreams,
    #[error("PostgreSQL did not answer the read: {0}")]
    Database(#[from] sqlx::Error),
}

impl ReadError {
    fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    fn code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Off => (StatusCode::SERVICE_UNAVAILABLE, "reads_off"),
            Self::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            Self::UnknownObject(_) => (StatusCode::NOT_FOUND, "unknown_object"),
            Self::TooManyStreams => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
        }
    }
}

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        let (status, code) = self.code();
        if let Self::Database(err) = &self {
            tracing::warn!(error = %err, "a read failed");
        }
        let mut response = (
            status,
            Json(json!({ "error": code, "message": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A page of objects.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ObjectPage {
    pub objects: Vec<ObjectState>,
    /// Give it as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// A page of an object's stretches online, the latest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    pub object_id: i64,
    pub stretches: Vec<reads::Stretch>,
    /// Give it as `before` for older stretches; null on the last page.
    pub next: Option<String>,
}

/// A page of events in replay order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Where to read on from: the last event's `seq`, or `after` itself when there was
    /// none.
    #[schema(value_type = String)]
    pub next: EventSeq,
}

/// `GET /objects/{id}`: one object, online or not.
#[utoipa::path(
    get,
    path = "/objects/{id}",
    tag = "reads",
    summary = "One object: online or not, its current stretch and its latest expiry",
    params(("id" = i64, Path, description = "The object's id")),
    responses(
        (status = 200, body = ObjectState),
        (status = 400, body = super::schemas::ErrorBody, description = "`invalid_parameter`: the id is not an object id"),
        (status = 404, body = super::schemas::ErrorBody, description = "`unknown_object`: never seen, or past retention"),
        (status = 503, body = super::schemas::ErrorBody, description = "`reads_off` or `database_unavailable`"),
    ),
    security((), ("api_key" = []))
)]
pub async fn object(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ObjectState>, ReadError> {
    let api = state.reads()?;
    let id = object_id("id", &id)?;
    reads::object(&api.pool, id)
        .await?
        .map(Json)
        .ok_or(ReadError::UnknownObject(id))
}

/// `GET /objects`: objects online now (or expired and not back), in pages.
#[utoipa::path(
    get,
    path = "/objects",
    tag = "reads",
    summary = "Objects online (or expired), by id or longest silent first, in pages",
    params(
        ("state" = Option<String>, Query, description = "`online` (default: not expired and not stale), `stale` (silent past the stale deadline, not yet expired) or `expired` (expired and not back since)"),
        ("order" = Option<String>, Query, description = "`id` (default) or `quietest` (longest silent first: by last sighting, then id)"),
        ("after" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<i64>, Query, description = "Objects per page, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, body = ObjectPage),
        (status = 400, body = super::schemas::ErrorBody, description = "`invalid_parameter`"),
        (status = 503, body = super::schemas::ErrorBody, description = "`reads_off` or `database_unavailable`"),
    ),
    security((), ("api_key" = []))
)]
pub async fn objects(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<ObjectPage>, ReadError> {
    let api = state.reads()?;
    let mut params = Params::parse(query.as_deref(), &["state", "order", "after", "limit"])?;
    let listed = match params.take("state").as_deref() {
        None | Some("online") => Listed::Online,
        Some("stale") => Listed::Stale,
        Some("expired") => Listed::Expired,
        Some(other) => {
            return Err(ReadError::invalid(
                "state",
                format!("expected online, stale or expired, got {other:?}"),
            ));
        }
    };
    let order = match params.take("order").as_deref() {
        None | Some("id") => Order::Id,
        Some("quietest") => Order::Quietest,
        Some(other) => {
            return Err(ReadError::invalid(
                "order",
                format!("expected id or quietest, got {other:?}"),
            ));
        }
    };
    let limit = params.limit()?;
    let after = match params.take("after") {
        None => None,
        Some(text) => Some(object_cursor(order, &text)?),
    };
    let objects = reads::objects(&api.pool, listed, order, after, limit).await?;
    let next = (objects.len() as i64 == limit)
        .then(|| objects.last().map(|last| cursor_of(order, last)))
        .flatten();
    Ok(Json(ObjectPage { objects, next }))
}

/// `GET /objects/{id}/history`: an object's stretches online, the latest first.
#[utoipa::path(
    get,
    path = "/objects/{id}/history",
    tag = "reads",
    summary = "An object's stretches online, the latest (current) first, in pages",
    params(
        ("id" = i64, Path, description = "The object's id"),
        ("before" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<i64>, Query, description = "Stretches per page, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, body = super::schemas::ErrorBody, description = "`invalid_parameter`"),
        (status = 404, body = super::schemas::ErrorBody, description = "`unknown_object`"),
        (status = 503, body = super::schemas::ErrorBody, description = "`reads_off` or `database_unavailable`"),
    ),
    security((), ("api_key" = []))
)]
pub async fn history(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<HistoryPage>, ReadError> {
    let api = state.reads()?;
    let id = object_id("id", &id)?;
    let mut params = Params::parse(query.as_deref(), &["before", "limit"])?;
    let limit = params.limit()?;
    let before = match params.take("before") {
        None => None,
        Some(text) => Some(timestamp("before", &text)?),
    };
    let stretches = reads::stretches(&api.pool, id, before, limit).await?;
    if stretches.is_empty() && before.is_none() {
        return Err(ReadError::UnknownObject(id));
    }
    // After the current stretch (not expired), every expired one is older.
    let next = (stretches.len() as i64 == limit)
        .then(|| stretches.last())
        .flatten()
        .map(|last| micros(last.expired_at.unwrap_or(AFTER_EVERY_EXPIRY)));
    Ok(Json(HistoryPage {
        object_id: id,
        stretches,
        next,
    }))
}

/// `GET /events`: transitions in replay order, after a place.
#[utoipa::path(
    get,
    path = "/events",
    tag = "reads",
    summary = "Transitions (notifications) in the order they became final, after a place",
    description = "Every transition exactly once, in order: read on with `after` set to the \
                   `next` of the previous page, also after the reader restarts. An event shows \
                   once every transaction older than its own has ended.",
    params(
        ("after" = Option<String>, Query, description = "A `seq` (or `next`); `0` (default) is the start of the kept history"),
        ("limit" = Option<i64>, Query, description = "Events per page, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = super::schemas::ErrorBody, description = "`invalid_parameter`"),
        (status = 503, body = super::schemas::ErrorBody, description = "`reads_off` or `database_unavailable`"),
    ),
    security((), ("api_key" = []))
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, ReadError> {
    let api = state.reads()?;
    let mut params = Params::parse(query.as_deref(), &["after", "limit"])?;
    let limit = params.limit()?;
    let after = match params.take("after") {
        None => EventSeq::START,
        Some(text) => event_seq("after", &text)?,
    };
    let events = reads::events(&api.pool, after, limit).await?;
    let next = events.last().map_or(after, |last| last.seq);
    Ok(Json(EventPage { events, next }))
}

/// `GET /events/stream`: the same events, live, as server-sent events.
#[utoipa::path(
    get,
    path = "/events/stream",
    tag = "reads",
    summary = "Transitions live, as server-sent events (text/event-stream)",
    description = "Each event's `id` is its `seq`, its `event` its type, its `data` the event \
                   as `GET /events` gives it. Starts after `Last-Event-ID` (a browser's \
                   EventSource sends it when it reconnects), else after `after`, else at the \
                   latest event: only new ones.",
    params(("after" = Option<String>, Query, description = "A `seq` to start after")),
    responses(
        (status = 200, content_type = "text/event-stream", description = "The stream"),
        (status = 400, body = super::schemas::ErrorBody, description = "`invalid_parameter`"),
        (status = 503, body = super::schemas::ErrorBody, description = "`reads_off`, `overloaded` (READ_MAX_STREAMS) or `database_unavailable`"),
    ),
    security((), ("api_key" = []))
)]
pub async fn event_stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ReadError> {
    let api = state.reads()?.clone();
    let mut params = Params::parse(query.as_deref(), &["after"])?;
    let resume = headers
        .get("last-event-id")
        .map(|v| event_seq("Last-Event-ID", v.to_str().unwrap_or("?")))
        .transpose()?;
    let after = match (resume, params.take("after")) {
        (Some(seq), _) => seq,
        (None, Some(text)) => event_seq("after", &text)?,
        (None, None) => reads::events_end(&api.pool).await?,
    };
    let permit = api
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ReadError::TooManyStreams)?;
    let stream = futures::stream::unfold(
        (after, VecDeque::<Event>::new(), permit),
        move |(mut at, mut queue, permit)| {
            let api = api.clone();
            async move {
                loop {
                    if api.shutdown.is_cancelled() {
                        return None;
                    }
                    if let Some(event) = queue.pop_front() {
                        at = event.seq;
                        return Some((Ok(sse_event(&event)), (at, queue, permit)));
                    }
                    let pause = match reads::events(&api.pool, at, MAX_LIMIT).await {
                        // A full page: more is waiting, read on at once.
                        Ok(events) if events.len() as i64 == MAX_LIMIT => {
                            queue.extend(events);
                            continue;
                        }
                        Ok(events) if !events.is_empty() => {
                            queue.extend(events);
                            Duration::ZERO
                        }
                        Ok(_) => STREAM_POLL,
                        Err(err) => {
                            tracing::warn!(error = %err, "a live event stream could not read; retrying");
                            STREAM_RETRY
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = api.shutdown.cancelled() => return None,
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sse_event(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .json_data(event)
        .unwrap_or_else(|_| SseEvent::default().comment("an event that did not serialize"))
}

impl AppState {
    fn reads(&self) -> Result<&ReadApi, ReadError> {
        self.reads.as_ref().ok_or(ReadError::Off)
    }
}

/// A request's query parameters, each taken once; any other name is refused.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, ReadError> {
        let mut params = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !known.contains(&name.as_ref()) {
                return Err(ReadError::invalid(
                    &name,
                    format!(
                        "unknown parameter; this endpoint takes {}",
                        known.join(", ")
                    ),
                ));
            }
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(ReadError::invalid(&name, "given more than once"));
            }
        }
        Ok(Self(params))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn limit(&mut self) -> Result<i64, ReadError> {
        match self.take("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ReadError::invalid(
                    "limit",
                    format!("expected an integer from 1 to {MAX_LIMIT}, got {text:?}"),
                )),
            },
        }
    }
}

fn object_id(name: &str, text: &str) -> Result<i64, ReadError> {
    text.parse::<i64>()
        .ok()
        .and_then(ObjectId::new)
        .map(ObjectId::get)
        .ok_or_else(|| {
            ReadError::invalid(
                name,
                format!(
                    "expected an object id (an integer from 0 to {}), got {text:?}",
                    ObjectId::MAX
                ),
            )
        })
}

fn event_seq(name: &str, text: &str) -> Result<EventSeq, ReadError> {
    text.parse()
        .map_err(|err: reads::BadEventSeq| ReadError::invalid(name, err.to_string()))
}

/// A page cursor's time: microseconds since the Unix epoch.
fn timestamp(name: &str, text: &str) -> Result<DateTime<Utc>, ReadError> {
    text.parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| {
            ReadError::invalid(
                name,
                format!("expected the `next` of a previous page, got {text:?}"),
            )
        })
}

fn micros(at: DateTime<Utc>) -> String {
    at.timestamp_micros().to_string()
}

/// The `next` of a page ending at `last`: its id, or its last sighting and id.
fn cursor_of(order: Order, last: &ObjectState) -> String {
    match order {
        Order::Id => last.id.to_string(),
        Order::Quietest => format!("{}_{}", micros(last.last_seen), last.id),
    }
}

fn object_cursor(order: Order, text: &str) -> Result<ObjectCursor, ReadError> {
    let bad = || {
        ReadError::invalid(
            "after",
            format!("expected the `next` of a previous page in the same order, got {text:?}"),
        )
    };
    match order {
        Order::Id => Ok(ObjectCursor {
            last_seen: reads::BEFORE_ANY_SIGHTING,
            id: object_id("after", text)?,
        }),
        Order::Quietest => {
            let (at, id) = text.split_once('_').ok_or_else(bad)?;
            Ok(ObjectCursor {
                last_seen: timestamp("after", at).map_err(|_| bad())?,
                id: object_id("after", id).map_err(|_| bad())?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert!(Params::parse(Some("limit=5&lmit=3"), &["limit"]).is_err());
        assert!(Params::parse(Some("limit=5&limit=3"), &["limit"]).is_err());
        let mut params = Params::parse(Some("limit=5"), &["limit"]).unwrap();
        assert_eq!(params.limit().unwrap(), 5);
    }

    #[test]
    fn limits_outside_1_to_1000_are_refused() {
        for bad in ["0", "1001", "-1", "x", ""] {
            let mut params = Params::parse(Some(&format!("limit={bad}")), &["limit"]).unwrap();
            assert!(params.limit().is_err(), "limit={bad} was taken");
        }
    }

    #[test]
    fn a_quietest_cursor_reads_back() {
        let state = ObjectState {
            id: 42,
            online: true,
            state: "online",
            first_seen: None,
            last_seen: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            expires_at: None,
            stale_at: None,
            stale_since: None,
            last_expiry: None,
        };
        let text = cursor_of(Order::Quietest, &state);
        let cursor = object_cursor(Order::Quietest, &text).unwrap();
        assert_eq!((cursor.last_seen, cursor.id), (state.last_seen, 42));
        assert!(object_cursor(Order::Quietest, "42").is_err());
        assert!(object_cursor(Order::Id, "-3").is_err());
    }
}
