//! The machine's tools the suite drives (`rabbitmq-server`, `rabbitmqctl`,
//! `pg_createcluster`, `pg_ctlcluster`, ...): checked up front, run with a time limit,
//! and failing with what they printed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

/// Fails, naming every missing tool and how to get it, unless all of `tools` are on the
/// PATH (or in /usr/sbin, where Debian puts RabbitMQ's).
pub fn require(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| find(tool).is_none())
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the chaos suite needs {} : run `make services` (installs PostgreSQL and RabbitMQ from the distribution's packages) and try again",
        missing.join(", ")
    )
}

/// Where `tool` is, if installed.
pub fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Fails unless this process runs as root: the suite's RabbitMQ node runs as the
/// `rabbitmq` user and its PostgreSQL cluster as `postgres`, which only root can arrange.
pub fn require_root() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("");
    if uid == "0" {
        Ok(())
    } else {
        anyhow::bail!(
            "the chaos suite starts its own RabbitMQ node (as user rabbitmq) and PostgreSQL cluster (as user postgres): run it as root, e.g. `sudo make chaos`"
        )
    }
}

/// Runs `program args…` with `env`, up to `limit`; returns its stdout, or fails with its
/// exit status and output.
pub async fn run(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    limit: Duration,
) -> anyhow::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, output)
        .await
        .with_context(|| format!("`{line}` did not finish within {limit:?}"))?
        .with_context(|| format!("cannot run `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::bail!(
        "`{line}` failed ({}): {}",
        output.status,
        last_lines(&format!("{stdout}\n{stderr}"), 12)
    )
}

/// Waits until `url` answers 2xx, up to `limit`.
pub async fn wait_http(limit: Duration, url: &str) -> anyhow::Result<()> {
    let http = lastseen::tls::http_client()
        .timeout(Duration::from_secs(1))
        .build()?;
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not answer within {limit:?}")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// The last `n` non-empty lines of `text`, joined by " | ".
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The run's report directory (`arg`, made absolute; `setting` names it in errors) and
/// its `logs/`, emptied, with the last run's `result.md` and `result.json` removed.
pub fn prepare_out(arg: &std::path::Path, setting: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let out =
        std::path::absolute(arg).with_context(|| format!("bad {setting} {}", arg.display()))?;
    let logs = out.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)
            .with_context(|| format!("cannot empty {}", logs.display()))?;
    }
    for dir in [&out, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for stale in ["result.md", "result.json"] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    Ok((out, logs))
}
