//! API keys on `POST /callback`: without a key or with a wrong one 401 and nothing
//! published; with a key 202; several keys at once, so one can be rotated out.

use std::time::Duration;

use e2e::process::scrape;
use e2e::{Status, TestEnv};
use tester::callback::CallbackClient;

const OLD: &str = "old-key-0123456789abcdef";
const NEW: &str = "new-key-0123456789abcdef";

async fn post(url: &str, key: Option<&str>, ids: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    CallbackClient::new(url, Duration::from_secs(10))?
        .with_api_key(key.map(str::to_owned))
        .post_raw(None, format!(r#"{{"object_ids":[{ids}]}}"#))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_need_a_current_key_and_a_refused_one_publishes_nothing() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let checks = env.topology().checks_queue;
    let both = format!("--callback-api-keys={OLD},{NEW}");
    let url = env.start_connected_producer(&[&both]).await?;

    let (status, body) = post(&url, None, "1").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_api_key")),
        "{body}"
    );
    let (status, body) = post(&url, Some("wrong-key-0123456789abcdef"), "2").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_api_key")),
        "{body}"
    );
    // Another scheme is no key either.
    let response = lastseen::tls::http_client()
        .build()?
        .post(&url)
        .basic_auth("user", Some(NEW))
        .json(&serde_json::json!({"object_ids": [3]}))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        env.broker.counts(&checks).await?.ready,
        0,
        "a refused callback was published"
    );

    // Both keys work while both are set.
    assert_eq!(post(&url, Some(NEW), "4").await?.0, 202);
    assert_eq!(post(&url, Some(OLD), "5").await?.0, 202);
    let metrics = scrape(&url.replace("/callback", "/metrics")).await?;
    let count = |outcome: &str| {
        metrics
            .get(&format!(
                "lastseen_callbacks_total{{outcome=\"{outcome}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count("missing_api_key"), 2.0, "{metrics:?}");
    assert_eq!(count("invalid_api_key"), 1.0, "{metrics:?}");

    // The old key rotated out: a producer (on a spool of its own) with the new key only.
    let spool = format!(
        "--spool-path={}",
        env.spool_dir.join("rotated.redb").display()
    );
    let url = env
        .start_connected_producer(&[&format!("--callback-api-keys={NEW}"), &spool])
        .await?;
    let (status, body) = post(&url, Some(OLD), "6").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_api_key")),
        "{body}"
    );
    assert_eq!(post(&url, Some(NEW), "7").await?.0, 202);

    // Only the three accepted callbacks (one message each) reached the work queue.
    let published = env
        .eventually(Duration::from_secs(5), || async {
            Ok(env.broker.counts(&checks).await?.ready == 3)
        })
        .await?;
    assert!(published, "{:?}", env.broker.counts(&checks).await?);
    env.teardown().await
}

#[tokio::test]
async fn a_short_key_stops_the_producer_with_exit_code_2_and_no_key_shown() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let err = env
        .start_producer(&["--callback-api-keys=tooshort"])
        .await
        .expect_err("a key of 8 characters was taken");
    let line = lastseen::config::error_line(err.as_ref());
    assert!(line.contains("CALLBACK_API_KEYS"), "{line}");
    assert!(!line.contains("tooshort"), "{line}");
    env.teardown().await
}
