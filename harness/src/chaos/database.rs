//! The suite's own PostgreSQL cluster, so stopping it never disturbs the machine's shared
//! one (5432) that other tests use: Debian's `pg_createcluster <version> tester-chaos`
//! on its own port, created once (trust authentication, started only by the suite) and
//! driven with `pg_ctlcluster`, which runs the server as `postgres` when called as root.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::tools;

/// The cluster's name in `pg_lsclusters`. It sorts after `main`: `scripts/services.sh`
/// starts the first cluster `pg_lsclusters` lists, which must stay the shared one.
pub const CLUSTER_NAME: &str = "tester-chaos";
/// The pipeline's database in that cluster, dropped and re-created for each run.
pub const DATABASE: &str = "lastseen_chaos";

/// Longest wait for the server to accept connections after a start.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Only the suite's processes on this host connect; the cluster holds nothing else.
const PG_HBA: &str = "# Written by `harness chaos`: its own throwaway cluster, local connections only.\n\
local all all trust\n\
host all all 127.0.0.1/32 trust\n\
host all all ::1/128 trust\n";

/// The chaos PostgreSQL cluster.
pub struct DatabaseCluster {
    version: String,
    port: u16,
}

impl DatabaseCluster {
    /// Finds the cluster, creating it on `port` with the newest installed PostgreSQL if
    /// it does not exist yet; makes sure it trusts local connections.
    pub async fn prepare(port: u16) -> anyhow::Result<Self> {
        tools::require(&[
            ("pg_lsclusters", "postgresql-common"),
            ("pg_createcluster", "postgresql-common"),
            ("pg_ctlcluster", "postgresql-common"),
        ])?;
        let cluster = match find_cluster().await? {
            Some(found) => {
                if found.port != port {
                    anyhow::bail!(
                        "the chaos PostgreSQL cluster {}/{CLUSTER_NAME} exists on port {}, not {port}: set CHAOS_PG_PORT={} or drop it with `pg_dropcluster --stop {} {CLUSTER_NAME}`",
                        found.version,
                        found.port,
                        found.port,
                        found.version
                    );
                }
                Self {
                    version: found.version,
                    port,
                }
            }
            None => {
                if tools::port_open(port).await {
                    anyhow::bail!(
                        "port {port} (for the chaos PostgreSQL cluster) is taken by another program: set CHAOS_PG_PORT to a free port"
                    );
                }
                let version = newest_installed_version()?;
                eprintln!(
                    "[chaos] creating PostgreSQL cluster {version}/{CLUSTER_NAME} on port {port} (once)"
                );
                let port_arg = port.to_string();
                tools::run(
                    "pg_createcluster",
                    &[
                        "--start-conf",
                        "manual",
                        "-p",
                        &port_arg,
                        &version,
                        CLUSTER_NAME,
                        "--",
                        "--auth=trust",
                    ],
                    &[],
                    Duration::from_secs(120),
                )
                .await?;
                Self { version, port }
            }
        };
        let hba = PathBuf::from(format!(
            "/etc/postgresql/{}/{CLUSTER_NAME}/pg_hba.conf",
            cluster.version
        ));
        if std::fs::read_to_string(&hba).ok().as_deref() != Some(PG_HBA) {
            std::fs::write(&hba, PG_HBA)
                .with_context(|| format!("cannot write {}", hba.display()))?;
            if cluster.is_online().await? {
                cluster.ctl(&["reload"]).await?;
            }
        }
        Ok(cluster)
    }

    /// The URL of the pipeline's database.
    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Where the server logs.
    pub fn log_file(&self) -> String {
        format!(
            "/var/log/postgresql/postgresql-{}-{CLUSTER_NAME}.log",
            self.version
        )
    }

    async fn ctl(&self, action: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["--skip-systemctl-redirect", &self.version, CLUSTER_NAME];
        args.extend_from_slice(action);
        tools::run("pg_ctlcluster", &args, &[], START_LIMIT).await
    }

    async fn is_online(&self) -> anyhow::Result<bool> {
        Ok(find_cluster().await?.is_some_and(|c| c.online))
    }

    /// Starts the server (if down) and waits until it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        if !self.is_online().await? {
            self.ctl(&["start"]).await?;
        }
        let options = PgConnectOptions::from_str(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.port
        ))?;
        let started = Instant::now();
        loop {
            match sqlx::ConnectOptions::connect(&options).await {
                Ok(conn) => {
                    let _ = sqlx::Connection::close(conn).await;
                    return Ok(());
                }
                Err(err) if started.elapsed() > START_LIMIT => {
                    return Err(err).with_context(|| {
                        format!(
                            "the chaos PostgreSQL cluster does not accept connections; see {}",
                            self.log_file()
                        )
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Stops the server (fast mode: clients are disconnected, nothing is lost).
    pub async fn stop(&self) -> anyhow::Result<()> {
        if self.is_online().await? {
            self.ctl(&["stop", "--mode=fast"]).await?;
        }
        Ok(())
    }

    /// Drops and re-creates the pipeline's database with its schema, and returns a pool
    /// for the suite's own queries (short acquire timeout: it polls during outages).
    pub async fn fresh_database(&self) -> anyhow::Result<PgPool> {
        let admin = PgPool::connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.port
        ))
        .await
        .context("cannot connect to the chaos PostgreSQL cluster")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{DATABASE}\" WITH (FORCE)"
        )))
        .execute(&admin)
        .await
        .context("cannot drop the chaos database")?;
        admin.close().await;
        let args = lastseen::config::DatabaseArgs {
            database_url: self.database_url(),
            database_max_connections: 1,
        };
        lastseen::db::connect_and_migrate(&args, &Default::default(), &CancellationToken::new())
            .await?
            .close()
            .await;
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&self.database_url())
            .await
            .context("cannot connect to the chaos database")
    }
}

/// One line of `pg_lsclusters`.
struct Cluster {
    version: String,
    port: u16,
    online: bool,
}

async fn find_cluster() -> anyhow::Result<Option<Cluster>> {
    let out = tools::run("pg_lsclusters", &["-h"], &[], Duration::from_secs(30)).await?;
    Ok(out.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.as_slice() {
            [version, name, port, status, ..] if *name == CLUSTER_NAME => Some(Cluster {
                version: (*version).to_owned(),
                port: port.parse().ok()?,
                online: status.starts_with("online"),
            }),
            _ => None,
        }
    }))
}

/// The newest PostgreSQL server installed (Debian puts each under /usr/lib/postgresql).
fn newest_installed_version() -> anyhow::Result<String> {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql): run `make services`")?;
    versions
        .filter_map(Result::ok)
        .filter(|e| e.path().join("bin/postgres").is_file())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let major: f64 = name.parse().ok()?;
            Some((major, name))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
        .context("no PostgreSQL server under /usr/lib/postgresql: run `make services`")
}
