//! The bench's lock-wait probe (`harness::bench::lock_waits`): a backend waiting on a
//! row another client's transaction holds is counted, with that client as its holder.

use std::str::FromStr;
use std::time::Duration;

use e2e::{Status, TestEnv};
use harness::bench::lock_waits::{self, Waiting};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

async fn connect_as(env: &TestEnv, name: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(&env.database_url)?.application_name(name);
    Ok(PgConnection::connect_with(&options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_waiting_on_another_clients_row_is_counted_with_its_holder() -> anyhow::Result<()>
{
    let env = TestEnv::start(Status::quick_all_online()).await?;
    sqlx::query("CREATE TABLE lock_probe (id int PRIMARY KEY)")
        .execute(&env.pool)
        .await?;
    let idle = lock_waits::sample(&env.pool).await?;
    assert!(idle.is_empty(), "nobody waits yet, sampled {idle:?}");

    let mut holder = connect_as(&env, "probe-holder").await?;
    let mut waiter = connect_as(&env, "probe-waiter").await?;
    let mut held = holder.begin().await?;
    sqlx::query("INSERT INTO lock_probe VALUES (1)")
        .execute(&mut *held)
        .await?;
    // The same key from another transaction waits for the first to end, as two
    // consumers' upserts of one object do.
    let blocked = tokio::spawn(async move {
        sqlx::query("INSERT INTO lock_probe VALUES (1) ON CONFLICT (id) DO NOTHING")
            .execute(&mut waiter)
            .await
            .map(|done| done.rows_affected())
    });
    let wanted = vec![Waiting {
        waiter: "probe-waiter".into(),
        blocker: "probe-holder".into(),
        backends: 1,
    }];
    let seen = env
        .eventually(Duration::from_secs(10), || async {
            Ok(lock_waits::sample(&env.pool).await? == wanted)
        })
        .await?;
    assert!(
        seen,
        "wanted {wanted:?}, sampled {:?}",
        lock_waits::sample(&env.pool).await?
    );

    held.commit().await?;
    let inserted = tokio::time::timeout(Duration::from_secs(10), blocked).await???;
    assert_eq!(inserted, 0, "the holder's row was committed first");
    let after = lock_waits::sample(&env.pool).await?;
    assert!(
        after.is_empty(),
        "nobody waits once it committed, sampled {after:?}"
    );
    drop(holder);
    env.teardown().await
}
