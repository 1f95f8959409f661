//! Checks every binary's tests make of its command line: a bad setting stops it with
//! one line naming the variable and exit code 2, and `--help` documents each setting.
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
