//! `/metrics` checked by independent parsers: Python's prometheus_client (classic text and
//! strict OpenMetrics) and `promtool check metrics`; hostile workflow names survive.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{Harness, KEY, has_command, require, scrape, test_start};
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{ExecStatus, Simulator};

const HOSTILE: &str = "Support \"VIP\" \\ desk\nsecond line – ñandú 🚀";

async fn harness() -> Harness {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow(HOSTILE, "active");
    let plain = sim.add_workflow("plain", "archived");
    let conv = sim.add_conversation();
    sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    sim.start_execution(&plain, Some(&conv), ExecStatus::Handoff);
    clock.advance(std::time::Duration::from_secs(100));
    // Webhooks and storage on, so that their families are served too.
    let dir = support::TempDir::new("exposition-storage");
    let path = dir.0.display().to_string();
    let mut h = Harness::new(
        sim,
        clock,
        &[
            "--webhook.listen-address",
            "127.0.0.1:0",
            "--storage.path",
            &path,
        ],
    )
    .await;
    h.poll().await;
    h
}

/// Runs `cmd` with `body` on its standard input.
fn pipe(cmd: &str, args: &[&str], body: &str) -> std::process::Output {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn python_parse(format: &str, body: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/exposition/parse.py");
    let out = pipe("python3", &[script, format], body);
    assert!(
        out.status.success(),
        "prometheus_client rejected the {format} body: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn python_available() -> bool {
    has_command("python3", &["-c", "import prometheus_client"])
}

fn workflow_names(samples: &serde_json::Value, name: &str) -> Vec<String> {
    samples
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .map(|s| s["labels"]["workflow"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn classic_text_parses_and_names_round_trip() {
    let h = harness().await;
    let (ct, body) = scrape(&h.exporter.router, None).await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(!body.contains("# EOF"));
    if !require(python_available(), "python3 with prometheus_client") {
        return;
    }
    let samples = python_parse("text", &body);
    let names = workflow_names(&samples, "kapso_workflow_info");
    assert!(names.contains(&HOSTILE.to_owned()), "{names:?}");
    let waiting = samples
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["name"] == "kapso_workflow_executions"
                && s["labels"]["workflow"] == HOSTILE
                && s["labels"]["status"] == "waiting"
        })
        .unwrap();
    assert_eq!(waiting["value"], 1.0);
    assert_eq!(waiting["type"], "gauge");
}

#[tokio::test]
async fn openmetrics_is_served_on_request_and_parses_strictly() {
    let h = harness().await;
    let (ct, body) = scrape(
        &h.exporter.router,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(body.ends_with("# EOF\n"));
    if !require(python_available(), "python3 with prometheus_client") {
        return;
    }
    let samples = python_parse("openmetrics", &body);
    let started: Vec<_> = samples
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["family"] == "kapso_workflow_executions_started")
        .collect();
    assert_eq!(started.len(), 2);
    assert!(
        started
            .iter()
            .all(|s| s["type"] == "counter"
                && s["name"] == "kapso_workflow_executions_started_total")
    );
    assert!(workflow_names(&samples, "kapso_workflow_info").contains(&HOSTILE.to_owned()));
}

#[tokio::test]
async fn promtool_lints_the_classic_text() {
    let h = harness().await;
    let (_, body) = scrape(&h.exporter.router, None).await;
    if !require(has_command("promtool", &["--version"]), "promtool") {
        return;
    }
    let out = pipe("promtool", &["check", "metrics"], &body);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(report.trim().is_empty(), "promtool findings:\n{report}");
}

/// Every metric family `/metrics` serves is in the README's metrics table with its type and
/// labels, and every row of the table is served: the documented contract cannot drift.
#[tokio::test]
async fn the_readme_documents_every_metric() {
    let h = harness().await;
    let body = h.scrape().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: std::collections::BTreeMap<String, (String, String)> = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Metrics"))
        .take_while(|l| !l.starts_with("## HTTP endpoints"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), (cells[2].to_owned(), cells[3].to_owned())))
        })
        .collect();
    let mut served = std::collections::BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            served.insert(name, kind.to_owned());
        }
    }
    for (name, kind) in &served {
        let (doc_kind, _) = table
            .get(name)
            .unwrap_or_else(|| panic!("{name} is served but not in the README's table"));
        assert!(
            doc_kind.starts_with(kind.as_str()),
            "{name}: {kind} vs {doc_kind}"
        );
    }
    // Every label a series carries is named in its row.
    let samples = support::parse(&body);
    for (name, labels) in samples.keys() {
        let (_, doc_labels) = table.get(name).unwrap_or_else(|| panic!("{name}"));
        for label in labels.keys().filter(|l| *l != "project") {
            assert!(
                doc_labels.contains(label.as_str()),
                "{name}: label {label} not documented"
            );
        }
    }
    // The README's table and the exporter's table of families agree row for row: name,
    // type and labels (every series but two carries `project`, which the table leaves out).
    let families: std::collections::BTreeMap<String, &kapso_exporter::metrics::Family> =
        kapso_exporter::metrics::FAMILIES
            .iter()
            .map(|f| (f.served_name(), *f))
            .collect();
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        families.keys().collect::<Vec<_>>(),
        "README rows vs metrics::FAMILIES"
    );
    for (name, f) in &families {
        let (doc_kind, doc_labels) = &table[name];
        let kind = match f.kind {
            kapso_exporter::metrics::Kind::Gauge => "gauge",
            kapso_exporter::metrics::Kind::Counter => "counter",
        };
        assert!(doc_kind.starts_with(kind), "{name}: {kind} vs {doc_kind}");
        let labels: Vec<&str> = f
            .labels
            .iter()
            .copied()
            .filter(|l| *l != "project")
            .collect();
        let doc: Vec<&str> = doc_labels
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(labels, doc, "{name}: labels");
    }
    // What is served is what the table says, help text included.
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            let f = kapso_exporter::metrics::FAMILIES
                .iter()
                .find(|f| f.name == name || f.served_name() == name)
                .unwrap_or_else(|| panic!("{name} is served but not in metrics::FAMILIES"));
            let escaped = f.help.replace('\\', "\\\\").replace('\n', "\\n");
            assert_eq!(help, escaped, "{name}: help");
        }
    }
    // Supervised tasks exist only in the running binary (`app::start`); `tests/it/supervision.rs`
    // and `tests/binary/cli.rs` check that family.
    for name in table.keys().filter(|n| *n != "kapso_exporter_task_up") {
        // Families with no series in this small world are still declared.
        assert!(
            served.contains_key(name),
            "{name} is documented but not served"
        );
    }
}
