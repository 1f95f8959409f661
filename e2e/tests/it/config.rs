//! A bad setting stops each real binary with one line naming it and exit code 2,
//! `--help` documents every setting with its environment variable, and neither shows a
//! password or key a setting holds.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use e2e::cli_checks::{
    assert_bad_secret_setting_is_refused_unshown, assert_bad_setting_is_refused,
    assert_help_documents, assert_secret_not_shown,
};

/// URLs of every kind a setting takes, each with the secret as its password.
const SECRET_URLS: [(&str, &str); 3] = [
    ("AMQP_URL", "amqp://u:secretpw@127.0.0.1:5672/%2f"),
    ("DATABASE_URL", "postgres://u:secretpw@127.0.0.1/db"),
    ("STATUS_URL", "http://u:secretpw@127.0.0.1:9010"),
];

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
    fn a_body_budget_below_the_body_limit_exits_2_naming_it() {
        let output = Command::new(binary("producer"))
            .env("MAX_BODY_BYTES", "1048576")
            .env("MAX_BODY_BYTES_IN_FLIGHT", "65536")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("invalid configuration: MAX_BODY_BYTES_IN_FLIGHT"));
        assert!(
            line.is_some_and(|l| l.contains("MAX_BODY_BYTES (1048576)")),
            "{stderr}"
        );
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("producer"), "TLS_CA_FILE", "/nonexistent/ca.pem");
        assert_bad_setting_is_refused(&binary("producer"), "TLS_CA_FILE", "/etc/hostname");
    }

    #[test]
    fn help_never_shows_the_api_keys() {
        let mut settings = SECRET_URLS.to_vec();
        settings.push(("CALLBACK_API_KEYS", "secretpw-0123456789abcdef"));
        assert_secret_not_shown(&binary("producer"), &["--help"], &settings);
    }

    #[test]
    fn help_and_a_bad_url_never_show_its_password() {
        let mut settings = SECRET_URLS.to_vec();
        settings.push((
            "READ_DATABASE_URL",
            "postgres://analyst:secretpw@127.0.0.1/db",
        ));
        assert_secret_not_shown(&binary("producer"), &["--help"], &settings);
        assert_bad_secret_setting_is_refused_unshown(
            &binary("producer"),
            "AMQP_URL",
            "amqp://u:secretpw@127.0.0.1:notaport/%2f",
        );
        assert_bad_secret_setting_is_refused_unshown(
            &binary("producer"),
            "READ_DATABASE_URL",
            "postgres://analyst:secretpw@127.0.0.1:notaport/db",
        );
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
                "CALLBACK_API_KEYS",
                "CALLBACK_API_KEYS_FILE",
                "READ_DATABASE_URL",
                "READ_DATABASE_MAX_CONNECTIONS",
                "READ_MAX_STREAMS",
                "TLS_CA_FILE",
                "TLS_CLIENT_CERT",
                "TLS_CLIENT_KEY",
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
    fn help_and_a_bad_url_never_show_its_password() {
        assert_secret_not_shown(&binary("consumer"), &["--help"], &SECRET_URLS);
        assert_bad_secret_setting_is_refused_unshown(
            &binary("consumer"),
            "DATABASE_URL",
            "postgres://u:secretpw@127.0.0.1:notaport/db",
        );
    }

    #[test]
    fn a_database_url_naming_a_missing_root_certificate_exits_2_naming_it() {
        assert_bad_setting_is_refused(
            &binary("consumer"),
            "DATABASE_URL",
            "postgres://u@127.0.0.1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        );
    }

    #[test]
    fn a_stale_delay_not_below_the_ttl_exits_2_naming_it() {
        let output = Command::new(binary("consumer"))
            .env("OBJECT_TTL_SECS", "30")
            .env("OBJECT_STALE_AFTER_SECS", "30")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("invalid configuration: OBJECT_STALE_AFTER_SECS"));
        assert!(
            line.is_some_and(|l| l.contains("OBJECT_TTL_SECS (30)")),
            "{stderr}"
        );
        assert_bad_setting_is_refused(&binary("consumer"), "OBJECT_STALE_AFTER_SECS", "0");
    }

    #[test]
    fn an_error_prints_each_cause_once() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = taken.local_addr().expect("a bound address");
        let output = Command::new(binary("consumer"))
            .env("METRICS_ADDR", addr.to_string())
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let error = stderr
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
        assert!(error.contains("METRICS_ADDR"), "{error}");
        assert_eq!(error.matches("os error 98").count(), 1, "{error}");
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
                "BATCH_WRITERS",
                "TLS_CA_FILE",
                "TLS_CLIENT_CERT",
                "TLS_CLIENT_KEY",
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
    fn zero_sweep_workers_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("sweeper"), "SWEEP_WORKERS", "0");
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
    fn help_and_a_bad_url_never_show_the_webhook_url_or_secret() {
        let mut settings = SECRET_URLS.to_vec();
        settings.push(("NOTIFY_WEBHOOK_URL", "https://h.example/hooks/secretpw"));
        settings.push(("NOTIFY_WEBHOOK_SECRET", "secretpw"));
        assert_secret_not_shown(&binary("sweeper"), &["--help"], &settings);
        assert_bad_secret_setting_is_refused_unshown(
            &binary("sweeper"),
            "NOTIFY_WEBHOOK_URL",
            "ftp://u:secretpw@h.example/hook",
        );
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
                "MAX_EXPIRY_HOLD_SECS",
                "EXPIRY_HOLD_ALERT_SECS",
                "TLS_CA_FILE",
            ],
        );
    }

    #[test]
    fn a_zero_expiry_hold_exits_2_naming_it() {
        assert_bad_setting_is_refused(&binary("sweeper"), "MAX_EXPIRY_HOLD_SECS", "0");
    }
}

/// `.env` (every default) and `.env.example` (a deployment's template) name only settings
/// some binary takes: a renamed or removed setting cannot linger in either.
#[test]
fn the_env_files_name_only_real_settings() {
    let mut known = std::collections::HashSet::new();
    for command in [
        vec!["producer", "--help"],
        vec!["consumer", "--help"],
        vec!["sweeper", "--help"],
        vec!["tester", "serve", "--help"],
        vec!["tester", "drive", "--help"],
        vec!["lastseenctl", "replay-dead-letters", "--help"],
    ] {
        let output = Command::new(binary(command[0]))
            .args(&command[1..])
            .output()
            .expect("the binary runs");
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            known.insert(name);
        }
    }
    assert!(known.contains("READ_DATABASE_URL"), "{known:?}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [".env", ".env.example"] {
        let text = std::fs::read_to_string(root.join(file)).expect("the file is there");
        for line in text.lines() {
            let line = line.trim_start_matches("# ").trim();
            let Some((name, _)) = line.split_once('=') else {
                continue;
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            assert!(
                known.contains(name),
                "{file} names {name}, which no binary takes"
            );
        }
    }
}
