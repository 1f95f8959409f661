//! Domain types shared across the pipeline: the object id, the check message that carries
//! ids from the producer to the consumers, and the expiry notification.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// An object's id: an integer from 0 to `i64::MAX`, the range PostgreSQL's BIGINT holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ObjectId(i64);

impl ObjectId {
    pub const MAX: i64 = i64::MAX;

    /// Returns the id if `value` is in range.
    pub fn new(value: i64) -> Option<Self> {
        (value >= 0).then_some(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = ObjectId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an object id: an integer from 0 to {}", ObjectId::MAX)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ObjectId, E> {
                ObjectId::new(v).ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ObjectId, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(ObjectId::new)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_i64(IdVisitor)
    }
}

/// The body of one message on the work queue: ids to check, and when they were accepted.
///
/// A message usually carries one id; the producer may pack several (`IDS_PER_MESSAGE`).
/// A retry carries only the ids whose check failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckMessage {
    pub object_ids: Vec<ObjectId>,
    /// When the producer accepted the callback these ids came in.
    pub accepted_at: DateTime<Utc>,
    /// The request id of that callback (the `x-request-id` header), so its ids can be
    /// followed through the consumers' logs, retries and dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The callback's `ttl_secs`: how long after a sighting its objects expire. Absent:
    /// the consumer's `OBJECT_TTL_SECS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u32>,
    /// The callback's `stale_after_secs`: how long after a sighting its objects go stale.
    /// Absent: the consumer's `OBJECT_STALE_AFTER_SECS` (unset: no stale state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_secs: Option<u32>,
}

/// The body of an `object.expired` notification: the object's stretch online, its
/// deadline, and when it was expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiredNotification {
    pub event: String,
    pub object_id: ObjectId,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired_at: DateTime<Utc>,
}

/// The body of an `object.online` notification: first seen, back after it expired (then
/// with that expiry and how long the object was silent), or back from stale
/// (`recovered_from` = `stale`, with how long it was silent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineNotification {
    pub event: String,
    pub object_id: ObjectId,
    pub seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When it goes stale unless seen again; absent when no stale delay applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_at: Option<DateTime<Utc>>,
    /// `stale` when a stale object was seen again; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_from: Option<String>,
    /// When the object's previous stretch was expired; absent when first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expired_at: Option<DateTime<Utc>>,
    /// Seconds from the previous sighting to this one, when it comes back (after an
    /// expiry or from stale); absent when first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_for_secs: Option<f64>,
}

/// Most ids a digest (`digest`, `digest.stale`) lists; its count covers them all.
pub const DIGEST_MAX_IDS: usize = 1_000;

/// What `recovered_from` says of an object seen again while stale.
pub const RECOVERED_FROM_STALE: &str = "stale";

/// The body of an `object.stale` notification: an object silent past its stale deadline,
/// warned of before it expires at `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleNotification {
    pub event: String,
    pub object_id: ObjectId,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub stale_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When the sweeper marked it stale.
    pub marked_at: DateTime<Utc>,
}

/// The body of a `digest.stale` notification: one per transaction that marked objects
/// stale, as `digest` is for expiries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleDigestNotification {
    pub event: String,
    /// How many objects went stale in this transaction.
    pub stale: u64,
    /// Their ids, up to a cap (see `truncated`).
    pub object_ids: Vec<ObjectId>,
    /// True when `object_ids` holds fewer ids than `stale`.
    pub truncated: bool,
    pub marked_at: DateTime<Utc>,
}

/// The body of a `digest` notification: one per expiry transaction, so a receiver can
/// take one message instead of one per object when many expire at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestNotification {
    pub event: String,
    /// How many objects expired in this transaction.
    pub expired: u64,
    /// Their ids, up to a cap (see `truncated`).
    pub object_ids: Vec<ObjectId>,
    /// True when `object_ids` holds fewer ids than `expired`.
    pub truncated: bool,
    pub expired_at: DateTime<Utc>,
}

/// The body of a `pipeline.lagging` notification: expiry is held because the pipeline
/// lags behind (`started`), or is current again (`ended`). Silence is not judged while
/// it is held: objects whose deadline passed wait for the work that may name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaggingNotification {
    pub event: String,
    /// `started` or `ended`.
    pub state: String,
    /// The watermark: every callback accepted before it is settled.
    pub watermark: DateTime<Utc>,
    /// How far it was behind, in seconds.
    pub lag_secs: f64,
    /// What held it, as the sweeper saw it.
    pub reason: String,
    /// True when it has been held for `MAX_EXPIRY_HOLD_SECS`: expiry goes on regardless.
    pub bound_reached: bool,
    /// When the hold started (on `ended`: how long it lasted is `at - since`).
    pub since: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_accepts_the_bigint_range() {
        let ids: Vec<ObjectId> = serde_json::from_str("[0, 9223372036854775807]").unwrap();
        assert_eq!(ids, vec![ObjectId(0), ObjectId(i64::MAX)]);
    }

    #[test]
    fn object_id_rejects_negative_fractional_too_large_and_strings() {
        for bad in ["-1", "1.5", "9223372036854775808", "\"7\"", "null", "true"] {
            let err = serde_json::from_str::<ObjectId>(bad).unwrap_err();
            assert!(
                err.to_string().contains("an object id"),
                "{bad}: unexpected message {err}"
            );
        }
    }

    #[test]
    fn check_message_round_trips() {
        let msg = CheckMessage {
            object_ids: vec![ObjectId(4), ObjectId(5)],
            accepted_at: Utc::now(),
            request_id: Some("req-1".into()),
            ttl_secs: Some(60),
            stale_after_secs: Some(20),
        };
        let back: CheckMessage =
            serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }
}
