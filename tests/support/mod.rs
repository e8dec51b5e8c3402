//! Shared test helpers: an exporter wired to a simulator on one manual clock, a scrape through
//! the real router, a small exposition parser, and the outside-program rule.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use clap::Parser;
use kapso_exporter::app::{self, Exporter};
use kapso_exporter::clock::Clock;
use kapso_exporter::config::{Cli, Config};
use kapso_exporter::kapso::RetryPolicy;
use kapso_exporter::simulator::{ExecStatus, GroundTruth, RunningSimulator, Simulator};
use time::OffsetDateTime;
use tower::ServiceExt;

pub const KEY: &str = "sk-test-0123456789abcdef";

/// 2026-11-24T12:00:00Z
pub fn test_start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_521_600).unwrap()
}

/// Fast retries for tests.
pub fn test_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

/// The webhook secret tests sign with (`KAPSO_WEBHOOK_SECRET` of [`config`]).
pub const WEBHOOK_SECRET: &str = "whsec-test-0123456789";

/// A config from command-line flags, with `KAPSO_API_KEY` = [`KEY`] and
/// `KAPSO_WEBHOOK_SECRET` = [`WEBHOOK_SECRET`].
pub fn config(args: &[&str]) -> Config {
    let mut all = vec!["kapso-exporter"];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).unwrap();
    Config::load(&cli, &|name| match name {
        "KAPSO_API_KEY" => Some(KEY.to_owned()),
        "KAPSO_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.to_owned()),
        _ => None,
    })
    .unwrap()
}

/// An exporter polling a simulator, both on one manual clock.
pub struct Harness {
    pub sim: Simulator,
    pub server: RunningSimulator,
    pub clock: Clock,
    pub exporter: Exporter,
}

impl Harness {
    /// `extra` flags are added after `--kapso.base-url`.
    pub async fn new(sim: Simulator, clock: Clock, extra: &[&str]) -> Harness {
        let server = sim.spawn().await.unwrap();
        let url = server.base_url.to_string();
        let mut args = vec![
            "--kapso.base-url",
            url.as_str(),
            "--kapso.rate-limit",
            "100000",
        ];
        args.extend_from_slice(extra);
        let exporter = app::build(&config(&args), clock.clone(), test_retry()).unwrap();
        Harness {
            sim,
            server,
            clock,
            exporter,
        }
    }

    /// One poll of every project; panics if one fails.
    pub async fn poll(&mut self) {
        for p in &mut self.exporter.pollers {
            p.poll_once().await.unwrap();
        }
    }

    pub async fn scrape(&self) -> String {
        scrape(&self.exporter.router, None).await.1
    }
}

/// GET /metrics through the router; returns the content type and body.
pub async fn scrape(router: &axum::Router, accept: Option<&str>) -> (String, String) {
    let mut req = Request::get("/metrics");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (ct, String::from_utf8(body.to_vec()).unwrap())
}

/// Samples keyed by name and sorted labels.
pub type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses the classic text format (enough for assertions; the independent parsers are the
/// Python client and promtool).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("bad line {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut key = String::new();
            let mut end = 0;
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'));
                        let mut value = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => match chars.next().unwrap().1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &r[end..];
        }
        let value = rest.split_whitespace().next().unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        assert!(
            out.insert((name.to_owned(), labels), value).is_none(),
            "duplicate series {line}"
        );
    }
    out
}

/// The value of one series, if present.
pub fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples.get(&(name.to_owned(), labels)).copied()
}

/// All series of one metric.
pub fn series<'a>(
    samples: &'a Samples,
    name: &'a str,
) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
    samples
        .iter()
        .filter(move |((n, _), _)| n == name)
        .map(|((_, l), v)| (l, *v))
}

/// The outside-program rule: missing tools fail under `CI=true`, else skip visibly.
/// Returns false when the caller should return (skip).
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required when CI=true");
    }
    // Straight to the process's stderr: `eprintln!` is captured by the test harness and
    // the skip would not show in plain `cargo test` output.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what} is not available");
    false
}

/// Whether a command runs.
pub fn has_command(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The statuses an execution can be stalled in.
pub const STALLABLE: [ExecStatus; 2] = [ExecStatus::Waiting, ExecStatus::Handoff];
/// The default `--metrics.stall-thresholds`, as the README documents them.
pub const THRESHOLDS: [u64; 6] = [60, 300, 900, 3600, 14400, 86400];
/// Rows per page of the API's lists.
pub const PAGE: u64 = 100;

/// The fewest requests that observe a project: the workflow list (`GET /workflows` has no
/// paging), every page of every (workflow, live status) list, and one request per workflow
/// with executions that finished since the previous poll (their outcome cannot be known
/// without asking).
pub fn lower_bound(truth: &GroundTruth, finished_since: &BTreeMap<String, u64>) -> u64 {
    let workflows = 1;
    let pages: u64 = truth.live.values().map(|n| n.div_ceil(PAGE).max(1)).sum();
    let classify = finished_since.values().filter(|n| **n > 0).count() as u64;
    workflows + pages + classify
}

/// The most requests the README's rule allows one poll: the workflow list, every page of
/// every (workflow, live status) list, plus at the exporter's first poll one `created_after`
/// listing per workflow, and later at most 3 more requests per workflow where executions
/// started or finished since the previous poll (`active`: executions per workflow), plus
/// `extra_pages` pages past the first 100 rows of those listings.
pub fn ceiling(
    truth: &GroundTruth,
    active: &BTreeMap<String, u64>,
    first_poll: bool,
    extra_pages: u64,
) -> u64 {
    let pages: u64 = truth.live.values().map(|n| n.div_ceil(PAGE).max(1)).sum();
    let extra = if first_poll {
        truth.workflows.len() as u64
    } else {
        3 * active.values().filter(|n| **n > 0).count() as u64
    };
    1 + pages + extra + extra_pages
}

/// Executions started or finished per workflow between two ground truths.
pub fn activity_between(before: &GroundTruth, after: &GroundTruth) -> BTreeMap<String, u64> {
    let mut out = finished_between(before, after);
    for (wf, n) in &after.started {
        let was = before.started.get(wf).copied().unwrap_or(0);
        *out.entry(wf.clone()).or_default() += n - was;
    }
    out
}

/// Executions finished per workflow between two ground truths.
pub fn finished_between(before: &GroundTruth, after: &GroundTruth) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ((wf, s), n) in &after.finished {
        let was = before.finished.get(&(wf.clone(), *s)).copied().unwrap_or(0);
        *out.entry(wf.clone()).or_default() += n - was;
    }
    out
}

/// The step a step series names (`workflow_id`, `step`, `step_type`), as the simulator's truth
/// keys it.
pub fn step_truth(labels: &BTreeMap<String, String>) -> kapso_exporter::simulator::StepTruth {
    kapso_exporter::simulator::StepTruth {
        workflow_id: labels["workflow_id"].clone(),
        step: labels["step"].clone(),
        step_type: labels["step_type"].clone(),
    }
}
