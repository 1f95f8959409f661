//! The object lifecycle: online, expired into the history, online again; an object
//! refreshed while a sweep runs is never wrongly expired; two sweepers never expire an
//! object twice.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use e2e::{Status, TestEnv, post_ids};
use lastseen::ObjectId;
use lastseen::store::objects::{self, Sighting};
use serde_json::Value;

/// One row of the `object_history` view: last_seen, expires_at, expired_at.
type Stretch = (DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>);

/// Routing keys of the notifications recorded for `id`, oldest first.
async fn events_of(env: &TestEnv, id: i64) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar(
            "SELECT routing_key FROM notifications WHERE object_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&env.pool)
        .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_expired_then_seen_again_gives_expired_then_online_and_its_history_shows_both()
-> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let url = env.start_producer(&[]).await?;
    env.start_consumer(&["--object-ttl-secs=1"])?;
    env.start_sweeper(&[])?;

    post_ids(&url, &[7]).await?;
    let expired = env
        .eventually(Duration::from_secs(10), || async {
            Ok(events_of(&env, 7).await? == ["object.online", "object.expired"])
        })
        .await?;
    assert!(expired, "events: {:?}", events_of(&env, 7).await?);
    assert!(env.object_ids().await?.is_empty());

    post_ids(&url, &[7]).await?;
    let back = env
        .eventually(Duration::from_secs(10), || async {
            Ok(events_of(&env, 7).await?.len() == 3)
        })
        .await?;
    assert!(back, "events: {:?}", events_of(&env, 7).await?);
    assert_eq!(
        events_of(&env, 7).await?,
        ["object.online", "object.expired", "object.online"]
    );

    // The analysts' view: the expired stretch, then the current one (expired_at NULL).
    let history: Vec<Stretch> = sqlx::query_as(
        "SELECT last_seen, expires_at, expired_at FROM object_history
         WHERE object_id = 7 ORDER BY first_seen",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(history.len(), 2, "{history:?}");
    let (first_seen_last, first_deadline, first_expired) = history[0];
    assert_eq!(
        (first_deadline - first_seen_last).num_milliseconds(),
        1000,
        "the deadline is last_seen + OBJECT_TTL_SECS"
    );
    assert!(first_expired.is_some_and(|at| at >= first_deadline));
    assert!(history[1].2.is_none(), "the second stretch is current");
    assert!(history[1].0 > first_expired.expect("checked above"));
    // The comeback's event tells the outage; the first sighting's has nothing to tell.
    let online: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM notifications WHERE object_id = 7
             AND routing_key = 'object.online' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert!(
        online[0].get("previous_expired_at").is_none(),
        "{}",
        online[0]
    );
    let previous: DateTime<Utc> = serde_json::from_value(online[1]["previous_expired_at"].clone())?;
    assert_eq!(Some(previous), first_expired);
    let silent = online[1]["silent_for_secs"].as_f64().unwrap_or_default();
    let expected = (history[1].0 - first_seen_last).num_milliseconds() as f64 / 1000.0;
    assert!((silent - expected).abs() < 0.002, "{silent} vs {expected}");
    let online: i64 = sqlx::query_scalar("SELECT count(*) FROM online_objects WHERE id = 7")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(online, 1);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_refreshed_while_a_sweep_runs_is_never_wrongly_expired_1000_times()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let (mut expired_first, mut refreshed_first) = (0, 0);
    for i in 0..1000i64 {
        let id = ObjectId::new(i).expect("a small id is valid");
        // PostgreSQL keeps microseconds.
        let old = (Utc::now() - chrono::Duration::seconds(60)).trunc_subsecs(6);
        let due = Utc::now() - chrono::Duration::milliseconds(1);
        sqlx::query(
            "INSERT INTO objects (id, first_seen, last_seen, expires_at) VALUES ($1, $2, $2, $3)",
        )
        .bind(i)
        .bind(old)
        .bind(due)
        .execute(&env.pool)
        .await?;

        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let (pool_a, pool_b) = (env.pool.clone(), env.pool.clone());
        let (barrier_a, barrier_b) = (barrier.clone(), barrier.clone());
        let sweep = tokio::spawn(async move {
            barrier_a.wait().await;
            let mut tx = pool_a.begin().await?;
            let gone = objects::expire_due(&mut tx, objects::Due::at(Utc::now()), 100).await?;
            tx.commit().await?;
            anyhow::Ok(gone)
        });
        let refresh = tokio::spawn(async move {
            barrier_b.wait().await;
            let seen_at = Utc::now().trunc_subsecs(6);
            let sighting = Sighting {
                id,
                seen_at,
                expires_at: seen_at + chrono::Duration::seconds(30),
                stale_at: None,
            };
            let mut tx = pool_b.begin().await?;
            let came_online = objects::upsert_sightings(&mut tx, &[sighting])
                .await?
                .came_online;
            tx.commit().await?;
            anyhow::Ok((seen_at, came_online))
        });
        let gone = sweep.await??;
        let (seen_at, came_online) = refresh.await??;

        // Whatever the order, the refreshed object is there, seen at the refresh.
        let (last_seen, expires_at): (DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as("SELECT last_seen, expires_at FROM objects WHERE id = $1")
                .bind(i)
                .fetch_one(&env.pool)
                .await?;
        assert_eq!(last_seen, seen_at, "iteration {i}");
        assert!(expires_at > Utc::now(), "iteration {i}");
        match gone.as_slice() {
            // The sweep won: it expired the old stretch, and the refresh came back online.
            [expired] => {
                assert_eq!(expired.last_seen, old, "iteration {i}: expired the refresh");
                assert_eq!(came_online.len(), 1, "iteration {i}: no online event");
                expired_first += 1;
            }
            // The refresh won: the sweep found nothing due.
            [] => {
                assert!(came_online.is_empty(), "iteration {i}");
                refreshed_first += 1;
            }
            more => panic!("iteration {i}: expired {more:?}"),
        }
        sqlx::query("DELETE FROM objects WHERE id = $1")
            .bind(i)
            .execute(&env.pool)
            .await?;
    }
    println!("1000 races: sweep first {expired_first}, refresh first {refreshed_first}");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_expire_each_object_once_with_one_notification() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    let due = Utc::now() + chrono::Duration::milliseconds(500);
    env.insert_objects(&(0..5000).collect::<Vec<i64>>(), due)
        .await?;
    // Several transactions at once in each sweeper, too (`SWEEP_WORKERS`).
    env.start_sweeper(&["--sweep-batch=200", "--sweep-workers=3"])?;
    env.start_sweeper(&["--sweep-batch=200", "--sweep-workers=2"])?;

    let pool = env.pool.clone();
    let done = env
        .eventually(Duration::from_secs(20), || {
            let pool = pool.clone();
            async move {
                let (left, pending): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM objects),
                            (SELECT count(*) FROM notifications WHERE published_at IS NULL)",
                )
                .fetch_one(&pool)
                .await?;
                Ok(left == 0 && pending == 0)
            }
        })
        .await?;
    assert!(done, "the sweepers did not expire and publish everything");
    let (expiries, distinct, expired_events, distinct_events): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM object_expiries),
                    (SELECT count(DISTINCT object_id) FROM object_expiries),
                    (SELECT count(*) FROM notifications WHERE routing_key = 'object.expired'),
                    (SELECT count(DISTINCT object_id) FROM notifications
                     WHERE routing_key = 'object.expired')",
        )
        .fetch_one(&env.pool)
        .await?;
    assert_eq!((expiries, distinct), (5000, 5000));
    assert_eq!((expired_events, distinct_events), (5000, 5000));
    let digests: Vec<Value> =
        sqlx::query_scalar("SELECT payload FROM notifications WHERE routing_key = 'digest'")
            .fetch_all(&env.pool)
            .await?;
    let counted: u64 = digests.iter().filter_map(|d| d["expired"].as_u64()).sum();
    assert_eq!(counted, 5000, "the digests count each expiry once");
    env.teardown().await
}

/// A sweep with little to do is one transaction, so one `digest`, however many workers
/// it may run: the extra workers start only when the first batch came back full. Two
/// workers started at once each locked some of the objects due and each wrote a digest
/// (a webhook test counting three notifications for two expiries saw four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_sweep_writes_one_digest_whatever_its_workers() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    env.start_sweeper(&["--sweep-workers=8", "--sweep-interval-ms=50"])?;
    for round in 0..60_i64 {
        let ids: Vec<i64> = (round * 100..round * 100 + 100).collect();
        env.insert_objects(&ids, Utc::now()).await?;
        let expired = env
            .eventually(Duration::from_secs(10), || async {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM objects WHERE id = ANY($1)")
                        .bind(&ids)
                        .fetch_one(&env.pool)
                        .await?;
                Ok(left == 0)
            })
            .await?;
        assert!(expired, "round {round}: {ids:?} were not expired");
        let digests: Vec<Value> = sqlx::query_scalar(
            "SELECT payload FROM notifications WHERE routing_key = 'digest'
               AND EXISTS (SELECT 1 FROM jsonb_array_elements(payload->'object_ids') AS e(id)
                           WHERE e.id::bigint = ANY($1))",
        )
        .bind(&ids)
        .fetch_all(&env.pool)
        .await?;
        let counts: Vec<&Value> = digests.iter().map(|d| &d["expired"]).collect();
        assert_eq!(
            counts,
            [100],
            "round {round}: the expiries counted by each digest naming {}..={}",
            ids[0],
            ids[99]
        );
    }
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_ttl_secs_sets_the_deadline_of_its_objects() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::quick_all_online()).await?;
    let url = env.start_producer(&[]).await?;
    env.start_consumer(&["--object-ttl-secs=30"])?;
    let json = Some("application/json");
    let (code, _) = e2e::post_callback(&url, json, r#"{"object_ids":[1],"ttl_secs":600}"#).await?;
    assert_eq!(code, 202);
    let (code, _) = e2e::post_callback(&url, json, r#"{"object_ids":[2]}"#).await?;
    assert_eq!(code, 202);
    for bad in [
        r#"{"object_ids":[3],"ttl_secs":0}"#,
        r#"{"object_ids":[3],"ttl_secs":"60"}"#,
    ] {
        let (code, body) = e2e::post_callback(&url, json, bad).await?;
        assert_eq!(
            (code, &body["error"]),
            (422, &Value::from("invalid_callback")),
            "{bad}"
        );
    }
    let stored = env
        .eventually(Duration::from_secs(10), || async {
            Ok(env.object_ids().await? == vec![1, 2])
        })
        .await?;
    assert!(stored, "stored: {:?}", env.object_ids().await?);
    let ttls: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT id, extract(epoch FROM expires_at - last_seen)::float8 FROM objects ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(ttls, vec![(1, 600.0), (2, 30.0)]);
    env.teardown().await
}

/// A sighting that commits after its object was expired (the writer retried through a
/// PostgreSQL outage while the sweeper came back first) and that falls inside the expired
/// stretch's lifetime does not bring it back: no row, no `object.online`, no second
/// expiry. One after that stretch's deadline is a comeback, whose `object.online` tells
/// the outage. Stretches, online from `first_seen` to their deadline, never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighting_older_than_the_latest_expiry_does_not_resurrect_its_stretch()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let id = ObjectId::new(7).expect("a small id is valid");
    // PostgreSQL keeps microseconds.
    let now = Utc::now().trunc_subsecs(6);
    let secs = chrono::Duration::seconds;
    let last_seen = now - secs(60);
    let deadline = now - secs(30);
    env.insert_objects(&[id.get()], deadline).await?;
    let mut tx = env.pool.begin().await?;
    let expired = objects::expire_due(&mut tx, objects::Due::at(now), 100).await?;
    tx.commit().await?;
    assert_eq!(expired.len(), 1);

    let upsert = |seen_at: DateTime<Utc>| {
        let pool = env.pool.clone();
        async move {
            let sighting = Sighting {
                id,
                seen_at,
                expires_at: seen_at + secs(30),
                stale_at: None,
            };
            let mut tx = pool.begin().await?;
            let upserted = objects::upsert_sightings(&mut tx, &[sighting]).await?;
            tx.commit().await?;
            anyhow::Ok(upserted)
        }
    };
    // Seen 40 s ago: before the stretch's deadline, so it belongs to the expired stretch.
    let late = upsert(now - secs(40)).await?;
    assert!(
        late.came_online.is_empty(),
        "a sighting inside the expired stretch came online: {late:?}"
    );
    assert_eq!(late.in_the_past, 1);
    assert!(
        env.object_ids().await?.is_empty(),
        "the stretch was resurrected"
    );

    // Seen 10 s ago: after the deadline, a comeback that tells how long it was silent.
    let back = upsert(now - secs(10)).await?;
    let [online] = back.came_online.as_slice() else {
        panic!("a comeback did not come online: {back:?}");
    };
    let previous = online.previous.expect("the previous expiry");
    assert_eq!(previous.expired_at, now);
    assert_eq!(previous.last_seen, last_seen);
    assert_eq!(online.seen_at - previous.last_seen, secs(50));

    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM object_history a JOIN object_history b
             ON a.object_id = b.object_id AND a.first_seen < b.first_seen
            AND a.expires_at > b.first_seen",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(overlapping, 0, "stretches overlap");
    env.teardown().await
}
