//! Arbitrary bodies on `POST /callback` (random bytes, random JSON, near-valid callbacks,
//! under several content types) against the real producer and RabbitMQ: never a 5xx; a
//! 4xx publishes nothing; a 202 publishes exactly the distinct ids of the body, once each.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use e2e::{Status, TestEnv, post_callback};
use lastseen_domain::id_oracle::{IdVerdict, judge_id, judge_ttl};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Cases per run: enough to cover every kind of body each time, few enough for `make test`.
const CASES: u32 = 96;

/// One request: a content type (or none) and a body.
#[derive(Debug, Clone)]
struct Request {
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

/// What the producer must answer, judged from the body by serde_json and the id oracle.
#[derive(Debug, PartialEq)]
enum Verdict {
    Accepted(BTreeSet<i64>),
    UnsupportedMediaType,
    InvalidCallback,
    /// Not JSON (cut short, not UTF-8, ...).
    NotJson,
    /// Ids whose spelling the oracle cannot judge exactly: 202 or 422.
    Unsure,
}

fn verdict(request: &Request) -> Verdict {
    let json_type = request.content_type.is_none_or(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence == "application/json" || essence.ends_with("+json")
    });
    if !json_type {
        return Verdict::UnsupportedMediaType;
    }
    let Ok(Value::Object(_)) = serde_json::from_slice::<Value>(&request.body) else {
        return match serde_json::from_slice::<Value>(&request.body) {
            Ok(_) => Verdict::InvalidCallback,
            Err(_) => Verdict::NotJson,
        };
    };
    // The ids as written, so `7.0` and `9223372036854775807` are judged exactly.
    let object: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(&request.body).expect("the body is a JSON object");
    let Some(ids) = object
        .get("object_ids")
        .and_then(|ids| serde_json::from_str::<Vec<Box<RawValue>>>(ids.get()).ok())
    else {
        return Verdict::InvalidCallback;
    };
    // An optional TTL: null, or a whole number of seconds from 1 to a year.
    let mut unsure = false;
    if let Some(ttl) = object.get("ttl_secs") {
        match judge_ttl(ttl.get()) {
            Some(true) => {}
            Some(false) => return Verdict::InvalidCallback,
            None => unsure = true,
        }
    }
    let mut accepted = BTreeSet::new();
    for id in &ids {
        match judge_id(id.get()) {
            IdVerdict::Id(id) => {
                accepted.insert(id);
            }
            IdVerdict::NotAnId => return Verdict::InvalidCallback,
            IdVerdict::Unsure => unsure = true,
        }
    }
    if unsure {
        Verdict::Unsure
    } else {
        Verdict::Accepted(accepted)
    }
}

/// An id as JSON text: mostly valid (small, so bodies repeat them), some out of range.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0i64..20).prop_map(|id| id.to_string()),
        1 => Just(i64::MAX.to_string()),
        1 => Just("9223372036854775808".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("1.5".to_owned()),
        1 => Just("1e3".to_owned()),
        1 => Just("7.0".to_owned()),
        1 => Just("0.7e1".to_owned()),
        1 => Just("9223372036854775807.0".to_owned()),
        1 => Just("\"7\"".to_owned()),
        1 => Just("null".to_owned()),
    ]
}

/// `{"object_ids":[...]}` with ids of every kind, sometimes an extra key, sometimes cut
/// short at some byte.
fn near_valid_callback() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(id_text(), 0..12),
        any::<bool>(),
        prop::option::weighted(0.2, any::<prop::sample::Index>()),
    )
        .prop_map(|(ids, extra_key, cut)| {
            let extra = if extra_key {
                r#", "note": {"a": [1]}"#
            } else {
                ""
            };
            let mut body = format!(r#"{{"object_ids": [{}]{extra}}}"#, ids.join(", ")).into_bytes();
            if let Some(cut) = cut {
                body.truncate(cut.index(body.len()));
            }
            body
        })
}

/// Any JSON value, with the callback's key among the object keys.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9 ]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![Just("object_ids".to_owned()), "[a-z_]{1,10}"],
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A valid callback: ids in range, often repeated, in JSON laid out in any way.
fn valid_callback() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![9 => 0i64..20, 1 => Just(i64::MAX)];
    (prop::collection::vec(id, 0..30), any::<bool>()).prop_map(|(ids, pretty)| {
        let body = json!({ "object_ids": ids });
        if pretty {
            serde_json::to_vec_pretty(&body)
        } else {
            serde_json::to_vec(&body)
        }
        .expect("a JSON value serializes")
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_callback(),
        3 => near_valid_callback(),
        2 => json_value().prop_map(|value| value.to_string().into_bytes()),
        1 => json_value().prop_map(|value| json!({ "object_ids": value }).to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..48),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let content_type = prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/vnd.lastseen+json")),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/x-www-form-urlencoded")),
    ];
    (content_type, body()).prop_map(|(content_type, body)| Request { content_type, body })
}

impl Verdict {
    fn kind(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "accepted",
            Self::UnsupportedMediaType => "unsupported media type",
            Self::InvalidCallback => "invalid callback",
            Self::NotJson => "not JSON",
            Self::Unsure => "unsure",
        }
    }
}

/// Posts one request and checks the answer and what reached the checks queue; returns the
/// kind of verdict it was.
async fn check(env: &TestEnv, url: &str, request: &Request) -> Result<&'static str, TestCaseError> {
    let fail = |what: String| TestCaseError::fail(what);
    let (status, answer) = post_callback(url, request.content_type, request.body.clone())
        .await
        .map_err(|err| fail(format!("request failed: {err:#}")))?;
    let published = env
        .drain(&env.topology().checks_queue)
        .await
        .map_err(|err| fail(format!("cannot read the checks queue: {err:#}")))?;
    let mut published_ids = Vec::new();
    for message in &published {
        let message: lastseen::CheckMessage = serde_json::from_slice(&message.data)
            .map_err(|err| fail(format!("unreadable check message: {err}")))?;
        published_ids.extend(message.object_ids.iter().map(|id| id.get()));
    }

    prop_assert!(status < 500, "a {status}: {answer}");
    let verdict = verdict(request);
    let kind = verdict.kind();
    match verdict {
        Verdict::Accepted(ids) => {
            prop_assert_eq!(status, 202, "{}", answer);
            prop_assert_eq!(&answer["accepted"], &json!(ids.len()));
            prop_assert_eq!(&answer["spooled"], &json!(false));
            published_ids.sort_unstable();
            prop_assert_eq!(published_ids, ids.into_iter().collect::<Vec<_>>());
        }
        Verdict::Unsure if status == 202 => {
            let distinct: BTreeSet<i64> = published_ids.iter().copied().collect();
            prop_assert_eq!(distinct.len(), published_ids.len(), "an id published twice");
            prop_assert_eq!(&answer["accepted"], &json!(published_ids.len()));
        }
        rejected => {
            let expected: &[(u16, &str)] = match rejected {
                Verdict::UnsupportedMediaType => &[(415, "unsupported_media_type")],
                Verdict::InvalidCallback | Verdict::Unsure => &[(422, "invalid_callback")],
                _ => &[(400, "malformed_json")],
            };
            let got = (status, answer["error"].as_str().unwrap_or_default());
            prop_assert!(
                expected.contains(&got),
                "{got:?}, expected one of {expected:?}"
            );
            prop_assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
            prop_assert!(
                published_ids.is_empty(),
                "a rejected callback published {published_ids:?}"
            );
        }
    }
    Ok(kind)
}

#[test]
fn arbitrary_callback_bodies_never_get_a_5xx_and_only_accepted_ids_are_published()
-> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let (env, url) = runtime.block_on(async {
        let mut env = TestEnv::start(Status::default()).await?;
        // Few ids per message, so most accepted bodies are split over several messages.
        let url = env
            .start_connected_producer(&["--ids-per-message=3"])
            .await?;
        anyhow::Ok((env, url))
    })?;
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = RefCell::new(BTreeMap::<&str, u32>::new());
    let outcome = runner.run(&request(), |request| {
        let kind = runtime.block_on(check(&env, &url, &request))?;
        *seen.borrow_mut().entry(kind).or_default() += 1;
        Ok(())
    });
    runtime.block_on(env.teardown())?;
    outcome.map_err(|err| anyhow::anyhow!("{err}"))?;
    // The generators must keep reaching every kind of answer, or the property says little.
    let seen = seen.into_inner();
    eprintln!("bodies by verdict: {seen:?}");
    let kinds = [
        "accepted",
        "invalid callback",
        "not JSON",
        "unsupported media type",
    ];
    anyhow::ensure!(
        kinds.iter().all(|kind| seen.contains_key(kind)),
        "some kinds of body were never generated: {seen:?}"
    );
    Ok(())
}
