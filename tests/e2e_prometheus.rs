//! End-to-end proof of the shipped dashboards and alerts: the exporter polls simulated Kapso
//! projects, a real Prometheus (Debian's `prometheus`) scrapes it and evaluates the rules of
//! `alerts/`, and a real Alertmanager (`prometheus-alertmanager`) routes the alerts with the
//! routing tree of `deploy/alertmanager.yml` to a webhook receiver in this test.
//!
//! The scenario makes every panel of both dashboards show data (not only zeros) and every alert
//! fire. The exporter runs in process, with its webhook listener on, with seven projects:
//!
//! - `shop` (simulator A, project mode): in workflow Onboarding an execution `waiting` with no
//!   event for 3 days (`KapsoExecutionsStalledWaiting`), in Escalation a `handoff` silent for 2
//!   hours (`KapsoExecutionsHandoffUnattended`) and a new handoff, in Payments 7 executions
//!   started of which 6 fail and 1 ends (`KapsoWorkflowExecutionsFailing`, both severities).
//! - `support` (simulator A, conversation mode on the two stalled conversations): the
//!   per-conversation series.
//! - `budget` (simulator B, budget 60 per minute, polled every second with one request per poll):
//!   `KapsoAPIBudgetNearlyExhausted`.
//! - `wrongkey` (simulator A with a key it rejects, 401): `KapsoAPIKeyRejected` and
//!   `KapsoProjectNotReady`; the test also posts it webhook deliveries signed with a wrong
//!   secret, and none with the right one (`KapsoWebhookSignaturesRejected`).
//! - `throttled` (a fake API answering every request with 429): `KapsoAPIRateLimited` and
//!   `KapsoProjectNotReady`.
//! - `vanishing` (simulator C, failing every request once its first poll was scraped):
//!   `KapsoDataStale`.
//! - `hooked` (simulator D, polled every hour: only its first poll runs during the test): in
//!   workflow Refunds 5 executions fail after that poll, and simulator D's webhook sender,
//!   registered with the exporter's webhook URL, delivers their signed
//!   `workflow.execution.failed` events; `KapsoWorkflowExecutionsFailing` (both severities) fires
//!   from them alone, which the test checks by the project's poll count at the end.
//!
//! Job `kapso` has a second target on a closed port (`KapsoExporterDown`). The test also checks
//! that no health alert fires about the healthy projects or the running exporter.
//!
//! The stalled executions are created while the shared manual clock is set days (hours) in the
//! past; then the clock is set to real time and kept there by a background task, because
//! Prometheus evaluates `time()` on the real clock.
//!
//! **What is rewritten for the test, and why.** Prometheus loads a copy of `alerts/*.yml` in which
//! only the `for:` durations are replaced by [`FOR`]: the real ones (5 to 30 minutes) exist to
//! ride out restarts and one-off errors and would make the test last half an hour. Expressions,
//! range windows, labels and `keep_firing_for` are unchanged (the test checks that the copy
//! differs in nothing else). Alertmanager gets `deploy/alertmanager.yml` with the webhook URLs
//! pointing at this test, `group_wait`/`group_interval` of 1 s instead of minutes, and without
//! the business-hours `active_time_intervals`, which would make the handoff route depend on the
//! time of day the test runs. The dashboards' `$__rate_interval` becomes 15s (Grafana's value is
//! at least four scrape intervals, here 1 s), `$__range` 1h, and the multi-value variables their
//! "All" value.
//!
//! Every wait has a deadline; every process is killed when the test ends, also on panic.

#![allow(clippy::unwrap_used)]

mod grafana;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use clap::Parser;
use kapso_exporter::app;
use kapso_exporter::clock::Clock;
use kapso_exporter::config::{Cli, Config};
use kapso_exporter::kapso::models::format_timestamp;
use kapso_exporter::simulator::{EVENT_FAILED, ExecStatus, Faults, Simulator, SimulatorConfig};
use kapso_exporter::webhook::WebhookSecret;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use support::{KEY, TempDir, has_command, require};

/// The `for:` of every alert in the rule copy Prometheus loads.
const FOR: &str = "2s";
/// Everything (start-up, every panel, every alert, every notification) must happen by then.
const DEADLINE: Duration = Duration::from_secs(100);
const WRONG_KEY: &str = "sk-revoked-0000000000000000";
/// The webhook secret of every project (`webhook_secret_env` of the config file's defaults).
const WEBHOOK_SECRET: &str = "whsec-e2e-0123456789";
/// The secret of a misconfigured (or forged) webhook sender.
const WRONG_WEBHOOK_SECRET: &str = "whsec-stale-9876543210";

// ------------------------------------------------------------------------------------------------
// Processes, temp dirs, tasks
// ------------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (and reaped) on drop; its output goes to a log file.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(program: &str, args: &[String], dir: &Path) -> Process {
        let log = dir.join(format!("{}.log", program.replace('/', "_")));
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {program}: {e}"));
        Process {
            name: program.to_owned(),
            child,
            log,
        }
    }

    /// The last lines of the process's output, for failure messages.
    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "--- last lines of {}:\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tokio task aborted on drop.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until `base`/-/ready answers 200 (Prometheus and Alertmanager both have it).
async fn wait_ready(http: &reqwest::Client, base: &str, process: &Process, deadline: Instant) {
    let url = format!("{base}/-/ready");
    until(deadline, &url, || async {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{}\n{}", r.status(), process.tail())),
            Err(e) => Err(format!("{e}\n{}", process.tail())),
        }
    })
    .await;
}

/// A port on 127.0.0.1 that was free a moment ago (for the programs that need a port number
/// on their command line).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Serves `router` on 127.0.0.1 with an ephemeral port until the task is dropped.
async fn serve(router: axum::Router) -> (SocketAddr, Task) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, Task(task))
}

/// Polls `check` every 250 ms until it returns `Ok`, failing with its last error at `deadline`.
async fn until<T, F, Fut>(deadline: Instant, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}:\n{last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Fakes: a Kapso API that always rate limits, and the Alertmanager webhook receiver
// ------------------------------------------------------------------------------------------------

/// Answers every request with 429 and `Retry-After: 1`, like a throttling gateway in front of
/// Kapso. Without `X-RateLimit-Remaining: 0` (which the simulator sends with its 429s, and which
/// rightly makes the exporter wait for its oldest request to leave the 60 s window) the exporter
/// retries after 1 s, so 429s keep coming within the test's time.
async fn always_429() -> impl IntoResponse {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, "1"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        r#"{"error":"Rate limit exceeded. Retry after 1 seconds."}"#,
    )
}

/// One webhook notification: the path it was posted to and its JSON body.
type Notifications = Arc<Mutex<Vec<(String, Json)>>>;

async fn webhook_receiver() -> (SocketAddr, Notifications, Task) {
    let received: Notifications = Arc::default();
    let store = received.clone();
    let router = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let store = store.clone();
        async move {
            let json = serde_json::from_slice(&body).unwrap_or(Json::Null);
            store.lock().unwrap().push((uri.path().to_owned(), json));
            StatusCode::OK
        }
    });
    let (addr, task) = serve(router).await;
    (addr, received, task)
}

// ------------------------------------------------------------------------------------------------
// Prometheus HTTP API
// ------------------------------------------------------------------------------------------------

struct Prom {
    http: reqwest::Client,
    base: String,
}

impl Prom {
    async fn api(&self, path: &str, query: &[(&str, String)]) -> Result<Json, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status();
        let body: Json = response
            .json()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if !status.is_success() || body["status"] != "success" {
            return Err(format!("GET {path} {query:?}: {status} {body}"));
        }
        Ok(body["data"].clone())
    }

    /// The result of an instant query.
    async fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let data = self
            .api("/api/v1/query", &[("query", expr.to_owned())])
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The result of a range query over [`from`, now], one point per second.
    async fn query_range(&self, expr: &str, from: f64) -> Result<Vec<Json>, String> {
        let now = unix_now();
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_owned()),
                    ("start", format!("{from:.3}")),
                    ("end", format!("{now:.3}")),
                    ("step", "1".to_owned()),
                ],
            )
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `expr` returns at least one series.
    async fn wait_for(&self, deadline: Instant, expr: &str) -> Vec<Json> {
        until(deadline, expr, || async {
            let result = self.query(expr).await?;
            if result.is_empty() {
                Err("no data".to_owned())
            } else {
                Ok(result)
            }
        })
        .await
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The sample values of an instant (`value`) or range (`values`) result.
fn sample_values(series: &Json) -> Vec<f64> {
    let parse = |pair: &Json| pair[1].as_str().and_then(|v| v.parse::<f64>().ok());
    match series.get("values").and_then(Json::as_array) {
        Some(points) => points.iter().filter_map(parse).collect(),
        None => parse(&series["value"]).into_iter().collect(),
    }
}

fn label<'a>(series: &'a Json, name: &str) -> &'a str {
    series["metric"][name]
        .as_str()
        .or(series["labels"][name].as_str())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// Configuration files
// ------------------------------------------------------------------------------------------------

/// Copies of `alerts/*.yml` with every `for:` replaced by [`FOR`]; nothing else may change.
fn rewrite_rules(into: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(root().join("alerts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no alerts/*.yml");
    for path in entries {
        let original = fs::read_to_string(&path).unwrap();
        let rewritten: String = original
            .lines()
            .map(|line| {
                let body = line.trim_start();
                if body.starts_with("for:") {
                    let indent = &line[..line.len() - body.len()];
                    format!("{indent}for: {FOR}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        // The copy must equal the original with only the `for` values replaced.
        let mut expected: Yaml = serde_norway::from_str(&original).unwrap();
        for group in expected["groups"].as_sequence_mut().unwrap() {
            for rule in group["rules"].as_sequence_mut().unwrap() {
                if let Some(m) = rule.as_mapping_mut() {
                    if let Some(v) = m.get_mut("for") {
                        *v = Yaml::String(FOR.to_owned());
                    }
                }
            }
        }
        let actual: Yaml = serde_norway::from_str(&rewritten).unwrap();
        assert_eq!(
            actual,
            expected,
            "the rewritten copy of {} differs in more than `for:`",
            path.display()
        );
        let target = into.join(path.file_name().unwrap());
        fs::write(&target, rewritten).unwrap();
        files.push(target);
    }
    files
}

/// Every alerting rule of `alerts/*.yml` as (alert name, severity).
fn alert_rules() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(root().join("alerts")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yml") {
            continue;
        }
        let doc: Yaml = serde_norway::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        for group in doc["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                if let Some(name) = rule.get("alert").and_then(Yaml::as_str) {
                    let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
                    out.insert((name.to_owned(), severity.to_owned()));
                }
            }
        }
    }
    out
}

/// `deploy/alertmanager.yml` made fast and pointed at the webhook receiver (see the module doc).
fn rewrite_alertmanager(webhook: SocketAddr) -> String {
    let path = root().join("deploy/alertmanager.yml");
    let mut doc: Yaml = serde_norway::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    fn fast(route: &mut Yaml) {
        let Some(m) = route.as_mapping_mut() else {
            return;
        };
        for key in ["group_wait", "group_interval"] {
            if m.contains_key(key) {
                m.insert(key.into(), "1s".into());
            }
        }
        m.remove("active_time_intervals");
        if let Some(routes) = m.get_mut("routes").and_then(Yaml::as_sequence_mut) {
            routes.iter_mut().for_each(fast);
        }
    }
    fast(&mut doc["route"]);
    doc["route"]["group_wait"] = "1s".into();
    doc["route"]["group_interval"] = "1s".into();
    let mut urls = 0;
    for receiver in doc["receivers"].as_sequence_mut().unwrap() {
        for hook in receiver
            .get_mut("webhook_configs")
            .and_then(Yaml::as_sequence_mut)
            .map_or(&mut [][..], Vec::as_mut_slice)
        {
            let url = url::Url::parse(hook["url"].as_str().unwrap()).unwrap();
            hook["url"] = format!("http://{webhook}{}", url.path()).into();
            urls += 1;
        }
    }
    assert!(urls > 0, "deploy/alertmanager.yml has no webhook receiver");
    serde_norway::to_string(&doc).unwrap()
}

fn prometheus_config(rules: &[PathBuf], targets: &[String], alertmanager: SocketAddr) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap();
    let rules: Vec<String> = rules
        .iter()
        .map(|p| quote(&p.display().to_string()))
        .collect();
    let targets: Vec<String> = targets.iter().map(|t| quote(t)).collect();
    format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [{rules}]
alerting:
  alertmanagers:
    - static_configs:
        - targets: [\"{alertmanager}\"]
scrape_configs:
  - job_name: kapso
    static_configs:
      - targets: [{targets}]
",
        rules = rules.join(", "),
        targets = targets.join(", "),
    )
}

/// A simulator with no data, answering with `X-RateLimit-*` headers for `rate_limit` per minute.
fn quiet_simulator(clock: &Clock, rate_limit: u32) -> Simulator {
    let config = SimulatorConfig {
        api_key: KEY.to_owned(),
        workflows: 0,
        conversations: 0,
        live_executions: 0,
        terminal_executions: 0,
        seed: 7,
        rate_limit_per_minute: Some(rate_limit),
        latency: Duration::ZERO,
        variance: Default::default(),
    };
    Simulator::new(config, clock.clone())
}

fn alertmanager_program() -> Option<&'static str> {
    ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|p| has_command(p, &["--version"]))
}

// ------------------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------------------

/// One panel target or variable query, ready to run.
struct PanelQuery {
    dashboard: String,
    /// The panel's title, or `variable <name>`.
    panel: String,
    expr: String,
    instant: bool,
}

fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let dashboard: Json = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Multi-value variables take their "All" value, as the dashboards open by default.
        let all: BTreeMap<String, String> = grafana::variables(&dashboard)
            .iter()
            .filter(|v| v["includeAll"] == true)
            .map(|v| {
                let name = v["name"].as_str().unwrap().to_owned();
                (name, v["allValue"].as_str().unwrap_or(".*").to_owned())
            })
            .collect();
        let value = |var: &str| -> String {
            match var {
                "__rate_interval" => "15s".to_owned(),
                "__interval" => "1s".to_owned(),
                "__range" => "1h".to_owned(),
                "__range_s" => "3600".to_owned(),
                other => all
                    .get(other)
                    .cloned()
                    .unwrap_or_else(|| panic!("{name}: no value for variable ${other}")),
            }
        };
        // Each `label_values(selector, label)` variable must offer values: the selector's
        // series must have the label.
        for var in grafana::variables(&dashboard) {
            let query = var["query"].as_str().unwrap_or_default();
            let Some(args) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
            else {
                continue;
            };
            let (selector, label) = args.rsplit_once(',').unwrap();
            out.push(PanelQuery {
                dashboard: name.clone(),
                panel: format!("variable {}", var["name"]),
                expr: format!(
                    "count by ({}) ({})",
                    label.trim(),
                    grafana::substitute(selector, &value)
                ),
                instant: true,
            });
        }
        for panel in grafana::panels(&dashboard) {
            for target in panel["targets"].as_array().map_or(&[][..], Vec::as_slice) {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                out.push(PanelQuery {
                    dashboard: name.clone(),
                    panel: panel["title"].as_str().unwrap_or("?").to_owned(),
                    expr: grafana::substitute(expr, &value),
                    instant: target["instant"] == true,
                });
            }
        }
    }
    assert!(out.len() > 20, "only {} panel targets found", out.len());
    out
}

/// An alert name, its severity and labels it must carry.
type Expected = (&'static str, &'static str, Vec<(&'static str, String)>);

/// What each alert must carry when it fires, beyond its name and severity.
fn expected_alerts(
    exporter: &str,
    closed: &str,
    workflows: &BTreeMap<&str, String>,
    refunds: &str,
) -> Vec<Expected> {
    let s = |v: &str| v.to_owned();
    vec![
        (
            "KapsoExporterDown",
            "critical",
            vec![("instance", s(closed)), ("job", s("kapso"))],
        ),
        (
            "KapsoProjectNotReady",
            "warning",
            vec![("project", s("wrongkey")), ("instance", s(exporter))],
        ),
        (
            "KapsoProjectNotReady",
            "warning",
            vec![("project", s("throttled"))],
        ),
        (
            "KapsoDataStale",
            "warning",
            vec![("project", s("vanishing"))],
        ),
        (
            "KapsoAPIKeyRejected",
            "critical",
            vec![("project", s("wrongkey"))],
        ),
        (
            "KapsoAPIRateLimited",
            "warning",
            vec![("project", s("throttled"))],
        ),
        (
            "KapsoAPIBudgetNearlyExhausted",
            "info",
            vec![("project", s("budget"))],
        ),
        (
            "KapsoWorkflowExecutionsFailing",
            "critical",
            vec![
                ("project", s("shop")),
                ("workflow", s("Payments")),
                ("workflow_id", workflows["Payments"].clone()),
            ],
        ),
        (
            "KapsoWorkflowExecutionsFailing",
            "warning",
            vec![
                ("project", s("shop")),
                ("workflow", s("Payments")),
                ("workflow_id", workflows["Payments"].clone()),
            ],
        ),
        // From webhooks only.
        (
            "KapsoWorkflowExecutionsFailing",
            "critical",
            vec![
                ("project", s("hooked")),
                ("workflow", s("Refunds")),
                ("workflow_id", s(refunds)),
                ("instance", s(exporter)),
            ],
        ),
        (
            "KapsoWorkflowExecutionsFailing",
            "warning",
            vec![
                ("project", s("hooked")),
                ("workflow", s("Refunds")),
                ("workflow_id", s(refunds)),
            ],
        ),
        (
            "KapsoWebhookSignaturesRejected",
            "warning",
            vec![("project", s("wrongkey")), ("instance", s(exporter))],
        ),
        (
            "KapsoExecutionsStalledWaiting",
            "warning",
            vec![
                ("project", s("shop")),
                ("workflow", s("Onboarding")),
                ("workflow_id", workflows["Onboarding"].clone()),
                ("status", s("waiting")),
                ("instance", s(exporter)),
                ("job", s("kapso")),
            ],
        ),
        (
            "KapsoExecutionsHandoffUnattended",
            "warning",
            vec![
                ("project", s("shop")),
                ("workflow", s("Escalation")),
                ("workflow_id", workflows["Escalation"].clone()),
                ("status", s("handoff")),
            ],
        ),
    ]
}

fn matches(alert: &Json, name: &str, severity: &str, labels: &[(&str, String)]) -> bool {
    label(alert, "alertname") == name
        && label(alert, "severity") == severity
        && labels.iter().all(|(k, v)| label(alert, k) == v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_show_data_and_alerts_fire_through_alertmanager() {
    let alertmanager = alertmanager_program();
    if !require(has_command("prometheus", &["--version"]), "prometheus")
        || !require(alertmanager.is_some(), "prometheus-alertmanager")
    {
        return;
    }
    let alertmanager = alertmanager.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let dir = TempDir::new("kapso-e2e-prometheus");

    // --- The Kapso side, built on a clock set in the past.
    let now = OffsetDateTime::now_utc();
    let clock = Clock::manual(now - Duration::from_secs(3 * 86_400));
    let shop = quiet_simulator(&clock, 100_000);
    let mut workflows = BTreeMap::new();
    for name in ["Onboarding", "Escalation", "Payments"] {
        workflows.insert(name, shop.add_workflow(name, "active"));
    }
    let waiting_conv = shop.add_conversation();
    shop.start_execution(
        &workflows["Onboarding"],
        Some(&waiting_conv),
        ExecStatus::Waiting,
    );
    clock.set(now - Duration::from_secs(2 * 3600));
    let handoff_conv = shop.add_conversation();
    shop.start_execution(
        &workflows["Escalation"],
        Some(&handoff_conv),
        ExecStatus::Handoff,
    );
    // From here on the clock follows real time.
    clock.set(OffsetDateTime::now_utc());
    let follower = clock.clone();
    let _follow = Task(tokio::spawn(async move {
        loop {
            follower.set(OffsetDateTime::now_utc());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    let budget = quiet_simulator(&clock, 1000);
    let vanishing = quiet_simulator(&clock, 100_000);
    let hooks = quiet_simulator(&clock, 100_000);
    let refunds = hooks.add_workflow("Refunds", "active");
    let shop_api = shop.spawn().await.unwrap();
    let budget_api = budget.spawn().await.unwrap();
    let vanishing_api = vanishing.spawn().await.unwrap();
    let hooks_api = hooks.spawn().await.unwrap();
    let (throttled_addr, _throttled) = serve(axum::Router::new().fallback(always_429)).await;

    // --- The exporter, in process, on the same clock.
    let config_file = dir.0.join("kapso-exporter.yml");
    fs::write(
        &config_file,
        format!(
            "web:
  listen_address: 127.0.0.1:0
webhook:
  listen_address: 127.0.0.1:0
poll:
  interval: 2s
kapso:
  timeout: 900ms
  api_key_env: KEY
  webhook_secret_env: WEBHOOK_SECRET
  rate_limit: 100000
projects:
  - name: shop
    base_url: {shop}
  - name: support
    base_url: {shop}
    conversation_ids: [{waiting_conv}, {handoff_conv}]
  - name: budget
    base_url: {budget}
    rate_limit: 60
    poll_interval: 1s
    timeout: 500ms
  - name: wrongkey
    base_url: {shop}
    api_key_env: WRONG_KEY
  - name: throttled
    base_url: http://{throttled_addr}/platform/v1
    rate_limit: 1000
  - name: vanishing
    base_url: {vanishing}
  - name: hooked
    base_url: {hooks}
    poll_interval: 1h
",
            shop = shop_api.base_url,
            budget = budget_api.base_url,
            vanishing = vanishing_api.base_url,
            hooks = hooks_api.base_url,
        ),
    )
    .unwrap();
    let cli = Cli::try_parse_from([
        "kapso-exporter",
        "--config.file",
        config_file.to_str().unwrap(),
    ])
    .unwrap();
    let config = Config::load(&cli, &|name| match name {
        "KEY" => Some(KEY.to_owned()),
        "WRONG_KEY" => Some(WRONG_KEY.to_owned()),
        "WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.to_owned()),
        _ => None,
    })
    .unwrap();
    let exporter = app::start(config, clock.clone()).await.unwrap();
    let exporter_target = exporter.addr.to_string();
    // Simulator D pushes its failures to the exporter's webhook listener, as Kapso would.
    let hook_addr = exporter.webhook_addr.expect("the webhook listener is on");
    assert!(hook_addr.ip().is_loopback(), "{hook_addr}");
    hooks.register_webhook(
        &format!("http://{hook_addr}/webhooks/kapso/hooked"),
        WEBHOOK_SECRET,
        &[EVENT_FAILED],
    );
    let _sender = Task(hooks.run_webhook_delivery(Duration::from_millis(250)));
    let closed_target = format!("127.0.0.1:{}", free_port());

    // --- Alertmanager and Prometheus.
    let (webhook, notifications, _webhook_task) = webhook_receiver().await;
    let am_port = free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().unwrap();
    fs::create_dir_all(dir.0.join("am-data")).unwrap();
    fs::write(
        dir.0.join("alertmanager.yml"),
        rewrite_alertmanager(webhook),
    )
    .unwrap();
    let am = Process::start(
        alertmanager,
        &[
            "--config.file=alertmanager.yml".to_owned(),
            "--storage.path=am-data".to_owned(),
            format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=".to_owned(),
            "--log.level=warn".to_owned(),
        ],
        &dir.0,
    );
    let rules_dir = dir.0.join("rules");
    fs::create_dir_all(&rules_dir).unwrap();
    let rules = rewrite_rules(&rules_dir);
    fs::write(
        dir.0.join("prometheus.yml"),
        prometheus_config(
            &rules,
            &[exporter_target.clone(), closed_target.clone()],
            am_addr,
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let prometheus = Process::start(
        "prometheus",
        &[
            "--config.file=prometheus.yml".to_owned(),
            "--storage.tsdb.path=prom-data".to_owned(),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--log.level=warn".to_owned(),
        ],
        &dir.0,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&http, &format!("http://{am_addr}"), &am, deadline).await;
    wait_ready(
        &http,
        &format!("http://127.0.0.1:{prom_port}"),
        &prometheus,
        deadline,
    )
    .await;
    let prom = Prom {
        http: http.clone(),
        base: format!("http://127.0.0.1:{prom_port}"),
    };
    let started_at = unix_now();

    // --- The scenario. First Prometheus must have seen the counters at zero, so that what
    // happens next is an increase.
    prom.wait_for(
        deadline,
        r#"kapso_workflow_executions_started_total{project="shop", workflow="Payments"} == 0"#,
    )
    .await;
    let payments: Vec<String> = (0..7)
        .map(|_| shop.start_execution(&workflows["Payments"], None, ExecStatus::Running))
        .collect();
    let newcomer = shop.start_execution(&workflows["Escalation"], None, ExecStatus::Running);
    prom.wait_for(
        deadline,
        r#"kapso_workflow_executions{project="shop", workflow="Payments", status="running"} == 7"#,
    )
    .await;
    for (i, id) in payments.iter().enumerate() {
        let status = if i == 0 {
            ExecStatus::Ended
        } else {
            ExecStatus::Failed
        };
        shop.set_status(id, status);
    }
    shop.set_status(&newcomer, ExecStatus::Handoff);
    // The vanishing project's API fails every request once Prometheus saw it ready.
    prom.wait_for(deadline, r#"kapso_project_ready{project="vanishing"} == 1"#)
        .await;
    vanishing.set_faults(Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    });
    // `hooked`: once Prometheus saw its failure counter at zero after its first (and, during
    // the test, only) poll, 5 executions of Refunds fail and only webhooks tell of them.
    prom.wait_for(
        deadline,
        r#"kapso_workflow_executions_finished_total{project="hooked", workflow="Refunds", status="failed"} == 0"#,
    )
    .await;
    let refund_execs: Vec<String> = (0..5)
        .map(|_| hooks.start_execution(&refunds, None, ExecStatus::Running))
        .collect();
    for id in &refund_execs {
        hooks.set_status(id, ExecStatus::Failed);
    }
    // `wrongkey` only gets deliveries signed with a wrong secret.
    prom.wait_for(
        deadline,
        r#"kapso_webhook_requests_total{project="wrongkey", result="invalid_signature"} == 0"#,
    )
    .await;
    for i in 0..4 {
        let body = serde_json::to_vec(&serde_json::json!({
            "event": EVENT_FAILED,
            "occurred_at": format_timestamp(OffsetDateTime::now_utc()),
            "workflow_id": "00000000-0000-4000-8000-000000000001",
            "workflow_execution_id": format!("00000000-0000-4000-8000-00000000010{i}"),
        }))
        .unwrap();
        let response = http
            .post(format!("http://{hook_addr}/webhooks/kapso/wrongkey"))
            .header("content-type", "application/json")
            .header("x-webhook-event", EVENT_FAILED)
            .header(
                "x-webhook-signature",
                WebhookSecret::new(WRONG_WEBHOOK_SECRET).sign(&body),
            )
            .header("x-idempotency-key", format!("e2e-forged-{i}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The accepted deliveries are visible in Prometheus.
    prom.wait_for(
        deadline,
        r#"kapso_webhook_requests_total{project="hooked", result="accepted"} == 5"#,
    )
    .await;

    // --- Every panel target returns data, and not only zeros.
    let mut pending = panel_queries();
    let mut last_results: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        let mut still = Vec::new();
        for (i, q) in pending.into_iter().enumerate() {
            let result = if q.instant {
                prom.query(&q.expr).await
            } else {
                prom.query_range(&q.expr, started_at).await
            };
            let shows = match &result {
                Ok(series) => series
                    .iter()
                    .flat_map(sample_values)
                    .any(|v| v.is_finite() && v != 0.0),
                Err(_) => false,
            };
            if !shows {
                last_results.insert(i, format!("{result:?}"));
                still.push(q);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let report: Vec<String> = pending
                .iter()
                .map(|q| format!("{} {:?}: {}", q.dashboard, q.panel, q.expr))
                .collect();
            panic!(
                "these panels show no data (or only zeros):\n{}\n{}",
                report.join("\n"),
                prometheus.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // --- Every alert of the rule files fires in Prometheus, with the expected labels.
    let expected = expected_alerts(&exporter_target, &closed_target, &workflows, &refunds);
    let covered: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(n, s, _)| ((*n).to_owned(), (*s).to_owned()))
        .collect();
    assert_eq!(
        covered,
        alert_rules(),
        "the scenario must cover exactly the alerts of alerts/*.yml"
    );
    let firing = until(deadline, "every alert to fire in Prometheus", || async {
        let data = prom.api("/api/v1/alerts", &[]).await?;
        let firing: Vec<Json> = data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|(n, s, l)| !firing.iter().any(|a| matches(a, n, s, l)))
            .map(|(n, s, l)| format!("{n} {s} {l:?}"))
            .collect();
        if missing.is_empty() {
            Ok(firing)
        } else {
            let names: Vec<String> = firing.iter().map(|a| a["labels"].to_string()).collect();
            Err(format!(
                "not firing:\n{}\nfiring:\n{}",
                missing.join("\n"),
                names.join("\n")
            ))
        }
    })
    .await;
    // No false alarm about the healthy projects or the running exporter. (The stall alerts of
    // `support` are true: it watches the conversations of the stalled executions.)
    for alert in &firing {
        let name = label(alert, "alertname");
        let project = label(alert, "project");
        let right = match name {
            n if n.starts_with("KapsoExecutions") => ["shop", "support"].contains(&project),
            n if n.starts_with("KapsoWorkflow") => ["shop", "hooked"].contains(&project),
            "KapsoExporterDown" => label(alert, "instance") == closed_target,
            "KapsoAPIBudgetNearlyExhausted" => project == "budget",
            "KapsoWebhookSignaturesRejected" => project == "wrongkey",
            _ => !["shop", "support", "budget", "hooked"].contains(&project),
        };
        assert!(right, "false alarm: {}", alert["labels"]);
    }

    // --- The stall and failure alerts reach the receivers deploy/alertmanager.yml routes them to.
    let find = |name: &str, severity: &str, project: &str| {
        expected
            .iter()
            .find(|(n, s, l)| {
                *n == name
                    && *s == severity
                    && l.iter().any(|(k, v)| *k == "project" && v == project)
            })
            .unwrap()
    };
    let delivered = [
        (
            "/kapso/chat",
            find("KapsoExecutionsStalledWaiting", "warning", "shop"),
        ),
        (
            "/kapso/support",
            find("KapsoExecutionsHandoffUnattended", "warning", "shop"),
        ),
        (
            "/kapso/pager",
            find("KapsoWorkflowExecutionsFailing", "critical", "shop"),
        ),
        (
            "/kapso/pager",
            find("KapsoWorkflowExecutionsFailing", "critical", "hooked"),
        ),
        (
            "/kapso/chat",
            find("KapsoWebhookSignaturesRejected", "warning", "wrongkey"),
        ),
    ];
    until(deadline, "the webhook notifications", || async {
        let got = notifications.lock().unwrap().clone();
        let missing: Vec<String> = delivered
            .iter()
            .filter(|(path, (n, s, l))| {
                !got.iter().any(|(p, body)| {
                    p == path
                        && body["status"] == "firing"
                        && body["alerts"].as_array().is_some_and(|alerts| {
                            alerts
                                .iter()
                                .any(|a| a["status"] == "firing" && matches(a, n, s, l))
                        })
                })
            })
            .map(|(path, (n, s, l))| format!("{n} {s} {l:?} at {path}"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            let paths: Vec<String> = got
                .iter()
                .map(|(p, b)| format!("{p}: {}", b["commonLabels"]))
                .collect();
            Err(format!(
                "not delivered: {missing:?}\nreceived:\n{}\n{}",
                paths.join("\n"),
                am.tail()
            ))
        }
    })
    .await;
    // Each notification carries the annotations a human needs.
    for (_, body) in notifications.lock().unwrap().iter() {
        for alert in body["alerts"].as_array().map_or(&[][..], Vec::as_slice) {
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    alert["annotations"][key]
                        .as_str()
                        .is_some_and(|v| !v.is_empty()),
                    "notification without {key}: {alert}"
                );
            }
        }
    }
    // The critical failure alert inhibits the warning one of the same workflow.
    let am_api = format!("http://{am_addr}/api/v2/alerts");
    for project in ["shop", "hooked"] {
        let what = format!("the warning failure alert of {project} to be inhibited");
        until(deadline, &what, || async {
            let alerts: Json = http
                .get(&am_api)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let warning = find("KapsoWorkflowExecutionsFailing", "warning", project);
            let inhibited = alerts.as_array().is_some_and(|list| {
                list.iter().any(|a| {
                    matches(a, warning.0, warning.1, &warning.2)
                        && a["status"]["state"] == "suppressed"
                        && a["status"]["inhibitedBy"]
                            .as_array()
                            .is_some_and(|by| !by.is_empty())
                })
            });
            if inhibited {
                Ok(())
            } else {
                Err(format!("Alertmanager's alerts: {alerts}"))
            }
        })
        .await;
    }
    // `hooked`'s failures reached Prometheus through webhooks only: no poll ran after its
    // first, and each failure was counted once.
    let prom = &prom;
    let only = |expr: &'static str| async move {
        let result = prom.query(expr).await.unwrap();
        let values: Vec<f64> = result.iter().flat_map(sample_values).collect();
        (expr, values)
    };
    let (expr, polls) = only(r#"sum(kapso_polls_total{project="hooked"})"#).await;
    assert_eq!(polls, [1.0], "{expr}");
    let (expr, failed) =
        only(r#"sum(kapso_workflow_executions_finished_total{project="hooked", status="failed"})"#)
            .await;
    assert_eq!(failed, [5.0], "{expr}");

    exporter.shutdown().await;
    drop(prometheus);
    drop(am);
}
