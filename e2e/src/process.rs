//! The real binaries as separate processes (built on demand), for tests that need what
//! only a process has: its own metrics registry, its own ports, a kill.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use harness::process::{Process, Spec};

/// Builds the producer, consumer and sweeper binaries once per test process (a no-op when
/// they are up to date) and returns the folder that holds them.
pub fn binaries() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "producer",
                    "-p",
                    "consumer",
                    "-p",
                    "sweeper",
                    "-p",
                    "tester",
                    "-p",
                    "lastseenctl",
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

/// Starts `program` (producer, consumer or sweeper) with `env` and nothing from `.env`
/// (it runs in a temporary folder); its stderr (its log) goes to a file of its own for
/// post-mortems, under `target/<profile>/test-logs/` (with the build, not in the
/// machine's temporary folder, where every run would leave its logs). Killed when
/// dropped.
pub fn start(program: &str, env: &[(&str, String)]) -> anyhow::Result<Process> {
    let logs = binaries()?.join("test-logs");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{program}-{}.log", uuid::Uuid::new_v4().simple()));
    let spec = Spec::new(binaries()?.join(program))
        .env(env)
        .in_dir(std::env::temp_dir());
    Process::start(program, spec, log)
}

/// The samples of a Prometheus text page, keyed by `name{labels}` as printed.
pub async fn scrape(url: &str) -> anyhow::Result<HashMap<String, f64>> {
    let page = lastseen::tls::get(url)
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect())
}
