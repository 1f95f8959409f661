//! The pipeline's processes under chaos: the release binaries spawned by name, killed
//! with SIGKILL (`kill -9`) and restarted with the same settings, each instance's stderr
//! appended to `logs/<name>.log`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// One managed process: how to start it, and its current instance.
struct Managed {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

/// An exit nobody asked for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnexpectedExit {
    pub name: String,
    pub status: String,
}

/// The processes, by name.
pub struct Pipeline {
    bin: PathBuf,
    logs: PathBuf,
    procs: BTreeMap<String, Managed>,
    unexpected: Vec<UnexpectedExit>,
}

impl Pipeline {
    pub fn new(bin: &Path, logs: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            logs: logs.to_owned(),
            procs: BTreeMap::new(),
            unexpected: Vec::new(),
        }
    }

    /// Starts `bin/<program> args…` as `name` with `env` on top of this environment.
    pub fn start(
        &mut self,
        name: &str,
        program: &str,
        args: &[&str],
        env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut managed = Managed {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            child: None,
            starts: 0,
        };
        self.spawn(name, &mut managed)?;
        self.procs.insert(name.to_owned(), managed);
        Ok(())
    }

    fn spawn(&self, name: &str, managed: &mut Managed) -> anyhow::Result<()> {
        let path = self.logs.join(format!("{name}.log"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open the log {}", path.display()))?;
        managed.starts += 1;
        // Not JSON, so log readers skip it; it tells a human where an instance begins.
        writeln!(
            log,
            "--- chaos: {name} start #{} at {} ---",
            managed.starts,
            chrono::Utc::now().to_rfc3339()
        )
        .with_context(|| format!("cannot write the log {}", path.display()))?;
        let binary = self.bin.join(&managed.program);
        let child = Command::new(&binary)
            .args(&managed.args)
            .envs(managed.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with `make build`)",
                    binary.display()
                )
            })?;
        managed.child = Some(child);
        Ok(())
    }

    fn managed(&mut self, name: &str) -> anyhow::Result<&mut Managed> {
        self.procs
            .get_mut(name)
            .with_context(|| format!("no process named {name} in the chaos pipeline"))
    }

    /// SIGKILL, as `kill -9`: no shutdown handler runs. Waits until the process is gone.
    pub async fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let managed = self.managed(name)?;
        let mut child = managed
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

    /// Starts a killed process again with its settings.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let mut managed = self
            .procs
            .remove(name)
            .with_context(|| format!("no process named {name} in the chaos pipeline"))?;
        let spawned = self.spawn(name, &mut managed);
        self.procs.insert(name.to_owned(), managed);
        spawned
    }

    /// Notes every process that exited on its own since the last look.
    pub fn check_exits(&mut self) {
        for (name, managed) in &mut self.procs {
            let Some(child) = managed.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                managed.child = None;
                self.unexpected.push(UnexpectedExit {
                    name: name.clone(),
                    status: describe(status),
                });
            }
        }
    }

    /// The processes that exited on their own.
    pub fn unexpected_exits(&self) -> &[UnexpectedExit] {
        &self.unexpected
    }

    /// Stops the processes named (in that order) with SIGTERM, waiting up to `grace`
    /// for each before SIGKILL; a non-zero exit on SIGTERM counts as unexpected.
    pub async fn stop(&mut self, names: &[&str], grace: Duration) {
        self.check_exits();
        for name in names {
            let Some(managed) = self.procs.get_mut(*name) else {
                continue;
            };
            let Some(mut child) = managed.child.take() else {
                continue;
            };
            if let Some(pid) = child.id() {
                // kill(1) keeps this crate free of libc.
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => self.unexpected.push(UnexpectedExit {
                    name: (*name).to_owned(),
                    status: format!("on SIGTERM: {}", describe(status)),
                }),
                Ok(Err(_)) | Err(_) => {
                    let _ = child.kill().await;
                    self.unexpected.push(UnexpectedExit {
                        name: (*name).to_owned(),
                        status: format!("did not stop within {grace:?} of SIGTERM; killed"),
                    });
                }
            }
        }
    }

    /// Stops every process still running (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop_all(&mut self, grace: Duration) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.stop(&names, grace).await;
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}
