//! Process limits: the open-file limit, raised so thousands of concurrent connections
//! (one per status call in flight, with HTTP/1.1) do not run out of descriptors.

use rlimit::Resource;

/// Descriptors asked for when the process may raise its hard limit (as root).
const WANTED_OPEN_FILES: u64 = 1_048_576;

/// Raises the open-file limit as far as allowed and returns it.
pub fn raise_open_files() -> u64 {
    let wanted = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_OPEN_FILES)
        .min(WANTED_OPEN_FILES);
    if rlimit::setrlimit(Resource::NOFILE, wanted, wanted).is_ok() {
        return wanted;
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(error = %err, "could not raise the open-file limit");
            Resource::NOFILE.get().map_or(0, |(soft, _)| soft)
        }
    }
}
