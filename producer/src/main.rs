//! The producer binary: parse the configuration, then serve `/callback` until a signal.

use std::process::ExitCode;

use producer::{Application, Config};

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
