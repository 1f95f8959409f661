//! The `progress_reporters` table: who the sweepers hear progress reports from, kept so a
//! starting sweeper knows the silent ones too.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A producer or consumer as last heard.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KnownReporter {
    pub name: String,
    /// `producer` or `consumer`.
    pub role: String,
    pub alive_queue: Option<String>,
    pub last_heard: DateTime<Utc>,
}

/// Records `heard` (keeping the latest `last_heard` of each) and deletes `gone`.
pub async fn remember(pool: &PgPool, heard: &[KnownReporter], gone: &[String]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    if !heard.is_empty() {
        let names: Vec<&str> = heard.iter().map(|r| r.name.as_str()).collect();
        let roles: Vec<&str> = heard.iter().map(|r| r.role.as_str()).collect();
        let queues: Vec<Option<&str>> = heard.iter().map(|r| r.alive_queue.as_deref()).collect();
        let heard_at: Vec<DateTime<Utc>> = heard.iter().map(|r| r.last_heard).collect();
        sqlx::query(
            "INSERT INTO progress_reporters (name, role, alive_queue, last_heard)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
             ORDER BY 1
             ON CONFLICT (name) DO UPDATE
                 SET role = EXCLUDED.role, alive_queue = EXCLUDED.alive_queue,
                     last_heard = GREATEST(progress_reporters.last_heard, EXCLUDED.last_heard)",
        )
        .bind(&names)
        .bind(&roles)
        .bind(&queues)
        .bind(&heard_at)
        .execute(&mut *tx)
        .await?;
    }
    if !gone.is_empty() {
        sqlx::query("DELETE FROM progress_reporters WHERE name = ANY($1)")
            .bind(gone)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Reporters heard since `since`.
pub async fn heard_since(pool: &PgPool, since: DateTime<Utc>) -> sqlx::Result<Vec<KnownReporter>> {
    sqlx::query_as(
        "SELECT name, role, alive_queue, last_heard FROM progress_reporters
         WHERE last_heard > $1 ORDER BY name",
    )
    .bind(since)
    .fetch_all(pool)
    .await
}
