//! The harness binary: `bench`, `chaos`, `cluster-chaos`, `cluster-up`, `pg-failover`,
//! `expiry-bench` and `load` (see the Makefile).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lastseen::config::LogArgs;

/// Runs the real pipeline under load and faults and reports its figures.
#[derive(Debug, Parser)]
#[command(name = "harness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline under load and report its figures (see `make bench`).
    Bench(harness::bench::BenchArgs),
    /// Load the producer with concurrent callbacks and report their latency.
    Load(harness::load::LoadArgs),
    /// Mass expiry with two sweepers (one killed) and a steady 10,000 expiries/s: lag,
    /// duplicates, nothing missing (see `make expiry-bench`).
    ExpiryBench(harness::expiry_bench::ExpiryBenchArgs),
    /// Run the whole pipeline under load and faults, verify nothing accepted was lost
    /// (see `make chaos`).
    Chaos(harness::chaos::ChaosArgs),
    /// The pipeline on a three-node RabbitMQ cluster: a node killed, one cut off, a
    /// rolling restart; verify nothing accepted was lost (see `make cluster-chaos`).
    ClusterChaos(harness::cluster::ClusterArgs),
    /// Form the same three-node cluster and keep it until SIGTERM (see
    /// `make cluster-bench`).
    ClusterUp(harness::cluster::ClusterArgs),
    /// The pipeline on a two-node PostgreSQL cluster (Patroni, etcd, HAProxy): the
    /// primary killed under load, twice; verify nothing accepted was lost and expiry
    /// resumed (see `make pg-failover`).
    PgFailover(harness::failover::FailoverArgs),
    /// One caller process of the bench's ceiling: status calls alone, printed as JSON
    /// (run by `bench`).
    #[command(hide = true)]
    StatusCalls(harness::bench::CallerArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lastseen::config::load();
    lastseen::telemetry::init(&cli.log);
    let shutdown = lastseen::shutdown::on_signal();
    let result = match cli.command {
        Command::Bench(args) => harness::bench::run(args, shutdown).await,
        Command::Chaos(args) => harness::chaos::run(args, shutdown).await,
        Command::ClusterChaos(args) => harness::cluster::run(args, shutdown).await,
        Command::ClusterUp(args) => harness::cluster::up(args, shutdown).await,
        Command::PgFailover(args) => harness::failover::run(args, shutdown).await,
        Command::ExpiryBench(args) => harness::expiry_bench::run(args).await,
        Command::StatusCalls(args) => harness::bench::run_caller(args).await,
        Command::Load(args) => harness::load::run(args, shutdown).await.map(|report| {
            println!("{report}");
        }),
    };
    lastseen::config::exit_code(result)
}
