//! The ceiling of a bench run: the status calls alone, at the simulators' real delays,
//! from as many caller processes as there are consumers, each holding as many calls in
//! flight as a consumer may. The ids/s this machine can check, whatever the rest of the
//! pipeline does.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::report::Ceiling;
use super::{BenchArgs, STATUS_PORT, observe, raw, simulator_env};
use crate::process::Supervisor;

/// Warm-up of the measurement: the slowest status answer (4.3 s) and a margin.
const WARMUP: Duration = Duration::from_secs(5);

/// Settings of `harness status-calls`, one caller process of the ceiling.
#[derive(Debug, Clone, Args)]
pub struct CallerArgs {
    /// A status simulator's base URL; caller i asks the i-th (round robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Calls kept in flight, each on its own connection.
    #[arg(long)]
    pub concurrency: usize,
    /// Seconds of warm-up before counting.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// Seconds counted.
    #[arg(long)]
    pub secs: u64,
}

/// What one caller process measured, printed as JSON on its standard output.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CallerFigures {
    calls_per_sec: f64,
    failed: u64,
}

/// `harness status-calls`: calls the simulators and prints its figures.
pub async fn run_caller(args: CallerArgs) -> anyhow::Result<()> {
    lastseen::limits::raise_open_files();
    let calls = raw::status_calls(
        &args.urls,
        args.concurrency,
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.secs),
    )
    .await?;
    let figures = CallerFigures {
        calls_per_sec: calls.per_sec,
        failed: calls.failed,
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// Starts the simulators (as many as the pipeline's, with its delays), runs one caller
/// process per consumer (each with the consumer's most checks in flight: the smaller of
/// `MAX_CHECKS_IN_FLIGHT` and prefetch × ids per message), and sums what they answered.
/// More than 1% of calls failing makes the measurement fail: a ceiling counted from
/// refused calls would say nothing.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Ceiling> {
    let per_consumer = (args.max_checks_in_flight as usize)
        .min(usize::from(args.prefetch) * args.ids_per_message as usize);
    let callers = args.consumers.max(1);
    let mut sims = Supervisor::new(&args.bin, &args.out.join("logs"));
    let mut urls = Vec::new();
    for i in 0..args.status_procs.max(1) {
        let port = STATUS_PORT + i as u16;
        sims.start(
            &format!("ceiling-status-{}", i + 1),
            "tester",
            &["serve"],
            &[simulator_env(args, i), vec![("RUST_LOG", "warn".into())]].concat(),
        )?;
        let url = format!("http://127.0.0.1:{port}");
        observe::wait_http(&format!("{url}/stats")).await?;
        urls.push(url);
    }
    let harness = std::env::current_exe().context("cannot find the harness binary")?;
    let runs = (0..callers).map(|i| {
        // Caller i asks the simulator consumer i would.
        let url = urls[i % urls.len()].clone();
        let mut command = tokio::process::Command::new(&harness);
        command
            .args(["status-calls", "--url", &url])
            .args(["--concurrency", &per_consumer.to_string()])
            .args(["--warmup-secs", &WARMUP.as_secs().to_string()])
            .args(["--secs", &args.ceiling_secs.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        async move {
            let output = command.output().await?;
            anyhow::ensure!(output.status.success(), "a ceiling caller failed");
            let line = String::from_utf8_lossy(&output.stdout);
            serde_json::from_str::<CallerFigures>(line.trim())
                .with_context(|| format!("a ceiling caller printed {line:?}"))
        }
    });
    let figures = futures::future::try_join_all(runs).await;
    sims.stop_all(Duration::from_secs(5)).await;
    let figures = figures?;
    let failed: u64 = figures.iter().map(|f| f.failed).sum();
    let ids_per_sec: f64 = figures.iter().map(|f| f.calls_per_sec).sum();
    let answered = ids_per_sec * args.ceiling_secs as f64;
    anyhow::ensure!(
        failed as f64 <= 0.01 * answered,
        "the ceiling's status calls failed {failed} times against {answered:.0} answered \
         (open-file limit, ports?): no ceiling"
    );
    Ok(Ceiling {
        ids_per_sec,
        concurrency: per_consumer * callers,
        secs: args.ceiling_secs,
        failed_calls: failed,
    })
}
