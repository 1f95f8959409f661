//! `LOG_FORMAT=json` makes the real producer log one JSON object per line.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let spool = tempfile::tempdir().expect("a temporary folder for the spool");
    let producer = e2e::process::binaries()
        .expect("the binaries build")
        .join("producer");
    let mut child = Command::new(producer)
        .env("SPOOL_PATH", spool.path().join("producer.redb"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("CALLBACK_ADDR", "127.0.0.1:0")
        // Nothing listens on port 1: the producer logs its reconnect attempts.
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the producer starts");
    std::thread::sleep(Duration::from_secs(3));
    child.kill().expect("the producer can be stopped");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .expect("stderr is readable");
    let _ = child.wait();

    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "expected a few log lines, got:\n{stderr}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(value["timestamp"].is_string(), "no timestamp: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("producer listening")),
        "the listening line is missing:\n{stderr}"
    );
}
