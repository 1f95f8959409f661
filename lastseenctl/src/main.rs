//! `lastseenctl`: what an operator runs against a live pipeline.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use lastseen::config::LogArgs;
use lastseenctl::{dead_letters, doctor, lookup, replay, spool};

/// Operates a running last-seen pipeline: dead letters, the spool, objects, events, and a
/// check of every dependency.
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
    /// The dead-letter queue: list, peek, replay, purge.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLetters),
    /// Same as `dead-letters replay` (kept for scripts written before it).
    #[command(hide = true)]
    ReplayDeadLetters(replay::ReplayArgs),
    /// A producer's spool.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// What PostgreSQL knows about one object: online or not, its stretches online.
    Object {
        /// The object's id.
        id: i64,
        #[command(flatten)]
        store: lookup::StoreArgs,
    },
    /// The transitions (notifications), in order.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Check every dependency with these settings and say what is wrong.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (e.g. `lastseenctl completions bash >
    /// /etc/bash_completion.d/lastseenctl`).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff; `lastseenctl man | man -l -`).
    Man,
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// How many callbacks and ids wait in the spool for RabbitMQ.
    Status(spool::SpoolArgs),
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print events, oldest first; with --follow, new ones as they come.
    Tail(lookup::TailArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lastseen::config::load();
    lastseen::telemetry::init(&cli.log);
    let printed = |text: anyhow::Result<String>| text.map(|text| println!("{}", text.trim_end()));
    let result = match cli.command {
        Command::DeadLetters(command) => printed(dead_letters::run(command).await),
        Command::ReplayDeadLetters(args) => printed(replay::run(args).await.map(|r| r.to_string())),
        Command::Spool(SpoolCommand::Status(args)) => printed(spool::status(&args).await),
        Command::Object { id, store } => printed(lookup::object(id, &store).await),
        Command::Events(EventsCommand::Tail(args)) => {
            lookup::tail(args, lastseen::shutdown::on_signal()).await
        }
        Command::Doctor(args) => match doctor::run(&args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(err) => Err(err),
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "lastseenctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
    };
    lastseen::config::exit_code(result)
}
