//! CPU and memory of the processes under test (and of RabbitMQ and PostgreSQL), sampled
//! from `/proc`.

use std::collections::HashMap;
use std::time::Instant;

/// CPU and memory of one process (or a group, such as PostgreSQL's backends).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Usage {
    /// CPU seconds used during the sample window.
    pub cpu_secs: f64,
    /// CPU use over the window, in % of one core.
    pub cpu_percent: f64,
    /// Highest resident memory seen, MB.
    pub peak_rss_mb: f64,
}

/// The group of the bench's own PostgreSQL backends (its observer's lookups, counts
/// and this sampling): shown, but not part of the pipeline's cost.
pub const BENCH_OWN_POSTGRES: &str = "postgresql: the bench's own queries";

/// Whom each PostgreSQL backend works for: its `application_name` (or, for the server's
/// own processes, its `backend_type`), by pid, as `pg_stat_activity` tells.
pub type PostgresClients = HashMap<u32, String>;

/// Samples `/proc` for named pids and for the RabbitMQ and PostgreSQL servers. CPU is
/// summed from each pid's growth between samples, so a backend that exits takes only
/// its last second with it, and a PostgreSQL backend's time goes to its client.
pub struct UsageSampler {
    started: Instant,
    /// Each pid's CPU ticks at the last sample; empty before the first.
    last_by_pid: HashMap<u32, u64>,
    sampled: bool,
    ticks: HashMap<String, u64>,
    postgres_ticks_by_client: HashMap<String, u64>,
    peak_rss_kb: HashMap<String, u64>,
    ticks_per_sec: f64,
}

impl UsageSampler {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last_by_pid: HashMap::new(),
            sampled: false,
            ticks: HashMap::new(),
            postgres_ticks_by_client: HashMap::new(),
            peak_rss_kb: HashMap::new(),
            // Linux reports CPU time in USER_HZ, 100 on every mainstream platform.
            ticks_per_sec: 100.0,
        }
    }

    /// Takes one sample of the given processes plus `rabbitmq` and `postgresql`, whose
    /// backends are told apart by `clients`.
    pub fn sample(&mut self, named: &[(String, u32)], clients: &PostgresClients) {
        let groups = named
            .iter()
            .map(|(name, pid)| (*pid, Owner::Group(name.clone())));
        let servers = all_processes().into_iter().filter_map(|(pid, comm)| {
            if comm.starts_with("beam.smp") {
                Some((pid, Owner::Group("rabbitmq".to_owned())))
            } else if comm.starts_with("postgres") {
                let client = postgres_client(clients.get(&pid).map(String::as_str));
                Some((pid, Owner::Postgres(client)))
            } else {
                None
            }
        });
        let readings = groups
            .chain(servers)
            .filter_map(|(pid, owner)| {
                let (ticks, rss_kb) = read_proc(pid)?;
                Some(Reading {
                    pid,
                    owner,
                    ticks,
                    rss_kb,
                })
            })
            .collect();
        self.record(readings);
    }

    /// Adds one sample's readings: each pid's growth since the last goes to its group
    /// (and a PostgreSQL backend's to its client).
    fn record(&mut self, readings: Vec<Reading>) {
        let mut rss_by_group: HashMap<String, u64> = HashMap::new();
        let mut last_by_pid = HashMap::with_capacity(readings.len());
        for reading in readings {
            let (group, client) = match reading.owner {
                Owner::Group(group) => (group, None),
                Owner::Postgres(client) if client == BENCH_CLIENT => {
                    (BENCH_OWN_POSTGRES.to_owned(), Some(client))
                }
                Owner::Postgres(client) => ("postgresql".to_owned(), Some(client)),
            };
            *rss_by_group.entry(group.clone()).or_default() += reading.rss_kb;
            // A pid first seen after the first sample started since: all its time counts.
            let grown = match self.last_by_pid.get(&reading.pid) {
                Some(last) => reading.ticks.saturating_sub(*last),
                None if self.sampled => reading.ticks,
                None => 0,
            };
            last_by_pid.insert(reading.pid, reading.ticks);
            *self.ticks.entry(group).or_default() += grown;
            if let Some(client) = client {
                *self.postgres_ticks_by_client.entry(client).or_default() += grown;
            }
        }
        self.last_by_pid = last_by_pid;
        self.sampled = true;
        for (group, rss) in rss_by_group {
            let peak = self.peak_rss_kb.entry(group).or_default();
            *peak = (*peak).max(rss);
        }
    }

    /// Usage since the first sample, per name.
    pub fn usage(&self) -> HashMap<String, Usage> {
        let window = self.started.elapsed().as_secs_f64().max(1e-3);
        self.ticks
            .iter()
            .map(|(name, ticks)| {
                let cpu_secs = *ticks as f64 / self.ticks_per_sec;
                let usage = Usage {
                    cpu_secs,
                    cpu_percent: 100.0 * cpu_secs / window,
                    peak_rss_mb: self.peak_rss_kb.get(name).copied().unwrap_or(0) as f64 / 1024.0,
                };
                (name.clone(), usage)
            })
            .collect()
    }

    /// CPU seconds of the pipeline's PostgreSQL backends since the first sample, by
    /// client (`consumer`, `sweeper`, `reader`, ..., `server` for its own processes).
    pub fn postgres_by_client(&self) -> HashMap<String, f64> {
        self.postgres_ticks_by_client
            .iter()
            .filter(|(client, _)| client.as_str() != BENCH_CLIENT)
            .map(|(client, ticks)| (client.clone(), *ticks as f64 / self.ticks_per_sec))
            .collect()
    }
}

impl Default for UsageSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// One process at one sample.
struct Reading {
    pid: u32,
    owner: Owner,
    ticks: u64,
    rss_kb: u64,
}

/// Whose a process's time is.
enum Owner {
    /// A group of its own: a named process, or RabbitMQ.
    Group(String),
    /// A PostgreSQL process, for this client (see [`postgres_client`]).
    Postgres(String),
}

/// The client name of the bench's own connections (`lastseen-harness`, shortened).
const BENCH_CLIENT: &str = "harness";

/// A backend's client, shortened: `lastseen-consumer` is `consumer`, and so are the
/// bench's `lastseen-consumer-1`, `lastseen-consumer-2`, ... (one program, one line); a
/// backend with no name, or a process `pg_stat_activity` does not list (the postmaster,
/// its logger), is `server`.
fn postgres_client(application_name: Option<&str>) -> String {
    match application_name.map(str::trim) {
        Some(name) if !name.is_empty() => {
            let name = name.strip_prefix("lastseen-").unwrap_or(name);
            match name.rsplit_once('-') {
                Some((program, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    program.to_owned()
                }
                _ => name.to_owned(),
            }
        }
        _ => "server".to_owned(),
    }
}

/// (utime + stime in ticks, resident memory in kB) of a pid.
fn read_proc(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((utime + stime, rss))
}

fn all_processes() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_is_named_after_its_client_or_the_server() {
        assert_eq!(postgres_client(Some("lastseen-consumer")), "consumer");
        assert_eq!(postgres_client(Some("lastseen-consumer-1")), "consumer");
        assert_eq!(postgres_client(Some("lastseen-consumer-12")), "consumer");
        assert_eq!(postgres_client(Some("consumer-")), "consumer-");
        assert_eq!(
            postgres_client(Some("autovacuum-stand-in")),
            "autovacuum-stand-in"
        );
        assert_eq!(postgres_client(Some("night-sweeper")), "night-sweeper");
        assert_eq!(postgres_client(Some("walwriter")), "walwriter");
        assert_eq!(postgres_client(Some("")), "server");
        assert_eq!(postgres_client(None), "server");
        assert_eq!(
            postgres_client(Some(&lastseen::db::application_name("harness"))),
            BENCH_CLIENT
        );
    }

    /// A sample read from `/proc`: this process, named, is counted with the time it spent
    /// between two samples.
    #[test]
    fn a_named_process_is_sampled_from_proc() {
        let me = std::process::id();
        let named = [("me".to_owned(), me)];
        let mut sampler = UsageSampler::new();
        sampler.sample(&named, &PostgresClients::new());
        let (start, _) = read_proc(me).expect("this process in /proc");
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while read_proc(me).expect("this process in /proc").0 < start + 30
            && Instant::now() < deadline
        {
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        sampler.sample(&named, &PostgresClients::new());
        let usage = sampler.usage();
        assert!(usage["me"].cpu_secs >= 0.3, "{:?}", usage["me"]);
        assert!(usage["me"].peak_rss_mb > 0.0, "{:?}", usage["me"]);
    }

    fn backend(pid: u32, client: &str, ticks: u64) -> Reading {
        Reading {
            pid,
            owner: Owner::Postgres(client.to_owned()),
            ticks,
            rss_kb: 1024,
        }
    }

    /// Each backend's growth goes to its client; the bench's own backend is kept out of
    /// `postgresql`; a backend that starts between samples counts whole, one that exits
    /// keeps what it had counted.
    #[test]
    fn a_backends_time_goes_to_its_client_and_the_benchs_own_is_kept_apart() {
        let mut sampler = UsageSampler::new();
        sampler.record(vec![
            backend(1, "consumer", 1_000),
            backend(2, "harness", 500),
            backend(3, "sweeper", 700),
        ]);
        sampler.record(vec![
            backend(1, "consumer", 1_050),
            backend(2, "harness", 530),
            backend(3, "sweeper", 720),
            backend(4, "consumer", 15),
        ]);
        // The sweeper's backend exits; the consumer's goes on.
        sampler.record(vec![
            backend(1, "consumer", 1_060),
            backend(2, "harness", 531),
            backend(4, "consumer", 20),
        ]);
        let usage = sampler.usage();
        let secs = |ticks: f64| ticks / 100.0;
        assert_eq!(
            usage["postgresql"].cpu_secs,
            secs(50.0 + 20.0 + 15.0 + 10.0 + 5.0)
        );
        assert_eq!(usage[BENCH_OWN_POSTGRES].cpu_secs, secs(31.0));
        let by_client = sampler.postgres_by_client();
        assert_eq!(by_client["consumer"], secs(50.0 + 15.0 + 10.0 + 5.0));
        assert_eq!(by_client["sweeper"], secs(20.0));
        assert!(!by_client.contains_key("harness"), "{by_client:?}");
        assert_eq!(usage["postgresql"].peak_rss_mb, 3.0);
    }
}
