//! A two-node PostgreSQL cluster managed by Patroni, as the scenario starts it on
//! loopback: one etcd member (Patroni's consensus store), two Patroni members each
//! running its own PostgreSQL 15 (synchronous replication, `synchronous_mode`), and
//! HAProxy in front, sending connections to whichever member Patroni's REST API calls the
//! primary. The pipeline is given HAProxy's address only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::chaos::tools;
use crate::process::{Process, Spec};

/// Members of the cluster.
pub const MEMBERS: usize = 2;
/// Patroni's leader key lives this long without a renewal: the longest a dead primary
/// keeps the lock, so the bulk of the failover time.
const TTL_SECS: u64 = 10;
/// Longest wait for the first member to bootstrap (initdb) and for a member to become a
/// synchronous standby (a base backup or `pg_rewind`).
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(120);
/// How long a `SELECT` through HAProxy may take while looking for a primary.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The ports the cluster listens on, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// HAProxy: the pipeline's `DATABASE_URL` port. etcd listens on +1 (clients) and +2
    /// (peers); member `i` (1-based) runs PostgreSQL on +2+i and Patroni's REST API on
    /// +4+i.
    pub base: u16,
}

impl Ports {
    fn etcd_client(self) -> u16 {
        self.base + 1
    }
    fn etcd_peer(self) -> u16 {
        self.base + 2
    }
    fn postgres(self, member: usize) -> u16 {
        self.base + 2 + member as u16
    }
    fn rest(self, member: usize) -> u16 {
        self.base + 4 + member as u16
    }
    /// Every port, to check that none is taken.
    pub fn all(self) -> Vec<u16> {
        (0..=6).map(|k| self.base + k).collect()
    }
}

/// One Patroni member and its PostgreSQL.
struct Member {
    name: String,
    index: usize,
    config: PathBuf,
    data_dir: PathBuf,
    process: Option<Process>,
}

/// The cluster: etcd, the members, HAProxy.
pub struct PgCluster {
    ports: Ports,
    dir: PathBuf,
    logs: PathBuf,
    postgres_user: (u32, u32),
    /// The newest installed PostgreSQL's programs.
    bin_dir: PathBuf,
    etcd: Option<Process>,
    members: Vec<Member>,
    haproxy: Option<Process>,
    http: reqwest::Client,
}

impl PgCluster {
    /// The cluster with its files under `dir` (made afresh; PostgreSQL's user must be
    /// able to reach it) and its logs under `logs`.
    pub fn new(dir: &Path, logs: &Path, ports: Ports) -> anyhow::Result<Self> {
        let members = (1..=MEMBERS)
            .map(|i| Member {
                name: format!("pg{i}"),
                index: i,
                config: dir.join(format!("pg{i}.yml")),
                data_dir: dir.join(format!("pg{i}")),
                process: None,
            })
            .collect();
        Ok(Self {
            ports,
            dir: dir.to_owned(),
            logs: logs.to_owned(),
            postgres_user: system_user("postgres")?,
            bin_dir: postgres_bin_dir()?,
            etcd: None,
            members,
            haproxy: None,
            http: lastseen::tls::http_client()
                .timeout(Duration::from_secs(1))
                .build()?,
        })
    }

    /// The pipeline's `DATABASE_URL` for database `name`: through HAProxy.
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{name}",
            self.ports.base
        )
    }

    /// A member's name (`pg1`, `pg2`), 0-based.
    pub fn member_name(&self, member: usize) -> &str {
        &self.members[member].name
    }

    /// Writes the configuration files, then starts etcd, the first member (which
    /// bootstraps the cluster), the second (a synchronous standby once it streamed) and
    /// HAProxy; returns once a connection through HAProxy reaches a writable primary.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        for port in self.ports.all() {
            anyhow::ensure!(
                !tools::port_open(port).await,
                "port {port} is taken: set PG_FAILOVER_PORT to the first of 7 free ports"
            );
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        self.write_configs()?;
        let (uid, gid) = self.postgres_user;
        tools::run(
            "chown",
            &[
                "-R",
                &format!("{uid}:{gid}"),
                &self.dir.display().to_string(),
            ],
            &[],
            Duration::from_secs(10),
        )
        .await?;

        let etcd = Spec::new(tools::find("etcd").context("etcd is not installed")?).args(&[
            "--name".to_owned(),
            "etcd-1".to_owned(),
            "--data-dir".to_owned(),
            self.dir.join("etcd").display().to_string(),
            "--listen-client-urls".to_owned(),
            format!("http://127.0.0.1:{}", self.ports.etcd_client()),
            "--advertise-client-urls".to_owned(),
            format!("http://127.0.0.1:{}", self.ports.etcd_client()),
            "--listen-peer-urls".to_owned(),
            format!("http://127.0.0.1:{}", self.ports.etcd_peer()),
            "--initial-advertise-peer-urls".to_owned(),
            format!("http://127.0.0.1:{}", self.ports.etcd_peer()),
            "--initial-cluster".to_owned(),
            format!("etcd-1=http://127.0.0.1:{}", self.ports.etcd_peer()),
        ]);
        self.etcd = Some(Process::start("etcd", etcd, self.logs.join("etcd.log"))?);
        tools::wait_http(
            Duration::from_secs(30),
            &format!("http://127.0.0.1:{}/version", self.ports.etcd_client()),
        )
        .await
        .context("etcd did not start")?;

        self.start_member(0)?;
        self.wait_role(0, "primary", BOOTSTRAP_LIMIT)
            .await
            .context("pg1 did not bootstrap the cluster")?;
        self.start_member(1)?;
        self.wait_role(1, "sync", BOOTSTRAP_LIMIT)
            .await
            .context("pg2 did not become the synchronous standby")?;

        let config = self.dir.join("haproxy.cfg");
        let haproxy = Spec::new(tools::find("haproxy").context("haproxy is not installed")?)
            .args(&["-db", "-f", &config.display().to_string()]);
        self.haproxy = Some(Process::start(
            "haproxy",
            haproxy,
            self.logs.join("haproxy.log"),
        )?);
        self.wait_writable(Duration::from_secs(30))
            .await
            .context("no writable primary through HAProxy")?;
        Ok(())
    }

    fn start_member(&mut self, member: usize) -> anyhow::Result<()> {
        let (uid, gid) = self.postgres_user;
        let m = &mut self.members[member];
        let spec = Spec::new(tools::find("patroni").context("patroni is not installed")?)
            .args(&[m.config.display().to_string()])
            .in_dir(&self.dir)
            .as_user(uid, gid);
        m.process = Some(Process::start(
            &m.name,
            spec,
            self.logs.join(format!("{}.log", m.name)),
        )?);
        Ok(())
    }

    /// Whether member `member`'s REST API answers 200 to `/{role}` (`primary`, `sync`,
    /// `replica`, `health`).
    pub async fn has_role(&self, member: usize, role: &str) -> bool {
        let url = format!(
            "http://127.0.0.1:{}/{role}",
            self.ports.rest(self.members[member].index)
        );
        self.http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The member Patroni calls the primary, if any.
    pub async fn primary(&self) -> Option<usize> {
        for member in 0..MEMBERS {
            if self.has_role(member, "primary").await {
                return Some(member);
            }
        }
        None
    }

    /// Waits until member `member` has `role`, up to `limit`; how long that took.
    pub async fn wait_role(
        &self,
        member: usize,
        role: &str,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.has_role(member, role).await {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!(
            "{} was not {role} within {limit:?} (see its log)",
            self.members[member].name
        )
    }

    /// Waits until connections through HAProxy reach a primary that takes writes, up to
    /// `limit`; how long that took. Several in a row must: HAProxy counts a member as
    /// up until its checks failed, so right after its start it sends some connections
    /// to the standby.
    pub async fn wait_writable(&self, limit: Duration) -> anyhow::Result<Duration> {
        const IN_A_ROW: u32 = 4;
        let started = Instant::now();
        let url = self.database_url("postgres");
        let mut in_a_row = 0;
        while started.elapsed() < limit {
            if tokio::time::timeout(PROBE_TIMEOUT, writable(&url))
                .await
                .is_ok_and(|w| w)
            {
                in_a_row += 1;
                if in_a_row == IN_A_ROW {
                    return Ok(started.elapsed());
                }
                continue;
            }
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("no writable primary through HAProxy within {limit:?}")
    }

    /// The host's loss: SIGKILL to member `member`'s Patroni and its PostgreSQL
    /// postmaster at once, so neither can hand over or shut down cleanly.
    pub async fn kill9(&mut self, member: usize) -> anyhow::Result<()> {
        let m = &mut self.members[member];
        let pid_file = m.data_dir.join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("cannot read {}", pid_file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let patroni = m
            .process
            .as_mut()
            .with_context(|| format!("{} is not running", m.name))?;
        let kill_args = ["-9", postmaster.as_str()];
        let (kill_postmaster, kill_patroni) = tokio::join!(
            tools::run("kill", &kill_args, &[], Duration::from_secs(5)),
            patroni.kill9()
        );
        kill_postmaster.with_context(|| format!("cannot kill -9 {}'s postmaster", m.name))?;
        kill_patroni?;
        Ok(())
    }

    /// Starts member `member`'s Patroni again after a kill: it rejoins as a replica
    /// (rewound if its timeline diverged).
    pub fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        let m = &mut self.members[member];
        m.process
            .as_mut()
            .with_context(|| format!("{} was never started", m.name))?
            .restart()
    }

    /// Stops HAProxy, the members (Patroni stops its PostgreSQL on SIGTERM) and etcd,
    /// then removes the cluster's files.
    pub async fn shutdown(&mut self) {
        if let Some(haproxy) = &mut self.haproxy {
            haproxy.stop(Duration::from_secs(5)).await;
        }
        for m in &mut self.members {
            if let Some(process) = &mut m.process {
                process.stop(Duration::from_secs(30)).await;
            }
            // A postmaster left behind (its Patroni killed) would hold the data dir; a
            // stale pid file's number may be another process's by now.
            if let Ok(pid) = std::fs::read_to_string(m.data_dir.join("postmaster.pid"))
                && let Some(pid) = pid.lines().next()
                && std::fs::read_to_string(format!("/proc/{}/comm", pid.trim()))
                    .is_ok_and(|comm| comm.trim() == "postgres")
            {
                let _ = tools::run("kill", &["-9", pid.trim()], &[], Duration::from_secs(5)).await;
            }
        }
        if let Some(etcd) = &mut self.etcd {
            etcd.stop(Duration::from_secs(10)).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn write_configs(&self) -> anyhow::Result<()> {
        for m in &self.members {
            let i = m.index;
            let config = format!(
                r#"scope: lastseen-failover
name: {name}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 5
        max_replication_slots: 5
        wal_log_hints: "on"
        max_connections: 200
  initdb:
  - encoding: UTF8
  - auth: trust
  pg_hba:
  - host replication replicator 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
  - local all all trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass-{name}
  authentication:
    replication:
      username: replicator
      password: replicator
    superuser:
      username: postgres
      password: postgres
  parameters:
    unix_socket_directories: {dir}
"#,
                name = m.name,
                rest = self.ports.rest(i),
                etcd = self.ports.etcd_client(),
                ttl = TTL_SECS,
                pg = self.ports.postgres(i),
                data = m.data_dir.display(),
                dir = self.dir.display(),
                bin_dir = self.bin_dir.display(),
            );
            std::fs::write(&m.config, config)
                .with_context(|| format!("cannot write {}", m.config.display()))?;
        }
        let servers: String = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    m.name,
                    self.ports.postgres(m.index),
                    self.ports.rest(m.index)
                )
            })
            .collect();
        let haproxy = format!(
            "# Connections go to the member whose Patroni answers 200 to /primary; those to
# a member that stops being the primary are closed at once.
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 1s
listen primary
    bind 127.0.0.1:{port}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}",
            port = self.ports.base
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, haproxy).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Whether a connection to `url` reaches a server out of recovery (a primary).
async fn writable(url: &str) -> bool {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return false;
    };
    let primary = sqlx::query_scalar::<_, bool>("SELECT NOT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(false);
    let _ = conn.close().await;
    primary
}

/// The programs of the newest PostgreSQL installed from the distribution's packages
/// (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "cannot read {} (install PostgreSQL: `make services`)",
                root.display()
            )
        })?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some((name.parse::<u32>().ok()?, name))
        })
        .max()
        .with_context(|| format!("no PostgreSQL version in {}", root.display()))?;
    Ok(root.join(newest.1).join("bin"))
}

/// The uid and gid of system user `name`, from /etc/passwd.
fn system_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name) && fields.len() > 3)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .with_context(|| format!("no user {name} (install PostgreSQL: `make services`)"))
}
