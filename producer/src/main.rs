//! The producer binary: parse the configuration, then serve `/callback` until a signal.

use std::process::ExitCode;

use producer::{Application, Config};

/// jemalloc: cheaper than glibc malloc for many small, short-lived allocations across
/// threads (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = lastseen::config::load();
    lastseen::telemetry::init(&config.log);
    let shutdown = lastseen::shutdown::on_signal();
    lastseen::config::exit_code(
        async {
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown).await
        }
        .await,
    )
}
