//! Every metric the alert rules (`deploy/prometheus/alerts.yml`) and the Grafana dashboard
//! (`deploy/grafana/lastseen.json`) name is one the binaries export: a name of
//! `lastseen::contract::metric` that the producer, the consumer, the sweeper or the
//! library records (`metric::NAME` in their sources). A renamed metric fails here, not
//! silently in a dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The constants of `contract::metric`: constant name → metric name.
fn contract_metrics() -> BTreeMap<String, String> {
    let source = read(&workspace().join("lastseen/src/contract.rs"));
    let module = source
        .split("pub mod metric {")
        .nth(1)
        .and_then(|rest| rest.split("\n}\n").next())
        .expect("contract.rs has `pub mod metric`");
    module
        .split("pub const ")
        .skip(1)
        .filter_map(|item| {
            let (name, rest) = item.split_once(':')?;
            let literal = rest.split('"').nth(1)?;
            Some((name.trim().to_owned(), literal.to_owned()))
        })
        .collect()
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a readable directory").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The metric names the binaries record.
fn exported() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in ["producer", "consumer", "sweeper", "lastseen"] {
        sources(&workspace().join(krate).join("src"), &mut files);
    }
    let code: String = files
        .iter()
        .filter(|f| !f.ends_with("contract.rs"))
        .map(|f| read(f))
        .collect();
    contract_metrics()
        .into_iter()
        .filter(|(constant, _)| code.contains(&format!("metric::{constant}")))
        .map(|(_, name)| name)
        .collect()
}

/// The `lastseen_*` metric names in `text`, without a histogram's `_bucket`, `_sum` or
/// `_count`.
fn named_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("lastseen_"))
        .map(|token| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| token.strip_suffix(suffix))
                .unwrap_or(token)
                .to_owned()
        })
        .collect()
}

#[test]
fn the_contract_lists_the_metrics_the_binaries_record() {
    let contract = contract_metrics();
    assert!(contract.len() >= 30, "contract.rs parsed: {contract:?}");
    assert_eq!(
        contract.get("CALLBACKS_TOTAL").map(String::as_str),
        Some("lastseen_callbacks_total")
    );
    // A name of two lines in the source is read whole.
    assert_eq!(
        contract
            .get("NOTIFICATION_PARTITIONS_DROPPED_TOTAL")
            .map(String::as_str),
        Some("lastseen_notification_partitions_dropped_total")
    );
    assert!(exported().contains("lastseen_dead_letters_total"));
}

#[test]
fn every_metric_in_the_alert_rules_and_the_dashboard_is_exported() {
    let exported = exported();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/lastseen.json",
    ] {
        let named = named_in(&read(&workspace().join(file)));
        assert!(named.len() >= 5, "{file} names only {named:?}");
        let unknown: Vec<&String> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no binary exports: {unknown:?}"
        );
    }
}

#[test]
fn histogram_suffixes_are_stripped_and_other_words_ignored() {
    let named = named_in(
        "rate(lastseen_upsert_seconds_bucket[5m]) lastseen_ids_stored_total up{job=\"lastseen-consumer\"}",
    );
    assert_eq!(
        named,
        BTreeSet::from([
            "lastseen_upsert_seconds".to_owned(),
            "lastseen_ids_stored_total".to_owned()
        ])
    );
}
