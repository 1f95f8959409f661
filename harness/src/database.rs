//! A fresh database for a harness run: dropped if it exists, then created and migrated.

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Drops the database `url` names and makes it again, migrated; `setting` names the URL's
/// setting in errors.
pub async fn fresh(url: &str, setting: &str) -> anyhow::Result<PgPool> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("bad {setting}"))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{setting} must name a database of letters, digits and _"
    );
    let mut admin_url = parsed.clone();
    admin_url.set_path("/postgres");
    let admin = PgPool::connect(admin_url.as_str())
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({setting})"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    let args = lastseen::config::DatabaseArgs {
        database_url: url.to_owned(),
        database_max_connections: 4,
    };
    Ok(
        lastseen::db::connect_and_migrate(&args, &Default::default(), &CancellationToken::new())
            .await?,
    )
}
