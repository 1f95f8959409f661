//! Logging: `tracing` with a `RUST_LOG`-style filter, as text or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::LogArgs;

/// Installs the global subscriber; logs go to stderr.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.rust_log).unwrap_or_else(|err| {
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
