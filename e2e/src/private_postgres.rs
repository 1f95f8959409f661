//! A PostgreSQL server of the test's own that asks for a password (scram-sha-256) on
//! 127.0.0.1, whatever the machine's server allows: `initdb` into a temporary folder,
//! `pg_ctl` on a free port, stopped and removed on drop. For tests of what a wrong
//! password does, which a server that trusts 127.0.0.1 cannot show.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// The superuser's name on the private server.
pub const USER: &str = "postgres";

/// A running private server.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a server whose user [`USER`] logs in with `password` only.
    pub fn start(password: &str) -> anyhow::Result<Self> {
        Self::start_with(password, None)
    }

    /// [`Self::start`], with `ssl = on` and this server certificate and key (PEM).
    pub fn start_tls(password: &str, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::start_with(password, Some((cert, key)))
    }

    fn start_with(password: &str, tls: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let bin = newest_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("lastseen-test-pg-")
            .tempdir()?;
        let port = crate::process::free_port()?;
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, password)?;
        let data = dir.path().join("data");
        // The server reads its certificate and key from its own folder (a key must be
        // its user's alone).
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            let (own_cert, own_key) =
                (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(cert, &own_cert)?;
            std::fs::copy(key, &own_key)?;
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                own_cert.display(),
                own_key.display()
            );
        }
        let server = Self { dir, bin, port };
        // PostgreSQL refuses to run as root: as root, the folder goes to `postgres`.
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(server.dir.path()))?;
        }
        run(server
            .as_server_user("initdb")
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync", "-D"])
            .arg(&data)
            .arg(format!("--pwfile={}", pwfile.display())))?;
        run(server
            .as_server_user("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(server.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{ssl}",
                server.dir.path().display()
            ))
            .arg("start"))?;
        Ok(server)
    }

    /// The URL of `database` with `user` and `password`.
    pub fn url(&self, password: &str, database: &str) -> String {
        format!(
            "postgres://{USER}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    fn as_server_user(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_server_user("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// Runs `command`; its output becomes the error when it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The `bin` folder of the newest PostgreSQL server installed (Debian's layout).
fn newest_server_bin() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .context("PostgreSQL is not installed (no /usr/lib/postgresql): run `make services`")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            entry
                .path()
                .join("bin/initdb")
                .is_file()
                .then_some((major, entry.path().join("bin")))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin);
    newest.context("no initdb under /usr/lib/postgresql/*/bin")
}
