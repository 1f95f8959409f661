//! A bad setting stops the real binary with one line naming it and exit code 2, and
//! `--help` documents every setting with its environment variable.

use std::path::Path;

use lastseen::cli_checks::{assert_bad_setting_is_refused, assert_help_documents};

const BIN: &str = env!("CARGO_BIN_EXE_consumer");

#[test]
fn bad_setting_exits_2_with_one_line_naming_it() {
    assert_bad_setting_is_refused(Path::new(BIN), "PREFETCH", "soon");
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
            "PREFETCH",
            "TOPOLOGY_PREFIX",
            "LOG_FORMAT",
            "DATABASE_URL",
            "STATUS_URL",
            "MAX_ATTEMPTS",
        ],
    );
}
