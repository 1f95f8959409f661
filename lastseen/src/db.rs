//! PostgreSQL: create the database if it is missing, connect a pool with backoff, and
//! apply the embedded migrations (safe when several processes start together).

use std::str::FromStr;
use std::time::Duration;

use backon::Retryable;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseArgs, Misconfigured};
use crate::tls::TlsArgs;

/// The schema, embedded at build time from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long a caller waits for a pooled connection before the operation fails (and is
/// retried by its caller), so an outage surfaces instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong preparing PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    Url(sqlx::Error),
    #[error("PostgreSQL is unreachable or failed: {0}")]
    Connect(sqlx::Error),
    /// PostgreSQL refused the user, password, database or a permission of `DATABASE_URL`.
    #[error("PostgreSQL refused the settings")]
    Refused(#[source] Misconfigured),
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stopped while connecting to PostgreSQL")]
    Cancelled,
}

impl DbError {
    /// True when retrying cannot help: PostgreSQL refused the settings, or the
    /// database's schema history does not match this build's migrations (a migration
    /// changed after it was applied, a newer build's migration, or one left
    /// half-applied). Someone has to decide; waiting will not.
    pub fn is_fatal(&self) -> bool {
        use sqlx::migrate::MigrateError;
        matches!(
            self,
            Self::Url(_)
                | Self::Refused(_)
                | Self::Migrate(
                    MigrateError::VersionMissing(_)
                        | MigrateError::VersionMismatch(_)
                        | MigrateError::VersionNotPresent(_)
                        | MigrateError::VersionTooOld(..)
                        | MigrateError::VersionTooNew(..)
                        | MigrateError::Dirty(_)
                )
        )
    }
}

/// SQLSTATEs by which PostgreSQL refuses the settings rather than fails for a while:
/// a wrong password, a login `pg_hba.conf` or the roles refuse, a missing permission (to
/// create the database, say), a database that does not exist.
const REFUSALS: &[(&str, &str)] = &[
    ("28P01", "check the user and password"),
    ("28000", "check the user, and pg_hba.conf on the server"),
    ("42501", "the user needs that permission"),
    ("3D000", "check the database name"),
];

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        if let Some(reason) = tls_refusal(&err) {
            return Self::Refused(Misconfigured {
                setting: "DATABASE_URL",
                reason,
            });
        }
        let refusal = err.as_database_error().and_then(|db| {
            let code = db.code()?;
            let (_, hint) = REFUSALS.iter().find(|(c, _)| *c == code)?;
            // The server's text names the user or database, never the password.
            Some(format!("PostgreSQL refused it: {} ({hint})", db.message()))
        });
        match refusal {
            Some(reason) => Self::Refused(Misconfigured {
                setting: "DATABASE_URL",
                reason,
            }),
            None => Self::Connect(err),
        }
    }
}

/// Why TLS to PostgreSQL cannot work with these settings, when `err` says so: a
/// certificate not trusted (or not for this host), or a server without TLS while
/// `sslmode` asks for it. A handshake cut by the network is an outage, not this.
fn tls_refusal(err: &sqlx::Error) -> Option<String> {
    let reason = match (crate::tls::is_certificate_error(err), err) {
        (Some(reason), _) => reason,
        (None, sqlx::Error::Tls(inner)) if inner.to_string().contains("not support TLS") => {
            inner.to_string()
        }
        _ => return None,
    };
    let hint = if reason.contains("alert") {
        crate::tls::hint(&reason)
    } else {
        "check sslmode and sslrootcert in DATABASE_URL, or TLS_CA_FILE"
    };
    Some(format!("TLS: {reason} ({hint})"))
}

/// Connects a pool to a database that exists and is migrated, retrying with backoff
/// while PostgreSQL is unreachable, until `cancel` fires. A schema history that does not
/// match this build's migrations ([`DbError::is_fatal`]) is returned at once.
pub async fn connect_and_migrate(
    args: &DatabaseArgs,
    tls: &TlsArgs,
    cancel: &CancellationToken,
) -> Result<PgPool, DbError> {
    let url = tls.postgres_url(&args.database_url);
    let options = named(PgConnectOptions::from_str(&url).map_err(DbError::Url)?);
    let prepare = || async {
        if !Postgres::database_exists(&url).await? {
            // Two processes may race here; losing the race is fine.
            if let Err(err) = Postgres::create_database(&url).await
                && !Postgres::database_exists(&url).await?
            {
                return Err(err.into());
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(args.database_max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(pool)
    };
    let retried = prepare
        .retry(crate::backoff::reconnect())
        .when(|err: &DbError| !err.is_fatal())
        .notify(
            |err, delay| tracing::warn!(error = %err, ?delay, "PostgreSQL not ready, retrying"),
        );
    tokio::select! {
        result = retried => result,
        () = cancel.cancelled() => Err(DbError::Cancelled),
    }
}

/// Names the connections after the program (`application_name` `lastseen-consumer`, ...),
/// so `pg_stat_activity` tells an administrator which process holds which connection;
/// one the URL (or `PGAPPNAME`) gives is kept.
fn named(options: PgConnectOptions) -> PgConnectOptions {
    if options.get_application_name().is_some() {
        return options;
    }
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.file_stem()?.to_str()?.to_owned()));
    match program {
        Some(program) => options.application_name(&application_name(&program)),
        None => options,
    }
}

/// The `application_name` of a program's connections: `lastseen-` and its name.
pub fn application_name(program: &str) -> String {
    if program.starts_with("lastseen") {
        program.to_owned()
    } else {
        format!("lastseen-{program}")
    }
}

/// Longest a read API statement may run before PostgreSQL cancels it.
const READ_STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// A pool for the read API: read-only transactions, statements cut at 5 s, at most
/// `max_connections`. Connects lazily, so a process serving it never waits on PostgreSQL
/// to start, and a reader never takes a connection that ingest needs.
pub fn read_pool(url: &str, tls: &TlsArgs, max_connections: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(&tls.postgres_url(url))
        .map_err(DbError::Url)?
        .application_name("lastseen-reader")
        .options([
            ("default_transaction_read_only", "on".to_owned()),
            ("statement_timeout", READ_STATEMENT_TIMEOUT_MS.to_string()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_named_after_the_program_unless_the_url_names_them() {
        assert_eq!(application_name("consumer"), "lastseen-consumer");
        assert_eq!(application_name("lastseenctl"), "lastseenctl");
        let unnamed = PgConnectOptions::from_str("postgres://u@127.0.0.1/db").expect("a URL");
        let program = std::env::current_exe().expect("this test's program");
        let program = program
            .file_stem()
            .and_then(|p| p.to_str())
            .expect("a name");
        assert_eq!(
            named(unnamed).get_application_name(),
            Some(application_name(program).as_str())
        );
        let given = PgConnectOptions::from_str("postgres://u@127.0.0.1/db?application_name=ours")
            .expect("a URL");
        assert_eq!(named(given).get_application_name(), Some("ours"));
    }
}
