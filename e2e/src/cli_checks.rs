//! Checks every binary's tests make of its command line: a bad setting stops it with
//! one line naming the variable and exit code 2, `--help` documents each setting, and no
//! secret a setting holds is ever shown.
//! Used by `e2e/tests/it/config.rs`, which runs the real executables.

use std::path::Path;
use std::process::Command;

/// Runs `bin` with `var=value` and asserts exit code 2 and one line naming `var`.
pub fn assert_bad_setting_is_refused(bin: &Path, var: &str, value: &str) {
    let output = Command::new(bin)
        .env(var, value)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("invalid configuration: {var}"))
            && stderr.contains(&format!("'{value}'")),
        "{stderr}"
    );
}

/// Asserts that `bin --help` names the environment variable of every one of `settings`.
pub fn assert_help_documents(bin: &Path, settings: &[&str]) {
    let output = Command::new(bin)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in settings {
        assert!(
            help.contains(&format!("[env: {setting}")),
            "--help lacks {setting}:\n{help}"
        );
    }
}

/// The password the secret checks put in settings; it must never be shown.
pub const SECRET: &str = "secretpw";

/// Runs `bin` with `args` and `envs` (whose values hold [`SECRET`]) and asserts that
/// neither its output nor its errors show the secret; returns its stderr.
pub fn assert_secret_not_shown(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let output = Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{bin:?} {args:?} showed the secret:\n{stdout}\n{stderr}"
    );
    stderr
}

/// Runs `bin` with `var=value`, a bad value holding [`SECRET`], and asserts exit code 2
/// and one line naming `var` without the secret.
pub fn assert_bad_secret_setting_is_refused_unshown(bin: &Path, var: &str, value: &str) {
    assert!(value.contains(SECRET), "the value must hold the secret");
    let stderr = assert_secret_not_shown(bin, &[], &[(var, value)]);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("invalid configuration: {var}")),
        "{stderr}"
    );
}
