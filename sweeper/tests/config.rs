//! A bad setting stops the real binary with one line naming it and exit code 2, and
//! `--help` documents every setting with its environment variable.

use std::path::Path;

use lastseen::cli_checks::{assert_bad_setting_is_refused, assert_help_documents};

const BIN: &str = env!("CARGO_BIN_EXE_sweeper");

#[test]
fn bad_setting_exits_2_with_one_line_naming_it() {
    assert_bad_setting_is_refused(Path::new(BIN), "SWEEP_INTERVAL_MS", "soon");
}

#[test]
fn a_webhook_url_that_is_not_http_exits_2_naming_it() {
    assert_bad_setting_is_refused(Path::new(BIN), "NOTIFY_WEBHOOK_URL", "ftp://example.org/x");
}

#[test]
fn a_notification_retention_under_a_minute_exits_2_naming_it() {
    assert_bad_setting_is_refused(Path::new(BIN), "NOTIFICATION_RETENTION_SECS", "10");
}

#[test]
fn bad_amqp_url_exits_2_naming_it() {
    assert_bad_setting_is_refused(Path::new(BIN), "AMQP_URL", "http://rabbit");
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    assert_help_documents(
        Path::new(BIN),
        &[
            "AMQP_URL",
            "METRICS_ADDR",
            "TOPOLOGY_PREFIX",
            "LOG_FORMAT",
            "DATABASE_URL",
            "SWEEP_INTERVAL_MS",
            "NOTIFY_WEBHOOK_URL",
            "NOTIFY_WEBHOOK_SECRET",
            "NOTIFICATION_RETENTION_SECS",
        ],
    );
}
