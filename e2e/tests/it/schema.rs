//! A database whose schema history does not match the build (a migration changed after
//! it was applied, or one from a newer build) stops the binaries at once with an error
//! naming the migration, instead of being retried as if PostgreSQL were down.

use std::time::Duration;

use e2e::{Status, TestEnv};
use lastseen::db::{DbError, connect_and_migrate};
use sqlx::migrate::MigrateError;
use tokio_util::sync::CancellationToken;

/// The error `connect_and_migrate` returns, which must come within 10 s (not retried).
async fn refused_at_once(args: &lastseen::config::DatabaseArgs) -> DbError {
    tokio::time::timeout(
        Duration::from_secs(10),
        connect_and_migrate(args, &Default::default(), &CancellationToken::new()),
    )
    .await
    .expect("a fatal error is returned at once, not retried")
    .expect_err("the schema history is refused")
}

#[tokio::test]
async fn a_changed_or_unknown_migration_is_a_fatal_error_not_an_outage() -> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let args = lastseen::config::DatabaseArgs {
        database_url: env.database_url.clone(),
        database_max_connections: 2,
    };

    // A migration whose content changed after it was applied.
    let checksum: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 1")
            .fetch_one(&env.pool)
            .await?;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&env.pool)
        .await?;
    let err = refused_at_once(&args).await;
    assert!(
        matches!(err, DbError::Migrate(MigrateError::VersionMismatch(1))),
        "{err}"
    );
    assert!(err.is_fatal());

    // The real binary: exits non-zero within seconds, its last line naming migration 1.
    let sweeper = e2e::process::binaries()?.join("sweeper");
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(sweeper)
            .env_clear()
            .env("DATABASE_URL", &env.database_url)
            .env("METRICS_ADDR", "127.0.0.1:0")
            .current_dir(std::env::temp_dir())
            .output(),
    )
    .await
    .expect("the sweeper stops by itself")?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("migration 1 was previously applied but has been modified"),
        "{stderr}"
    );

    // A migration from a newer build than this one.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1")
        .bind(&checksum)
        .execute(&env.pool)
        .await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer build', true, '\\x00', 0)",
    )
    .execute(&env.pool)
    .await?;
    let err = refused_at_once(&args).await;
    assert!(
        matches!(err, DbError::Migrate(MigrateError::VersionMissing(9999))),
        "{err}"
    );
    env.teardown().await
}
