//! Fuzzes the callback body parser with arbitrary bytes: `CallbackRequest::parse`, then,
//! for a body it accepts, de-duplication and the split into check messages.
//!
//! Besides "never panics", each input is checked against a reading of the bytes that does
//! not use the parser: a body is accepted exactly when it is a JSON object whose only
//! `object_ids` key holds an array of ids (whole numbers from 0 to 2^63-1, however
//! spelled: `7`, `7.0`, `0.7e1`; judged by `domain/src/id_oracle.rs`), with the ids as
//! written; it is a syntax error exactly when it is not JSON at all; and the check
//! messages carry every distinct id exactly once.
//!
//! "JSON" is UTF-8 text in the JSON grammar (`IgnoredAny` over a `str`). `Value` is
//! stricter only about lone UTF-16 surrogates (`"\ud800"`), which the RFC allows; the
//! oracle judges a body only when `Value` reads it.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use lastseen_domain::callback::{BodyError, CallbackRequest, check_messages};
use lastseen_domain::id_oracle::{IdVerdict, judge_id, judge_ttl};
use lastseen_domain::{CheckMessage, ObjectId};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::error::Category;
use serde_json::value::RawValue;

fuzz_target!(|body: &[u8]| {
    // Vary the message size with the input, so splits of every shape are tried.
    let per_message = 1 + body.len() % 7;
    let value = serde_json::from_slice::<Value>(body).ok();
    let grammar = std::str::from_utf8(body)
        .is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok());
    assert!(
        value.is_none() || grammar,
        "Value read a body outside the grammar"
    );
    let expected = value.as_ref().map(|value| expected(body, value));
    match CallbackRequest::parse(body) {
        Ok(request) => {
            assert!(grammar, "accepted a body that is not JSON");
            let ids = ids_of(&request.object_ids);
            match expected {
                Some(Expected::Accept(expected)) => {
                    assert_eq!(ids, expected, "accepted ids differ from the JSON's");
                }
                Some(Expected::Reject) => panic!("accepted a body that is not a callback"),
                Some(Expected::Unsure(literals)) => {
                    // However it is spelled, an id is the number written, so the two
                    // round to the same f64.
                    assert_eq!(ids.len(), literals.len());
                    for (id, literal) in ids.iter().zip(&literals) {
                        assert_eq!(literal.parse::<f64>().ok(), Some(*id as f64), "{literal}");
                    }
                }
                None => {}
            }
            check_distinct_and_split(&request, per_message);
        }
        Err(BodyError::Syntax(err)) => {
            assert!(
                matches!(err.classify(), Category::Syntax | Category::Eof),
                "a syntax error of category {:?}: {err}",
                err.classify()
            );
            assert!(!grammar, "valid JSON called malformed: {err}");
        }
        Err(BodyError::Shape(err)) => {
            assert!(
                grammar,
                "a body that is not JSON called a wrong shape: {err}"
            );
            assert!(
                !matches!(expected, Some(Expected::Accept(_))),
                "a valid callback rejected: {err}"
            );
        }
    }
});

/// What the oracle expects of a body that is JSON.
enum Expected {
    /// A callback of these ids, in this order.
    Accept(Vec<i64>),
    /// Not a callback: not an object, `object_ids` missing, repeated or not an array, or
    /// an item that is not an id.
    Reject,
    /// Ids the oracle cannot judge exactly: the literals of all the ids.
    Unsure(Vec<String>),
}

/// Judges `value`, read from `body`: a callback is an object with one `object_ids` key
/// holding only ids, each judged as written, and at most one valid `ttl_secs` and one
/// valid `stale_after_secs`. Other keys are ignored.
fn expected(body: &[u8], value: &Value) -> Expected {
    // `Value` keeps the last of repeated keys; the callback parser refuses repeats.
    if !value.is_object() || top_level_key_count(body, "object_ids") != 1 {
        return Expected::Reject;
    }
    let object: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(body).expect("the body is a JSON object");
    let Some(literals) = object
        .get("object_ids")
        .and_then(|ids| serde_json::from_str::<Vec<Box<RawValue>>>(ids.get()).ok())
    else {
        return Expected::Reject;
    };
    // An optional TTL and stale delay, each at most once: null, or whole seconds from 1
    // to a year (whether the stale delay is below the TTL is the handler's to judge).
    let mut unsure = false;
    for key in ["ttl_secs", "stale_after_secs"] {
        if top_level_key_count(body, key) > 1 {
            return Expected::Reject;
        }
        if let Some(secs) = object.get(key) {
            match judge_ttl(secs.get()) {
                Some(true) => {}
                Some(false) => return Expected::Reject,
                None => unsure = true,
            }
        }
    }
    let mut ids = Vec::with_capacity(literals.len());
    for literal in &literals {
        match judge_id(literal.get()) {
            IdVerdict::Id(id) => ids.push(id),
            IdVerdict::NotAnId => return Expected::Reject,
            IdVerdict::Unsure => unsure = true,
        }
    }
    if unsure {
        Expected::Unsure(literals.iter().map(|l| l.get().to_owned()).collect())
    } else {
        Expected::Accept(ids)
    }
}

fn ids_of(ids: &[ObjectId]) -> Vec<i64> {
    ids.iter().map(|id| id.get()).collect()
}

/// The distinct ids keep their first order, and the messages carry each exactly once,
/// at most `per_message` to a message, in a form the consumer reads back.
fn check_distinct_and_split(request: &CallbackRequest, per_message: usize) {
    let all = ids_of(&request.object_ids);
    let distinct = request.distinct_ids();
    let distinct_raw = ids_of(&distinct);

    let as_set: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(
        distinct_raw.len(),
        as_set.len(),
        "distinct ids repeat or miss one"
    );
    assert_eq!(
        distinct_raw.iter().copied().collect::<BTreeSet<_>>(),
        as_set,
        "distinct ids are not the set of ids"
    );
    let mut first_seen = HashMap::new();
    for (at, id) in all.iter().enumerate() {
        first_seen.entry(*id).or_insert(at);
    }
    assert!(
        distinct_raw
            .windows(2)
            .all(|pair| first_seen[&pair[0]] < first_seen[&pair[1]]),
        "distinct ids are not in their first order of appearance"
    );

    let accepted_at = Utc::now();
    let messages = check_messages(&distinct, per_message, accepted_at);
    assert_eq!(messages.len(), distinct.len().div_ceil(per_message));
    let mut carried = Vec::with_capacity(distinct.len());
    for message in &messages {
        assert!(
            (1..=per_message).contains(&message.object_ids.len()),
            "a message of {} ids (at most {per_message})",
            message.object_ids.len()
        );
        assert_eq!(message.accepted_at, accepted_at);
        carried.extend(ids_of(&message.object_ids));
    }
    assert_eq!(
        carried, distinct_raw,
        "messages do not carry each distinct id once"
    );

    if let Some(first) = messages.first() {
        let json = serde_json::to_vec(first).expect("a check message serializes");
        let back: CheckMessage =
            serde_json::from_slice(&json).expect("the consumer reads a check message back");
        assert_eq!(&back, first);
    }
}

/// How often `key` occurs among the keys of the top-level object of `body` (valid JSON).
fn top_level_key_count(body: &[u8], key: &str) -> usize {
    struct KeyCount<'a>(&'a str);

    impl<'de> Visitor<'de> for KeyCount<'_> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut count = 0;
            while let Some(key) = map.next_key::<String>()? {
                count += usize::from(key == self.0);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(count)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(body);
    (&mut deserializer)
        .deserialize_map(KeyCount(key))
        .expect("the body is a JSON object")
}
