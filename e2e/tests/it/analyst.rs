//! Analysts read through a read-only role: every table can be queried, nothing written.

use e2e::{Status, TestEnv};
use sqlx::PgPool;

#[tokio::test]
async fn the_analyst_login_reads_every_table_and_cannot_write() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let analyst_url = env.analyst_url().await?;
    sqlx::query("INSERT INTO objects (id, first_seen, last_seen, expires_at) VALUES (7, now(), now(), now() + interval '30 seconds')")
        .execute(&env.pool)
        .await?;

    let analyst = PgPool::connect(&analyst_url).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM objects")
        .fetch_all(&analyst)
        .await?;
    assert_eq!(ids, vec![7]);
    for view in [
        "notifications",
        "object_expiries",
        "online_objects",
        "object_history",
    ] {
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {view}")))
                .fetch_one(&analyst)
                .await?;
        let expected = i64::from(view == "online_objects" || view == "object_history");
        assert_eq!(rows, expected, "{view}");
    }

    for write in [
        "INSERT INTO objects (id, first_seen, last_seen, expires_at) VALUES (8, now(), now(), now())",
        "UPDATE objects SET last_seen = now()",
        "DELETE FROM objects",
    ] {
        let err = sqlx::query(write)
            .execute(&analyst)
            .await
            .expect_err("the analyst role must not write");
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{write}: {err}");
    }
    analyst.close().await;
    env.teardown().await
}
