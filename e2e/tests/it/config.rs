//! A bad setting stops each real binary with one line naming it and exit code 2, and
//! `--help` documents every setting with its environment variable.

use std::path::PathBuf;

use e2e::cli_checks::{assert_bad_setting_is_refused, assert_help_documents};

fn binary(name: &str) -> PathBuf {
    e2e::process::binaries()
        .expect("the binaries build")
        .join(name)
}

mod producer {
    use super::*;

    #[test]
    fn bad_setting_exits_2_with_one_line_naming_it() {
        assert_bad_setting_is_refused(&binary("producer"), "PUBLISH_TIMEOUT_MS", "soon");
    }

    #[test]
    fn bad_amqp_url_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("producer"), "AMQP_URL", "http://rabbit");
    }

    #[test]
    fn help_documents_every_setting_with_its_environment_variable() {
        assert_help_documents(
            &binary("producer"),
            &[
                "AMQP_URL",
                "PUBLISH_TIMEOUT_MS",
                "TOPOLOGY_PREFIX",
                "LOG_FORMAT",
                "CALLBACK_ADDR",
                "MAX_BODY_BYTES",
                "IDS_PER_MESSAGE",
            ],
        );
    }
}

mod consumer {
    use super::*;

    #[test]
    fn bad_setting_exits_2_with_one_line_naming_it() {
        assert_bad_setting_is_refused(&binary("consumer"), "PREFETCH", "soon");
    }

    #[test]
    fn bad_amqp_url_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("consumer"), "AMQP_URL", "http://rabbit");
    }

    #[test]
    fn help_documents_every_setting_with_its_environment_variable() {
        assert_help_documents(
            &binary("consumer"),
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
}

mod sweeper {
    use super::*;

    #[test]
    fn bad_setting_exits_2_with_one_line_naming_it() {
        assert_bad_setting_is_refused(&binary("sweeper"), "SWEEP_INTERVAL_MS", "soon");
    }

    #[test]
    fn a_webhook_url_that_is_not_http_exits_2_naming_it() {
        assert_bad_setting_is_refused(
            &binary("sweeper"),
            "NOTIFY_WEBHOOK_URL",
            "ftp://example.org/x",
        );
    }

    #[test]
    fn a_notification_retention_under_a_minute_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("sweeper"), "NOTIFICATION_RETENTION_SECS", "10");
    }

    #[test]
    fn bad_amqp_url_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("sweeper"), "AMQP_URL", "http://rabbit");
    }

    #[test]
    fn help_documents_every_setting_with_its_environment_variable() {
        assert_help_documents(
            &binary("sweeper"),
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
}
