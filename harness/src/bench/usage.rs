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

/// Samples `/proc` for named pids and for the RabbitMQ and PostgreSQL servers.
pub struct UsageSampler {
    started: Instant,
    first_ticks: HashMap<String, u64>,
    last_ticks: HashMap<String, u64>,
    peak_rss_kb: HashMap<String, u64>,
    ticks_per_sec: f64,
}

impl UsageSampler {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            first_ticks: HashMap::new(),
            last_ticks: HashMap::new(),
            peak_rss_kb: HashMap::new(),
            // Linux reports CPU time in USER_HZ, 100 on every mainstream platform.
            ticks_per_sec: 100.0,
        }
    }

    /// Takes one sample of the given processes plus `rabbitmq` and `postgresql`.
    pub fn sample(&mut self, named: &[(String, u32)]) {
        let mut groups: HashMap<String, (u64, u64)> = HashMap::new();
        for (name, pid) in named {
            if let Some((ticks, rss)) = read_proc(*pid) {
                groups.insert(name.clone(), (ticks, rss));
            }
        }
        for (pid, comm) in all_processes() {
            let group = if comm.starts_with("beam.smp") {
                "rabbitmq"
            } else if comm.starts_with("postgres") {
                "postgresql"
            } else {
                continue;
            };
            if let Some((ticks, rss)) = read_proc(pid) {
                let entry = groups.entry(group.to_owned()).or_default();
                entry.0 += ticks;
                entry.1 += rss;
            }
        }
        for (name, (ticks, rss)) in groups {
            self.first_ticks.entry(name.clone()).or_insert(ticks);
            self.last_ticks.insert(name.clone(), ticks);
            let peak = self.peak_rss_kb.entry(name).or_default();
            *peak = (*peak).max(rss);
        }
    }

    /// Usage since the first sample, per name.
    pub fn usage(&self) -> HashMap<String, Usage> {
        let window = self.started.elapsed().as_secs_f64().max(1e-3);
        self.last_ticks
            .iter()
            .map(|(name, last)| {
                let first = self.first_ticks.get(name).copied().unwrap_or(*last);
                // PostgreSQL backends come and go: a group's total may shrink.
                let cpu_secs = last.saturating_sub(first) as f64 / self.ticks_per_sec;
                let usage = Usage {
                    cpu_secs,
                    cpu_percent: 100.0 * cpu_secs / window,
                    peak_rss_mb: self.peak_rss_kb.get(name).copied().unwrap_or(0) as f64 / 1024.0,
                };
                (name.clone(), usage)
            })
            .collect()
    }
}

impl Default for UsageSampler {
    fn default() -> Self {
        Self::new()
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
