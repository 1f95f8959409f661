//! The one way the harnesses and the integration tests run the pipeline's binaries. A
//! [`Process`] is a binary started with its settings and its stderr appended to a log
//! file; it can be stopped with SIGTERM, killed with SIGKILL (`kill -9`) and started again
//! with the same settings. A [`Supervisor`] holds a pipeline's processes by name and notes
//! the exits nobody asked for.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// How to start a binary.
#[derive(Debug, Clone)]
pub struct Spec {
    pub binary: PathBuf,
    pub args: Vec<String>,
    /// Set on top of this process's environment.
    pub env: Vec<(String, String)>,
    /// Where it runs (and so which `.env` it reads); this process's folder if `None`.
    pub dir: Option<PathBuf>,
    /// The user and group (uid, gid) it runs as; this process's if `None`.
    pub user: Option<(u32, u32)>,
}

impl Spec {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            user: None,
        }
    }

    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env<K: AsRef<str>, V: AsRef<str>>(mut self, env: &[(K, V)]) -> Self {
        self.env.extend(
            env.iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Runs it in `dir`, e.g. a folder without `.env`, so it reads only what it is given.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Runs it as user `uid`, group `gid` (needs root), e.g. PostgreSQL's tools, which
    /// refuse to run as root.
    pub fn as_user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }
}

/// How a stop ended.
#[derive(Debug)]
pub enum Stopped {
    /// It exited within the grace period, with this status.
    Exited(ExitStatus),
    /// It did not exit within the grace period and was killed.
    Killed,
    /// It was not running.
    NotRunning,
}

/// One binary, started (and restarted) with the same settings.
pub struct Process {
    pub name: String,
    spec: Spec,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    /// Starts `spec` as `name`, appending its stderr to `log` (stdout is dropped).
    pub fn start(name: &str, spec: Spec, log: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let mut process = Self {
            name: name.to_owned(),
            spec,
            log: log.into(),
            child: None,
            starts: 0,
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open the log {}", self.log.display()))?;
        self.starts += 1;
        if self.starts > 1 {
            // Not JSON, so log readers skip it; it tells a human where an instance begins.
            writeln!(
                log,
                "--- {} start #{} at {} ---",
                self.name,
                self.starts,
                chrono::Utc::now().to_rfc3339()
            )
            .with_context(|| format!("cannot write the log {}", self.log.display()))?;
        }
        let mut command = Command::new(&self.spec.binary);
        command
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(dir) = &self.spec.dir {
            command.current_dir(dir);
        }
        if let Some((uid, gid)) = self.spec.user {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `make build`)",
                self.spec.binary.display()
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Where its stderr goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, as `kill -9`: no shutdown handler runs. Waits until the process is gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let name = &self.name;
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{name} is not running"))?;
        child
            .start_kill()
            .with_context(|| format!("cannot kill -9 {name}"))?;
        child
            .wait()
            .await
            .with_context(|| format!("cannot reap {name}"))?;
        Ok(())
    }

    /// Starts it again with its settings (after a kill or an exit).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is still running", self.name);
        self.spawn()
    }

    /// Its status if it exited on its own since the last look.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Sends SIGTERM without waiting.
    pub async fn terminate(&self) {
        if let Some(pid) = self.pid() {
            // kill(1) keeps this crate free of libc.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }

    /// SIGTERM, then waits up to `grace` for it to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        if self.child.is_none() {
            return Stopped::NotRunning;
        }
        self.terminate().await;
        self.wait_or_kill(grace).await
    }

    /// Waits up to `grace` for it to exit (after a SIGTERM), then SIGKILL.
    pub async fn wait_or_kill(&mut self, grace: Duration) -> Stopped {
        let Some(mut child) = self.child.take() else {
            return Stopped::NotRunning;
        };
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => Stopped::Exited(status),
            Ok(Err(_)) | Err(_) => {
                let _ = child.kill().await;
                Stopped::Killed
            }
        }
    }
}

/// An exit nobody asked for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnexpectedExit {
    pub name: String,
    pub status: String,
    /// The last line its log held then (what it said on its way out), if any.
    pub last_log_line: Option<String>,
}

impl UnexpectedExit {
    /// `name`'s exit with `status`, and the last line of its log in `logs`.
    fn new(logs: &Path, name: &str, status: String) -> Self {
        Self {
            name: name.to_owned(),
            status,
            last_log_line: last_line(&logs.join(format!("{name}.log"))),
        }
    }
}

impl std::fmt::Display for UnexpectedExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} exited unexpectedly: {}", self.name, self.status)?;
        if let Some(line) = &self.last_log_line {
            write!(f, " (its last log line: {line})")?;
        }
        Ok(())
    }
}

/// The last non-empty line of the file at `path`, without terminal colours, cut to 400
/// characters.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence runs to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    Some(plain.chars().take(400).collect())
}

/// A pipeline's processes by name, from one folder of binaries, each logging to
/// `logs/<name>.log`.
pub struct Supervisor {
    bin: PathBuf,
    logs: PathBuf,
    procs: BTreeMap<String, Process>,
    unexpected: Vec<UnexpectedExit>,
}

impl Supervisor {
    pub fn new(bin: &Path, logs: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            logs: logs.to_owned(),
            procs: BTreeMap::new(),
            unexpected: Vec::new(),
        }
    }

    /// Starts `bin/<program> args…` as `name` with `env` on top of this environment.
    pub fn start<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(K, V)],
    ) -> anyhow::Result<()> {
        let spec = Spec::new(self.bin.join(program)).args(args).env(env);
        let process = Process::start(name, spec, self.logs.join(format!("{name}.log")))?;
        self.procs.insert(name.to_owned(), process);
        Ok(())
    }

    fn process(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.procs
            .get_mut(name)
            .with_context(|| format!("no process named {name}"))
    }

    /// `kill -9` of `name`, waiting until it is gone.
    pub async fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        self.process(name)?.kill9().await
    }

    /// Starts a killed process again with its settings.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.process(name)?.restart()
    }

    /// Pids of the running processes, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.pid()?)))
            .collect()
    }

    /// Notes every process that exited on its own since the last look.
    pub fn check_exits(&mut self) {
        for (name, process) in &mut self.procs {
            if let Some(status) = process.exited() {
                self.unexpected
                    .push(UnexpectedExit::new(&self.logs, name, describe(status)));
            }
        }
    }

    /// The processes that exited on their own.
    pub fn unexpected_exits(&self) -> &[UnexpectedExit] {
        &self.unexpected
    }

    /// Stops the processes named, in that order, with SIGTERM, waiting up to `grace` for
    /// each before SIGKILL; a non-zero exit on SIGTERM counts as unexpected.
    pub async fn stop(&mut self, names: &[&str], grace: Duration) {
        self.check_exits();
        for name in names {
            let Some(process) = self.procs.get_mut(*name) else {
                continue;
            };
            let stopped = process.stop(grace).await;
            if let Some(status) = unclean(stopped, grace) {
                self.unexpected
                    .push(UnexpectedExit::new(&self.logs, name, status));
            }
        }
    }

    /// Stops every process still running: SIGTERM to all at once, then each is waited
    /// for up to `grace` before SIGKILL.
    pub async fn stop_all(&mut self, grace: Duration) {
        self.check_exits();
        for process in self.procs.values() {
            process.terminate().await;
        }
        for (name, process) in &mut self.procs {
            let stopped = process.wait_or_kill(grace).await;
            if let Some(status) = unclean(stopped, grace) {
                self.unexpected
                    .push(UnexpectedExit::new(&self.logs, name, status));
            }
        }
    }
}

/// How a stop on SIGTERM was not a clean exit, if it was not.
fn unclean(stopped: Stopped, grace: Duration) -> Option<String> {
    match stopped {
        Stopped::Exited(status) if status.success() => None,
        Stopped::NotRunning => None,
        Stopped::Exited(status) => Some(format!("on SIGTERM: {}", describe(status))),
        Stopped::Killed => Some(format!("did not stop within {grace:?} of SIGTERM; killed")),
    }
}

/// An exit status in words.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_names_the_last_line_its_log_held_without_colours() {
        let dir = std::env::temp_dir().join(format!("harness-last-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("consumer-1.log"),
            "first\n\u{1b}[2m2026-12-02\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m cannot go on\n\n",
        )
        .unwrap();
        let exit = UnexpectedExit::new(&dir, "consumer-1", "exit code 1".into());
        let absent = UnexpectedExit::new(&dir, "consumer-2", "exit code 1".into());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            exit.to_string(),
            "consumer-1 exited unexpectedly: exit code 1 (its last log line: 2026-12-02 ERROR cannot go on)"
        );
        assert_eq!(
            absent.to_string(),
            "consumer-2 exited unexpectedly: exit code 1"
        );
    }
}
