//! Logging: `tracing` with a `RUST_LOG`-style filter, as text or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::LogArgs;

/// lapin warns of every message RabbitMQ returns unroutable; the code handles each one
/// itself (a publish that fails, a probe of a queue that is gone), so that warning is
/// off unless `RUST_LOG` names lapin.
const RETURNED_QUIET: &str = "lapin::returned_messages=error";

/// Installs the global subscriber; logs go to stderr.
pub fn init(args: &LogArgs) {
    let directives = if args.rust_log.contains("lapin") {
        args.rust_log.clone()
    } else {
        format!("{},{RETURNED_QUIET}", args.rust_log)
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|err| {
        eprintln!("invalid configuration: RUST_LOG: {err}; using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
