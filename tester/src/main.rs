//! The tester binary: `tester serve` (status service), `drive` (callback client), `load`,
//! `bench` and `chaos` (see `make bench`, `make chaos`), and `replay-dead-letters`.

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
    /// Run the whole pipeline under load and report its figures (see `make bench`).
    Bench(tester::bench::BenchArgs),
    /// Load the producer with concurrent callbacks and report their latency.
    Load(tester::load::LoadArgs),
    /// Move dead letters back to the work queue (after their cause is fixed).
    ReplayDeadLetters(tester::replay::ReplayArgs),
    /// Mass expiry with two sweepers (one killed) and a steady 10,000 expiries/s: lag,
    /// duplicates, nothing missing (see `make expiry-bench`).
    ExpiryBench(tester::expiry_bench::ExpiryBenchArgs),
    /// Run the whole pipeline under load and faults, verify nothing accepted was lost
    /// (see `make chaos`).
    Chaos(tester::chaos::ChaosArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lastseen::config::load();
    lastseen::telemetry::init(&cli.log);
    let shutdown = lastseen::shutdown::on_signal();
    let result = match cli.command {
        Command::Serve(args) => tester::serve::run(args, shutdown).await,
        Command::Drive(args) => tester::drive::run(args, shutdown).await.map(|_| ()),
        Command::Bench(args) => tester::bench::run(args, shutdown).await,
        Command::Chaos(args) => tester::chaos::run(args, shutdown).await,
        Command::ExpiryBench(args) => tester::expiry_bench::run(args).await,
        Command::ReplayDeadLetters(args) => tester::replay::run(args).await.map(|replayed| {
            println!("{replayed}");
        }),
        Command::Load(args) => tester::load::run(args, shutdown).await.map(|report| {
            println!("{report}");
        }),
    };
    lastseen::config::exit_code(result)
}
