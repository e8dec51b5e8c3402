//! The simulator's API variance over real HTTP: each setting of `Variance` and each scripted
//! control is visible on the wire, and ground truth stays right under it. Also the
//! `--demo.variance` flag's parse errors.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::sim_support::Api;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kapso_exporter::clock::Clock;
use kapso_exporter::config::{Cli, Config};
use kapso_exporter::simulator::{
    ExecStatus, Precision, Precisions, Presence, Simulator, SimulatorConfig, StartOverride,
    Variance,
};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{OffsetDateTime, UtcOffset};

const KEY: &str = "variance-key";
const START: OffsetDateTime = datetime!(2026-05-15 13:05:00.25 UTC);

fn ts(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn rows(body: &Value) -> Vec<Value> {
    body["data"].as_array().unwrap().clone()
}

fn decode(cursor: &str) -> Value {
    serde_json::from_slice(&STANDARD.decode(cursor).unwrap()).unwrap()
}

/// A timestamp's parts: `YYYY-MM-DDTHH:MM:SS`, its fraction digits and its offset, or `None`
/// if it is not shaped like `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$`.
fn stamp_parts(s: &str) -> Option<(&str, &str, &str)> {
    let shape = |part: &str, pattern: &str| {
        part.len() == pattern.len()
            && part.bytes().zip(pattern.bytes()).all(|(c, p)| {
                if p == b'd' {
                    c.is_ascii_digit()
                } else {
                    c == p
                }
            })
    };
    let head = s.get(..19)?;
    if !shape(head, "dddd-dd-ddTdd:dd:dd") {
        return None;
    }
    let rest = &s[19..];
    let (fraction, offset) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            (&r[..n], &r[n..])
        }
        None => ("", rest),
    };
    let offset_ok = offset == "Z"
        || (offset.len() == 6
            && matches!(offset.as_bytes()[0], b'+' | b'-')
            && shape(&offset[1..], "dd:dd"));
    (offset_ok && (rest.starts_with('.') != fraction.is_empty()))
        .then_some((head, fraction, offset))
}

/// Every timestamp string in a body (fields named `*_at` or `timestamp`), with its path.
fn stamps(value: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let p = format!("{path}.{k}");
                    match v {
                        Value::String(s) if k.ends_with("_at") || k == "timestamp" => {
                            out.push((p, s.clone()));
                        }
                        _ => walk(v, &p, out),
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

/// The timestamps inside a body's paging cursors.
fn cursor_stamps(body: &Value) -> Vec<String> {
    let paging = &body["paging"];
    [
        &paging["next"],
        &paging["previous"],
        &paging["cursors"]["before"],
        &paging["cursors"]["after"],
    ]
    .into_iter()
    .filter_map(Value::as_str)
    .map(|c| decode(c)["values"][0].as_str().unwrap().to_owned())
    .collect()
}

/// A populated simulator on a manual clock with some history, so every field has values.
fn populated(variance: Variance) -> (Simulator, Clock) {
    let clock = Clock::manual(START);
    let config = SimulatorConfig {
        api_key: KEY.to_owned(),
        live_executions: 60,
        terminal_executions: 60,
        rate_limit_per_minute: None,
        latency: Duration::ZERO,
        variance,
        ..SimulatorConfig::demo()
    };
    let sim = Simulator::new(config, clock.clone());
    clock.advance(Duration::from_secs(30));
    sim.tick(Duration::from_secs(30));
    (sim, clock)
}

/// Bodies of every kind of endpoint: workflows, a workflow, executions (two pages),
/// a detail, conversations, a conversation's executions.
async fn every_kind_of_body(api: &Api, sim: &Simulator) -> Vec<Value> {
    let truth = sim.ground_truth();
    let wf = &truth.workflows[0].id;
    let (conv, _, _) = truth.per_conversation.keys().next().unwrap().clone();
    let path = format!("workflows/{wf}/executions");
    let first = api.get(&path, &[("limit", "5")]).await.json();
    let next = first["paging"]["next"].as_str().unwrap().to_owned();
    let second = api
        .get(&path, &[("limit", "5"), ("after", &next)])
        .await
        .json();
    let row = first["data"][0]["id"].as_str().unwrap().to_owned();
    vec![
        api.get("workflows", &[]).await.json(),
        api.get(&format!("workflows/{wf}"), &[]).await.json(),
        first,
        second,
        api.get(&format!("workflow_executions/{row}"), &[])
            .await
            .json(),
        api.get("whatsapp/conversations", &[("limit", "5")])
            .await
            .json(),
        api.get(
            &format!("whatsapp/conversations/{conv}/flow_executions"),
            &[],
        )
        .await
        .json(),
    ]
}

#[tokio::test]
async fn seconds_precision_reaches_every_named_field_and_cursor() {
    let (sim, _clock) = populated(Variance::parse_list("seconds").unwrap());
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let mut checked = 0;
    for (i, body) in every_kind_of_body(&api, &sim).await.iter().enumerate() {
        // The first two bodies are workflows, whose `created_at` the variance names; events
        // and conversations keep their `created_at`, and nobody's `updated_at` changes.
        let workflows = i < 2;
        for (path, s) in stamps(body) {
            let (_, fraction, offset) = stamp_parts(&s).unwrap_or_else(|| panic!("{path}: {s}"));
            let field = path.rsplit('.').next().unwrap();
            let named = matches!(
                field,
                "started_at" | "last_event_at" | "ended_at" | "last_executed_at"
            ) || (workflows && field == "created_at");
            if named {
                // ^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$
                assert_eq!((fraction, offset), ("", "Z"), "{path}: {s}");
                checked += 1;
            }
        }
        for s in cursor_stamps(body) {
            assert_eq!(stamp_parts(&s).unwrap().1, "", "cursor {s}");
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");

    // Millisecond precision always writes three digits, microseconds six or none.
    sim.set_variance(Variance::parse_list("millis").unwrap());
    let body = api.get("workflows", &[]).await.json();
    for w in rows(&body) {
        // A draft never ran: its last_executed_at is null.
        for s in ["created_at", "last_executed_at"]
            .map(|f| w[f].as_str())
            .into_iter()
            .flatten()
        {
            assert_eq!(stamp_parts(s).unwrap().1.len(), 3, "{s}");
        }
    }
}

#[tokio::test]
async fn mixed_precision_differs_per_field_and_truth_truncates_the_same_way() {
    let variance = Variance::parse_list("mixed-precision").unwrap();
    let p = variance.precision;
    let (sim, _clock) = populated(variance);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let digits = |s: &str| stamp_parts(s).unwrap().1.len();
    for w in rows(&api.get("workflows", &[]).await.json()) {
        assert_eq!(digits(w["created_at"].as_str().unwrap()), 3);
        if let Some(last) = w["last_executed_at"].as_str() {
            assert_eq!(digits(last), 0);
        }
        assert_eq!(digits(w["updated_at"].as_str().unwrap()) % 6, 0);
    }
    let truth = sim.ground_truth();
    let wf = truth.workflows[0].id.clone();
    let path = format!("workflows/{wf}/executions");
    let all = api.all_rows(&path, &[("limit", "100")]).await;
    for r in &all {
        assert_eq!(digits(r["started_at"].as_str().unwrap()) % 6, 0);
        assert_eq!(digits(r["last_event_at"].as_str().unwrap()), 3);
        if let Some(ended) = r["ended_at"].as_str() {
            assert_eq!(digits(ended), 0);
        }
    }
    let page = api.get(&path, &[("limit", "3")]).await.json();
    for c in cursor_stamps(&page) {
        assert_eq!(digits(&c), 3, "{c}");
    }
    // What a client reads is the true value truncated: the oldest waiting row shows
    // ground truth's oldest last_event_at cut to milliseconds.
    let waiting = api
        .all_rows(&path, &[("status", "waiting"), ("limit", "100")])
        .await;
    let seen = waiting
        .iter()
        .map(|r| ts(r["last_event_at"].as_str().unwrap()))
        .min();
    let truth_oldest = truth
        .oldest_last_event
        .get(&(wf, ExecStatus::Waiting))
        .copied();
    assert_eq!(seen, truth_oldest.map(|t| p.last_event_at.truncate(t)));
}

#[tokio::test]
async fn offsets_render_the_same_instants() {
    let (sim, _clock) = populated(Variance::default());
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let plain = every_kind_of_body(&api, &sim).await;
    for (preset, suffix) in [("offset", "+05:30"), ("offset=-03:00", "-03:00")] {
        sim.set_variance(Variance::parse_list(preset).unwrap());
        let shifted = every_kind_of_body(&api, &sim).await;
        let mut compared = 0;
        for (a, b) in plain.iter().zip(&shifted) {
            let (sa, sb) = (stamps(a), stamps(b));
            assert_eq!(sa.len(), sb.len());
            for ((path_a, va), (path_b, vb)) in sa.iter().zip(&sb) {
                assert_eq!(path_a, path_b);
                assert!(va.ends_with('Z'), "{va}");
                assert!(vb.ends_with(suffix), "{path_b}: {vb}");
                assert_eq!(ts(va), ts(vb), "{path_a}");
                compared += 1;
            }
            for (ca, cb) in cursor_stamps(a).iter().zip(cursor_stamps(b)) {
                assert!(cb.ends_with(suffix), "{cb}");
                assert_eq!(ts(ca), ts(&cb));
            }
        }
        assert!(compared > 50, "{compared}");
    }
    // A cursor written with an offset is accepted back and pages on.
    let wf = sim.ground_truth().workflows[0].id.clone();
    let path = format!("workflows/{wf}/executions");
    let offset_rows = api.all_rows(&path, &[("limit", "7")]).await;
    sim.set_variance(Variance::default());
    assert_eq!(
        ids(&offset_rows),
        ids(&api.all_rows(&path, &[("limit", "7")]).await)
    );
}

/// Ten running executions: five in the second 13:05:00 (at .250000 to .250004, the clock
/// standing still bumps each by 1 µs) and five in 13:05:01 (at .250000 to .250004).
fn two_seconds_of_starts() -> (Simulator, String, Vec<String>) {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Burst", "active");
    let mut started = Vec::new();
    for second in 0..2 {
        if second == 1 {
            clock.advance(Duration::from_secs(1));
        }
        for _ in 0..5 {
            started.push(sim.start_execution(&wf, None, ExecStatus::Running));
        }
    }
    // Newest first, as the API lists them.
    started.reverse();
    (sim, wf, started)
}

#[tokio::test]
async fn truncated_cursor_skips_rows_going_forward_and_repeats_them_going_back() {
    let (sim, wf, newest_first) = two_seconds_of_starts();
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");

    // Control: microsecond cursors page through all ten rows.
    let all = api.all_rows(&path, &[("limit", "3")]).await;
    assert_eq!(ids(&all), newest_first);

    sim.set_variance(Variance {
        precision: Precisions {
            cursor: Precision::Seconds,
            ..Precisions::default()
        },
        ..Variance::default()
    });
    let p1 = api.get(&path, &[("limit", "3")]).await.json();
    assert_eq!(ids(&rows(&p1)), newest_first[0..3]);
    let next = p1["paging"]["next"].as_str().unwrap().to_owned();
    // The cursor names the third row but carries only its second: 13:05:01, not 01.250002.
    let cursor = decode(&next);
    assert_eq!(
        cursor["values"],
        json!(["2026-05-15T13:05:01Z", newest_first[2]])
    );
    // The server compares (created_at, id) < (13:05:01, id) with full-precision keys, so
    // the rest of 13:05:01 (01.250001 and 01.250000) is newer than the cursor: skipped.
    let p2 = api
        .get(&path, &[("limit", "3"), ("after", &next)])
        .await
        .json();
    assert_eq!(ids(&rows(&p2)), newest_first[5..8]);
    // `next` is decided on full-precision keys (older rows do exist), so it leads to a page
    // that is empty for the same reason: the rest of 13:05:00 is skipped too.
    let next2 = p2["paging"]["next"].as_str().unwrap().to_owned();
    let p3 = api
        .get(&path, &[("limit", "3"), ("after", &next2)])
        .await
        .json();
    assert_eq!(p3["data"], json!([]));
    assert!(p3["paging"]["next"].is_null());
    let walked = api.all_rows(&path, &[("limit", "3")]).await;
    assert_eq!(walked.len(), 6, "four of ten rows never appear");
    // Ground truth still has all ten.
    assert_eq!(sim.ground_truth().live_count(&wf, ExecStatus::Running), 10);

    // Going back from page 2 (`before` = its first row, 00.250004, cut to 13:05:00):
    // (created_at, id) > (13:05:00, id) ascending starts at the beginning of that second, so
    // "the previous page" is 00.250000..00.250002: a row of page 2 again, and the two rows
    // that the forward walk skipped, all older than the cursor's own row.
    let previous = p2["paging"]["previous"].as_str().unwrap().to_owned();
    let back = api
        .get(&path, &[("limit", "3"), ("before", &previous)])
        .await
        .json();
    assert_eq!(ids(&rows(&back)), newest_first[7..10]);

    // `created_after` compares with the full-precision start: the whole-second value a
    // client reads from `started_at` (seconds precision) selects the whole of that second.
    sim.set_variance(Variance::parse_list("seconds").unwrap());
    let shown = rows(&api.get(&path, &[("limit", "1")]).await.json())[0]["started_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(shown, "2026-05-15T13:05:01Z");
    let since = api
        .all_rows(&path, &[("created_after", &shown), ("limit", "100")])
        .await;
    assert_eq!(ids(&since), newest_first[0..5]);
    let until = api
        .all_rows(&path, &[("created_before", &shown), ("limit", "100")])
        .await;
    assert_eq!(ids(&until), newest_first[5..10]);
}

#[tokio::test]
async fn counts_can_be_missing_lagging_or_shrinking() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let workflow =
        || async { api.get(&format!("workflows/{wf}"), &[]).await.json()["data"].clone() };

    // Missing: absent or null, per field.
    for (count, last) in [
        (Presence::Absent, Presence::Null),
        (Presence::Null, Presence::Absent),
    ] {
        sim.set_variance(Variance {
            execution_count: count,
            last_executed_at: last,
            ..Variance::default()
        });
        let w = workflow().await;
        let obj = w.as_object().unwrap();
        let shows = |p: Presence, field: &str| match p {
            Presence::Absent => !obj.contains_key(field),
            Presence::Null => obj[field].is_null(),
            Presence::Present => obj[field].is_number() || obj[field].is_string(),
        };
        assert!(shows(count, "execution_count"), "{w}");
        assert!(shows(last, "last_executed_at"), "{w}");
        // The listing shows the same object.
        assert_eq!(api.get("workflows", &[]).await.json()["data"][0], w);
    }

    // Lagging: a new row is listed at once, counted a minute later.
    let lag = Variance::parse_list("lagging-counts=60s").unwrap();
    sim.set_variance(lag);
    let a = sim.start_execution(&wf, None, ExecStatus::Running);
    let listed = api
        .all_rows(&format!("workflows/{wf}/executions"), &[])
        .await;
    assert_eq!(ids(&listed), vec![a.clone()]);
    let w = workflow().await;
    assert_eq!(w["execution_count"], 0);
    assert!(w["last_executed_at"].is_null());
    clock.advance(Duration::from_secs(59));
    assert_eq!(workflow().await["execution_count"], 0);
    clock.advance(Duration::from_secs(1));
    let w = workflow().await;
    assert_eq!(w["execution_count"], 1);
    assert_eq!(w["last_executed_at"], listed[0]["started_at"]);
    assert_eq!(sim.ground_truth().workflows[0].execution_count, 1);

    // Shrinking: deleting an execution lowers the count only with the setting.
    let b = sim.start_execution(&wf, None, ExecStatus::Ended);
    sim.set_variance(Variance::default());
    assert_eq!(workflow().await["execution_count"], 2);
    sim.delete_execution(&a);
    assert_eq!(workflow().await["execution_count"], 2);
    sim.set_variance(Variance::parse_list("shrinking-counts").unwrap());
    let w = workflow().await;
    assert_eq!(w["execution_count"], 1);
    // last_executed_at is when the workflow last ran, whatever was deleted since.
    let detail = api
        .get(&format!("workflow_executions/{b}"), &[])
        .await
        .json();
    assert_eq!(w["last_executed_at"], detail["data"]["started_at"]);
    let t = &sim.ground_truth().workflows[0];
    assert_eq!((t.execution_count, t.existing_executions), (2, 1));
}

#[tokio::test]
async fn deleted_executions_leave_every_list_and_never_finish() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    let live = sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    let kept = sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    sim.mark();
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");
    assert_eq!(
        api.get(&format!("workflow_executions/{live}"), &[])
            .await
            .status,
        200
    );

    clock.advance(Duration::from_secs(5));
    sim.delete_execution(&live);
    let r = api.get(&format!("workflow_executions/{live}"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error": "Workflow execution not found"}));
    for (list, query) in [
        (path.clone(), vec![]),
        (path.clone(), vec![("status", "waiting")]),
        (
            path.clone(),
            vec![("whatsapp_conversation_id", conv.as_str())],
        ),
        (
            format!("whatsapp/conversations/{conv}/flow_executions"),
            vec![],
        ),
        (
            format!("whatsapp/conversations/{conv}/flow_executions"),
            vec![("status", "waiting")],
        ),
    ] {
        assert_eq!(
            ids(&api.all_rows(&list, &query).await),
            vec![kept.clone()],
            "{list} {query:?}"
        );
    }
    let truth = sim.ground_truth();
    assert_eq!(truth.live_count(&wf, ExecStatus::Waiting), 1);
    assert_eq!(truth.finished[&(wf.clone(), ExecStatus::Ended)], 0);
    assert_eq!(truth.finished[&(wf.clone(), ExecStatus::Failed)], 0);
    assert_eq!(
        truth.per_conversation[&(conv, wf.clone(), ExecStatus::Waiting)],
        1
    );
    // A later change to the deleted id is ignored.
    sim.set_status(&live, ExecStatus::Ended);
    assert_eq!(sim.ground_truth().finished[&(wf, ExecStatus::Ended)], 0);
}

#[tokio::test]
async fn unknown_statuses_leave_the_live_lists_without_starting_or_finishing() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    let a = sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    let b = sim.start_execution(&wf, None, ExecStatus::Running);
    sim.mark();
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");
    let conv_path = format!("whatsapp/conversations/{conv}/flow_executions");

    clock.advance(Duration::from_secs(10));
    sim.set_unknown_status(&a, "paused");
    for status in ExecStatus::ALL {
        let listed = api.all_rows(&path, &[("status", status.as_str())]).await;
        assert!(!ids(&listed).contains(&a), "{status}");
        let listed = api
            .all_rows(&conv_path, &[("status", status.as_str())])
            .await;
        assert!(listed.is_empty(), "{status}");
    }
    let all = api.all_rows(&path, &[]).await;
    let row = all.iter().find(|r| r["id"] == a.as_str()).unwrap();
    assert_eq!(row["status"], "paused");
    assert!(row["ended_at"].is_null());
    assert_eq!(row["last_event_at"], "2026-05-15T13:05:10.250000Z");
    assert_eq!(api.all_rows(&conv_path, &[]).await[0]["status"], "paused");
    let detail = api
        .get(&format!("workflow_executions/{a}"), &[])
        .await
        .json();
    assert_eq!(detail["data"]["status"], "paused");
    assert!(detail["data"]["resumable_execution_id"].is_null());
    // The filter itself only takes the spec's statuses.
    assert_eq!(api.get(&path, &[("status", "paused")]).await.status, 422);

    let t = sim.ground_truth();
    assert_eq!(t.live_count(&wf, ExecStatus::Waiting), 0);
    assert_eq!(t.live_count(&wf, ExecStatus::Running), 1);
    assert_eq!(t.unknown_status[&(wf.clone(), "paused".to_owned())], 1);
    assert!(t.per_conversation.is_empty());
    assert_eq!(t.started[&wf], 0);
    assert_eq!(t.finished.values().sum::<u64>(), 0);

    // Back to a live status: listed again, still no start; then a finish counts once.
    sim.set_status(&a, ExecStatus::Handoff);
    let handoff = api.all_rows(&path, &[("status", "handoff")]).await;
    assert_eq!(ids(&handoff), vec![a.clone()]);
    sim.set_unknown_status(&a, "paused");
    sim.set_status(&a, ExecStatus::Ended);
    sim.set_unknown_status(&b, "queued");
    let t = sim.ground_truth();
    assert_eq!(t.started[&wf], 0);
    assert_eq!(t.handoffs[&wf], 1);
    assert_eq!(t.finished[&(wf.clone(), ExecStatus::Ended)], 1);
    assert_eq!(t.live_total(), 0);
    assert_eq!(t.unknown_status.len(), 1);
    let statuses: HashMap<String, String> = api
        .all_rows(&path, &[])
        .await
        .iter()
        .map(|r| {
            (
                ids(std::slice::from_ref(r))[0].clone(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(statuses[&a], "ended");
    assert_eq!(statuses[&b], "queued");
}

#[tokio::test]
async fn duplicates_on_the_wire_while_truth_counts_each_execution_once() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let other = sim.add_workflow("Sales", "active");
    let conv = sim.add_conversation();
    let mut started = Vec::new();
    for _ in 0..10 {
        clock.advance(Duration::from_secs(1));
        started.push(sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting));
    }
    started.reverse();
    sim.set_variance(Variance::parse_list("duplicates").unwrap());
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");

    // The same workflow twice in one listing (the newest, again at the end).
    let listed = ids(&rows(&api.get("workflows", &[]).await.json()));
    assert_eq!(listed, vec![other.clone(), wf.clone(), other.clone()]);

    // The last row of a page is the first of the next; no row is lost.
    let p1 = api.get(&path, &[("limit", "4")]).await.json();
    let next = p1["paging"]["next"].as_str().unwrap().to_owned();
    let p2 = api
        .get(&path, &[("limit", "4"), ("after", &next)])
        .await
        .json();
    assert_eq!(rows(&p2)[0]["id"], rows(&p1)[3]["id"]);
    assert_eq!(rows(&p2).len(), 4);
    let walked = ids(&api.all_rows(&path, &[("limit", "4")]).await);
    assert!(walked.len() > 10, "{walked:?}");
    let unique: Vec<String> = walked.iter().fold(Vec::new(), |mut seen, id| {
        if !seen.contains(id) {
            seen.push(id.clone());
        }
        seen
    });
    assert_eq!(unique, started);

    // An execution that moved from waiting to handoff is in both lists once, showing its
    // current row in both.
    clock.advance(Duration::from_secs(1));
    let moved = started[0].clone();
    sim.set_status(&moved, ExecStatus::Handoff);
    for list in [
        path.clone(),
        format!("whatsapp/conversations/{conv}/flow_executions"),
    ] {
        for status in ["waiting", "handoff"] {
            let rows = api
                .all_rows(&list, &[("status", status), ("limit", "100")])
                .await;
            let hits: Vec<&Value> = rows.iter().filter(|r| r["id"] == moved.as_str()).collect();
            assert_eq!(hits.len(), 1, "{list} {status}");
            assert_eq!(hits[0]["status"], "handoff");
        }
    }
    let t = sim.ground_truth();
    assert_eq!(t.live_count(&wf, ExecStatus::Waiting), 9);
    assert_eq!(t.live_count(&wf, ExecStatus::Handoff), 1);
    assert_eq!(
        t.per_conversation[&(conv.clone(), wf.clone(), ExecStatus::Waiting)],
        9
    );
    // Its next status change ends the stale listing.
    sim.set_status(&moved, ExecStatus::Ended);
    let waiting = api
        .all_rows(&path, &[("status", "waiting"), ("limit", "100")])
        .await;
    assert!(!ids(&waiting).contains(&moved));
}

#[tokio::test]
async fn bad_rows_render_odd_starts_while_filters_use_the_true_one() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let mut started = Vec::new();
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        started.push(sim.start_execution(&wf, None, ExecStatus::Running));
    }
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");
    let true_rows = api.all_rows(&path, &[]).await;
    let true_start = |id: &str| {
        true_rows.iter().find(|r| r["id"] == id).unwrap()["started_at"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    sim.set_start_override(&started[0], StartOverride::Missing);
    sim.set_start_override(&started[1], StartOverride::Null);
    sim.set_start_override(&started[2], StartOverride::Year(9999));
    sim.set_start_override(&started[3], StartOverride::Year(1970));
    let by_id = |rows: Vec<Value>| -> HashMap<String, Value> {
        rows.into_iter()
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
            .collect()
    };
    let shown = by_id(api.all_rows(&path, &[]).await);
    assert!(
        !shown[&started[0]]
            .as_object()
            .unwrap()
            .contains_key("started_at")
    );
    assert!(shown[&started[1]]["started_at"].is_null());
    let far = shown[&started[2]]["started_at"].as_str().unwrap();
    assert_eq!(far, true_start(&started[2]).replacen("2026", "9999", 1));
    let epoch = shown[&started[3]]["started_at"].as_str().unwrap();
    assert!(epoch.starts_with("1970-05-15T13:"), "{epoch}");
    assert_eq!(
        shown[&started[4]]["started_at"],
        true_start(&started[4]).as_str()
    );
    // The detail shows the same; order, filters and truth use the true start.
    let detail = api
        .get(&format!("workflow_executions/{}", started[2]), &[])
        .await
        .json();
    assert_eq!(detail["data"]["started_at"], far);
    assert_eq!(ids(&api.all_rows(&path, &[]).await), ids(&true_rows));
    let future = api
        .all_rows(&path, &[("created_after", "3000-01-01T00:00:00Z")])
        .await;
    assert!(future.is_empty());
    let cutoff = true_start(&started[2]);
    let since = api.all_rows(&path, &[("created_after", &cutoff)]).await;
    assert_eq!(since.len(), 3);
    assert_eq!(sim.ground_truth().live_count(&wf, ExecStatus::Running), 5);
    sim.clear_start_override(&started[0]);
    let row = by_id(api.all_rows(&path, &[]).await)
        .remove(&started[0])
        .unwrap();
    assert_eq!(row["started_at"], true_start(&started[0]).as_str());

    // The rate picks rows by id: every row at 1.0, the same ones on every request.
    sim.set_variance(Variance {
        bad_start_rate: 1.0,
        ..Variance::default()
    });
    let a = api.all_rows(&path, &[]).await;
    assert_eq!(a, api.all_rows(&path, &[]).await);
    for r in a
        .iter()
        .filter(|r| !started[1..4].contains(&r["id"].as_str().unwrap().to_owned()))
    {
        let id = r["id"].as_str().unwrap();
        assert_ne!(
            r.get("started_at").and_then(Value::as_str),
            Some(true_start(id).as_str())
        );
    }
}

#[tokio::test]
async fn workflows_hide_empty_lose_created_at_fail_and_get_deleted() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    let exec = sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    let old = sim.add_workflow_at("Archive", "archived", datetime!(2025-01-01 00:00:00 UTC));
    clock.advance(Duration::from_secs(60));
    let fresh = sim.add_workflow("Fresh", "draft");
    sim.omit_created_at(&fresh, true);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let listing = || async { ids(&rows(&api.get("workflows", &[]).await.json())) };

    // Created now without created_at; filters still know when it was created.
    let body = api.get(&format!("workflows/{fresh}"), &[]).await.json();
    assert!(!body["data"].as_object().unwrap().contains_key("created_at"));
    assert_eq!(body["data"]["updated_at"], "2026-05-15T13:06:00.250000Z");
    let recent = api
        .get("workflows", &[("created_after", "2026-05-15T13:05:30Z")])
        .await;
    assert_eq!(ids(&rows(&recent.json())), vec![fresh.clone()]);
    let created =
        api.get(&format!("workflows/{old}"), &[]).await.json()["data"]["created_at"].clone();
    assert_eq!(created, "2025-01-01T00:00:00Z");
    assert_eq!(
        listing().await,
        vec![fresh.clone(), wf.clone(), old.clone()]
    );

    // Hidden from the next two listings, then back; its own endpoints answer throughout.
    sim.hide_workflow(&wf, 2);
    assert_eq!(listing().await, vec![fresh.clone(), old.clone()]);
    assert_eq!(api.get(&format!("workflows/{wf}"), &[]).await.status, 200);
    assert_eq!(
        api.get(&format!("workflows/{wf}/executions"), &[])
            .await
            .status,
        200
    );
    assert_eq!(listing().await, vec![fresh.clone(), old.clone()]);
    assert_eq!(listing().await.len(), 3);

    // An empty listing, once.
    sim.empty_workflow_lists(1);
    assert_eq!(api.get("workflows", &[]).await.json(), json!({"data": []}));
    assert_eq!(listing().await.len(), 3);
    // Ground truth is unmoved by either.
    assert_eq!(sim.ground_truth().workflows.len(), 3);

    // The executions list fails with a flat error until cleared.
    let path = format!("workflows/{wf}/executions");
    for status in [422u16, 404] {
        sim.fail_workflow_executions(&wf, Some(status));
        let r = api.get(&path, &[("status", "waiting")]).await;
        assert_eq!(r.status, status);
        let body = r.json();
        assert!(
            body["error"].is_string() && body.as_object().unwrap().len() == 1,
            "{body}"
        );
    }
    sim.fail_workflow_executions(&wf, None);
    assert_eq!(api.get(&path, &[]).await.status, 200);

    // Deleted: out of the list, 404 on it, its executions list and its executions.
    sim.delete_workflow(&wf);
    assert_eq!(listing().await, vec![fresh.clone(), old.clone()]);
    for p in [
        format!("workflows/{wf}"),
        path.clone(),
        format!("workflow_executions/{exec}"),
    ] {
        let r = api.get(&p, &[]).await;
        assert_eq!(r.status, 404, "{p}");
        assert!(r.json()["error"].is_string());
    }
    let conv_rows = api
        .all_rows(
            &format!("whatsapp/conversations/{conv}/flow_executions"),
            &[],
        )
        .await;
    assert!(conv_rows.is_empty());
    let truth = sim.ground_truth();
    assert!(truth.workflows.iter().all(|w| w.id != wf));
    assert!(truth.live.keys().all(|(id, _)| *id != wf));
    assert!(truth.per_conversation.is_empty());
    // Scripted calls on a deleted workflow are ignored.
    assert_eq!(sim.start_execution(&wf, None, ExecStatus::Running), "");
}

/// Live counts per (workflow, status) as a client that dedupes by id and trusts each row's
/// own status would compute them from the status-filtered lists.
async fn deduped_live_counts(
    api: &Api,
    workflows: &[String],
) -> BTreeMap<(String, ExecStatus), u64> {
    let mut counts = BTreeMap::new();
    for wf in workflows {
        let mut seen: HashMap<String, ExecStatus> = HashMap::new();
        for status in ExecStatus::LIVE {
            let rows = api
                .all_rows(
                    &format!("workflows/{wf}/executions"),
                    &[("status", status.as_str()), ("limit", "100")],
                )
                .await;
            for r in rows {
                let shown = ExecStatus::parse(r["status"].as_str().unwrap()).unwrap();
                seen.insert(r["id"].as_str().unwrap().to_owned(), shown);
            }
        }
        for status in ExecStatus::LIVE {
            let n = seen.values().filter(|&&s| s == status).count() as u64;
            counts.insert((wf.clone(), status), n);
        }
    }
    counts
}

#[tokio::test]
async fn tick_driven_variances_keep_ground_truth_exact() {
    let variance = Variance {
        unknown_statuses: true,
        deletions: true,
        flaky_workflow_list: true,
        stale_live_lists: true,
        overlapping_pages: true,
        shrinking_count: true,
        ..Variance::default()
    };
    let (sim, clock) = populated(variance);
    sim.set_finish_rate(30.0);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let mut saw = (false, false, false);
    for round in 0..8 {
        clock.advance(Duration::from_secs(60));
        sim.tick(Duration::from_secs(60));
        let truth = sim.ground_truth();
        let wf_ids: Vec<String> = truth.workflows.iter().map(|w| w.id.clone()).collect();
        assert_eq!(
            deduped_live_counts(&api, &wf_ids).await,
            truth.live,
            "round {round}"
        );
        // Overlapping pages repeat a row at each page boundary: count each id once.
        let mut paused: BTreeMap<(String, String), HashSet<String>> = BTreeMap::new();
        for wf in &wf_ids {
            let all = api
                .all_rows(&format!("workflows/{wf}/executions"), &[("limit", "100")])
                .await;
            let unique: HashSet<String> = ids(&all).into_iter().collect();
            let t = truth.workflows.iter().find(|t| &t.id == wf).unwrap();
            assert_eq!(unique.len() as u64, t.existing_executions, "round {round}");
            let shown = api.get(&format!("workflows/{wf}"), &[]).await.json();
            assert_eq!(shown["data"]["execution_count"], t.existing_executions);
            for r in &all {
                let status = r["status"].as_str().unwrap();
                if ExecStatus::parse(status).is_none() {
                    let id = r["id"].as_str().unwrap().to_owned();
                    paused
                        .entry((wf.clone(), status.to_owned()))
                        .or_default()
                        .insert(id);
                }
            }
            saw.1 |= t.existing_executions < t.execution_count;
        }
        let paused: BTreeMap<(String, String), u64> = paused
            .into_iter()
            .map(|(k, ids)| (k, ids.len() as u64))
            .collect();
        assert_eq!(paused, truth.unknown_status, "round {round}");
        saw.0 |= !truth.unknown_status.is_empty();
        let listed: HashSet<String> = ids(&rows(&api.get("workflows", &[]).await.json()))
            .into_iter()
            .collect();
        assert!(listed.iter().all(|id| wf_ids.contains(id)));
        saw.2 |= listed.len() < wf_ids.len();
    }
    assert!(saw.0, "no execution went paused");
    assert!(saw.1, "no execution was deleted");
    assert!(saw.2, "no listing was flaky");
}

#[test]
fn demo_variance_flag_parses_presets_and_rejects_bad_ones() {
    let load = |args: &[&str]| {
        let mut all = vec!["kapso-exporter"];
        all.extend_from_slice(args);
        let cli = <Cli as clap::Parser>::try_parse_from(all).unwrap();
        Config::load(&cli, &|_| None)
    };
    let config = load(&["--demo", "--demo.variance", "seconds,offset=-03:00"]).unwrap();
    assert_eq!(
        config.demo_variance.precision,
        Precisions::all(Precision::Seconds)
    );
    assert_eq!(
        config.demo_variance.utc_offset,
        UtcOffset::from_hms(-3, 0, 0).ok()
    );
    assert_eq!(
        load(&["--demo"]).unwrap().demo_variance,
        Variance::default()
    );
    assert_eq!(
        load(&["--demo", "--demo.variance", "all"])
            .unwrap()
            .demo_variance,
        Variance::all()
    );
    for (args, needle) in [
        (vec!["--demo.variance", "seconds"], "--demo.variance"),
        (vec!["--demo", "--demo.variance", "sekonds"], "sekonds"),
        (vec!["--demo", "--demo.variance", ""], "--demo.variance"),
        (
            vec!["--demo", "--demo.variance", "seconds,,millis"],
            "empty item",
        ),
        (vec!["--demo", "--demo.variance", "offset=+5"], "offset=+5"),
        (
            vec!["--demo", "--demo.variance", "lagging-counts=soon"],
            "lagging-counts",
        ),
    ] {
        let e = load(&args).expect_err("invalid").to_string();
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains('\n'), "{args:?}: {e}");
    }

    // The binary turns them into one line on stderr and exit code 64.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kapso-exporter"))
        .args([
            "--demo",
            "--demo.variance",
            "nope",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .env_remove("KAPSO_API_KEY")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
}
