//! Bad input on `/callback`: a 4xx with a JSON error, nothing published, and the
//! producer keeps serving.

use e2e::{Status, TestEnv, post_callback};
use serde_json::json;

/// Posts a bad body, checks the status and error code, that nothing was published, and
/// that a good callback still works afterwards.
async fn rejected(
    content_type: Option<&str>,
    body: Vec<u8>,
    status: u16,
    code: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let url = env.start_connected_producer(extra).await?;
    let checks = env.topology().checks_queue;

    let (got, error) = post_callback(&url, content_type, body).await?;
    assert_eq!(got, status, "{error}");
    assert_eq!(error["error"], code, "{error}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert_eq!(
        env.ready(&checks).await?,
        0,
        "a rejected callback published messages"
    );

    let (ok, accepted) =
        post_callback(&url, Some("application/json"), r#"{"object_ids":[7]}"#).await?;
    assert_eq!(
        (ok, accepted),
        (202, json!({ "accepted": 1, "spooled": false }))
    );
    assert_eq!(env.ready(&checks).await?, 1);
    env.teardown().await
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn callback_with_malformed_json_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    rejected(
        JSON,
        b"{\"object_ids\": [1, 2".to_vec(),
        400,
        "malformed_json",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_with_wrong_type_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    rejected(
        JSON,
        br#"{"object_ids": "1,2,3"}"#.to_vec(),
        422,
        "invalid_callback",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_without_object_ids_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    rejected(
        JSON,
        br#"{"ids": [1, 2]}"#.to_vec(),
        422,
        "invalid_callback",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_with_negative_id_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    rejected(
        JSON,
        br#"{"object_ids": [1, -2, 3]}"#.to_vec(),
        422,
        "invalid_callback",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_with_non_integer_id_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    rejected(
        JSON,
        br#"{"object_ids": [1, 2.5]}"#.to_vec(),
        422,
        "invalid_callback",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_with_id_above_bigint_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    rejected(
        JSON,
        br#"{"object_ids": [9223372036854775808]}"#.to_vec(),
        422,
        "invalid_callback",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_with_ttl_above_the_default_cap_is_rejected_and_publishes_nothing()
-> anyhow::Result<()> {
    // A year: within what a callback can spell, above the default MAX_TTL_SECS (7 days).
    rejected(
        JSON,
        br#"{"object_ids": [1], "ttl_secs": 31536000}"#.to_vec(),
        422,
        "ttl_too_long",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_with_ttl_above_max_ttl_secs_is_rejected_and_one_at_it_accepted()
-> anyhow::Result<()> {
    rejected(
        JSON,
        br#"{"object_ids": [1], "ttl_secs": 61}"#.to_vec(),
        422,
        "ttl_too_long",
        &["--max-ttl-secs=60"],
    )
    .await?;
    let mut env = TestEnv::start(Status::default()).await?;
    let url = env.start_connected_producer(&["--max-ttl-secs=60"]).await?;
    let (status, answer) = post_callback(&url, JSON, r#"{"object_ids":[1],"ttl_secs":60}"#).await?;
    assert_eq!(
        (status, answer),
        (202, json!({ "accepted": 1, "spooled": false }))
    );
    // The API document states the limit this producer enforces.
    let document: serde_json::Value = lastseen::tls::get(url.replace("/callback", "/openapi.json"))
        .await?
        .json()
        .await?;
    assert_eq!(
        document.pointer("/components/schemas/CallbackRequest/properties/ttl_secs/maximum"),
        Some(&json!(60))
    );
    env.teardown().await
}

#[tokio::test]
async fn callback_with_non_json_content_type_is_rejected_and_publishes_nothing()
-> anyhow::Result<()> {
    rejected(
        Some("text/plain"),
        br#"{"object_ids": [1]}"#.to_vec(),
        415,
        "unsupported_media_type",
        &[],
    )
    .await
}

#[tokio::test]
async fn callback_over_the_body_limit_is_rejected_and_publishes_nothing() -> anyhow::Result<()> {
    let ids: Vec<i64> = (0..2000).collect();
    let body = json!({ "object_ids": ids }).to_string().into_bytes();
    rejected(
        JSON,
        body,
        413,
        "body_too_large",
        &["--max-body-bytes=1024"],
    )
    .await
}

#[tokio::test]
async fn callback_of_ten_thousand_ids_is_accepted_whole() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // A generous confirm bound: this test is about the size, not the spool (a slow debug
    // build on a busy machine would otherwise spool it, which is also a 202).
    let url = env
        .start_connected_producer(&["--ids-per-message=1", "--publish-timeout-ms=5000"])
        .await?;
    let ids: Vec<i64> = (i64::MAX - 9_999..=i64::MAX).collect();
    let (status, body) =
        post_callback(&url, JSON, json!({ "object_ids": ids }).to_string()).await?;
    assert_eq!(
        (status, body),
        (202, json!({ "accepted": 10_000, "spooled": false }))
    );
    assert_eq!(env.ready(&env.topology().checks_queue).await?, 10_000);
    env.teardown().await
}

#[tokio::test]
async fn empty_and_duplicate_ids_are_accepted_as_distinct_ids() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let url = env
        .start_connected_producer(&["--ids-per-message=1"])
        .await?;
    let (status, body) = post_callback(&url, JSON, r#"{"object_ids":[]}"#).await?;
    assert_eq!(
        (status, body),
        (202, json!({ "accepted": 0, "spooled": false }))
    );
    let (status, body) = post_callback(&url, None, r#"{"object_ids":[5,5,0,5,0]}"#).await?;
    assert_eq!(
        (status, body),
        (202, json!({ "accepted": 2, "spooled": false }))
    );
    assert_eq!(env.ready(&env.topology().checks_queue).await?, 2);
    env.teardown().await
}

#[tokio::test]
async fn callbacks_get_503_with_retry_after_only_when_rabbitmq_is_down_and_the_spool_is_full()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // Nothing listens on port 1: the producer starts anyway, keeps reconnecting, and
    // spools callbacks, here at most 2 ids.
    let url = env
        .start_producer(&[
            "--amqp-url=amqp://guest:guest@127.0.0.1:1/%2f",
            "--spool-max-ids=2",
        ])
        .await?;
    let (status, body) = post_callback(&url, JSON, r#"{"object_ids":[1,2]}"#).await?;
    assert_eq!(
        (status, body),
        (202, json!({ "accepted": 2, "spooled": true }))
    );

    let client = lastseen::tls::http_client().build()?;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"object_ids":[3,4,5]}"#)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("SPOOL_MAX_IDS"),
        "{body}"
    );

    let ready = client
        .get(url.replace("/callback", "/readyz"))
        .send()
        .await?;
    assert_eq!(ready.status().as_u16(), 503);
    let ready: serde_json::Value = ready.json().await?;
    assert_eq!(ready["status"], "not ready", "{ready}");
    assert_eq!(ready["spool"]["pending_ids"], 2, "{ready}");
    let health = client
        .get(url.replace("/callback", "/healthz"))
        .send()
        .await?;
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(env.ready(&env.topology().checks_queue).await?, 0);
    env.teardown().await
}
