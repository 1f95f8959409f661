//! The read API (`READ_DATABASE_URL`): every endpoint against rows put in the test's
//! database, every bad parameter, and the event log's promise: each transition exactly
//! once, in order, also when the reader restarts and when transactions commit out of id
//! order.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{Status, TestEnv, base_of};
use serde_json::Value;

/// `GET {base}{path}`: the status and the JSON body.
async fn get(base: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let response = lastseen::tls::get(format!("{base}{path}")).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Starts a producer whose read API reads the test's database as `analyst`, with a spool
/// of its own (several may run in one test); its base URL.
async fn reading_producer(env: &mut TestEnv, extra: &[&str]) -> anyhow::Result<String> {
    let read_url = format!("--read-database-url={}", env.analyst_url().await?);
    let spool = format!(
        "--spool-path={}",
        env.spool_dir
            .join(format!("{}.redb", uuid::Uuid::new_v4().simple()))
            .display()
    );
    let mut args = vec![read_url.as_str(), spool.as_str()];
    args.extend_from_slice(extra);
    Ok(base_of(&env.start_producer(&args).await?).to_owned())
}

/// Raises one notification in its own transaction; its id.
async fn raise(env: &TestEnv, object_id: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO notifications (routing_key, object_id, payload)
         VALUES ('object.online', $1, jsonb_build_object('object_id', $1)) RETURNING id",
    )
    .bind(object_id)
    .fetch_one(&env.pool)
    .await?)
}

/// What a live stream sent until it sent event `id` (at most 10 s, or until it ended).
async fn stream_until(stream: &mut reqwest::Response, id: i64) -> String {
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(&format!("\"id\":{id},")) {
                break;
            }
        }
    })
    .await;
    text
}

/// The events of a server-sent event text: each one's `id` field and `data`.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name).map(str::to_owned))
            };
            (field("id: "), field("data: ").unwrap_or_default())
        })
        .collect()
}

/// Reads `/events` from `after` to the end in pages of `limit`; the ids and where it ended.
async fn read_on(base: &str, after: &str, limit: u32) -> anyhow::Result<(Vec<i64>, String)> {
    let mut ids = Vec::new();
    let mut at = after.to_owned();
    loop {
        let (status, page) = get(base, &format!("/events?after={at}&limit={limit}")).await?;
        anyhow::ensure!(status == 200, "/events answered {status}: {page}");
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            ids.push(event["id"].as_i64().unwrap_or(-1));
            assert_eq!(event["type"], "object.online");
        }
        let next = page["next"].as_str().unwrap_or_default().to_owned();
        if events.is_empty() {
            return Ok((ids, next));
        }
        at = next;
    }
}

#[tokio::test]
async fn objects_their_pages_and_history_come_from_the_database() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // Online: 1..=5, silent for 50, 40, 30, 20, 10 s; 3 came back after an expiry. Expired
    // and not back: 9.
    sqlx::raw_sql(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at)
         SELECT id, now() - interval '1 minute', now() - (60 - 10 * id) * interval '1 second',
                now() + interval '1 hour'
         FROM generate_series(1, 5) AS id;
         INSERT INTO object_expiries (object_id, first_seen, last_seen, expires_at, expired_at) VALUES
           (3, now() - interval '3 hours', now() - interval '2 hours', now() - interval '119 minutes', now() - interval '118 minutes'),
           (9, now() - interval '3 hours', now() - interval '90 minutes', now() - interval '89 minutes', now() - interval '88 minutes');
         INSERT INTO object_last_expiry (object_id, last_seen, expires_at, expired_at)
         SELECT DISTINCT ON (object_id) object_id, last_seen, expires_at, expired_at
         FROM object_expiries ORDER BY object_id, expired_at DESC;",
    )
    .execute(&env.pool)
    .await?;
    let base = reading_producer(&mut env, &[]).await?;

    let (status, three) = get(&base, "/objects/3").await?;
    assert_eq!(status, 200, "{three}");
    assert_eq!(three["id"], 3);
    assert_eq!(three["online"], true);
    assert!(three["first_seen"].is_string() && three["expires_at"].is_string());
    assert!(three["last_expiry"]["expired_at"].is_string(), "{three}");
    let (status, nine) = get(&base, "/objects/9").await?;
    assert_eq!(status, 200, "{nine}");
    assert_eq!(nine["online"], false);
    assert!(nine["first_seen"].is_null() && nine["expires_at"].is_null());
    assert_eq!(nine["last_seen"], nine["last_expiry"]["last_seen"]);
    let (status, unknown) = get(&base, "/objects/77").await?;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (404, Some("unknown_object"))
    );

    // Pages of two, longest silent first: 1, 2, 3, 4, 5.
    let mut quietest = Vec::new();
    let mut path = "/objects?state=online&order=quietest&limit=2".to_owned();
    loop {
        let (status, page) = get(&base, &path).await?;
        assert_eq!(status, 200, "{page}");
        quietest.extend(
            page["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_i64().unwrap()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/objects?order=quietest&limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(quietest, vec![1, 2, 3, 4, 5]);
    let (_, by_id) = get(&base, "/objects?limit=3&after=2").await?;
    assert!(
        by_id["objects"][0]["last_expiry"]["expired_at"].is_string(),
        "a page lists object 3's latest expiry too: {by_id}"
    );
    let ids: Vec<i64> = by_id["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![3, 4, 5]);
    let (_, expired) = get(&base, "/objects?state=expired").await?;
    assert_eq!(expired["objects"].as_array().unwrap().len(), 1, "{expired}");
    assert_eq!(expired["objects"][0]["id"], 9);
    assert_eq!(expired["next"], Value::Null);
    assert_eq!(
        (three["state"].as_str(), nine["state"].as_str()),
        (Some("online"), Some("expired"))
    );

    // Object 4 goes stale: listed as stale, no longer as online.
    sqlx::query(
        "UPDATE objects SET stale_at = last_seen + interval '1 second', stale_since = now()
         WHERE id = 4",
    )
    .execute(&env.pool)
    .await?;
    let listed = |page: &Value| -> Vec<i64> {
        page["objects"]
            .as_array()
            .map(|objects| objects.iter().filter_map(|o| o["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    let (_, stale) = get(&base, "/objects?state=stale").await?;
    assert_eq!(listed(&stale), vec![4], "{stale}");
    assert_eq!(stale["objects"][0]["state"], "stale");
    assert!(stale["objects"][0]["stale_since"].is_string(), "{stale}");
    let (_, online) = get(&base, "/objects?state=online").await?;
    assert_eq!(listed(&online), vec![1, 2, 3, 5], "{online}");
    let (_, four) = get(&base, "/objects/4").await?;
    assert_eq!(
        (four["state"].as_str(), &four["online"]),
        (Some("stale"), &Value::Bool(true))
    );

    let (status, history) = get(&base, "/objects/3/history").await?;
    assert_eq!(status, 200, "{history}");
    let stretches = history["stretches"].as_array().unwrap();
    assert_eq!(stretches.len(), 2, "{history}");
    assert!(
        stretches[0]["expired_at"].is_null(),
        "the current stretch comes first"
    );
    assert!(stretches[1]["expired_at"].is_string());
    let (_, first_page) = get(&base, "/objects/3/history?limit=1").await?;
    assert_eq!(first_page["stretches"].as_array().unwrap().len(), 1);
    assert!(first_page["stretches"][0]["expired_at"].is_null());
    let before = first_page["next"].as_str().expect("a full page has a next");
    let (status, older) = get(
        &base,
        &format!("/objects/3/history?limit=1&before={before}"),
    )
    .await?;
    assert_eq!(status, 200, "{older}");
    assert_eq!(older["stretches"].as_array().unwrap().len(), 1, "{older}");
    assert_eq!(older["stretches"][0], stretches[1]);
    let (_, gone) = get(&base, "/objects/77/history").await?;
    assert_eq!(gone["error"], "unknown_object");
    env.teardown().await
}

#[tokio::test]
async fn bad_parameters_get_a_400_naming_them_and_reads_off_get_a_503() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let base = reading_producer(&mut env, &[]).await?;
    for (path, parameter) in [
        ("/objects/abc", "id"),
        ("/objects/-1", "id"),
        ("/objects/99999999999999999999", "id"),
        ("/objects/abc/history", "id"),
        ("/objects?state=gone", "state"),
        ("/objects?order=loudest", "order"),
        ("/objects?limit=0", "limit"),
        ("/objects?limit=1001", "limit"),
        ("/objects?limit=ten", "limit"),
        ("/objects?order=quietest&after=12", "after"),
        ("/objects?after=x", "after"),
        ("/objects?color=red", "color"),
        ("/objects?limit=1&limit=2", "limit"),
        ("/objects/1/history?before=yesterday", "before"),
        ("/objects/1/history?after=1", "after"),
        ("/events?after=12", "after"),
        ("/events?after=1.x", "after"),
        ("/events?limit=5000", "limit"),
        ("/events/stream?after=-", "after"),
    ] {
        let (status, body) = get(&base, path).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{parameter}:")),
            "{path}: {message}"
        );
    }
    let response = lastseen::tls::http_client()
        .build()?
        .get(format!("{base}/events/stream"))
        .header("Last-Event-ID", "bogus")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await?;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Last-Event-ID:")
    );

    // A producer without READ_DATABASE_URL says so.
    let spool = format!("--spool-path={}", env.spool_dir.join("off.redb").display());
    let off = base_of(&env.start_producer(&[&spool]).await?).to_owned();
    for path in [
        "/objects/1",
        "/objects",
        "/objects/1/history",
        "/events",
        "/events/stream",
    ] {
        let (status, body) = get(&off, path).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("reads_off")),
            "{path}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("READ_DATABASE_URL")
        );
    }
    env.teardown().await
}

#[tokio::test]
async fn with_api_keys_reads_need_a_key_too() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let key = "a-read-key-of-some-length";
    let base = reading_producer(&mut env, &[&format!("--callback-api-keys={key}")]).await?;
    let (status, body) = get(&base, "/objects").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_api_key"))
    );
    let response = lastseen::tls::http_client()
        .build()?
        .get(format!("{base}/objects"))
        .bearer_auth(key)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    env.teardown().await
}

/// A transaction that raised an event earlier (a lower id) but commits later must not be
/// passed over: the reader sees neither it nor anything after it until it commits, then
/// both, in commit order, each once; a reader that restarts from its last `next`
/// (with the producer restarted too) misses and repeats nothing.
#[tokio::test]
async fn events_come_exactly_once_across_out_of_order_commits_and_reader_restarts()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let base = reading_producer(&mut env, &[]).await?;
    let mut raised = Vec::new();
    for object in 0..5 {
        raised.push(raise(&env, object).await?);
    }

    // The slow transaction takes its id first...
    let mut slow = env.pool.begin().await?;
    let slow_id: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (routing_key, object_id, payload)
         VALUES ('object.online', 100, '{}') RETURNING id",
    )
    .fetch_one(&mut *slow)
    .await?;
    // ...a quick one after it commits first.
    let quick_id = raise(&env, 101).await?;
    assert!(slow_id < quick_id);

    let (first, at) = read_on(&base, "0", 2).await?;
    assert_eq!(first, raised, "only what no open transaction can precede");
    slow.commit().await?;

    // The reader comes back from its last `next`, to another producer: nothing of the
    // read position lives in the server.
    let base = reading_producer(&mut env, &[]).await?;
    let (second, at) = read_on(&base, &at, 2).await?;
    assert_eq!(
        second,
        vec![slow_id, quick_id],
        "the late commit is not skipped"
    );

    // Raised while the reader was away.
    let mut more = Vec::new();
    for object in 200..207 {
        more.push(raise(&env, object).await?);
    }
    let (third, at) = read_on(&base, &at, 3).await?;
    assert_eq!(third, more);
    let (rest, _) = read_on(&base, &at, 3).await?;
    assert!(
        rest.is_empty(),
        "read to the end: nothing more, got {rest:?}"
    );

    let (everything, _) = read_on(&base, "0", 1000).await?;
    let all: Vec<i64> = [raised, second, more].concat();
    assert_eq!(
        everything, all,
        "from the start: every event once, in commit order"
    );
    let unique: HashSet<i64> = everything.iter().copied().collect();
    assert_eq!(unique.len(), everything.len());
    env.teardown().await
}

/// Transactions are ordered as numbers, also where their ids gain a digit (9, then 10):
/// the replay order, the end of the log and the place `n` events back all follow it.
#[tokio::test]
async fn events_follow_transaction_numbers_not_their_digits() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let base = reading_producer(&mut env, &[]).await?;
    let mut ids = Vec::new();
    for transaction in ["10", "9"] {
        ids.push(
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO notifications (routing_key, object_id, payload, raised_in)
                 VALUES ('object.online', 1, '{}', $1::text::xid8) RETURNING id",
            )
            .bind(transaction)
            .fetch_one(&env.pool)
            .await?,
        );
    }
    let (in_ten, in_nine) = (ids[0], ids[1]);
    let (all, _) = read_on(&base, "0", 1).await?;
    assert_eq!(all, vec![in_nine, in_ten], "transaction 9 before 10");

    // The stream starts after the latest event: transaction 10's.
    let client = lastseen::tls::http_client().build()?;
    let mut stream = client.get(format!("{base}/events/stream")).send().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = raise(&env, 2).await?;
    let text = stream_until(&mut stream, later).await;
    let sent: Vec<String> = sse_events(&text)
        .into_iter()
        .map(|(_, data)| data)
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "only the event raised after the stream began: {text:?}"
    );
    assert!(sent[0].contains(&format!("\"id\":{later},")), "{text:?}");
    env.teardown().await
}

/// The live stream sends events as they become final, each with its `seq` as the SSE id,
/// and a client resuming with `Last-Event-ID` gets the ones after it.
#[tokio::test]
async fn the_live_stream_sends_new_events_and_resumes_after_last_event_id() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let base = reading_producer(&mut env, &[]).await?;
    let before = raise(&env, 1).await?;
    let client = lastseen::tls::http_client().build()?;

    let response = client.get(format!("{base}/events/stream")).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response;
    // The stream starts at the latest event: only events raised from now on come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = raise(&env, 2).await?;
    let second = raise(&env, 3).await?;
    let text = stream_until(&mut body, second).await;
    assert!(
        text.contains(&format!("\"id\":{second},")),
        "the stream did not send event {second}: {text:?}"
    );
    assert!(
        !text.contains(&format!("\"id\":{before},")),
        "an old event was sent: {text}"
    );
    assert!(text.contains("event: object.online"), "{text}");
    let first_seq = sse_events(&text)
        .into_iter()
        .find(|(_, data)| data.contains(&format!("\"id\":{first},")))
        .and_then(|(id, _)| id)
        .expect("the event has an SSE id");
    drop(body);

    let resumed = client
        .get(format!("{base}/events/stream"))
        .header("Last-Event-ID", &first_seq)
        .send()
        .await?;
    let mut body = resumed;
    let text = stream_until(&mut body, second).await;
    assert!(
        text.contains(&format!("\"id\":{second},")),
        "resumed stream: {text:?}"
    );
    assert!(
        !text.contains(&format!("\"id\":{first},")),
        "resumed stream repeated {first}: {text}"
    );
    env.teardown().await
}
