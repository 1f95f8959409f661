//! `lastseenctl`: what an operator runs against a live pipeline.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lastseen::config::LogArgs;

/// Operates a running last-seen pipeline.
#[derive(Debug, Parser)]
#[command(name = "lastseenctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Move dead letters back to the work queue (after their cause is fixed).
    ReplayDeadLetters(lastseenctl::replay::ReplayArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lastseen::config::load();
    lastseen::telemetry::init(&cli.log);
    let result = match cli.command {
        Command::ReplayDeadLetters(args) => lastseenctl::replay::run(args)
            .await
            .map(|replayed| println!("{replayed}")),
    };
    lastseen::config::exit_code(result)
}
