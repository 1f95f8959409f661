//! What the processes' logs (`LOG_FORMAT=json`, one object per line) say about a run:
//! the consumers' retries and dead letters, and every ERROR line and panic of anyone.
//!
//! The consumer logs a retry only once RabbitMQ confirmed it, and a `kill -9` can fall
//! between the confirm and the log line: the retry counts are a floor, exact otherwise.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// The consumer's message when it sent failed checks to a retry queue.
const RETRIED: &str = "check failed, retrying later";
/// The consumer's message when a message failed its last attempt.
const DEAD_LETTERED: &str = "check failed for the last time, dead-lettered";
/// The consumer's message when a message could not be parsed.
const MALFORMED: &str = "dead-lettering";

/// Figures read from the logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogFigures {
    /// Check messages the consumers sent to a retry queue.
    pub retried_messages: u64,
    /// Ids in those messages.
    pub retried_ids: u64,
    /// Messages the consumers dead-lettered after their last attempt, or as malformed.
    pub dead_lettered_messages: u64,
    /// ERROR lines per log file.
    pub errors: BTreeMap<String, u64>,
    /// A sample of ERROR lines (the first few of each file).
    pub error_samples: Vec<String>,
    /// Log files holding a panic.
    pub panics: Vec<String>,
}

/// ERROR lines quoted per file.
const SAMPLES_PER_FILE: usize = 3;

/// Reads every `*.log` file directly in `dir`.
pub fn read(dir: &Path) -> anyhow::Result<LogFigures> {
    let mut figures = LogFigures::default();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        read_file(&name, &String::from_utf8_lossy(&text), &mut figures);
    }
    Ok(figures)
}

fn read_file(name: &str, text: &str, figures: &mut LogFigures) {
    let mut samples = 0;
    for line in text.lines() {
        if line.contains("panicked at") && !figures.panics.iter().any(|p| p == name) {
            figures.panics.push(name.to_owned());
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = event["message"].as_str().unwrap_or("");
        match message {
            RETRIED => {
                figures.retried_messages += 1;
                figures.retried_ids += event["ids"].as_u64().unwrap_or(0);
            }
            DEAD_LETTERED | MALFORMED => figures.dead_lettered_messages += 1,
            _ => {}
        }
        if event["level"].as_str() == Some("ERROR") {
            *figures.errors.entry(name.to_owned()).or_default() += 1;
            if samples < SAMPLES_PER_FILE {
                samples += 1;
                figures.error_samples.push(format!("{name}: {message}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_retries_dead_letters_errors_and_panics() {
        let text = concat!(
            "--- chaos: consumer-1 start #1 ---\n",
            r#"{"level":"INFO","message":"check failed, retrying later","ids":3,"attempt":1}"#,
            "\n",
            r#"{"level":"INFO","message":"check failed, retrying later","ids":2,"attempt":2}"#,
            "\n",
            r#"{"level":"WARN","message":"check failed for the last time, dead-lettered"}"#,
            "\n",
            r#"{"level":"ERROR","message":"upsert gave up"}"#,
            "\n",
            "thread 'main' panicked at src/main.rs:1:1\n",
        );
        let mut figures = LogFigures::default();
        read_file("consumer-1.log", text, &mut figures);
        assert_eq!(figures.retried_messages, 2);
        assert_eq!(figures.retried_ids, 5);
        assert_eq!(figures.dead_lettered_messages, 1);
        assert_eq!(figures.errors["consumer-1.log"], 1);
        assert_eq!(figures.panics, vec!["consumer-1.log".to_owned()]);
    }
}
