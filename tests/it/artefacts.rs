//! Static proofs for the artefacts shipped next to the exporter: the Prometheus rules in
//! `alerts/`, their unit tests in `alerts/tests/`, the Grafana dashboards in `dashboards/`, the
//! runbooks in `docs/runbooks.md` and the examples in `deploy/`.
//!
//! Checks that need an outside program (promtool, amtool, node and the packages installed by
//! `npm ci` in `tests/dashboards-typecheck/`) fail when `CI=true` and the program is missing;
//! elsewhere they print `SKIPPED: <why>` to stderr and pass. The other checks always run.
//!
//! The end-to-end proof (exporter, simulator, Prometheus and Alertmanager running) is
//! `tests/e2e_prometheus.rs`.

use crate::grafana;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::grafana::{panels, variables};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use crate::support::TempDir;

const RUNBOOK_BASE: &str =
    "https://github.com/kapso-exporter/kapso-exporter/blob/main/docs/runbooks.md";
const DATASOURCE_UID: &str = "${datasource}";
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// Whether `name` is a family the exporter serves (its table of families, `metrics::FAMILIES`).
/// Any other `kapso_*` name in a query is a typo.
fn is_metric(name: &str) -> bool {
    kapso_exporter::metrics::FAMILIES
        .iter()
        .any(|f| f.served_name() == name)
}

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files directly in `dir` whose name ends with one of `suffixes`, sorted.
fn files_in(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()))
        .map(|entry| entry.expect("failed to read a directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(OsStr::to_str).unwrap_or_default();
            suffixes.iter().any(|s| name.ends_with(s))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no {suffixes:?} files in {}",
        dir.display()
    );
    files
}

fn rule_files() -> Vec<PathBuf> {
    files_in(&root().join("alerts"), &[".yml", ".yaml"])
}

fn rule_test_files() -> Vec<PathBuf> {
    files_in(&root().join("alerts/tests"), &[".yml", ".yaml"])
}

fn dashboard_files() -> Vec<PathBuf> {
    files_in(&root().join("dashboards"), &[".json"])
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

fn read_yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("failed to parse {} as YAML: {e}", path.display()))
}

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("failed to parse {} as JSON: {e}", path.display()))
}

fn yaml_str<'a>(value: &'a Yaml, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Yaml::as_str)
}

fn yaml_seq<'a>(value: &'a Yaml, key: &str) -> &'a [Yaml] {
    value
        .get(key)
        .and_then(Yaml::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The outside-program rule: `Some(path)` when `name` is on PATH; otherwise a failure under
/// `CI=true` and a visible skip elsewhere.
fn program(name: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        missing(&format!("{name} is not on PATH ({why})"));
    }
    found
}

fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}; CI=true requires it");
    }
    // Written to the process's stderr, not through eprintln!, which the test harness captures
    // and hides for passing tests: a skip must stay visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

/// Runs `command` and fails the test with its output unless it exits 0.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("failed to start {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{command:?} failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

// ------------------------------------------------------------------------------------------------
// PromQL scanning (enough for the checks below; promtool does the real parsing)
// ------------------------------------------------------------------------------------------------

/// One identifier outside string literals: its text, the function call it is a direct argument
/// of (the innermost open parenthesis preceded by a name, "" for a plain group), and whether a
/// `(` follows it (a function name) or not (a metric or label name).
#[derive(Debug)]
struct Ident {
    name: String,
    enclosing_call: String,
    is_call: bool,
}

fn scan_identifiers(expr: &str) -> Vec<Ident> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut pending_call = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let is_call = j < chars.len() && chars[j] == '(';
            // Durations like `5m` are digits followed by a unit: not identifiers.
            let after_digit = start > 0 && chars[start - 1].is_ascii_digit();
            if !after_digit {
                out.push(Ident {
                    name: name.clone(),
                    enclosing_call: stack.last().cloned().unwrap_or_default(),
                    is_call,
                });
            }
            pending_call = if is_call { name } else { String::new() };
            continue;
        }
        match c {
            '(' => stack.push(std::mem::take(&mut pending_call)),
            ')' => {
                stack.pop();
            }
            c if !c.is_whitespace() => pending_call.clear(),
            _ => {}
        }
        i += 1;
    }
    out
}

/// Counters (`*_total`) that are not a direct argument of rate(), irate() or increase().
fn counters_outside_rate(expr: &str) -> Vec<String> {
    scan_identifiers(expr)
        .into_iter()
        .filter(|id| !id.is_call && id.name.ends_with("_total"))
        .filter(|id| !["rate", "irate", "increase"].contains(&id.enclosing_call.as_str()))
        .map(|id| id.name)
        .collect()
}

/// `kapso_*` metric names that are not part of the exporter's contract.
fn unknown_metrics(expr: &str) -> Vec<String> {
    scan_identifiers(expr)
        .into_iter()
        .filter(|id| !id.is_call && id.name.starts_with("kapso_"))
        .filter(|id| !is_metric(&id.name))
        .map(|id| id.name)
        .collect()
}

/// The contents of every `[...]` range in `expr` (outside strings).
fn ranges(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_string = None;
    let mut current: Option<String> = None;
    for c in expr.chars() {
        match (in_string, c) {
            (Some(q), c) if c == q => in_string = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => in_string = Some(c),
            (None, '[') => current = Some(String::new()),
            (None, ']') => out.extend(current.take()),
            (None, c) => {
                if let Some(range) = current.as_mut() {
                    range.push(c);
                }
            }
        }
    }
    out
}

/// Replaces Grafana variables with values Prometheus accepts: built-in intervals with durations,
/// dashboard variables with a plausible value.
fn substitute_variables(expr: &str) -> String {
    let value = |name: &str| -> String {
        match name {
            "__rate_interval" => "5m",
            "__interval" => "1m",
            "__range" => "1h",
            "__range_s" => "3600",
            "__interval_ms" => "60000",
            "project" => "default",
            "workflow" => "Onboarding",
            "status" => "waiting",
            "job" => "kapso",
            _ => "x",
        }
        .to_owned()
    };
    grafana::substitute(expr, &value)
}

/// The series selector of a `label_values(selector, label)` variable query, or the query itself
/// for `query_result(expr)`; None for queries without PromQL (`label_values(label)`,
/// `label_names()`, `metrics(...)`).
fn variable_promql(query: &str) -> Option<String> {
    let query = query.trim();
    let inner = |prefix: &str| -> Option<String> {
        let rest = query.strip_prefix(prefix)?.trim_start().strip_prefix('(')?;
        Some(rest.strip_suffix(')')?.to_owned())
    };
    if let Some(args) = inner("label_values") {
        // The label is after the last top-level comma.
        let mut depth = 0_i32;
        let mut split = None;
        for (i, c) in args.char_indices() {
            match c {
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth -= 1,
                ',' if depth == 0 => split = Some(i),
                _ => {}
            }
        }
        return split.map(|i| args[..i].trim().to_owned());
    }
    inner("query_result")
}

// ------------------------------------------------------------------------------------------------
// Dashboards
// ------------------------------------------------------------------------------------------------

/// A PromQL expression found in a dashboard and where it was found.
struct DashboardQuery {
    file: String,
    place: String,
    raw: String,
}

fn dashboard_queries() -> Vec<DashboardQuery> {
    let mut out = Vec::new();
    for path in dashboard_files() {
        let dashboard = read_json(&path);
        let file = rel(&path);
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().map_or(&[][..], Vec::as_slice) {
                if let Some(expr) = target["expr"].as_str() {
                    let place = format!("panel {title:?} target {}", target["refId"]);
                    out.push(DashboardQuery {
                        file: file.clone(),
                        place,
                        raw: expr.to_owned(),
                    });
                }
            }
        }
        for variable in variables(&dashboard) {
            if variable["type"] != "query" {
                continue;
            }
            let query = match &variable["query"] {
                Json::String(q) => q.clone(),
                other => other["query"].as_str().unwrap_or_default().to_owned(),
            };
            if let Some(promql) = variable_promql(&query) {
                let place = format!("variable {}", variable["name"]);
                out.push(DashboardQuery {
                    file: file.clone(),
                    place,
                    raw: promql,
                });
            }
        }
        let annotations = dashboard
            .pointer("/annotations/list")
            .and_then(Json::as_array);
        for annotation in annotations.map_or(&[][..], Vec::as_slice) {
            let expr = annotation["expr"]
                .as_str()
                .or(annotation["target"]["expr"].as_str());
            if let Some(expr) = expr {
                let place = format!("annotation {}", annotation["name"]);
                out.push(DashboardQuery {
                    file: file.clone(),
                    place,
                    raw: expr.to_owned(),
                });
            }
        }
    }
    assert!(!out.is_empty(), "no PromQL found in the dashboards");
    out
}

#[test]
fn dashboard_queries_parse() {
    let queries = dashboard_queries();
    let Some(promtool) = program("promtool", "to parse the dashboards' PromQL") else {
        return;
    };
    // Each expression becomes a recording rule; promtool parses every one.
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (n, query) in queries.iter().enumerate() {
        let expr = substitute_variables(&query.raw);
        let quoted = serde_json::to_string(&expr).expect("failed to quote an expression");
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {quoted}\n"
        ));
    }
    let dir = TempDir::new("kapso-dashboard-queries");
    let file = dir.0.join("dashboard-queries.yml");
    fs::write(&file, rules).expect("failed to write the query rule file");
    let output = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("failed to start promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool names the failing rules; say where each one came from.
    let culprits: Vec<String> = queries
        .iter()
        .enumerate()
        .filter(|(n, _)| report.contains(&format!("\"dashboard_query_{n}\"")))
        .map(|(n, q)| format!("dashboard_query_{n} is {} {}: {}", q.file, q.place, q.raw))
        .collect();
    assert!(
        output.status.success(),
        "a dashboard query does not parse:\n{report}\n{}",
        culprits.join("\n")
    );
}

#[test]
fn dashboards_follow_conventions() {
    let mut problems = Vec::new();
    for path in dashboard_files() {
        let file = rel(&path);
        let dashboard = read_json(&path);
        let mut problem = |what: String| problems.push(format!("{file}: {what}"));
        if dashboard.get("__inputs").is_some() {
            problem("has __inputs (use the datasource variable instead)".into());
        }
        if dashboard["uid"].as_str().is_none_or(str::is_empty) {
            problem("has no uid".into());
        }
        if dashboard["schemaVersion"]
            .as_u64()
            .is_none_or(|v| !(36..=41).contains(&v))
        {
            problem("schemaVersion is not one of Grafana 10/11 (36..=41)".into());
        }

        // Variables: a Prometheus datasource variable; query variables use it and label_values.
        let vars = variables(&dashboard);
        let datasource = vars.iter().find(|v| v["name"] == "datasource");
        match datasource {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => {
                problem("has no `datasource` variable of type datasource, query prometheus".into())
            }
        }
        for var in vars.iter().filter(|v| v["type"] == "query") {
            let name = &var["name"];
            if var["datasource"]["uid"] != DATASOURCE_UID {
                problem(format!("variable {name} does not use ${{datasource}}"));
            }
            let query = var["query"].as_str().unwrap_or_default();
            if !query.starts_with("label_values(") {
                problem(format!("variable {name} is not a label_values() query"));
            }
        }
        let names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        if !names.contains("project") {
            problem("has no `project` variable".into());
        }

        for panel in panels(&dashboard) {
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or("?");
            let mut problem = |what: &str| problems.push(format!("{file}: panel {title:?} {what}"));
            if panel["description"]
                .as_str()
                .is_none_or(|d| d.trim().is_empty())
            {
                problem("has no description");
            }
            if panel
                .pointer("/fieldConfig/defaults/unit")
                .and_then(Json::as_str)
                .is_none_or(str::is_empty)
            {
                problem("has no unit in fieldConfig.defaults.unit");
            }
            if panel["datasource"]["uid"] != DATASOURCE_UID {
                problem("does not use the ${datasource} variable");
            }
            let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
            if targets.is_empty() {
                problem("has no query");
            }
            for target in targets {
                let refid = &target["refId"];
                if !target["datasource"].is_null() && target["datasource"]["uid"] != DATASOURCE_UID
                {
                    problem(&format!(
                        "target {refid} does not use the ${{datasource}} variable"
                    ));
                }
                let expr = target["expr"].as_str().unwrap_or_default();
                for counter in counters_outside_rate(expr) {
                    problem(&format!(
                        "target {refid} uses counter {counter} outside rate()/increase()"
                    ));
                }
                for range in ranges(expr) {
                    if range != "$__rate_interval" && range != "$__range" {
                        problem(&format!(
                            "target {refid} uses range [{range}]; use $__rate_interval (or $__range)"
                        ));
                    }
                }
            }
        }
    }
    for query in dashboard_queries() {
        for metric in unknown_metrics(&query.raw) {
            problems.push(format!(
                "{} {}: unknown metric {metric}",
                query.file, query.place
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn workflows_dashboard_has_its_variables_and_inbox_link() {
    let dashboard = read_json(&root().join("dashboards/kapso-workflows.json"));
    let vars = variables(&dashboard);
    for name in ["project", "workflow", "status"] {
        let var = vars.iter().find(|v| v["name"] == name);
        let query = var.and_then(|v| v["query"].as_str()).unwrap_or_default();
        assert!(
            query.starts_with("label_values("),
            "variable {name} missing or not from label_values: {query:?}"
        );
    }
    let inbox = vars
        .iter()
        .find(|v| v["name"] == "inbox_url")
        .expect("no inbox_url variable");
    assert_eq!(inbox["type"], "textbox");
    assert_eq!(inbox["query"], "https://app.kapso.ai");
    let text = serde_json::to_string(&dashboard).expect("failed to serialise the dashboard");
    assert!(
        text.contains("${inbox_url}?conversation_id=${__value.raw:percentencode}"),
        "no data link from a conversation id to the Kapso inbox"
    );
}

#[test]
fn dashboards_typecheck_against_grafana_schema() {
    let dir = root().join("tests/dashboards-typecheck");
    let Some(node) = program("node", "to type-check the dashboards") else {
        return;
    };
    for package in ["typescript", "@grafana/schema"] {
        if !dir.join("node_modules").join(package).is_dir() {
            missing(&format!(
                "{package} is not installed in {} (run `npm ci` there)",
                rel(&dir)
            ));
            return;
        }
    }
    let stdout = run_ok(Command::new(node).arg("check.mjs").current_dir(&dir));
    eprintln!("{}", stdout.trim());
}

// ------------------------------------------------------------------------------------------------
// Rules
// ------------------------------------------------------------------------------------------------

/// Every rule of every rule file: (file, rule).
fn rules() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = read_yaml(&path);
        for group in yaml_seq(&doc, "groups") {
            for rule in yaml_seq(group, "rules") {
                out.push((rel(&path), rule.clone()));
            }
        }
    }
    out
}

fn alerts() -> Vec<(String, Yaml)> {
    rules()
        .into_iter()
        .filter(|(_, rule)| rule.get("alert").is_some())
        .collect()
}

#[test]
fn rule_files_pass_promtool_check() {
    let Some(promtool) = program("promtool", "to check the rule files") else {
        return;
    };
    for file in rule_files() {
        run_ok(Command::new(&promtool).args(["check", "rules"]).arg(file));
    }
}

#[test]
fn rule_unit_tests_pass() {
    let Some(promtool) = program("promtool", "to run the rule unit tests") else {
        return;
    };
    for file in rule_test_files() {
        run_ok(Command::new(&promtool).args(["test", "rules"]).arg(file));
    }
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to dashes.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn alerts_follow_conventions() {
    let runbooks = read(&root().join("docs/runbooks.md"));
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| github_anchor(heading.trim_start_matches('#')))
        .collect();
    let alerts = alerts();
    assert!(!alerts.is_empty(), "no alerts in alerts/");
    let mut problems = Vec::new();
    for (file, alert) in &alerts {
        let name = yaml_str(alert, "alert").unwrap_or_default();
        let mut problem = |what: String| problems.push(format!("{file}: {name}: {what}"));
        let camel = name.strip_prefix("Kapso").is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_uppercase())
                && rest.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !camel {
            problem("is not a CamelCase name starting with Kapso".into());
        }
        let labels = alert.get("labels");
        let severity = labels
            .and_then(|l| yaml_str(l, "severity"))
            .unwrap_or_default();
        if !SEVERITIES.contains(&severity) {
            problem(format!(
                "severity {severity:?} is not one of {SEVERITIES:?}"
            ));
        }
        if yaml_str(alert, "for").is_none() {
            problem("has no `for:` (one bad evaluation would notify)".into());
        }
        let annotations = alert.get("annotations");
        let annotation = |key: &str| {
            annotations
                .and_then(|a| yaml_str(a, key))
                .unwrap_or_default()
        };
        if annotation("summary").trim().is_empty() {
            problem("has no summary".into());
        }
        let description = annotation("description");
        if !description.contains("$value") || !description.contains("$labels.") {
            problem("description does not show $value and $labels".into());
        }
        let runbook = annotation("runbook_url");
        let expected = format!("{RUNBOOK_BASE}#{}", name.to_lowercase());
        if runbook != expected {
            problem(format!("runbook_url is {runbook:?}, expected {expected:?}"));
        }
        if !anchors.contains(&name.to_lowercase()) {
            problem(format!("docs/runbooks.md has no heading `## {name}`"));
        }
    }
    for (file, rule) in rules() {
        let expr = yaml_str(&rule, "expr").unwrap_or_default();
        for metric in unknown_metrics(expr) {
            problems.push(format!("{file}: unknown metric {metric} in {expr:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "alert problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    // alert name -> (cases where it fires, cases where it must stay silent)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for path in rule_test_files() {
        let doc = read_yaml(&path);
        let tested_files: Vec<&str> = yaml_seq(&doc, "rule_files")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(
            !tested_files.is_empty(),
            "{} names no rule_files",
            rel(&path)
        );
        for test in yaml_seq(&doc, "tests") {
            // Per alert in this test: does any evaluation expect it to fire? A test counts as a
            // silent case only if none does (a pending check before firing does not count).
            let mut fires_here: BTreeMap<String, bool> = BTreeMap::new();
            for case in yaml_seq(test, "alert_rule_test") {
                let name = yaml_str(case, "alertname").unwrap_or_default().to_owned();
                let fires = !yaml_seq(case, "exp_alerts").is_empty();
                *fires_here.entry(name).or_default() |= fires;
            }
            for (name, fires) in fires_here {
                let entry = cases.entry(name).or_default();
                if fires {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
        }
    }
    let mut problems = Vec::new();
    let names: BTreeSet<String> = alerts()
        .iter()
        .filter_map(|(_, a)| yaml_str(a, "alert").map(str::to_owned))
        .collect();
    for name in &names {
        let (fires, silent) = cases.get(name).copied().unwrap_or_default();
        if fires == 0 {
            problems.push(format!("{name} has no unit test where it fires"));
        }
        if silent == 0 {
            problems.push(format!("{name} has no unit test where it stays silent"));
        }
    }
    for name in cases.keys().filter(|n| !names.contains(*n)) {
        problems.push(format!(
            "the unit tests name {name}, which no rule file defines"
        ));
    }
    assert!(
        problems.is_empty(),
        "unit test coverage:\n{}",
        problems.join("\n")
    );
}

// ------------------------------------------------------------------------------------------------
// deploy/
// ------------------------------------------------------------------------------------------------

fn prometheus_configs() -> Vec<PathBuf> {
    files_in(&root().join("deploy"), &[".yml"])
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("prometheus"))
        })
        .collect()
}

#[test]
fn prometheus_configs_scrape_the_kapso_job_with_the_rules() {
    for path in prometheus_configs() {
        let doc = read_yaml(&path);
        let jobs: Vec<&str> = yaml_seq(&doc, "scrape_configs")
            .iter()
            .filter_map(|s| yaml_str(s, "job_name"))
            .collect();
        assert!(
            jobs.contains(&"kapso"),
            "{}: no job `kapso`, which KapsoExporterDown matches on",
            rel(&path)
        );
        let rule_files: Vec<&str> = yaml_seq(&doc, "rule_files")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            rule_files,
            ["../alerts/*.yml"],
            "{}: rule_files",
            rel(&path)
        );
    }
}

#[test]
fn prometheus_configs_pass_promtool_check() {
    let Some(promtool) = program("promtool", "to check deploy/prometheus*.yml") else {
        return;
    };
    for path in prometheus_configs() {
        let stdout = run_ok(Command::new(&promtool).args(["check", "config"]).arg(&path));
        // The relative rule path must find the rule files, not an empty glob.
        assert!(
            stdout.contains("rule files found") && !stdout.contains(" 0 rule files found"),
            "{}: the rule_files glob matches no rule file:\n{stdout}",
            rel(&path)
        );
    }
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_every_alert() {
    let Some(amtool) = program("amtool", "to check deploy/alertmanager.yml") else {
        return;
    };
    let config = root().join("deploy/alertmanager.yml");
    run_ok(Command::new(&amtool).arg("check-config").arg(&config));
    for (_, alert) in alerts() {
        let name = yaml_str(&alert, "alert").unwrap_or_default();
        let severity = alert
            .get("labels")
            .and_then(|l| yaml_str(l, "severity"))
            .unwrap_or_default();
        let receiver = match (name, severity) {
            ("KapsoExecutionsHandoffUnattended", _) => "kapso-support",
            (_, "critical") => "kapso-pager",
            (_, "info") => "kapso-ticket",
            _ => "kapso-chat",
        };
        run_ok(
            Command::new(&amtool)
                .args(["config", "routes", "test", "--config.file"])
                .arg(&config)
                .arg(format!("--verify.receivers={receiver}"))
                .arg(format!("alertname={name}"))
                .arg(format!("severity={severity}")),
        );
    }
}

#[test]
fn compose_file_mounts_existing_files() {
    let deploy = root().join("deploy");
    let compose = read_yaml(&deploy.join("docker-compose.yml"));
    let services = compose
        .get("services")
        .and_then(Yaml::as_mapping)
        .expect("docker-compose.yml has no services");
    let mut names = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for (name, service) in services {
        names.insert(name.as_str().unwrap_or_default().to_owned());
        for volume in yaml_seq(service, "volumes") {
            let spec = volume.as_str().unwrap_or_default();
            let mut parts = spec.split(':');
            let source = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            targets.insert(target.to_owned());
            if source.starts_with('.') {
                assert!(
                    deploy.join(source).exists(),
                    "docker-compose.yml mounts {source}, which does not exist"
                );
            }
        }
        if let Some(build) = service.get("build") {
            let context = deploy.join(yaml_str(build, "context").unwrap_or("."));
            let dockerfile = yaml_str(build, "dockerfile").unwrap_or("Dockerfile");
            assert!(
                context.join(dockerfile).is_file(),
                "docker-compose.yml builds {dockerfile}, which does not exist"
            );
        }
    }
    for service in ["kapso-exporter", "prometheus", "grafana"] {
        assert!(
            names.contains(service),
            "docker-compose.yml has no {service} service"
        );
    }
    // The dashboard provider reads the folder the dashboards are mounted at.
    let provider = read_yaml(&deploy.join("grafana/provisioning/dashboards/kapso.yml"));
    let path = yaml_seq(&provider, "providers")
        .first()
        .and_then(|p| p.get("options"))
        .and_then(|o| yaml_str(o, "path"))
        .expect("the dashboard provider has no options.path");
    assert!(
        targets.contains(path),
        "the dashboard provider reads {path}, which docker-compose.yml does not mount"
    );
    // The Prometheus config is mounted where its relative rule path reaches the mounted rules.
    assert!(targets.contains("/etc/prometheus/deploy/prometheus.yml"));
    assert!(targets.contains("/etc/prometheus/alerts"));
}

// ------------------------------------------------------------------------------------------------
// The helpers' own tests
// ------------------------------------------------------------------------------------------------

#[test]
fn counter_check_accepts_rates_and_rejects_bare_counters() {
    let ok = r#"60 * sum by (workflow) (rate(kapso_polls_total{project=~"a_total"}[5m]))"#;
    assert!(counters_outside_rate(ok).is_empty());
    assert!(counters_outside_rate("sum(increase(kapso_polls_total[1h])) / 2").is_empty());
    assert_eq!(
        counters_outside_rate("sum(kapso_polls_total)"),
        ["kapso_polls_total"]
    );
    assert_eq!(
        counters_outside_rate("rate(x[5m]) + kapso_polls_total"),
        ["kapso_polls_total"]
    );
    assert_eq!(
        counters_outside_rate("max_over_time(kapso_polls_total[5m])"),
        ["kapso_polls_total"]
    );
}

#[test]
fn variables_are_substituted() {
    assert_eq!(
        substitute_variables(
            r#"rate(x{project=~"$project", w=~"${workflow:regex}"}[$__rate_interval])"#
        ),
        r#"rate(x{project=~"default", w=~"Onboarding"}[5m])"#
    );
    assert_eq!(
        substitute_variables("increase(x[$__range]) $__interval"),
        "increase(x[1h]) 1m"
    );
    assert_eq!(
        variable_promql(r#"label_values(kapso_up{job=~"$job"}, project)"#).as_deref(),
        Some(r#"kapso_up{job=~"$job"}"#)
    );
    assert_eq!(variable_promql("label_values(project)"), None);
    assert_eq!(
        ranges(r#"rate(x{a="[1m]"}[5m]) [$__range]"#),
        ["5m", "$__range"]
    );
}

#[test]
fn github_anchors() {
    assert_eq!(github_anchor(" KapsoExporterDown"), "kapsoexporterdown");
    assert_eq!(
        github_anchor("Why these thresholds?"),
        "why-these-thresholds"
    );
}

// ------------------------------------------------------------------------------------------------
// The repository stands alone: cited documents exist, nothing reads outside it
// ------------------------------------------------------------------------------------------------

/// The section sign, written as an escape so this file cites nothing itself.
const SECTION: char = '\u{a7}';

/// Every text file under `dir`, recursively, without `node_modules` and `target`.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("failed to read a directory entry").path();
        let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        if path.is_dir() {
            if name != "node_modules" && name != "target" {
                text_files(&path, out);
            }
        } else if fs::read_to_string(&path).is_ok() {
            out.push(path);
        }
    }
}

/// The numbered sections (`## N. Title`) of docs/kapso-api.md.
fn kapso_api_sections() -> BTreeSet<u32> {
    let text = read(&root().join("docs/kapso-api.md"));
    let numbers: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|h| h.split_once(". ").and_then(|(n, _)| n.parse().ok()))
        .collect();
    let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "docs/kapso-api.md: sections must be numbered 1, 2, 3, ... in order"
    );
    numbers.into_iter().collect()
}

/// The section numbers a text cites: `<S>3`, `<S><S>2–7` (a range), with S the section sign.
fn cited_sections(text: &str) -> Vec<u32> {
    let mut cited = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(SECTION) {
        rest = rest[i..].trim_start_matches(SECTION);
        let number = |s: &str| -> (Option<u32>, usize) {
            let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            (s[..end].parse().ok(), end)
        };
        let (first, end) = number(rest);
        let Some(first) = first else {
            cited.push(0); // a sign without a number
            continue;
        };
        rest = &rest[end..];
        let last = rest
            .strip_prefix('–')
            .or_else(|| rest.strip_prefix('-'))
            .and_then(|r| number(r).0)
            .unwrap_or(first);
        cited.extend(first..=last.max(first));
    }
    cited
}

#[test]
fn cited_sections_are_parsed() {
    let s = SECTION;
    assert_eq!(
        cited_sections(&format!("a ({s}8) b {s}2, {s}12.")),
        [8, 2, 12]
    );
    assert_eq!(cited_sections(&format!("({s}{s}2–4)")), [2, 3, 4]);
    assert_eq!(cited_sections(&format!("{s} x")), [0]);
}

/// Comments and docs cite Kapso's API by the sections of docs/kapso-api.md: every section
/// number cited in the source tree exists, and a file that cites sections names that
/// document (the retired notes it replaces lived outside the repository).
#[test]
fn kapso_api_citations_name_existing_sections() {
    let sections = kapso_api_sections();
    let retired = ["facts", "sheet"].join(" ");
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "tools", ".ci", "docs"] {
        text_files(&root().join(dir), &mut files);
    }
    files.push(root().join("README.md"));
    let mut bad = Vec::new();
    let mut citations = 0;
    for path in &files {
        let text = read(path);
        if text.contains(&retired) {
            bad.push(format!("{}: cites the {retired}", rel(path)));
        }
        let cited = cited_sections(&text);
        if cited.is_empty() {
            continue;
        }
        if !text.contains("kapso-api.md") {
            bad.push(format!(
                "{}: cites sections without naming docs/kapso-api.md",
                rel(path)
            ));
        }
        for n in cited {
            citations += 1;
            if !sections.contains(&n) {
                bad.push(format!(
                    "{}: cites section {n}, which docs/kapso-api.md does not have",
                    rel(path)
                ));
            }
        }
    }
    assert!(citations > 20, "only {citations} citations found");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Nothing that builds or tests the exporter reads the folder that once sat beside the
/// repository.
#[test]
fn nothing_refers_outside_the_repository() {
    let outside = ["..", "shared"].join("/");
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "tools", ".ci"] {
        text_files(&root().join(dir), &mut files);
    }
    for name in ["Cargo.toml", "build.rs", "Dockerfile"] {
        files.push(root().join(name));
    }
    let bad: Vec<String> = files
        .iter()
        .filter(|p| read(p).contains(&outside))
        .map(|p| rel(p))
        .collect();
    assert!(bad.is_empty(), "these refer to {outside}: {bad:?}");
}

/// The OpenAPI copies the contract test validates against say where they come from, and are
/// the bytes their provenance record describes.
#[test]
fn openapi_copies_state_their_provenance() {
    use sha2::Digest as _;
    let dir = root().join("tests/contract/kapso-openapi");
    let readme = read(&dir.join("README.md"));
    for needle in [
        "https://docs.kapso.ai/api/platform/v1/openapi-workflows.yaml",
        "https://github.com/magoolation/kapso-client-net",
        "455a7af55c4d0840e48cbb48c4e969cd01625b8b",
    ] {
        assert!(readme.contains(needle), "README.md lacks {needle}");
    }
    let provenance = read_json(&dir.join("provenance.json"));
    let documents = provenance["documents"].as_array().expect("documents");
    for name in ["openapi-workflows.yaml", "openapi-platform.yaml"] {
        let bytes = fs::read(dir.join(name)).expect("spec file");
        let entry = documents
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("provenance.json has no entry for {name}"));
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(entry["sha256"].as_str(), Some(sha.as_str()), "{name}");
        assert_eq!(entry["bytes"].as_u64(), Some(bytes.len() as u64), "{name}");
    }
    let contract = read(&root().join("tests/it/simulator_contract.rs"));
    assert!(contract.contains("\"tests/contract/kapso-openapi\""));
}
