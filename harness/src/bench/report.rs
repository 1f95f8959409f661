//! The benchmark's figures and their forms: `result.json`, a markdown table, an SVG
//! chart of throughput, backlog and lag over time, and the sweep table.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::BenchArgs;
use super::load::{LoadCounters, LoadOutcome};
use super::observe::{Observed, Sample};
use super::raw::RawRates;
use super::usage::BENCH_OWN_POSTGRES;

/// The ceiling: the status calls alone at the simulators' real delays, with the
/// consumers' concurrency, measured in the same run before the pipeline starts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    /// Status calls answered per second: ids/s this machine can check.
    pub ids_per_sec: f64,
    /// Calls kept in flight (consumers × each one's most checks in flight).
    pub concurrency: usize,
    pub secs: u64,
    /// Calls that failed while counted (at most 1% of those answered).
    pub failed_calls: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub machine: String,
    pub profile: super::Profile,
    /// Objects in the fleet (`fleet` profile only).
    pub fleet: Option<u64>,
    pub target_ids_per_sec: u64,
    pub secs: u64,
    pub ids_per_callback: usize,
    pub ids_per_message: u32,
    pub consumers: usize,
    pub prefetch: u16,
    pub callbacks_accepted: u64,
    pub callbacks_failed: u64,
    pub callbacks_per_sec: f64,
    pub ids_per_sec_accepted: f64,
    /// Rows committed per second at steady state (from a quarter of the run to its end).
    pub ids_per_sec_stored: f64,
    pub ids_stored_total: u64,
    pub callback_p50_ms: f64,
    pub callback_p99_ms: f64,
    pub callback_max_ms: f64,
    /// Callback accepted to row committed, minus that id's status delay.
    pub e2e_lag_p50_ms: f64,
    pub e2e_lag_p99_ms: f64,
    pub e2e_lag_samples: u64,
    pub e2e_lag_not_stored: u64,
    pub backlog_ready_max: u32,
    pub backlog_ready_end_of_load: u32,
    pub backlog_grew: bool,
    pub drained_after_secs: Option<f64>,
    pub peak_in_flight: u64,
    pub rss_mb: BTreeMap<String, f64>,
    pub cpu_percent: BTreeMap<String, f64>,
    /// CPU seconds per 1,000 ids stored, by process (RabbitMQ's and PostgreSQL's
    /// processes each summed), over the whole observation (load and drain).
    pub cpu_secs_per_1k_ids: BTreeMap<String, f64>,
    /// The same for every process but the status simulators (the outside world) and
    /// the bench's own PostgreSQL queries.
    pub cpu_secs_per_1k_ids_pipeline: f64,
    /// PostgreSQL's share of that, by client: the backends of the consumers, the
    /// sweeper, the read API (`reader`), the bench's stand-in for autovacuum, and the
    /// server's own processes (`walwriter`, `checkpointer`, ..., `server`).
    pub postgresql_cpu_secs_per_1k_ids_by_client: BTreeMap<String, f64>,
    /// The consumers' peak resident memory over the peak checks in flight, KB per check.
    pub consumer_kb_per_check_in_flight: Option<f64>,
    /// PostgreSQL backends waiting on a lock, on average over the observation, by the
    /// waiting client and the client holding the lock (sampled every 250 ms).
    pub lock_waits: super::lock_waits::LockWaitFigures,
    pub ceiling: Option<Ceiling>,
    /// Stored ids/s over the ceiling's ids/s.
    pub fraction_of_ceiling: Option<f64>,
    pub raw: Option<RawRates>,
    /// Each part's raw rate in ids per second (messages count `ids_per_message` ids).
    pub raw_ids_per_sec: BTreeMap<String, f64>,
    pub sustained: bool,
    /// What the readers did, with `BENCH_READERS=1`.
    pub readers: Option<super::readers::ReadFigures>,
    /// Rounds of `VACUUM (ANALYZE)` the bench ran in autovacuum's place (0: the server
    /// runs autovacuum itself).
    pub vacuum_rounds: u32,
    pub samples: Vec<Sample>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB; producer, consumers, sweeper, status simulator, RabbitMQ and PostgreSQL all on it"
    )
}

/// Computes a run's figures.
pub fn summarize(
    args: &BenchArgs,
    rate: u64,
    counters: &LoadCounters,
    outcome: LoadOutcome,
    observed: Observed,
    raw: Option<RawRates>,
) -> RunResult {
    let load_secs = outcome.elapsed.as_secs_f64().max(1e-3);
    let samples = observed.samples;
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_secs <= load_secs + 0.5)
        .collect();
    // Steady state: from a quarter of the run (at least 6 s, past the longest status
    // delay) to the end of the load.
    let from = (load_secs / 4.0).max(6.0).min(load_secs * 0.5);
    let window: Vec<&&Sample> = during.iter().filter(|s| s.t_secs >= from).collect();
    let ids_per_sec_stored = match (window.first(), window.last()) {
        (Some(a), Some(b)) if b.t_secs > a.t_secs => {
            b.ids_stored.saturating_sub(a.ids_stored) as f64 / (b.t_secs - a.t_secs)
        }
        _ => 0.0,
    };
    let ids_accepted = counters.ids_accepted.load(Ordering::Relaxed);
    let callbacks_accepted = counters.callbacks_accepted.load(Ordering::Relaxed);
    let ids_per_sec_accepted = ids_accepted as f64 / load_secs;

    // The backlog grew if the ready count in the last quarter of the load is well above
    // the one in the second quarter (more than half a second of work).
    let mean = |lo: f64, hi: f64| {
        let v: Vec<f64> = during
            .iter()
            .filter(|s| s.t_secs >= lo * load_secs && s.t_secs < hi * load_secs)
            .map(|s| f64::from(s.ready))
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let ready_grew = mean(0.75, 1.01) > mean(0.25, 0.5) + rate as f64 * 0.5;
    // Work held unacked by consumers is backlog too: it grew if ids were accepted
    // clearly faster than stored.
    let backlog_grew = ready_grew || ids_per_sec_stored < 0.9 * ids_per_sec_accepted;
    let backlog_ready_max = during.iter().map(|s| s.ready).max().unwrap_or(0);
    let backlog_ready_end_of_load = during.last().map_or(0, |s| s.ready);

    let per_msg = f64::from(args.ids_per_message.max(1));
    let mut raw_ids_per_sec: BTreeMap<String, f64> = BTreeMap::new();
    if let Some(r) = &raw {
        raw_ids_per_sec.insert(
            "rabbitmq_publish_confirm".into(),
            r.rabbitmq_publish_confirm_msgs_per_sec * per_msg,
        );
        raw_ids_per_sec.insert(
            "rabbitmq_consume_ack".into(),
            r.rabbitmq_consume_ack_msgs_per_sec * per_msg,
        );
        raw_ids_per_sec.insert("postgresql_upsert".into(), r.postgresql_upsert_rows_per_sec);
        raw_ids_per_sec.insert(
            "status_simulator".into(),
            r.status_simulator_requests_per_sec,
        );
    }
    let ids_stored_total = samples.last().map_or(0, |s| s.ids_stored);
    let per_1k = |cpu_secs: f64| round3(cpu_secs * 1000.0 / (ids_stored_total.max(1) as f64));
    let cpu_secs_per_1k_ids: BTreeMap<String, f64> = observed
        .usage
        .iter()
        .map(|(k, u)| (k.clone(), per_1k(u.cpu_secs)))
        .collect();
    let cpu_secs_per_1k_ids_pipeline = per_1k(
        observed
            .usage
            .iter()
            .filter(|(k, _)| !k.starts_with("status") && k.as_str() != BENCH_OWN_POSTGRES)
            .map(|(_, u)| u.cpu_secs)
            .sum(),
    );
    let postgresql_cpu_secs_per_1k_ids_by_client: BTreeMap<String, f64> = observed
        .postgres_by_client
        .iter()
        .map(|(client, secs)| (client.clone(), per_1k(*secs)))
        .filter(|(_, per)| *per > 0.0)
        .collect();
    let consumer_rss_mb: f64 = observed
        .usage
        .iter()
        .filter(|(k, _)| k.starts_with("consumer"))
        .map(|(_, u)| u.peak_rss_mb)
        .sum();
    let consumer_kb_per_check_in_flight = (observed.peak_in_flight > 0)
        .then(|| round1(consumer_rss_mb * 1024.0 / observed.peak_in_flight as f64));

    let ms = |us: u64| us as f64 / 1000.0;
    let sustained = !backlog_grew
        && ids_per_sec_accepted >= 0.95 * rate as f64
        && ids_per_sec_stored >= 0.95 * ids_per_sec_accepted;
    RunResult {
        machine: machine(),
        profile: args.profile,
        fleet: (args.profile == super::Profile::Fleet).then_some(args.fleet),
        target_ids_per_sec: rate,
        secs: args.secs,
        ids_per_callback: args.ids_per_callback,
        ids_per_message: args.ids_per_message,
        consumers: args.consumers,
        prefetch: args.prefetch,
        callbacks_accepted,
        callbacks_failed: counters.callbacks_failed.load(Ordering::Relaxed),
        callbacks_per_sec: callbacks_accepted as f64 / load_secs,
        ids_per_sec_accepted,
        ids_per_sec_stored,
        ids_stored_total,
        callback_p50_ms: ms(outcome.latency_us.value_at_quantile(0.5)),
        callback_p99_ms: ms(outcome.latency_us.value_at_quantile(0.99)),
        callback_max_ms: ms(outcome.latency_us.max()),
        e2e_lag_p50_ms: ms(observed.lag_us.value_at_quantile(0.5)),
        e2e_lag_p99_ms: ms(observed.lag_us.value_at_quantile(0.99)),
        e2e_lag_samples: observed.lag_us.len(),
        e2e_lag_not_stored: observed.lag_lost,
        backlog_ready_max,
        backlog_ready_end_of_load,
        backlog_grew,
        drained_after_secs: observed.drained_after.map(|d| d.as_secs_f64()),
        peak_in_flight: observed.peak_in_flight,
        rss_mb: observed
            .usage
            .iter()
            .map(|(k, u)| (k.clone(), round1(u.peak_rss_mb)))
            .collect(),
        cpu_percent: observed
            .usage
            .iter()
            .map(|(k, u)| (k.clone(), round1(u.cpu_percent)))
            .collect(),
        cpu_secs_per_1k_ids,
        cpu_secs_per_1k_ids_pipeline,
        postgresql_cpu_secs_per_1k_ids_by_client,
        consumer_kb_per_check_in_flight,
        lock_waits: observed.lock_waits,
        ceiling: None,
        fraction_of_ceiling: None,
        raw,
        raw_ids_per_sec: raw_ids_per_sec
            .into_iter()
            .map(|(k, v)| (k, round1(v)))
            .collect(),
        sustained,
        readers: None,
        vacuum_rounds: 0,
        samples,
    }
}

impl RunResult {
    /// Records the ceiling measured before the run, and the pipeline's fraction of it.
    pub fn set_ceiling(&mut self, ceiling: Option<Ceiling>) {
        self.ceiling = ceiling;
        self.fraction_of_ceiling =
            ceiling.map(|c| round3(self.ids_per_sec_stored / c.ids_per_sec.max(1e-9)));
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The markdown table of one run.
pub fn markdown(r: &RunResult) -> String {
    let mut s = String::new();
    s.push_str(&format!("Machine: {}\n\n", r.machine));
    s.push_str(&format!(
        "Run: {} s at a target of {} ids/s; {} ids per callback, {} per message; {} consumers, prefetch {}.\n\n",
        r.secs, r.target_ids_per_sec, r.ids_per_callback, r.ids_per_message, r.consumers, r.prefetch
    ));
    s.push_str(&match r.fleet {
        Some(fleet) => format!(
            "Profile: fleet, {fleet} objects known before the load, each reported once every {:.1} s: nearly every sighting is a refresh.\n\n",
            fleet as f64 / r.target_ids_per_sec.max(1) as f64
        ),
        None => "Profile: churn, ids drawn at random: most sightings are of objects new or back after expiring.\n\n".to_owned(),
    });
    s.push_str("| figure | value |\n|---|---:|\n");
    let rows: Vec<(&str, String)> = vec![
        (
            "callbacks/s accepted",
            format!("{:.1}", r.callbacks_per_sec),
        ),
        ("ids/s accepted", format!("{:.0}", r.ids_per_sec_accepted)),
        (
            "ids/s stored (steady state)",
            format!("{:.0}", r.ids_per_sec_stored),
        ),
        ("callbacks failed", r.callbacks_failed.to_string()),
        (
            "callback latency p50 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.1}",
                r.callback_p50_ms, r.callback_p99_ms, r.callback_max_ms
            ),
        ),
        (
            "end-to-end lag beyond status delay p50 / p99 (ms)",
            format!(
                "{:.0} / {:.0} ({} samples, {} not stored)",
                r.e2e_lag_p50_ms, r.e2e_lag_p99_ms, r.e2e_lag_samples, r.e2e_lag_not_stored
            ),
        ),
        (
            "work queue ready: max / at end of load",
            format!("{} / {}", r.backlog_ready_max, r.backlog_ready_end_of_load),
        ),
        ("backlog grew", r.backlog_grew.to_string()),
        (
            "drained after load (s)",
            r.drained_after_secs
                .map_or("not within 60 s".into(), |d| format!("{d:.1}")),
        ),
        ("peak checks in flight", r.peak_in_flight.to_string()),
        (
            "ceiling: status calls alone, ids/s (calls in flight)",
            r.ceiling.map_or("not measured".into(), |c| {
                format!("{:.0} ({})", c.ids_per_sec, c.concurrency)
            }),
        ),
        (
            "pipeline's fraction of the ceiling",
            r.fraction_of_ceiling
                .map_or("-".into(), |f| format!("{f:.3}")),
        ),
        (
            "CPU-s per 1,000 ids stored, all but the simulators",
            format!("{:.3}", r.cpu_secs_per_1k_ids_pipeline),
        ),
        (
            "consumer memory per check in flight (KB)",
            r.consumer_kb_per_check_in_flight
                .map_or("-".into(), |kb| format!("{kb:.1}")),
        ),
        (
            "VACUUM (ANALYZE) rounds in autovacuum's place (0: the server runs it)",
            r.vacuum_rounds.to_string(),
        ),
        ("sustained", r.sustained.to_string()),
    ];
    let mut rows = rows;
    if let Some(read) = &r.readers {
        rows.push((
            "readers: status page open in chromium",
            read.status_page_open.to_string(),
        ));
        rows.push((
            "readers: GET /objects?state=online each second, p50 / p99 (ms)",
            format!(
                "{} polls, {} failed; {:.1} / {:.1}",
                read.api_polls, read.api_failures, read.api_p50_ms, read.api_p99_ms
            ),
        ));
    }
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s.push_str("\n| process | CPU % of one core | CPU-s per 1,000 ids stored | peak RSS MB |\n|---|---:|---:|---:|\n");
    for (name, cpu) in &r.cpu_percent {
        s.push_str(&format!(
            "| {name} | {cpu:.1} | {:.3} | {:.1} |\n",
            r.cpu_secs_per_1k_ids.get(name).copied().unwrap_or(0.0),
            r.rss_mb.get(name).copied().unwrap_or(0.0)
        ));
    }
    if !r.postgresql_cpu_secs_per_1k_ids_by_client.is_empty() {
        s.push_str(
            "\n| PostgreSQL's backends, by client | CPU-s per 1,000 ids stored |\n|---|---:|\n",
        );
        let mut clients: Vec<(&String, &f64)> =
            r.postgresql_cpu_secs_per_1k_ids_by_client.iter().collect();
        clients.sort_by(|a, b| b.1.total_cmp(a.1));
        for (client, per) in clients {
            s.push_str(&format!("| {client} | {per:.3} |\n"));
        }
    }
    if r.lock_waits.samples > 0 {
        s.push_str(&format!(
            "\n| PostgreSQL backends waiting on a lock ({} samples) | held by | backends waiting, mean |\n|---|---|---:|\n",
            r.lock_waits.samples
        ));
        if r.lock_waits.mean_waiting.is_empty() {
            s.push_str("| none | | 0 |\n");
        }
        for (waiter, by_blocker) in &r.lock_waits.mean_waiting {
            for (blocker, mean) in by_blocker {
                let blocker = if blocker.is_empty() {
                    "(gone)"
                } else {
                    blocker
                };
                s.push_str(&format!("| {waiter} | {blocker} | {mean:.2} |\n"));
            }
        }
    }
    if let Some(raw) = &r.raw {
        s.push_str(&format!(
            "\n| part (raw, alone, {}-byte messages) | rate | in ids/s |\n|---|---:|---:|\n",
            raw.message_bytes
        ));
        let parts = [
            (
                "RabbitMQ publish with confirm (msgs/s)",
                raw.rabbitmq_publish_confirm_msgs_per_sec,
                "rabbitmq_publish_confirm",
            ),
            (
                "RabbitMQ consume with ack (msgs/s)",
                raw.rabbitmq_consume_ack_msgs_per_sec,
                "rabbitmq_consume_ack",
            ),
            (
                "PostgreSQL batched upsert (rows/s)",
                raw.postgresql_upsert_rows_per_sec,
                "postgresql_upsert",
            ),
            (
                "status simulator (requests/s)",
                raw.status_simulator_requests_per_sec,
                "status_simulator",
            ),
        ];
        for (label, rate, key) in parts {
            s.push_str(&format!(
                "| {label} | {rate:.0} | {:.0} |\n",
                r.raw_ids_per_sec.get(key).copied().unwrap_or(0.0)
            ));
        }
    }
    s
}

/// Writes one run's report into `dir`.
pub fn write_run(dir: &Path, r: &RunResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("result.json"), serde_json::to_string_pretty(r)?)
        .context("writing result.json")?;
    std::fs::write(dir.join("result.md"), markdown(r)).context("writing result.md")?;
    chart(&dir.join("chart.svg"), r)
}

/// One line of the sweep table.
pub fn sweep_row(r: &RunResult) -> String {
    format!(
        "| {} | {:.0} | {:.0} | {:.1} | {:.0} | {} | {} | {} |",
        r.target_ids_per_sec,
        r.ids_per_sec_accepted,
        r.ids_per_sec_stored,
        r.callback_p99_ms,
        r.e2e_lag_p99_ms,
        r.backlog_ready_max,
        r.backlog_grew,
        if r.sustained { "yes" } else { "no" }
    )
}

/// Writes the sweep table (`sweep.md`, `sweep.json`) and returns it.
pub fn write_sweep(out: &Path, results: &[RunResult]) -> anyhow::Result<String> {
    let mut table = String::from(
        "| target ids/s | accepted ids/s | stored ids/s | callback p99 ms | e2e lag p99 ms | max ready | backlog grew | sustained |\n|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in results {
        table.push_str(&sweep_row(r));
        table.push('\n');
    }
    let best = results
        .iter()
        .filter(|r| r.sustained)
        .map(|r| r.target_ids_per_sec)
        .max();
    table.push_str(&match best {
        Some(rate) => format!("\nHighest sustained rate: {rate} ids/s.\n"),
        None => "\nNo rate was sustained.\n".into(),
    });
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("sweep.md"), &table)?;
    let summary: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "target_ids_per_sec": r.target_ids_per_sec,
                "ids_per_sec_accepted": r.ids_per_sec_accepted,
                "ids_per_sec_stored": r.ids_per_sec_stored,
                "callback_p99_ms": r.callback_p99_ms,
                "e2e_lag_p99_ms": r.e2e_lag_p99_ms,
                "backlog_grew": r.backlog_grew,
                "sustained": r.sustained,
            })
        })
        .collect();
    std::fs::write(
        out.join("sweep.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "runs": summary, "highest_sustained_ids_per_sec": best }),
        )?,
    )?;
    Ok(table)
}

/// Throughput, backlog and lag over time, and the CPU cost per id by process, in four
/// panels.
fn chart(path: &Path, r: &RunResult) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 1200)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let panels = root.split_evenly((4, 1));
    let t_max = r.samples.last().map_or(1.0, |s| s.t_secs).max(1.0);
    let rates: Vec<(f64, f64, f64)> = r
        .samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].t_secs - w[0].t_secs).max(1e-3);
            (
                w[1].t_secs,
                (w[1].ids_accepted - w[0].ids_accepted) as f64 / dt,
                w[1].ids_stored.saturating_sub(w[0].ids_stored) as f64 / dt,
            )
        })
        .collect();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("chart: {e:?}");

    let y_max = rates.iter().map(|r| r.1.max(r.2)).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&panels[0])
        .caption(
            format!("throughput, ids/s (target {})", r.target_ids_per_sec),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(draw)?;
    c.configure_mesh().x_desc("s").draw().map_err(draw)?;
    c.draw_series(LineSeries::new(rates.iter().map(|r| (r.0, r.1)), &BLUE))
        .map_err(draw)?
        .label("accepted")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    c.draw_series(LineSeries::new(rates.iter().map(|r| (r.0, r.2)), &GREEN))
        .map_err(draw)?
        .label("stored")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], GREEN));
    c.configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;

    let b_max = r
        .samples
        .iter()
        .map(|s| f64::from(s.ready).max(s.in_flight as f64))
        .fold(1.0, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&panels[1])
        .caption(
            "work queue: ready, and checks in flight",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..b_max)
        .map_err(draw)?;
    c.configure_mesh().x_desc("s").draw().map_err(draw)?;
    c.draw_series(LineSeries::new(
        r.samples.iter().map(|s| (s.t_secs, f64::from(s.ready))),
        &RED,
    ))
    .map_err(draw)?
    .label("ready")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    c.draw_series(LineSeries::new(
        r.samples.iter().map(|s| (s.t_secs, s.in_flight as f64)),
        &MAGENTA,
    ))
    .map_err(draw)?
    .label("in flight")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], MAGENTA));
    c.configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;

    let lags: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter_map(|s| Some((s.t_secs, s.lag_p99_ms?)))
        .collect();
    let l_max = lags.iter().map(|l| l.1).fold(10.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&panels[2])
        .caption(
            "end-to-end lag beyond status delay, p99 per second (ms)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..l_max)
        .map_err(draw)?;
    c.configure_mesh().x_desc("s").draw().map_err(draw)?;
    c.draw_series(LineSeries::new(lags, &BLACK)).map_err(draw)?;

    let costs: Vec<(&String, f64)> = r.cpu_secs_per_1k_ids.iter().map(|(k, v)| (k, *v)).collect();
    let c_max = costs.iter().map(|c| c.1).fold(0.01, f64::max) * 1.15;
    let mut c = ChartBuilder::on(&panels[3])
        .caption(
            format!(
                "CPU-s per 1,000 ids stored (all but the simulators: {:.3})",
                r.cpu_secs_per_1k_ids_pipeline
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..costs.len().max(1) as f64, 0.0..c_max)
        .map_err(draw)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .draw()
        .map_err(draw)?;
    c.draw_series(costs.iter().enumerate().map(|(i, (_, v))| {
        Rectangle::new(
            [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
            BLUE.filled(),
        )
    }))
    .map_err(draw)?;
    c.draw_series(costs.iter().enumerate().map(|(i, (name, v))| {
        Text::new(
            format!("{name} {v:.3}"),
            (i as f64 + 0.1, *v + c_max * 0.03),
            ("sans-serif", 12),
        )
    }))
    .map_err(draw)?;
    root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}
