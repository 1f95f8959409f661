//! The callback body: parsing and validation, de-duplication, and the split of the ids
//! into check messages.

use std::collections::HashSet;

use crate::{CheckMessage, ObjectId};
use chrono::{DateTime, Utc};
use serde::de::{Error as _, IgnoredAny, Unexpected};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// Longest TTL a callback can spell at all: a year, in seconds (`MAX_TTL_SECS` sets the
/// producer's own, lower, limit).
pub const LONGEST_TTL_SECS: u32 = 31_536_000;

/// `{"object_ids":[1,2,3]}`: ids are integers from 0 to 2^63-1, duplicates allowed; an
/// optional `"ttl_secs": N` sets how long after a sighting these objects expire, and an
/// optional `"stale_after_secs": S` when they go stale before that.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"object_ids": [1, 2, 3], "ttl_secs": 60, "stale_after_secs": 20}))]
pub struct CallbackRequest {
    #[serde(deserialize_with = "exact_object_ids")]
    #[schema(value_type = Vec<ObjectIdSchema>)]
    pub object_ids: Vec<ObjectId>,
    /// Seconds after a sighting these objects expire, 1 to 31,536,000 (a year) and at most
    /// the producer's `MAX_TTL_SECS` (7 days by default). Absent or null: the consumers'
    /// `OBJECT_TTL_SECS` (30 by default).
    #[serde(default, deserialize_with = "ttl_in_range")]
    #[schema(minimum = 1, maximum = 31_536_000, nullable)]
    pub ttl_secs: Option<u32>,
    /// Seconds after a sighting these objects go stale (an `object.stale` warning) unless
    /// seen again, 1 to 31,536,000. At or above the objects' TTL (`ttl_secs`, or the
    /// consumers' `OBJECT_TTL_SECS`) it never applies: they expire first, with no stale
    /// state. Absent or null: the consumers' `OBJECT_STALE_AFTER_SECS` (unset by default:
    /// no stale state).
    #[serde(default, deserialize_with = "stale_after_in_range")]
    #[schema(minimum = 1, maximum = 31_536_000, nullable)]
    pub stale_after_secs: Option<u32>,
}

/// A TTL is a whole number of seconds from 1 to [`LONGEST_TTL_SECS`] in any JSON spelling
/// (`60`, `60.0`, `6e1`: all integers to JSON Schema), read exactly like an id; or null.
fn ttl_in_range<'de, D: Deserializer<'de>>(ttl: D) -> Result<Option<u32>, D::Error> {
    seconds_in_range(
        ttl,
        "ttl_secs: a whole number of seconds from 1 to 31536000",
    )
}

/// A stale delay is read as a TTL is.
fn stale_after_in_range<'de, D: Deserializer<'de>>(secs: D) -> Result<Option<u32>, D::Error> {
    seconds_in_range(
        secs,
        "stale_after_secs: a whole number of seconds from 1 to 31536000",
    )
}

/// A whole number of seconds from 1 to [`LONGEST_TTL_SECS`] in any JSON spelling, or null.
fn seconds_in_range<'de, D: Deserializer<'de>>(
    secs: D,
    expected: &'static str,
) -> Result<Option<u32>, D::Error> {
    let literal = <&'de RawValue>::deserialize(secs)?;
    if literal.get().trim() == "null" {
        return Ok(None);
    }
    exact_object_id(literal.get())
        .and_then(|secs| u32::try_from(secs.get()).ok())
        .filter(|secs| (1..=LONGEST_TTL_SECS).contains(secs))
        .map(Some)
        .ok_or_else(|| D::Error::invalid_value(Unexpected::Other(literal.get()), &expected))
}

/// An object id: an integer from 0 to 2^63-1, the range PostgreSQL's BIGINT holds.
///
/// [`ObjectId`] is the real type; it carries no OpenAPI schema of its own (it is read and
/// written far from the API), so its schema is written here, beside the body that holds it.
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

/// Why a body is not a valid callback.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all, or cut short.
    #[error("malformed JSON: {0}")]
    Syntax(serde_json::Error),
    /// JSON, but not of the callback's shape or with an id out of range.
    #[error("invalid callback: {0}")]
    Shape(serde_json::Error),
}

impl CallbackRequest {
    /// Parses a body, telling malformed JSON apart from a JSON of the wrong shape.
    ///
    /// A body is JSON when it is UTF-8 (serde_json checks only the strings it keeps) and
    /// follows the grammar. The kind of error is decided by that, not by serde_json's
    /// category, which calls valid JSON such as `[[1],2]` a syntax error and malformed JSON
    /// with a wrong id before the break a data error. Only an object is a callback: serde
    /// would also take the array form of the struct (`[[1,2]]`).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let Ok(text) = std::str::from_utf8(body) else {
            let err = serde_json::from_slice::<Utf8Json>(body)
                .expect_err("JSON is UTF-8, so serde_json refuses a body that is not");
            return Err(BodyError::Syntax(err));
        };
        let object = text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{');
        let parsed = if object {
            serde_json::from_str(text)
        } else {
            Err(serde_json::Error::custom(
                "a callback is a JSON object: {\"object_ids\": [...]}",
            ))
        };
        parsed.map_err(|err| match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => BodyError::Shape(err),
            Err(syntax) => BodyError::Syntax(syntax),
        })
    }

    /// The ids without duplicates, in their first order of appearance.
    pub fn distinct_ids(&self) -> Vec<ObjectId> {
        let mut seen = HashSet::with_capacity(self.object_ids.len());
        self.object_ids
            .iter()
            .copied()
            .filter(|id| seen.insert(*id))
            .collect()
    }
}

/// Any JSON value, read with every string (keys too) checked as UTF-8, so that a body that
/// is not UTF-8 gets serde_json's syntax error at the first bad byte. `IgnoredAny` skips
/// strings unchecked, and `Value` gives some keys a meaning of its own
/// (`$serde_json::private::RawValue`), which turned a bad byte into a data error.
#[derive(Debug)]
struct Utf8Json;

impl<'de> Deserialize<'de> for Utf8Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Utf8Json)
    }
}

impl<'de> serde::de::Visitor<'de> for Utf8Json {
    type Value = Utf8Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(Utf8Json)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(Utf8Json)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(Utf8Json)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(Utf8Json)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(Utf8Json)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(Utf8Json)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Utf8Json>()?.is_some() {}
        Ok(Utf8Json)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<Utf8Json>()?.is_some() {
            map.next_value::<Utf8Json>()?;
        }
        Ok(Utf8Json)
    }
}

/// Reads each id from its literal, not through a float: JSON Schema counts `7.0` and `7e0`
/// as the integer 7, and a float would silently change an id above 2^53.
fn exact_object_ids<'de, D: Deserializer<'de>>(ids: D) -> Result<Vec<ObjectId>, D::Error> {
    Vec::<&'de RawValue>::deserialize(ids)?
        .into_iter()
        .map(|literal| {
            exact_object_id(literal.get()).ok_or_else(|| {
                D::Error::invalid_value(
                    Unexpected::Other(literal.get()),
                    &"an object id: an integer from 0 to 9223372036854775807",
                )
            })
        })
        .collect()
}

/// The id a JSON value spells, if it is a whole number from 0 to 2^63-1: `7`, or written
/// with a fraction or an exponent (`7.0`, `0.7e1`), computed in decimal.
fn exact_object_id(literal: &str) -> Option<ObjectId> {
    if let Ok(id) = literal.parse::<i64>() {
        return ObjectId::new(id);
    }
    let (mantissa, exponent) = literal.split_once(['e', 'E']).unwrap_or((literal, "0"));
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(magnitude) => (true, magnitude),
        None => (false, mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // The value is `digits` × 10^`scale`.
    let digits = [whole, fraction].concat();
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        // Zero, whatever the exponent.
        return ObjectId::new(0);
    }
    if negative {
        return None;
    }
    // An exponent beyond i64 makes any nonzero number too large or fractional.
    let scale = exponent
        .parse::<i64>()
        .ok()?
        .checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let whole_digits = if scale < 0 {
        let kept = digits
            .len()
            .checked_sub(usize::try_from(scale.unsigned_abs()).ok()?)?;
        let (whole_digits, fractional_digits) = digits.split_at(kept);
        if fractional_digits.bytes().any(|b| b != b'0') {
            return None;
        }
        whole_digits
    } else {
        digits
    };
    let factor = 10i64.checked_pow(u32::try_from(scale.max(0)).ok()?)?;
    let id = whole_digits.parse::<i64>().ok()?.checked_mul(factor)?;
    ObjectId::new(id)
}

/// Splits ids into check messages of at most `per_message` ids each.
pub fn check_messages(
    ids: &[ObjectId],
    per_message: usize,
    accepted_at: DateTime<Utc>,
) -> Vec<CheckMessage> {
    ids.chunks(per_message.max(1))
        .map(|chunk| CheckMessage {
            object_ids: chunk.to_vec(),
            accepted_at,
            request_id: None,
            ttl_secs: None,
            stale_after_secs: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[i64]) -> Vec<ObjectId> {
        v.iter().map(|&i| ObjectId::new(i).unwrap()).collect()
    }

    #[test]
    fn ttl_secs_is_a_whole_number_of_seconds_in_range_in_any_spelling_or_null() {
        let ttl = |body: &str| CallbackRequest::parse(body.as_bytes()).map(|r| r.ttl_secs);
        assert_eq!(ttl(r#"{"object_ids":[1]}"#).unwrap(), None);
        assert_eq!(ttl(r#"{"object_ids":[1],"ttl_secs":null}"#).unwrap(), None);
        assert_eq!(
            ttl(r#"{"object_ids":[1],"ttl_secs":60}"#).unwrap(),
            Some(60)
        );
        assert_eq!(
            ttl(r#"{"object_ids":[1],"ttl_secs":523.0}"#).unwrap(),
            Some(523)
        );
        assert_eq!(
            ttl(r#"{"object_ids":[1],"ttl_secs":6e1}"#).unwrap(),
            Some(60)
        );
        for bad in ["0", "31536001", "1.5", "-1", "\"60\"", "[60]"] {
            let body = format!(r#"{{"object_ids":[1],"ttl_secs":{bad}}}"#);
            assert!(
                matches!(ttl(&body), Err(BodyError::Shape(_))),
                "ttl_secs {bad} must be refused"
            );
        }
    }

    #[test]
    fn duplicates_are_removed_keeping_first_order() {
        let req = CallbackRequest::parse(br#"{"object_ids":[3,1,3,2,1]}"#).unwrap();
        assert_eq!(req.distinct_ids(), ids(&[3, 1, 2]));
    }

    #[test]
    fn syntax_and_shape_errors_are_told_apart() {
        for syntax in [
            &b"{\"object_ids\":[1,"[..],
            b"not json",
            br#"{"object_ids":[-1], oops"#,
            b"{\"object_ids\":[1],\"note\":\"\xff\"}",
            // Found by cargo-fuzz: serde_json's `Value` read this key as its raw-value
            // marker and answered a data error before reaching the bad byte.
            b"{\"$serde_json::private::RawValue\": {\"a\xd5b\": 1}}",
            b"{\"$serde_json::private::RawValue\": \"\xd5\"}",
        ] {
            let Err(BodyError::Syntax(err)) = CallbackRequest::parse(syntax) else {
                panic!("{} must be a syntax error", String::from_utf8_lossy(syntax));
            };
            assert!(
                matches!(
                    err.classify(),
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof
                ),
                "{err}"
            );
        }
        for shape in [
            &br#"{"object_ids":"1"}"#[..],
            br#"{"ids":[1]}"#,
            br#"{"object_ids":[-1]}"#,
            br#"{"object_ids":[1.5]}"#,
            br#"[1,2]"#,
            br#"[[1,2]]"#,
            br#"[[1],2]"#,
            br#"{"object_ids":[1],"object_ids":[2]}"#,
        ] {
            assert!(
                matches!(CallbackRequest::parse(shape), Err(BodyError::Shape(_))),
                "{}",
                String::from_utf8_lossy(shape)
            );
        }
    }

    #[test]
    fn whole_numbers_written_with_a_fraction_or_exponent_are_exact_ids() {
        let req = CallbackRequest::parse(
            br#"{"object_ids":[7.0, 7e0, 0.7e1, 70E-1, -0.0, 0e99999999999999999999, 9007199254740993.0, 9223372036854775807.000]}"#,
        )
        .unwrap();
        assert_eq!(
            req.object_ids,
            ids(&[7, 7, 7, 7, 0, 0, 9_007_199_254_740_993, i64::MAX])
        );
        for bad in [
            "7.5",
            "-1.0",
            "9223372036854775808.0",
            "1e19",
            "0.07e1",
            "1e99999999999999999999",
            "\"7\"",
            "null",
            "[7]",
        ] {
            let body = format!(r#"{{"object_ids":[{bad}]}}"#);
            assert!(
                matches!(
                    CallbackRequest::parse(body.as_bytes()),
                    Err(BodyError::Shape(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_split_into_messages_of_the_configured_size() {
        let now = Utc::now();
        let messages = check_messages(&ids(&[1, 2, 3, 4, 5]), 2, now);
        let sizes: Vec<usize> = messages.iter().map(|m| m.object_ids.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(check_messages(&[], 1, now).is_empty());
    }
}
