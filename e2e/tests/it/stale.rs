//! Warn before expiry: an object silent past its stale deadline gets one `object.stale`,
//! then one `object.expired` at its deadline; a stale object seen again gets an
//! `object.online` marked as a recovery, and no expiry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::{Status, TestEnv, post_ids};
use serde_json::Value;

/// The notifications recorded for `id`, oldest first: routing key and payload.
async fn events_of(env: &TestEnv, id: i64) -> anyhow::Result<Vec<(String, Value)>> {
    Ok(sqlx::query_as(
        "SELECT routing_key, payload FROM notifications WHERE object_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await?)
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}

fn at(payload: &Value, field: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(serde_json::from_value(payload[field].clone())?)
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_after_2_s_and_expired_after_4_s_each_once_and_a_stale_object_seen_again_recovers()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let url = env.start_producer(&[]).await?;
    env.start_consumer(&["--object-ttl-secs=4", "--object-stale-after-secs=2"])?;
    env.start_sweeper(&[])?;

    post_ids(&url, &[1, 2]).await?;
    // Object 2 goes stale, then is seen again (with a long TTL and stale delay of its
    // callback's own, so nothing more happens to it within the test).
    let stale = env
        .eventually(Duration::from_secs(10), || async {
            Ok(kinds(&events_of(&env, 2).await?) == ["object.online", "object.stale"])
        })
        .await?;
    assert!(stale, "object 2: {:?}", events_of(&env, 2).await?);
    let state: (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT state, stale_since FROM online_objects WHERE id = 2")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(state.0, "stale", "the analysts' view shows the state");
    assert!(state.1.is_some());
    let json = Some("application/json");
    let (code, _) = e2e::post_callback(
        &url,
        json,
        r#"{"object_ids":[2],"ttl_secs":600,"stale_after_secs":300}"#,
    )
    .await?;
    assert_eq!(code, 202);

    // Object 1, seen once: online, stale between 2 and 3 s, expired between 4 and 5 s.
    let expired = env
        .eventually(Duration::from_secs(15), || async {
            Ok(events_of(&env, 1).await?.len() >= 3)
        })
        .await?;
    assert!(expired, "object 1: {:?}", events_of(&env, 1).await?);
    // Long enough for a second stale or expiry event to show, were there one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one = events_of(&env, 1).await?;
    assert_eq!(
        kinds(&one),
        ["object.online", "object.stale", "object.expired"]
    );
    let seen = at(&one[0].1, "seen_at")?;
    assert_eq!(secs(seen, at(&one[0].1, "stale_at")?), 2.0);
    let went_stale = secs(seen, at(&one[1].1, "marked_at")?);
    assert!(
        (2.0..3.0).contains(&went_stale),
        "stale after {went_stale} s"
    );
    assert_eq!(secs(seen, at(&one[1].1, "stale_at")?), 2.0);
    let gone = secs(seen, at(&one[2].1, "expired_at")?);
    assert!((4.0..5.0).contains(&gone), "expired after {gone} s");

    // Object 2: online, stale, online again as a recovery, and no expiry.
    let two = events_of(&env, 2).await?;
    assert_eq!(
        kinds(&two),
        ["object.online", "object.stale", "object.online"],
        "{two:?}"
    );
    let back = &two[2].1;
    assert_eq!(back["recovered_from"], "stale", "{back}");
    let silent = back["silent_for_secs"].as_f64().unwrap_or_default();
    let expected = secs(at(&two[0].1, "seen_at")?, at(back, "seen_at")?);
    assert!((silent - expected).abs() < 0.002, "{silent} vs {expected}");
    assert!(silent > 2.0, "silent past its stale deadline: {silent}");
    assert!(two[0].1.get("recovered_from").is_none(), "{}", two[0].1);
    let state: (String, Option<DateTime<Utc>>, f64) = sqlx::query_as(
        "SELECT state, stale_since, extract(epoch FROM stale_at - last_seen)::float8
         FROM online_objects WHERE id = 2",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(state, ("online".to_owned(), None, 300.0));

    // Through the same outbox and relay as every event, with a digest per transaction.
    let published = env
        .eventually(Duration::from_secs(10), || async {
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM notifications
                 WHERE routing_key IN ('object.stale', 'digest.stale') AND published_at IS NULL",
            )
            .fetch_one(&env.pool)
            .await?;
            Ok(unpublished == 0)
        })
        .await?;
    assert!(published, "every stale notification is published");
    let digested: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM notifications WHERE routing_key = 'digest.stale' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await?;
    let listed: Vec<i64> = digested
        .iter()
        .flat_map(|d| d["object_ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|id| id.as_i64())
        .collect();
    assert_eq!(
        digested
            .iter()
            .map(|d| d["stale"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        2
    );
    assert!(listed.contains(&1) && listed.contains(&2), "{digested:?}");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_stale_after_secs_sets_the_stale_deadline_only_below_its_ttl()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let url = env.start_producer(&[]).await?;
    env.start_consumer(&["--object-ttl-secs=30"])?;
    let json = Some("application/json");
    for body in [
        r#"{"object_ids":[1],"ttl_secs":600,"stale_after_secs":60}"#,
        r#"{"object_ids":[2],"stale_after_secs":10}"#,
        // At or above the consumers' TTL, or the callback's own: the object expires
        // first, with no stale state.
        r#"{"object_ids":[3],"stale_after_secs":30}"#,
        r#"{"object_ids":[4]}"#,
        r#"{"object_ids":[5],"ttl_secs":10,"stale_after_secs":10}"#,
    ] {
        let (code, answer) = e2e::post_callback(&url, json, body).await?;
        assert_eq!(code, 202, "{body}: {answer}");
    }
    for bad in [
        r#"{"object_ids":[6],"stale_after_secs":0}"#,
        r#"{"object_ids":[6],"stale_after_secs":"9"}"#,
        r#"{"object_ids":[6],"stale_after_secs":1.5}"#,
        r#"{"object_ids":[6],"stale_after_secs":5,"stale_after_secs":6}"#,
    ] {
        let (code, body) = e2e::post_callback(&url, json, bad).await?;
        assert_eq!(
            (code, &body["error"]),
            (422, &Value::from("invalid_callback")),
            "{bad}"
        );
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("stale_after_secs"), "{bad}: {message}");
    }
    let stored = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.object_ids().await? == vec![1, 2, 3, 4, 5])
        })
        .await?;
    assert!(stored, "stored: {:?}", env.object_ids().await?);
    let delays: Vec<(i64, Option<f64>)> = sqlx::query_as(
        "SELECT id, extract(epoch FROM stale_at - last_seen)::float8 FROM objects ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(
        delays,
        vec![
            (1, Some(60.0)),
            (2, Some(10.0)),
            (3, None),
            (4, None),
            (5, None)
        ]
    );
    let online: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM notifications WHERE routing_key = 'object.online' ORDER BY object_id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert!(online[0].get("stale_at").is_some(), "{}", online[0]);
    assert!(online[3].get("stale_at").is_none(), "{}", online[3]);
    env.teardown().await
}
