//! Configuration shared by the binaries: `.env` loading, the common settings, and the
//! one-line, exit-code-2 report of a bad setting.

use std::process::ExitCode;
use std::str::FromStr;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Parser};

/// Exit code for a bad setting, as for any command-line usage error.
pub const BAD_CONFIG_EXIT: u8 = 2;

/// Loads `.env` (if present; the environment overrides it) and parses the command line.
///
/// A bad or missing setting prints one line naming it, e.g.
/// `invalid configuration: OBJECT_TTL_SECS (--object-ttl-secs): invalid value 'x': invalid digit found in string`,
/// and exits with code 2. `--help` and `--version` behave as usual.
pub fn load<T: Parser>() -> T {
    dotenvy::dotenv().ok();
    match T::try_parse() {
        Ok(config) => config,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            err.exit()
        }
        Err(err) => {
            eprintln!("{}", one_line_error(&err));
            std::process::exit(i32::from(BAD_CONFIG_EXIT))
        }
    }
}

/// Turns clap's multi-line report into a single line that names the environment variable.
/// A URL's password, and the value of a setting named like a secret, are never shown.
pub fn one_line_error(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => s.as_str(),
        _ => "",
    };
    let line = match (err.kind(), arg) {
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(arg)) => {
            let reason = first.rsplit_once(": ").map_or(first, |(_, r)| r);
            format!(
                "invalid configuration: {} ({}): invalid value '{value}': {reason}",
                env_name(arg),
                flag_name(arg),
            )
        }
        _ => format!("invalid configuration: {first}"),
    };
    if value.is_empty() {
        return line;
    }
    let secret_setting = arg.is_some_and(|arg| {
        let name = env_name(arg);
        name.contains("SECRET") || name.contains("PASSWORD") || name.contains("KEY")
    });
    let shown = if secret_setting {
        "***".to_owned()
    } else {
        redact_url(value)
    };
    // Only the value as clap quotes it: a short value may also stand inside other words.
    line.replace(&format!("'{value}'"), &format!("'{shown}'"))
}

/// The URLs of a comma-separated list such as `AMQP_URL`'s. A comma splits the list only
/// where another URL (`scheme://`) or nothing follows it, so a comma inside a URL (in a
/// password) stays in that URL; an empty piece means a comma too many.
pub fn split_urls(list: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start();
        rest.is_empty()
            || rest.starts_with(',')
            || rest.split_once("://").is_some_and(|(scheme, _)| {
                scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            })
    };
    let mut urls = Vec::new();
    let mut start = 0;
    for (at, _) in list.match_indices(',') {
        if starts_url(&list[at + 1..]) {
            urls.push(list[start..at].trim());
            start = at + 1;
        }
    }
    urls.push(list[start..].trim());
    urls
}

/// `url` with the password of its user info replaced by `***`; anything else as it is.
/// A list of URLs ([`split_urls`], `AMQP_URL` naming several nodes) is redacted URL by
/// URL.
pub fn redact_url(url: &str) -> String {
    let urls = split_urls(url);
    if urls.len() > 1 {
        return urls
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    match url.split_once("://") {
        Some((scheme, rest)) => {
            // The user info ends at the last `@` before the path.
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{}", &rest[authority_end..])
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// Only the scheme, host and port of `url` (a webhook's path or query is often its key).
pub fn url_origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// A setting that the service it names refused: a wrong password, an unknown user or
/// virtual host, missing permissions. Retrying cannot fix it; changing the setting can, so
/// the process stops with [`BAD_CONFIG_EXIT`] and one line naming the setting.
///
/// The reason must never hold a secret: it is built from the server's answer and the
/// user name, never from the URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct Misconfigured {
    /// The environment variable to change, e.g. `DATABASE_URL`.
    pub setting: &'static str,
    pub reason: String,
}

/// Prints a run error on one line (with its causes) and turns it into an exit code:
/// 2 with just the [`Misconfigured`] line when a setting was refused, 1 otherwise.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = causes_once(err.chain());
            tracing::error!("{message}");
            match err.chain().find_map(|e| e.downcast_ref::<Misconfigured>()) {
                Some(refused) => {
                    eprintln!("{refused}");
                    ExitCode::from(BAD_CONFIG_EXIT)
                }
                None => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, leaving out a cause whose
/// text the line already holds (many errors repeat their source in their own message).
pub fn causes_once<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `err` and its causes on one line, as [`causes_once`] gives them.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    causes_once(std::iter::successors(Some(err), |e| e.source()))
}

/// `--object-ttl-secs <OBJECT_TTL_SECS>` -> `OBJECT_TTL_SECS`.
fn env_name(arg: &str) -> String {
    let flag = flag_name(arg);
    flag.trim_start_matches('-')
        .replace('-', "_")
        .to_uppercase()
}

fn flag_name(arg: &str) -> &str {
    arg.split_whitespace().next().unwrap_or(arg)
}

/// Where PostgreSQL is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL; the database is created and migrated at start if missing.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = "postgres://postgres:postgres@127.0.0.1:5432/lastseen", value_parser = parse_database_url)]
    pub database_url: String,

    /// Maximum connections in this process's PostgreSQL pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

/// Where RabbitMQ is.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// RabbitMQ (AMQP 0-9-1) connection URL, or the comma-separated URLs of the nodes of
    /// one cluster: a process connects to the first that answers and, when that node is
    /// lost, to the next.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", value_parser = parse_amqp_url)]
    pub amqp_url: String,
}

/// How a process logs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `info,consumer=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info,sqlx=warn", value_parser = parse_log_filter)]
    pub rust_log: String,

    /// Log format: `text` for people, `json` for one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

pub fn parse_database_url(s: &str) -> Result<String, String> {
    sqlx::postgres::PgConnectOptions::from_str(s).map_err(|e| e.to_string())?;
    // The certificate and key files the URL names must be there and hold what they
    // should now, not be found wrong at every connection attempt.
    if let Ok(url) = url::Url::parse(s) {
        let param = |name: &str| {
            url.query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        if let Some(path) = param("sslrootcert") {
            crate::pem::check_certificate_file(&path).map_err(|e| format!("sslrootcert: {e}"))?;
        }
        match (param("sslcert"), param("sslkey")) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let read = |path: &str| {
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
                };
                crate::pem::check_pair(&read(&cert)?, &read(&key)?)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?;
            }
            _ => return Err("sslcert and sslkey go together".into()),
        }
    }
    Ok(s.to_owned())
}

fn parse_amqp_url(s: &str) -> Result<String, String> {
    let nodes = split_urls(s);
    for (index, url) in nodes.iter().enumerate() {
        let which = if nodes.len() > 1 {
            format!("node {} of {}: ", index + 1, nodes.len())
        } else {
            String::new()
        };
        if url.is_empty() {
            return Err(format!("{which}empty (a comma too many?)"));
        }
        lapin::uri::AMQPUri::from_str(url).map_err(|e| {
            format!(
                "{which}not an amqp:// or amqps:// URL ({e}; a comma in a password is written %2C)"
            )
        })?;
    }
    Ok(nodes.join(","))
}

/// Parses a duration given in milliseconds, refusing zero.
pub fn parse_positive_millis(s: &str) -> Result<std::time::Duration, String> {
    let ms: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if ms == 0 {
        return Err("must be at least 1".into());
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::{causes_once, redact_url, url_origin};

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(
            redact_url("http://h/path?to=a@b"),
            "http://h/path?to=a@b",
            "an @ after the host is not user info"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("amqp://u:a@n1:5672/%2f,amqps://u:b@n2/%2f"),
            "amqp://u:***@n1:5672/%2f,amqps://u:***@n2/%2f",
            "every node of a list"
        );
        assert_eq!(
            redact_url("postgres://u:pa,ss@h/db"),
            "postgres://u:***@h/db",
            "a comma in a password is no list"
        );
        assert_eq!(
            redact_url("amqp://u:p,w@n1/%2f, amqp://u:x,y@n2/%2f"),
            "amqp://u:***@n1/%2f,amqp://u:***@n2/%2f"
        );
    }

    #[test]
    fn amqp_url_takes_a_list_of_nodes_and_names_the_bad_one() {
        use super::parse_amqp_url;
        assert_eq!(
            parse_amqp_url("amqp://h1:5672/%2f, amqp://h2:5672/%2f").unwrap(),
            "amqp://h1:5672/%2f,amqp://h2:5672/%2f"
        );
        let err = parse_amqp_url("amqp://h1/%2f,http://h2/").unwrap_err();
        assert!(err.starts_with("node 2 of 2: not an amqp"), "{err}");
        let err = parse_amqp_url("amqp://h1/%2f,").unwrap_err();
        assert!(err.starts_with("node 2 of 2: empty"), "{err}");
    }

    #[test]
    fn url_origin_drops_user_path_and_query() {
        assert_eq!(
            url_origin("https://u:pw@hooks.example.org:8443/T0/secret?key=k"),
            "https://hooks.example.org:8443"
        );
    }

    #[test]
    fn causes_once_leaves_out_a_cause_the_line_already_holds() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:1: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let err = anyhow::Error::from(Outer {
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        })
        .context("starting");
        let line = causes_once(err.chain());
        assert_eq!(line.matches("address in use").count(), 1, "{line}");
        assert!(line.starts_with("starting: cannot listen"), "{line}");
    }
}
