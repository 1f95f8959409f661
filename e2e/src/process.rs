//! The real binaries as separate processes (built on demand), for tests that need what
//! only a process has: its own metrics registry, its own ports, a kill.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Builds the producer, consumer and sweeper binaries once per test process (a no-op when
/// they are up to date) and returns the folder that holds them.
pub fn binaries() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "build", "-q", "-p", "producer", "-p", "consumer", "-p", "sweeper",
                ])
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of the binaries failed: {status}"));
            }
            // This test runs from target/<profile>/deps/; the binaries are one level up.
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(|deps| deps.parent())
                .map(PathBuf::from)
                .ok_or_else(|| format!("cannot find the target folder from {}", exe.display()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A spawned binary, killed when dropped; its stderr goes to a file for post-mortems.
pub struct Spawned {
    pub name: String,
    /// Where its stderr (its log) goes.
    pub log: PathBuf,
    child: Child,
}

impl Spawned {
    /// Starts `program` (producer, consumer or sweeper) with `env` (and nothing from `.env`:
    /// it runs in a temporary folder).
    pub fn start(program: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let bin = binaries()?.join(program);
        let log = std::env::temp_dir().join(format!(
            "lastseen-test-{program}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let child = Command::new(&bin)
            .current_dir(std::env::temp_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self {
            name: program.into(),
            log,
            child,
        })
    }

    /// Stops the process with SIGTERM and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(20), self.child.wait())
            .await
            .with_context(|| format!("{} did not stop within 20 s", self.name))??;
        Ok(())
    }
}

/// The samples of a Prometheus text page, keyed by `name{labels}` as printed.
pub async fn scrape(url: &str) -> anyhow::Result<HashMap<String, f64>> {
    let page = reqwest::get(url).await?.error_for_status()?.text().await?;
    Ok(page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect())
}
