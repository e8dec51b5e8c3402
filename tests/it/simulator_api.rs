//! The simulator over real HTTP: paging, filters, errors, rate limits, faults, and ground truth
//! that agrees with what the API lists.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::sim_support::Api;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{ExecStatus, Faults, Simulator, SimulatorConfig, endpoints};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const KEY: &str = "test-key";
const START: OffsetDateTime = datetime!(2026-05-15 13:05:00 UTC);

fn ts(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn decode(cursor: &str) -> Value {
    serde_json::from_slice(&STANDARD.decode(cursor).unwrap()).unwrap()
}

/// A populated simulator on a manual clock, with `n` live executions.
fn populated(live: usize, rate_limit: Option<u32>) -> (Simulator, Clock) {
    let clock = Clock::manual(START);
    let config = SimulatorConfig {
        api_key: KEY.to_owned(),
        live_executions: live,
        rate_limit_per_minute: rate_limit,
        latency: Duration::ZERO,
        ..SimulatorConfig::demo()
    };
    (Simulator::new(config, clock.clone()), clock)
}

#[tokio::test]
async fn pages_250_executions_100_100_50_and_back() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    for i in 0..250 {
        // Half start in the same instant: started_at is bumped by 1 µs to keep order total.
        if i % 2 == 0 {
            clock.advance(Duration::from_millis(1500));
        }
        sim.start_execution(&wf, None, ExecStatus::Running);
    }
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");

    let p1 = api.get(&path, &[("limit", "100")]).await.json();
    assert_eq!(p1["data"].as_array().unwrap().len(), 100);
    assert!(
        p1["paging"]["previous"].is_null(),
        "no previous on the first page"
    );
    let next1 = p1["paging"]["next"].as_str().unwrap().to_owned();
    assert_eq!(
        p1["paging"]["cursors"]["after"].as_str(),
        Some(next1.as_str())
    );

    // The cursor is base64 JSON exactly as documented, for the page's last row.
    let last = &p1["data"][99];
    let decoded = decode(&next1);
    assert_eq!(decoded["columns"], json!(["created_at", "id"]));
    assert_eq!(decoded["values"][1], last["id"]);
    let cursor_ts = decoded["values"][0].as_str().unwrap();
    assert_eq!(
        cursor_ts.len(),
        "2026-05-15T13:05:00.000000Z".len(),
        "{cursor_ts}"
    );
    assert_eq!(ts(&decoded["values"][0]), ts(&last["started_at"]));
    let raw = String::from_utf8(STANDARD.decode(&next1).unwrap()).unwrap();
    assert!(
        raw.starts_with(r#"{"values":[""#) && raw.ends_with(r#""],"columns":["created_at","id"]}"#)
    );

    let p2 = api
        .get(&path, &[("limit", "100"), ("after", &next1)])
        .await
        .json();
    assert_eq!(p2["data"].as_array().unwrap().len(), 100);
    assert!(p2["paging"]["previous"].is_string());
    let next2 = p2["paging"]["next"].as_str().unwrap().to_owned();
    let p3 = api
        .get(&path, &[("limit", "100"), ("after", &next2)])
        .await
        .json();
    assert_eq!(p3["data"].as_array().unwrap().len(), 50);
    assert!(
        p3["paging"]["next"].is_null(),
        "next is null on the last page"
    );

    let mut all = ids(p1["data"].as_array().unwrap());
    all.extend(ids(p2["data"].as_array().unwrap()));
    all.extend(ids(p3["data"].as_array().unwrap()));
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 250);
    // Newest first, strictly.
    let rows: Vec<Value> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().clone())
        .collect();
    assert!(
        rows.windows(2)
            .all(|w| ts(&w[0]["started_at"]) > ts(&w[1]["started_at"]))
    );

    // `before` goes back to the previous page.
    let previous = p3["paging"]["previous"].as_str().unwrap();
    let back = api
        .get(&path, &[("limit", "100"), ("before", previous)])
        .await
        .json();
    assert_eq!(back["data"], p2["data"]);

    // Exactly `limit` rows left: the page is full and next is still null.
    let wf2 = sim.add_workflow("Exact", "active");
    for _ in 0..200 {
        sim.start_execution(&wf2, None, ExecStatus::Waiting);
    }
    let rows = api
        .all_rows(&format!("workflows/{wf2}/executions"), &[("limit", "100")])
        .await;
    assert_eq!(rows.len(), 200);
    let p = api
        .get(&format!("workflows/{wf2}/executions"), &[("limit", "100")])
        .await
        .json();
    let after = p["paging"]["next"].as_str().unwrap().to_owned();
    let second = api
        .get(
            &format!("workflows/{wf2}/executions"),
            &[("limit", "100"), ("after", &after)],
        )
        .await
        .json();
    assert_eq!(second["data"].as_array().unwrap().len(), 100);
    assert!(second["paging"]["next"].is_null());
    // The default page size is 20.
    let default = api.get(&path, &[]).await.json();
    assert_eq!(default["data"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn filters_status_dates_and_conversation() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let other = sim.add_workflow("Sales", "active");
    let conv = sim.add_conversation();
    let mut started = Vec::new();
    for i in 0..10 {
        clock.advance(Duration::from_secs(60));
        let status = if i % 2 == 0 {
            ExecStatus::Running
        } else {
            ExecStatus::Waiting
        };
        let c = (i % 3 == 0).then_some(conv.as_str());
        started.push(sim.start_execution(&wf, c, status));
    }
    let in_other = sim.start_execution(&other, Some(&conv), ExecStatus::Handoff);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let path = format!("workflows/{wf}/executions");

    let waiting = api.all_rows(&path, &[("status", "waiting")]).await;
    assert_eq!(waiting.len(), 5);
    assert!(waiting.iter().all(|r| r["status"] == "waiting"));

    // created_after / created_before are inclusive and filter on started_at.
    let all = api.all_rows(&path, &[]).await;
    let pivot = all[3]["started_at"].as_str().unwrap().to_owned();
    let after = api.all_rows(&path, &[("created_after", &pivot)]).await;
    assert_eq!(ids(&after), ids(&all[..4]));
    let before = api.all_rows(&path, &[("created_before", &pivot)]).await;
    assert_eq!(ids(&before), ids(&all[3..]));
    let both = api
        .all_rows(
            &path,
            &[
                ("created_after", &pivot),
                ("created_before", &pivot),
                ("waiting_reason", "timeout"),
            ],
        )
        .await;
    assert_eq!(ids(&both), ids(&all[3..4]));

    // The conversation filter keeps this workflow's rows of that conversation.
    let by_conv = api
        .all_rows(&path, &[("whatsapp_conversation_id", &conv)])
        .await;
    assert_eq!(by_conv.len(), 4);
    assert!(
        by_conv
            .iter()
            .all(|r| r["whatsapp_conversation_id"] == conv.as_str())
    );
    // The conversation endpoint lists every workflow's rows for it.
    let conv_path = format!("whatsapp/conversations/{conv}/flow_executions");
    let conv_rows = api.all_rows(&conv_path, &[]).await;
    assert_eq!(conv_rows.len(), 5);
    assert_eq!(conv_rows[0]["id"], in_other.as_str());
    let handoff = api.all_rows(&conv_path, &[("status", "handoff")]).await;
    assert_eq!(ids(&handoff), vec![in_other.clone()]);

    // The list of workflows: newest first, filters.
    let wfs = api.get("workflows", &[]).await.json();
    assert_eq!(wfs["data"][0]["id"], other.as_str());
    assert_eq!(wfs["data"][0]["execution_count"], 1);
    assert_eq!(wfs["data"][1]["execution_count"], 10);
    assert_eq!(wfs["data"][1]["last_executed_at"], all[0]["started_at"]);
    let named = api
        .get("workflows", &[("name_contains", "SUPP")])
        .await
        .json();
    assert_eq!(named["data"].as_array().unwrap().len(), 1);
    let draft = api.get("workflows", &[("status", "draft")]).await.json();
    assert_eq!(draft["data"], json!([]));
    let created = wfs["data"][0]["created_at"].as_str().unwrap().to_owned();
    let since = api
        .get("workflows", &[("created_after", &created)])
        .await
        .json();
    assert_eq!(since["data"].as_array().unwrap().len(), 1);
    let one = api.get(&format!("workflows/{wf}"), &[]).await.json();
    assert_eq!(one["data"], wfs["data"][1]);
}

#[tokio::test]
async fn auth_not_found_and_validation_errors() {
    let (sim, _clock) = populated(40, None);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let wf = sim.ground_truth().workflows[0].id.clone();

    for key in [None, Some("wrong")] {
        let r = api.get_as(key, "workflows", &[]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json(), json!({"error": "Invalid or missing API key"}));
    }
    // Bearer is not accepted on the Platform API.
    let r = api
        .client
        .get(format!("{}/workflows", api.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    sim.set_api_key("rotated");
    assert_eq!(api.get("workflows", &[]).await.status, 401);
    assert_eq!(
        api.get_as(Some("rotated"), "workflows", &[]).await.status,
        200
    );
    sim.set_api_key(KEY);

    let missing = "550e8400-e29b-41d4-a716-446655440000";
    for (path, error) in [
        (format!("workflows/{missing}"), "Workflow not found"),
        ("workflows/not-a-uuid".to_owned(), "Workflow not found"),
        (
            format!("workflows/{missing}/executions"),
            "Workflow not found",
        ),
        (
            format!("whatsapp/conversations/{missing}/flow_executions"),
            "Conversation not found",
        ),
        (
            format!("whatsapp/conversations/{missing}"),
            "Conversation not found",
        ),
        (
            format!("workflow_executions/{missing}"),
            "Workflow execution not found",
        ),
        ("nothing/here".to_owned(), "Not found"),
    ] {
        let r = api.get(&path, &[]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json(), json!({ "error": error }), "{path}");
    }

    let path = format!("workflows/{wf}/executions");
    let conv_cursor = STANDARD.encode(
        r#"{"values":["2026-05-15T13:05:00.000000Z","550e8400-e29b-41d4-a716-446655440000"],"columns":["last_active_at","id"]}"#,
    );
    for query in [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "ten"),
        ("after", "garbage!"),
        ("before", "eyJub3QiOiJhIGN1cnNvciJ9"),
        ("after", conv_cursor.as_str()),
        ("status", "paused"),
        ("created_after", "yesterday"),
    ] {
        let r = api.get(&path, &[query]).await;
        assert_eq!(r.status, 422, "{query:?}");
        assert!(r.json()["error"].is_string(), "{query:?}");
    }
    assert_eq!(api.get(&path, &[("limit", "100")]).await.status, 200);
    assert_eq!(api.get(&path, &[("limit", "1")]).await.status, 200);
    assert_eq!(
        api.get("whatsapp/conversations", &[("status", "open")])
            .await
            .status,
        422
    );
    assert_eq!(
        api.get("whatsapp/conversations", &[("limit", "500")])
            .await
            .status,
        422
    );
    let conv_path = "whatsapp/conversations";
    assert_eq!(
        api.get(conv_path, &[("after", conv_cursor.as_str())])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn rate_limit_refuses_the_sixth_request_in_a_minute() {
    let (sim, _clock) = populated(10, Some(5));
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    for i in 0..5 {
        let r = api.get("workflows", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((4 - i).to_string().as_str())
        );
    }
    let r = api.get("workflows", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body = r.json();
    assert_eq!(body["error"], "Rate limit exceeded");
    assert!(body["message"].is_string());
    // A bad key does not spend the project's budget.
    assert_eq!(
        api.get_as(Some("other"), "workflows", &[]).await.status,
        401
    );
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.max_in_window, 5);
    assert_eq!(
        stats.by_endpoint[&(endpoints::WORKFLOWS.to_owned(), 200)],
        5
    );
    assert_eq!(stats.count(endpoints::WORKFLOWS), 7);
    assert_eq!(stats.count_status(429), 1);
}

/// Lists every live execution through the API and counts it per workflow and status.
async fn live_counts_via_api(
    api: &Api,
    workflow_ids: &[String],
) -> BTreeMap<(String, ExecStatus), u64> {
    let mut counts = BTreeMap::new();
    for wf in workflow_ids {
        for status in ExecStatus::LIVE {
            let rows = api
                .all_rows(
                    &format!("workflows/{wf}/executions"),
                    &[("status", status.as_str()), ("limit", "100")],
                )
                .await;
            assert!(rows.iter().all(|r| r["status"] == status.as_str()));
            counts.insert((wf.clone(), status), rows.len() as u64);
        }
    }
    counts
}

#[tokio::test]
async fn ground_truth_agrees_with_the_api_while_the_world_evolves() {
    let (sim, clock) = populated(400, None);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    for round in 0..3 {
        let truth = sim.ground_truth();
        let wf_ids: Vec<String> = truth.workflows.iter().map(|w| w.id.clone()).collect();
        assert_eq!(
            live_counts_via_api(&api, &wf_ids).await,
            truth.live,
            "round {round}"
        );
        assert_eq!(truth.live.len(), wf_ids.len() * 3, "zero-filled");

        let listed = api.get("workflows", &[]).await.json();
        for w in listed["data"].as_array().unwrap() {
            let id = w["id"].as_str().unwrap();
            let all = api
                .all_rows(&format!("workflows/{id}/executions"), &[("limit", "100")])
                .await;
            assert_eq!(w["execution_count"].as_u64(), Some(all.len() as u64));
            let t = truth.workflows.iter().find(|t| t.id == id).unwrap();
            assert_eq!(t.execution_count, all.len() as u64);
            // Oldest last_event_at per live status matches the rows.
            for status in ExecStatus::LIVE {
                let oldest = all
                    .iter()
                    .filter(|r| r["status"] == status.as_str())
                    .map(|r| ts(&r["last_event_at"]))
                    .min();
                assert_eq!(
                    oldest,
                    truth
                        .oldest_last_event
                        .get(&(id.to_owned(), status))
                        .copied()
                );
                let n = truth
                    .live_last_events
                    .get(&(id.to_owned(), status))
                    .map_or(0, Vec::len);
                assert_eq!(n as u64, truth.live_count(id, status));
            }
        }

        // Per-conversation truth matches the conversation endpoint.
        let mut per_conv: BTreeMap<(String, String, ExecStatus), u64> = BTreeMap::new();
        let convs = api
            .all_rows("whatsapp/conversations", &[("limit", "100")])
            .await;
        assert_eq!(convs.len(), 60);
        for c in &convs {
            let cid = c["id"].as_str().unwrap();
            for r in api
                .all_rows(
                    &format!("whatsapp/conversations/{cid}/flow_executions"),
                    &[],
                )
                .await
            {
                if let Some(s) =
                    ExecStatus::parse(r["status"].as_str().unwrap()).filter(|s| s.is_live())
                {
                    let wf = r["workflow"]["id"].as_str().unwrap().to_owned();
                    *per_conv.entry((cid.to_owned(), wf, s)).or_default() += 1;
                }
            }
        }
        assert_eq!(per_conv, truth.per_conversation);

        clock.advance(Duration::from_secs(30));
        sim.tick(Duration::from_secs(30));
    }
    let truth = sim.ground_truth();
    assert!(truth.started.values().sum::<u64>() > 0, "{truth:?}");
    sim.mark();
    assert_eq!(sim.ground_truth().started.values().sum::<u64>(), 0);
}

#[tokio::test]
async fn scripted_changes_show_exact_timestamps() {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    let a = sim.start_execution(&wf, Some(&conv), ExecStatus::Running);
    let b = sim.start_execution(&wf, None, ExecStatus::Running);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);

    let detail = api
        .get(&format!("workflow_executions/{b}"), &[])
        .await
        .json();
    // Two starts in one instant: the second is 1 µs later, printed with a fraction.
    assert_eq!(detail["data"]["started_at"], "2026-05-15T13:05:00.000001Z");
    let detail = api
        .get(&format!("workflow_executions/{a}"), &[])
        .await
        .json();
    assert_eq!(detail["data"]["started_at"], "2026-05-15T13:05:00Z");
    assert!(detail["data"]["ended_at"].is_null());
    assert_eq!(detail["data"]["whatsapp_conversation_id"], conv.as_str());

    clock.advance(Duration::from_secs(90));
    sim.set_status(&a, ExecStatus::Waiting);
    let d = api
        .get(&format!("workflow_executions/{a}"), &[])
        .await
        .json()["data"]
        .clone();
    assert_eq!(d["status"], "waiting");
    assert_eq!(d["last_event_at"], "2026-05-15T13:06:30Z");
    assert_eq!(d["resumable_execution_id"], a.as_str());

    clock.advance(Duration::from_secs(30));
    sim.touch(&a);
    clock.advance(Duration::from_secs(30));
    sim.set_status(&b, ExecStatus::Failed);
    let d = api
        .get(&format!("workflow_executions/{b}"), &[])
        .await
        .json()["data"]
        .clone();
    assert_eq!(d["ended_at"], "2026-05-15T13:07:30Z");
    assert_eq!(d["last_event_at"], "2026-05-15T13:07:30Z");
    assert!(d["error_details"]["message"].is_string());
    assert_eq!(
        d["events"].as_array().unwrap().last().unwrap()["event_type"],
        "execution_failed"
    );

    let truth = sim.ground_truth();
    assert_eq!(
        truth.oldest_last_event[&(wf.clone(), ExecStatus::Waiting)],
        datetime!(2026-05-15 13:07:00 UTC)
    );
    assert_eq!(truth.finished[&(wf.clone(), ExecStatus::Failed)], 1);
    assert_eq!(
        truth.per_conversation[&(conv.clone(), wf.clone(), ExecStatus::Waiting)],
        1
    );

    // The conversation's last_active_at followed its execution's last event.
    let convs = api.get("whatsapp/conversations", &[]).await.json();
    assert_eq!(convs["data"][0]["last_active_at"], "2026-05-15T13:07:00Z");
    // Unknown ids are ignored, not a panic.
    sim.set_status("nope", ExecStatus::Ended);
    sim.touch("550e8400-e29b-41d4-a716-446655440000");
    assert_eq!(sim.start_execution("nope", None, ExecStatus::Running), "");
}

#[tokio::test]
async fn conversations_page_by_latest_activity() {
    let (sim, clock) = populated(100, None);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let rows = api
        .all_rows("whatsapp/conversations", &[("limit", "25")])
        .await;
    assert_eq!(rows.len(), 60);
    assert_eq!(
        rows.iter()
            .map(|r| r["id"].clone())
            .collect::<HashSet<_>>()
            .len(),
        60
    );
    assert!(
        rows.windows(2)
            .all(|w| ts(&w[0]["last_active_at"]) >= ts(&w[1]["last_active_at"]))
    );
    let first = api
        .get("whatsapp/conversations", &[("limit", "25")])
        .await
        .json();
    let cursor = decode(first["paging"]["next"].as_str().unwrap());
    assert_eq!(cursor["columns"], json!(["last_active_at", "id"]));

    let active = api
        .all_rows("whatsapp/conversations", &[("status", "active")])
        .await;
    let ended = api
        .all_rows("whatsapp/conversations", &[("status", "ended")])
        .await;
    assert_eq!(active.len() + ended.len(), 60);
    assert!(active.iter().all(|r| r["status"] == "active"));

    // An event on an execution moves its conversation to the front.
    let truth = sim.ground_truth();
    let (conv, wf, _) = truth.per_conversation.keys().last().unwrap().clone();
    let rows = api
        .all_rows(
            &format!("workflows/{wf}/executions"),
            &[("whatsapp_conversation_id", &conv)],
        )
        .await;
    let live = rows.iter().find(|r| r["ended_at"].is_null()).unwrap();
    clock.advance(Duration::from_secs(5));
    sim.touch(live["id"].as_str().unwrap());
    let now = api
        .get("whatsapp/conversations", &[("limit", "1")])
        .await
        .json();
    assert_eq!(now["data"][0]["id"], conv.as_str());
    let cutoff = now["data"][0]["last_active_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let recent = api
        .all_rows("whatsapp/conversations", &[("last_active_after", &cutoff)])
        .await;
    assert_eq!(ids(&recent), vec![conv]);
}

#[tokio::test]
async fn faults_are_injected_as_configured() {
    let (sim, _clock) = populated(150, None);
    let running = sim.spawn().await.unwrap();
    let api = Api::new(&running, KEY);
    let wf = sim.ground_truth().workflows[0].id.clone();
    let path = format!("workflows/{wf}/executions");

    sim.set_faults(Faults {
        fail_next: 3,
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = api.get("workflows", &[]).await;
        if r.status >= 500 {
            assert_eq!(r.json(), json!({"error": "Internal server error"}));
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![500, 502, 503, 200]);
    assert_eq!(sim.faults().fail_next, 0);

    sim.set_faults(Faults {
        malformed_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..4 {
        let r = api.get(&path, &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            serde_json::from_str::<Value>(&r.text).is_err(),
            "{}",
            r.text
        );
    }

    sim.set_faults(Faults {
        looping_cursor: true,
        ..Faults::default()
    });
    let first = api.get(&path, &[("limit", "5")]).await.json();
    let next = first["paging"]["next"].as_str().unwrap().to_owned();
    let again = api
        .get(&path, &[("limit", "5"), ("after", &next)])
        .await
        .json();
    assert_eq!(again["paging"]["next"].as_str(), Some(next.as_str()));

    sim.set_faults(Faults {
        unknown_status_rate: 1.0,
        ..Faults::default()
    });
    let rows = api.get(&path, &[]).await.json();
    assert!(
        rows["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| ExecStatus::parse(r["status"].as_str().unwrap()).is_none())
    );

    sim.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let t0 = std::time::Instant::now();
    assert_eq!(api.get("workflows", &[]).await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(150));

    sim.set_faults(Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    });
    assert!(api.get("workflows", &[]).await.status >= 500);
    sim.set_faults(Faults::default());
    assert_eq!(api.get("workflows", &[]).await.status, 200);
}

#[tokio::test]
async fn same_seed_same_answers_and_shutdown_stops_serving() {
    let (a, _) = populated(60, None);
    let (b, _) = populated(60, None);
    let ra = a.spawn().await.unwrap();
    let rb = b.spawn().await.unwrap();
    let (api_a, api_b) = (Api::new(&ra, KEY), Api::new(&rb, KEY));
    assert_eq!(
        api_a.get("workflows", &[]).await.text,
        api_b.get("workflows", &[]).await.text
    );
    let wf = a.ground_truth().workflows[1].id.clone();
    let path = format!("workflows/{wf}/executions");
    assert_eq!(
        api_a.get(&path, &[("limit", "100")]).await.text,
        api_b.get(&path, &[("limit", "100")]).await.text
    );

    let addr = ra.addr;
    ra.shutdown().await;
    let refused = reqwest::Client::new()
        .get(format!("http://{addr}/platform/v1/workflows"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "server still answering after shutdown");
}
