//! What readers ask, for the read API: one object, objects by state in pages, an object's
//! stretches online, and the transitions in the order they became final. Read-only
//! statements, meant for a pool of the read-only role.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// An object as readers see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ObjectState {
    pub id: i64,
    /// In `objects` now: seen online and its deadline not yet swept (stale or not).
    pub online: bool,
    /// `online`, `stale` (silent past its stale deadline, not yet expired) or `expired`.
    #[schema(example = "online")]
    pub state: &'static str,
    /// When it goes stale unless seen again (null when no stale delay applies, or not
    /// online).
    pub stale_at: Option<DateTime<Utc>>,
    /// When it was marked stale (null unless stale).
    pub stale_since: Option<DateTime<Utc>>,
    /// Start of the current stretch online (null when not online).
    pub first_seen: Option<DateTime<Utc>>,
    /// Its latest sighting, online now or before its latest expiry.
    pub last_seen: DateTime<Utc>,
    /// The current deadline (null when not online).
    pub expires_at: Option<DateTime<Utc>>,
    /// The end of its latest stretch, when it has expired before.
    pub last_expiry: Option<Expiry>,
}

/// The end of a stretch online.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Expiry {
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired_at: DateTime<Utc>,
}

/// One stretch online of an object: from `first_seen` to its deadline, and when it was
/// expired (null for the current one).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Stretch {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired_at: Option<DateTime<Utc>>,
}

/// One transition (a notification of the outbox) with its place in the replay order.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Its place in the order: give it back as `after` to read on from it.
    #[schema(value_type = String, example = "7391.1024")]
    pub seq: EventSeq,
    /// The notification's id (also the `message_id` it was published with).
    pub id: i64,
    /// `object.online`, `object.expired`, `objects.expired.digest`, `pipeline.lagging`...
    #[serde(rename = "type")]
    pub kind: String,
    pub object_id: Option<i64>,
    /// The notification's body, as published.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// When it was raised.
    pub raised_at: DateTime<Utc>,
}

/// A place in the replay order of transitions: the transaction that raised an event, then
/// its id. Written `<transaction>.<id>`; `0` is the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventSeq {
    transaction: u64,
    id: i64,
}

impl EventSeq {
    /// Before every event.
    pub const START: Self = Self {
        transaction: 0,
        id: 0,
    };
}

impl EventSeq {
    /// The place just before this one: reading on from it starts with this event.
    pub fn predecessor(self) -> Self {
        if self.id > 0 {
            Self {
                id: self.id - 1,
                ..self
            }
        } else {
            Self::START
        }
    }
}

impl fmt::Display for EventSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::START {
            f.write_str("0")
        } else {
            write!(f, "{}.{}", self.transaction, self.id)
        }
    }
}

impl Serialize for EventSeq {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a text is not an [`EventSeq`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected 0 or <transaction>.<id> as an event's seq gives it, got {0:?}")]
pub struct BadEventSeq(String);

impl FromStr for EventSeq {
    type Err = BadEventSeq;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadEventSeq(text.chars().take(64).collect());
        if text == "0" {
            return Ok(Self::START);
        }
        let (transaction, id) = text.split_once('.').ok_or_else(bad)?;
        let transaction = transaction.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        if id < 0 {
            return Err(bad());
        }
        Ok(Self { transaction, id })
    }
}

/// Which objects a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// In `objects` and not stale.
    Online,
    /// In `objects` and stale.
    Stale,
    /// Expired and not back since.
    Expired,
}

/// How a page is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By id, ascending.
    Id,
    /// Longest silent first: by last sighting, then id.
    Quietest,
}

/// Where a page starts: after this object in the page's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectCursor {
    pub last_seen: DateTime<Utc>,
    pub id: i64,
}

/// Earlier than every sighting (0001-01-01), and inside PostgreSQL's range.
pub const BEFORE_ANY_SIGHTING: DateTime<Utc> =
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap();

/// One object: `None` when it was never seen (or its history is past retention).
pub async fn object(pool: &PgPool, id: i64) -> sqlx::Result<Option<ObjectState>> {
    let row: Option<ObjectRow> = sqlx::query_as(
        "SELECT $1::bigint AS id, o.first_seen, o.last_seen, o.expires_at, o.stale_at,
                o.stale_since, e.last_seen AS e_last_seen, e.expires_at AS e_expires_at, e.expired_at
         FROM (SELECT) one
         LEFT JOIN objects o ON o.id = $1
         LEFT JOIN object_last_expiry e ON e.object_id = $1
         WHERE o.id IS NOT NULL OR e.object_id IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(ObjectRow::into_state))
}

/// Up to `limit` objects in `listed`, sorted by `order`, after `after`.
pub async fn objects(
    pool: &PgPool,
    listed: Listed,
    order: Order,
    after: Option<ObjectCursor>,
    limit: i64,
) -> sqlx::Result<Vec<ObjectState>> {
    // The stale filters are spelled out (not a parameter), so the stale listing reads
    // the small partial index of stale objects.
    macro_rules! in_objects {
        ($filter:literal) => {
            concat!(
                "SELECT o.id, o.first_seen, o.last_seen, o.expires_at, o.stale_at, o.stale_since,
                        e.last_seen AS e_last_seen, e.expires_at AS e_expires_at, e.expired_at
                 FROM objects o LEFT JOIN object_last_expiry e ON e.object_id = o.id
                 WHERE ",
                $filter
            )
        };
    }
    let sql = match (listed, order) {
        (Listed::Online, Order::Id) => {
            in_objects!("o.stale_since IS NULL AND o.id > $2 ORDER BY o.id LIMIT $3")
        }
        (Listed::Online, Order::Quietest) => in_objects!(
            "o.stale_since IS NULL AND (o.last_seen, o.id) > ($1, $2)
             ORDER BY o.last_seen, o.id LIMIT $3"
        ),
        (Listed::Stale, Order::Id) => {
            in_objects!("o.stale_since IS NOT NULL AND o.id > $2 ORDER BY o.id LIMIT $3")
        }
        (Listed::Stale, Order::Quietest) => in_objects!(
            "o.stale_since IS NOT NULL AND (o.last_seen, o.id) > ($1, $2)
             ORDER BY o.last_seen, o.id LIMIT $3"
        ),
        (Listed::Expired, Order::Id) => {
            "SELECT e.object_id AS id, NULL::timestamptz AS first_seen,
                    NULL::timestamptz AS last_seen, NULL::timestamptz AS expires_at,
                    NULL::timestamptz AS stale_at, NULL::timestamptz AS stale_since,
                    e.last_seen AS e_last_seen, e.expires_at AS e_expires_at, e.expired_at
             FROM object_last_expiry e
             WHERE e.object_id > $2 AND NOT EXISTS (SELECT FROM objects o WHERE o.id = e.object_id)
             ORDER BY e.object_id LIMIT $3"
        }
        (Listed::Expired, Order::Quietest) => {
            "SELECT e.object_id AS id, NULL::timestamptz AS first_seen,
                    NULL::timestamptz AS last_seen, NULL::timestamptz AS expires_at,
                    NULL::timestamptz AS stale_at, NULL::timestamptz AS stale_since,
                    e.last_seen AS e_last_seen, e.expires_at AS e_expires_at, e.expired_at
             FROM object_last_expiry e
             WHERE (e.last_seen, e.object_id) > ($1, $2)
               AND NOT EXISTS (SELECT FROM objects o WHERE o.id = e.object_id)
             ORDER BY e.last_seen, e.object_id LIMIT $3"
        }
    };
    let after = after.unwrap_or(ObjectCursor {
        last_seen: BEFORE_ANY_SIGHTING,
        id: -1,
    });
    let rows: Vec<ObjectRow> = sqlx::query_as(sql)
        .bind(after.last_seen)
        .bind(after.id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(ObjectRow::into_state).collect())
}

/// Up to `limit` stretches of an object, the latest first; with `before`, only those
/// expired before it.
pub async fn stretches(
    pool: &PgPool,
    id: i64,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> sqlx::Result<Vec<Stretch>> {
    sqlx::query_as(
        "SELECT first_seen, last_seen, expires_at, expired_at FROM object_history
         WHERE object_id = $1 AND ($2::timestamptz IS NULL OR expired_at < $2)
         ORDER BY expired_at DESC NULLS FIRST LIMIT $3",
    )
    .bind(id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` events after `after`, in replay order. Only events whose transaction is
/// older than every transaction still running are returned: those are final, and no
/// event can commit later with a place before them, so reading on from the last one
/// returned misses none and repeats none.
pub async fn events(pool: &PgPool, after: EventSeq, limit: i64) -> sqlx::Result<Vec<Event>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT raised_in::text AS tx, id, routing_key, object_id, payload, created_at
         FROM notifications
         WHERE (raised_in, id) > ($1::text::xid8, $2)
           AND raised_in < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY raised_in, id LIMIT $3",
    )
    .bind(after.transaction.to_string())
    .bind(after.id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(EventRow::into_event).collect()
}

/// The place of the latest final event: reading on from it gives only events raised
/// from now on.
pub async fn events_end(pool: &PgPool) -> sqlx::Result<EventSeq> {
    events_back(pool, 0).await
}

/// How many objects are online now (stale ones included: not expired).
pub async fn online_count(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM objects")
        .fetch_one(pool)
        .await
}

/// How many objects are stale now (read through their own small index).
pub async fn stale_count(pool: &PgPool) -> sqlx::Result<i64> {
    super::objects::stale_count(pool).await
}

/// How many notifications the relay has not published yet.
pub async fn unpublished_count(pool: &PgPool) -> sqlx::Result<i64> {
    super::notifications::count_pending(pool).await
}

/// The place `back` events before the latest final one (the start, if there are fewer):
/// where a reader that wants roughly the recent past starts.
pub async fn events_back(pool: &PgPool, back: i64) -> sqlx::Result<EventSeq> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT raised_in::text AS tx, id FROM notifications
         WHERE raised_in < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY raised_in DESC, id DESC OFFSET $1 LIMIT 1",
    )
    .bind(back)
    .fetch_optional(pool)
    .await?;
    match row {
        None => Ok(EventSeq::START),
        Some((transaction, id)) => Ok(EventSeq {
            transaction: parse_xid8(&transaction)?,
            id,
        }),
    }
}

/// Events of one type raised in one minute.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MinuteCount {
    pub minute: DateTime<Utc>,
    pub kind: String,
    pub count: i64,
}

/// How many events of each type were raised in each minute since `since`, among those
/// after `after` up to and including `upto` in replay order (a range [`events_end`] and
/// its predecessors give: every event is counted once over consecutive ranges).
pub async fn minute_counts(
    pool: &PgPool,
    after: EventSeq,
    upto: EventSeq,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<MinuteCount>> {
    sqlx::query_as(
        "SELECT date_trunc('minute', created_at) AS minute, routing_key AS kind, count(*) AS count
         FROM notifications
         WHERE (raised_in, id) > ($1::text::xid8, $2) AND (raised_in, id) <= ($3::text::xid8, $4)
           AND created_at >= $5
         GROUP BY 1, 2",
    )
    .bind(after.transaction.to_string())
    .bind(after.id)
    .bind(upto.transaction.to_string())
    .bind(upto.id)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// The latest event of type `kind` after `after` up to `upto`, if any.
pub async fn latest_of_kind(
    pool: &PgPool,
    kind: &str,
    after: EventSeq,
    upto: EventSeq,
) -> sqlx::Result<Option<Event>> {
    let row: Option<EventRow> = sqlx::query_as(
        "SELECT raised_in::text AS tx, id, routing_key, object_id, payload, created_at
         FROM notifications
         WHERE (raised_in, id) > ($1::text::xid8, $2) AND (raised_in, id) <= ($3::text::xid8, $4)
           AND routing_key = $5
         ORDER BY raised_in DESC, id DESC LIMIT 1",
    )
    .bind(after.transaction.to_string())
    .bind(after.id)
    .bind(upto.transaction.to_string())
    .bind(upto.id)
    .bind(kind)
    .fetch_optional(pool)
    .await?;
    row.map(EventRow::into_event).transpose()
}

fn parse_xid8(text: &str) -> sqlx::Result<u64> {
    text.parse()
        .map_err(|_| sqlx::Error::Decode(format!("not a transaction id: {text:?}").into()))
}

#[derive(sqlx::FromRow)]
struct ObjectRow {
    id: i64,
    first_seen: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    stale_at: Option<DateTime<Utc>>,
    stale_since: Option<DateTime<Utc>>,
    e_last_seen: Option<DateTime<Utc>>,
    e_expires_at: Option<DateTime<Utc>>,
    expired_at: Option<DateTime<Utc>>,
}

impl ObjectRow {
    fn into_state(self) -> ObjectState {
        let last_expiry = match (self.e_last_seen, self.e_expires_at, self.expired_at) {
            (Some(last_seen), Some(expires_at), Some(expired_at)) => Some(Expiry {
                last_seen,
                expires_at,
                expired_at,
            }),
            _ => None,
        };
        let online = self.last_seen.is_some();
        let state = match (online, self.stale_since.is_some()) {
            (false, _) => "expired",
            (true, false) => "online",
            (true, true) => "stale",
        };
        ObjectState {
            id: self.id,
            online,
            state,
            stale_at: self.stale_at,
            stale_since: self.stale_since,
            first_seen: self.first_seen,
            last_seen: self
                .last_seen
                .or(self.e_last_seen)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            expires_at: self.expires_at,
            last_expiry,
        }
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    /// The raising transaction as text (sqlx has no xid8). Named apart from the column so
    /// that ORDER BY raised_in sorts the xid8, not this text ("10" < "9").
    tx: String,
    id: i64,
    routing_key: String,
    object_id: Option<i64>,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl EventRow {
    fn into_event(self) -> sqlx::Result<Event> {
        Ok(Event {
            seq: EventSeq {
                transaction: parse_xid8(&self.tx)?,
                id: self.id,
            },
            id: self.id,
            kind: self.routing_key,
            object_id: self.object_id,
            payload: self.payload,
            raised_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_reads_back_as_it_is_written() {
        for text in ["0", "7391.1024", "18446744073709551615.9223372036854775807"] {
            assert_eq!(text.parse::<EventSeq>().unwrap().to_string(), text);
        }
        assert_eq!("0.0".parse::<EventSeq>().unwrap(), EventSeq::START);
    }

    #[test]
    fn a_seq_orders_by_transaction_first() {
        let a: EventSeq = "5.900".parse().unwrap();
        let b: EventSeq = "6.10".parse().unwrap();
        assert!(a < b);
    }

    #[test]
    fn malformed_seqs_are_refused() {
        for text in ["", "12", "a.b", "1.-2", "-1.2", "1.2.3", "1."] {
            assert!(text.parse::<EventSeq>().is_err(), "{text:?} was taken");
        }
    }
}
