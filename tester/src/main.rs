//! The tester binary: `tester serve` (the status service) and `tester drive` (the
//! callback client), the outside world of the pipeline.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lastseen::config::LogArgs;

/// Stand-in for the outside world, compatible with the original challenge tester.
#[derive(Debug, Parser)]
#[command(name = "tester", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve `GET /objects/:id` like the status service.
    Serve(tester::serve::ServeArgs),
    /// POST callbacks of random ids to the producer.
    Drive(tester::drive::DriveArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lastseen::config::load();
    lastseen::telemetry::init(&cli.log);
    let shutdown = lastseen::shutdown::on_signal();
    let result = match cli.command {
        Command::Serve(args) => tester::serve::run(args, shutdown).await,
        Command::Drive(args) => tester::drive::run(args, shutdown).await.map(|_| ()),
    };
    lastseen::config::exit_code(result)
}
