//! Stands in for autovacuum while the bench runs on a server that has it off (as CI
//! servers often do): without it the busiest tables are never analyzed nor vacuumed, so
//! plans are made without statistics and dead rows pile up, which no production server
//! with its defaults would show. What it does is what autovacuum would, and its cost is
//! PostgreSQL's, as autovacuum's would be.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// How often the busiest tables are vacuumed and analyzed: autovacuum's default
/// `autovacuum_naptime`, the most often it visits a database; at 10,000 ids/s its
/// thresholds (20% of a table dead, 10% changed) are due by then. More often would
/// cost PostgreSQL more than a production server spends.
const EVERY: Duration = Duration::from_secs(60);

/// What a round runs: the tables a bench run writes most.
const VACUUM: &str = "VACUUM (ANALYZE) objects, notifications, object_expiries, object_last_expiry";

/// The `application_name` of its connection.
const STAND_IN: &str = "autovacuum-stand-in";

/// Whether the server runs autovacuum.
pub async fn autovacuum_on(pool: &PgPool) -> anyhow::Result<bool> {
    let setting: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(pool)
        .await?;
    Ok(setting == "on")
}

/// Runs [`VACUUM`] every [`EVERY`] until `stop`, when the server has
/// autovacuum off; returns at once otherwise. Returns how many rounds it ran.
pub async fn stand_in_for_autovacuum(pool: PgPool, stop: CancellationToken) -> u32 {
    match autovacuum_on(&pool).await {
        Ok(false) => {}
        Ok(true) => return 0,
        Err(err) => {
            tracing::warn!(error = %err, "cannot tell whether autovacuum is on; leaving the tables alone");
            return 0;
        }
    }
    tracing::info!(
        "autovacuum is off on this server: the bench vacuums and analyzes its tables every {EVERY:?} instead"
    );
    // A connection of its own, named as autovacuum's stand-in: the bench counts its
    // backend as the pipeline's PostgreSQL, not as the bench's own queries.
    let options = (*pool.connect_options()).clone().application_name(STAND_IN);
    let mut conn = match PgConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(err) => {
            tracing::warn!(error = %err, "cannot connect to vacuum in autovacuum's place; leaving the tables alone");
            return 0;
        }
    };
    let mut rounds = 0;
    let mut every = tokio::time::interval(EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = conn.close().await;
                return rounds;
            }
            _ = every.tick() => {}
        }
        match vacuum(&mut conn).await {
            Ok(()) => rounds += 1,
            Err(err) => tracing::warn!(error = %err, "vacuum in place of autovacuum failed"),
        }
    }
}

/// One round, paced as autovacuum paces itself by default (`autovacuum_vacuum_cost_delay`
/// 2 ms per `vacuum_cost_limit` 200 of work), where a manual VACUUM would run flat out.
async fn vacuum(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql("SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200")
        .execute(&mut *conn)
        .await?;
    sqlx::query(VACUUM).execute(&mut *conn).await.map(|_| ())
}
