//! A bad setting stops the real binary with one line naming it and exit code 2.

use std::process::Command;

#[test]
fn bad_setting_exits_2_with_one_line_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .env("OBJECT_TTL_SECS", "soon")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("OBJECT_TTL_SECS") && stderr.contains("'soon'"),
        "{stderr}"
    );
}

#[test]
fn bad_amqp_url_exits_2_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .env("AMQP_URL", "http://rabbit")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("invalid configuration: AMQP_URL"),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "AMQP_URL",
        "OBJECT_TTL_SECS",
        "TOPOLOGY_PREFIX",
        "LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("[env: {setting}=")),
            "--help lacks {setting}:\n{help}"
        );
    }
}
