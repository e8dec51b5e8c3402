//! The simulator's Kapso webhooks: the registration API, the event bodies and headers, the
//! signature, Kapso's retry schedule on a manual clock, one event per ground-truth increment,
//! and each delivery fault. A real axum receiver on 127.0.0.1 records every request.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{
    DeliveryReport, EVENT_FAILED, EVENT_HANDOFF, ExecStatus, Simulator, SimulatorConfig, Variance,
    WebhookFaults, WebhookOptions, webhook_signature,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const KEY: &str = "hook-key";
const SECRET: &str = "whsec-simulated";
const START: OffsetDateTime = datetime!(2026-05-15 13:05:00.25 UTC);
const BOTH: [&str; 2] = [EVENT_FAILED, EVENT_HANDOFF];

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn key(&self) -> String {
        self.header("x-idempotency-key").to_owned()
    }
}

/// What the receiver answers: this status (0: never answers), or with `verify` set, 401 for
/// a bad signature and 200 otherwise.
#[derive(Default)]
struct ReceiverState {
    seen: Mutex<Vec<Received>>,
    status: AtomicU16,
    verify: Option<String>,
}

struct Receiver {
    state: Arc<ReceiverState>,
    url: String,
}

impl Receiver {
    async fn start(status: u16, verify: Option<&str>) -> Receiver {
        let state = Arc::new(ReceiverState {
            seen: Mutex::default(),
            status: AtomicU16::new(status),
            verify: verify.map(str::to_owned),
        });
        let app = Router::new()
            .route("/webhooks/kapso", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            state,
            url: format!("http://{addr}/webhooks/kapso"),
        }
    }

    fn seen(&self) -> Vec<Received> {
        self.state.seen.lock().unwrap().clone()
    }

    fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.seen.lock().unwrap().push(Received {
        headers: headers.clone(),
        body: body.clone(),
    });
    if let Some(secret) = &state.verify {
        let given = headers
            .get("x-webhook-signature")
            .and_then(|v| v.to_str().ok());
        return if given == Some(webhook_signature(secret, &body).as_str()) {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
    }
    match state.status.load(Ordering::SeqCst) {
        0 => std::future::pending().await,
        s => StatusCode::from_u16(s).unwrap(),
    }
}

/// An empty simulator on a manual clock with one workflow and one conversation.
fn scripted() -> (Simulator, Clock, String, String) {
    let clock = Clock::manual(START);
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    (sim, clock, wf, conv)
}

/// `n` failed executions, one per millisecond.
fn fail_many(sim: &Simulator, clock: &Clock, wf: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            clock.advance(Duration::from_millis(1));
            sim.start_execution(wf, None, ExecStatus::Failed)
        })
        .collect()
}

/// The simulator's form: UTC, six fractional digits (the documented cursor form).
fn rfc3339(t: OffsetDateTime) -> String {
    kapso_exporter::kapso::models::format_timestamp(t)
}

#[tokio::test]
async fn registration_api() {
    let (sim, _clock, _, _) = scripted();
    let running = sim.spawn().await.unwrap();
    let base = format!("{}/whatsapp/webhooks", running.base_url);
    let client = reqwest::Client::new();
    let post = |key: &'static str, body: Value| {
        client
            .post(&base)
            .header("X-API-Key", key)
            .json(&body)
            .send()
    };
    let good = json!({"whatsapp_webhook": {
        "url": "http://127.0.0.1:9/webhooks/kapso",
        "secret_key": SECRET,
        "events": [EVENT_FAILED, EVENT_HANDOFF],
        "headers": {"X-Custom": "1"},
    }});
    let created = post(KEY, good.clone()).await.unwrap();
    assert_eq!(created.status(), 201);
    let data = created.json::<Value>().await.unwrap()["data"].clone();
    assert_eq!(data["url"], "http://127.0.0.1:9/webhooks/kapso");
    assert_eq!(data["kind"], "kapso");
    assert_eq!(data["active"], true);
    assert_eq!(data["payload_version"], "v2");
    assert_eq!(data["events"], json!([EVENT_FAILED, EVENT_HANDOFF]));
    assert_eq!(data["secret_key"], SECRET);
    assert_eq!(data["headers"], json!({"X-Custom": "1"}));
    assert_eq!(data["phone_number_id"], Value::Null);
    assert_eq!(data["created_at"], rfc3339(START));
    assert_eq!(data["updated_at"], rfc3339(START));
    for field in ["id", "project_id"] {
        let s = data[field].as_str().unwrap();
        assert_eq!((s.len(), s.matches('-').count()), (36, 4), "{field}: {s}");
    }
    let id = data["id"].as_str().unwrap().to_owned();

    let mut bad = Vec::new();
    for field in ["url", "secret_key", "events"] {
        let mut body = good.clone();
        body["whatsapp_webhook"]
            .as_object_mut()
            .unwrap()
            .remove(field);
        bad.push((format!("missing {field}"), body));
    }
    let mut body = good.clone();
    body["whatsapp_webhook"]["url"] = json!("ftp://example.test/hook");
    bad.push(("ftp url".to_owned(), body));
    let mut body = good.clone();
    body["whatsapp_webhook"]["url"] = json!("not a url");
    bad.push(("no url".to_owned(), body));
    let mut body = good.clone();
    body["whatsapp_webhook"]["events"] = json!([]);
    bad.push(("empty events".to_owned(), body));
    let mut body = good.clone();
    body["whatsapp_webhook"]["events"] = json!([1]);
    bad.push(("events not strings".to_owned(), body));
    bad.push(("no envelope".to_owned(), json!({"url": "http://x.test/"})));
    for (name, body) in bad {
        let r = post(KEY, body).await.unwrap();
        assert_eq!(r.status(), 422, "{name}");
        let body = r.json::<Value>().await.unwrap();
        assert!(body["error"].is_string(), "{name}: {body}");
    }
    let r = post("wrong-key", good.clone()).await.unwrap();
    assert_eq!(r.status(), 401);

    let listed = client
        .get(&base)
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed = listed.json::<Value>().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], id.as_str());

    let delete = |id: String| {
        client
            .delete(format!("{base}/{id}"))
            .header("X-API-Key", KEY)
            .send()
    };
    assert_eq!(delete(id.clone()).await.unwrap().status(), 204);
    assert_eq!(delete(id).await.unwrap().status(), 404);
    assert_eq!(delete("nope".to_owned()).await.unwrap().status(), 404);
    let stats = sim.stats();
    assert!(stats.count("/whatsapp/webhooks") > 0);
    assert!(stats.count("/whatsapp/webhooks/{webhook_id}") > 0);
}

#[tokio::test]
async fn events_carry_the_documented_body_headers_and_signature() {
    let (sim, clock, wf, conv) = scripted();
    let rx = Receiver::start(200, None).await;
    // Registered over HTTP, with a custom header.
    let running = sim.spawn().await.unwrap();
    let created = reqwest::Client::new()
        .post(format!("{}/whatsapp/webhooks", running.base_url))
        .header("X-API-Key", KEY)
        .json(&json!({"whatsapp_webhook": {
            "url": rx.url, "secret_key": SECRET, "events": BOTH, "headers": {"X-Tenant": "t1"},
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let project_id = created.json::<Value>().await.unwrap()["data"]["project_id"]
        .as_str()
        .unwrap()
        .to_owned();

    clock.advance(Duration::from_secs(1));
    let handoff_at = clock.now();
    let handed = sim.start_execution(&wf, Some(&conv), ExecStatus::Handoff);
    let running_exec = sim.start_execution(&wf, None, ExecStatus::Running);
    clock.advance(Duration::from_micros(1_234_567));
    let failed_at = clock.now();
    sim.set_status(&running_exec, ExecStatus::Failed);
    // Not an event: ended, waiting.
    sim.set_status(&handed, ExecStatus::Ended);

    let report = sim.deliver_due().await;
    assert_eq!(
        report,
        DeliveryReport {
            sent: 2,
            delivered: 2,
            failed: 0,
            dropped: 0,
            pending: 0
        }
    );
    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-webhook-payload-version"), "v2");
        assert_eq!(r.header("x-tenant"), "t1");
        let sig = r.header("x-webhook-signature");
        assert_eq!(sig.len(), 64);
        assert!(
            sig.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(sig, webhook_signature(SECRET, &r.body));
        assert_ne!(sig, webhook_signature("another-secret", &r.body));
        let body = r.json();
        assert_eq!(r.header("x-webhook-event"), body["event"].as_str().unwrap());
        assert_eq!(body["project_id"], project_id.as_str());
        assert_eq!(body["workflow_id"], wf.as_str());
        assert_eq!(body["tracking_id"], Value::Null);
        assert_eq!(body["channel"], "whatsapp");
    }
    let handoff = seen[0].json();
    assert_eq!(handoff["event"], EVENT_HANDOFF);
    assert_eq!(handoff["status"], "handoff");
    assert_eq!(handoff["workflow_execution_id"], handed.as_str());
    assert_eq!(handoff["whatsapp_conversation_id"], conv.as_str());
    assert_eq!(handoff["occurred_at"], rfc3339(handoff_at));
    let source = handoff["handoff"]["source"].as_str().unwrap();
    assert!(["agent_tool", "action_step"].contains(&source));
    assert!(handoff.get("error").is_none());
    let failed = seen[1].json();
    assert_eq!(failed["event"], EVENT_FAILED);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["workflow_execution_id"], running_exec.as_str());
    assert_eq!(failed["whatsapp_conversation_id"], Value::Null);
    assert_eq!(failed["occurred_at"], rfc3339(failed_at));
    assert!(failed["error"]["message"].as_str().unwrap().len() > 3);
    assert!(failed.get("handoff").is_none());
    let ts = OffsetDateTime::parse(failed["occurred_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(ts, failed_at);

    assert_ne!(seen[0].key(), seen[1].key());
    let delivered = sim.webhook_deliveries();
    assert_eq!(
        delivered
            .iter()
            .map(|d| (
                d.event.as_str(),
                d.execution_id.clone(),
                d.idempotency_key.clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (EVENT_HANDOFF, handed.clone(), seen[0].key()),
            (EVENT_FAILED, running_exec.clone(), seen[1].key()),
        ]
    );
    assert!(delivered.iter().all(|d| d.attempt == 1 && !d.duplicate));
    let stats = sim.webhook_stats();
    assert_eq!((stats.queued, stats.attempts, stats.delivered), (2, 2, 2));
    assert_eq!(stats.by_event[EVENT_FAILED].delivered, 1);
    assert_eq!(stats.by_event[EVENT_HANDOFF].delivered, 1);
}

#[tokio::test]
async fn subscriptions_and_inactive_or_deleted_webhooks() {
    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(200, None).await;
    // Before any webhook: no event, even once one is registered.
    sim.start_execution(&wf, None, ExecStatus::Failed);
    let failed_only = sim.register_webhook(&rx.url, SECRET, &[EVENT_FAILED]);
    let other = sim.register_webhook(&rx.url, SECRET, &[EVENT_HANDOFF]);
    assert!(sim.delete_webhook(&other));
    assert!(!sim.delete_webhook(&other));
    clock.advance(Duration::from_secs(1));
    sim.start_execution(&wf, None, ExecStatus::Handoff);
    sim.start_execution(&wf, None, ExecStatus::Failed);
    sim.deliver_due().await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].json()["event"], EVENT_FAILED);
    assert_eq!(sim.webhook_deliveries()[0].webhook_id, failed_only);
}

/// A receiver that always answers 503: attempts at exactly +0, +10, +50 and +140 s (times
/// `scale`), the same key and body each time, then the event is dropped.
async fn check_schedule(scale: f64) {
    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(503, None).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.set_webhook_options(WebhookOptions {
        retry_scale: scale,
        ..WebhookOptions::default()
    });
    sim.start_execution(&wf, None, ExecStatus::Failed);
    let t0 = clock.now();
    for (n, offset) in [0.0, 10.0, 50.0, 140.0].into_iter().enumerate() {
        let at = t0 + Duration::from_secs_f64(offset * scale);
        if n > 0 {
            clock.set(at - Duration::from_micros(1));
            assert_eq!(sim.deliver_due().await.sent, 0, "attempt {} early", n + 1);
        }
        clock.set(at);
        let report = sim.deliver_due().await;
        assert_eq!((report.sent, report.failed), (1, 1), "attempt {}", n + 1);
        let last = n == 3;
        assert_eq!(report.dropped, u64::from(last));
        assert_eq!(report.pending, u64::from(!last));
        assert_eq!(sim.deliver_due().await.sent, 0, "no second send at once");
    }
    clock.advance(Duration::from_secs(3600));
    assert_eq!(sim.deliver_due().await, DeliveryReport::default());
    let seen = rx.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| r.key() == seen[0].key()));
    assert!(seen.iter().all(|r| r.body == seen[0].body));
    let stats = sim.webhook_stats();
    assert_eq!(
        (
            stats.attempts,
            stats.failed_attempts,
            stats.dropped,
            stats.delivered
        ),
        (4, 4, 1, 0)
    );
    assert_eq!(stats.by_event[EVENT_FAILED].dropped, 1);
}

#[tokio::test]
async fn retry_schedule_is_10_40_90_seconds_then_dropped() {
    check_schedule(1.0).await;
    check_schedule(0.01).await;
}

#[tokio::test]
async fn a_retry_that_succeeds_keeps_the_idempotency_key() {
    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(500, None).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.start_execution(&wf, None, ExecStatus::Handoff);
    assert_eq!(sim.deliver_due().await.failed, 1);
    rx.set_status(204);
    clock.advance(Duration::from_secs(10));
    assert_eq!(sim.deliver_due().await.delivered, 1);
    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].key(), seen[1].key());
    assert_eq!(seen[0].body, seen[1].body);
    let d = &sim.webhook_deliveries()[0];
    assert_eq!((d.attempt, d.idempotency_key.clone()), (2, seen[0].key()));
}

#[tokio::test]
async fn refused_connections_and_timeouts_are_failed_attempts() {
    let (sim, _clock, wf, _) = scripted();
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    sim.register_webhook(&format!("http://127.0.0.1:{port}/h"), SECRET, &BOTH);
    // A receiver that never answers.
    let silent = Receiver::start(0, None).await;
    sim.register_webhook(&silent.url, SECRET, &BOTH);
    sim.set_webhook_options(WebhookOptions {
        timeout: Duration::from_millis(200),
        ..WebhookOptions::default()
    });
    sim.start_execution(&wf, None, ExecStatus::Failed);
    let report = sim.deliver_due().await;
    assert_eq!((report.sent, report.failed, report.pending), (2, 2, 2));
    assert_eq!(silent.seen().len(), 1);
}

/// Every delivered event corresponds to one increment of the ground-truth failed and handoff
/// counters, under the random workload with the variances that move executions around.
#[tokio::test]
async fn events_match_ground_truth_under_tick() {
    let clock = Clock::manual(START);
    let config = SimulatorConfig {
        api_key: KEY.to_owned(),
        live_executions: 200,
        terminal_executions: 50,
        rate_limit_per_minute: None,
        latency: Duration::ZERO,
        variance: Variance {
            unknown_statuses: true,
            deletions: true,
            stale_live_lists: true,
            ..Variance::default()
        },
        ..SimulatorConfig::demo()
    };
    let sim = Simulator::new(config, clock.clone());
    let rx = Receiver::start(200, None).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.mark();
    let wf = sim.ground_truth().workflows[0].id.clone();
    for step in 0..40 {
        clock.advance(Duration::from_secs(15));
        sim.tick(Duration::from_secs(15));
        if step % 10 == 0 {
            // Scripted starts straight into handoff and failed count too.
            sim.start_execution(&wf, None, ExecStatus::Handoff);
            sim.start_execution(&wf, None, ExecStatus::Failed);
        }
        let report = sim.deliver_due().await;
        assert_eq!(report.failed, 0);
        assert_eq!(report.pending, 0);
    }
    let truth = sim.ground_truth();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut handoffs: BTreeMap<String, u64> = BTreeMap::new();
    let delivered = sim.webhook_deliveries();
    for d in &delivered {
        let map = if d.event == EVENT_FAILED {
            &mut failed
        } else {
            &mut handoffs
        };
        *map.entry(d.workflow_id.clone()).or_default() += 1;
    }
    let mut total = 0;
    for w in &truth.workflows {
        let f = truth.finished[&(w.id.clone(), ExecStatus::Failed)];
        let h = truth.handoffs[&w.id];
        assert_eq!(
            failed.get(&w.id).copied().unwrap_or(0),
            f,
            "failed {}",
            w.name
        );
        assert_eq!(
            handoffs.get(&w.id).copied().unwrap_or(0),
            h,
            "handoff {}",
            w.name
        );
        total += f + h;
    }
    assert!(failed.values().sum::<u64>() > 5 && handoffs.values().sum::<u64>() > 5);
    assert_eq!(delivered.len() as u64, total);
    let seen = rx.seen();
    assert_eq!(seen.len() as u64, total);
    let keys: HashSet<String> = seen.iter().map(Received::key).collect();
    assert_eq!(keys.len(), seen.len(), "one idempotency key per event");
    let received: Vec<(String, String)> = seen
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["workflow_execution_id"].as_str().unwrap().to_owned(),
                r.key(),
            )
        })
        .collect();
    let recorded: Vec<(String, String)> = delivered
        .iter()
        .map(|d| (d.execution_id.clone(), d.idempotency_key.clone()))
        .collect();
    assert_eq!(received, recorded);
    let stats = sim.webhook_stats();
    assert_eq!((stats.queued, stats.delivered), (total, total));
}

#[tokio::test]
async fn duplicates_with_the_same_or_a_new_key() {
    for new_key in [false, true] {
        let (sim, clock, wf, _) = scripted();
        let rx = Receiver::start(200, None).await;
        sim.register_webhook(&rx.url, SECRET, &BOTH);
        sim.set_webhook_faults(WebhookFaults {
            duplicate_rate: if new_key { 0.0 } else { 1.0 },
            duplicate_new_key_rate: if new_key { 1.0 } else { 0.0 },
            ..WebhookFaults::default()
        });
        fail_many(&sim, &clock, &wf, 3);
        assert_eq!(sim.deliver_due().await.delivered, 3);
        clock.advance(Duration::from_secs(5));
        assert_eq!(sim.deliver_due().await.delivered, 3);
        clock.advance(Duration::from_secs(60));
        assert_eq!(sim.deliver_due().await.sent, 0, "a copy is not copied");
        let seen = rx.seen();
        assert_eq!(seen.len(), 6);
        for i in 0..3 {
            let (first, copy) = (&seen[i], &seen[i + 3]);
            assert_eq!(first.body, copy.body);
            assert_eq!(
                copy.header("x-webhook-signature"),
                first.header("x-webhook-signature")
            );
            assert_eq!(first.key() == copy.key(), !new_key);
        }
        let stats = sim.webhook_stats();
        assert_eq!((stats.queued, stats.duplicates, stats.delivered), (3, 3, 6));
        let copies = sim.webhook_deliveries();
        assert_eq!(copies.iter().filter(|d| d.duplicate).count(), 3);
    }
}

#[tokio::test]
async fn reorder_shuffles_one_round() {
    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(200, None).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.set_webhook_faults(WebhookFaults {
        reorder: true,
        ..WebhookFaults::default()
    });
    let ids = fail_many(&sim, &clock, &wf, 12);
    assert_eq!(sim.deliver_due().await.delivered, 12);
    let order: Vec<String> = rx
        .seen()
        .iter()
        .map(|r| {
            r.json()["workflow_execution_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_ne!(order, ids, "same order as queued");
    let mut sorted = order.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected);
}

#[tokio::test]
async fn lost_events_are_never_sent_and_the_draws_are_seeded() {
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let (sim, clock, wf, _) = scripted();
        let rx = Receiver::start(200, None).await;
        sim.register_webhook(&rx.url, SECRET, &BOTH);
        sim.set_webhook_faults(WebhookFaults {
            lost_rate: 0.5,
            ..WebhookFaults::default()
        });
        let ids = fail_many(&sim, &clock, &wf, 20);
        sim.deliver_due().await;
        let stats = sim.webhook_stats();
        assert_eq!(stats.lost + stats.queued, 20);
        assert!(stats.lost > 0 && stats.queued > 0, "{stats:?}");
        assert_eq!(stats.by_event[EVENT_FAILED].lost, stats.lost);
        assert_eq!(rx.seen().len() as u64, stats.queued);
        let sent: HashSet<String> = sim
            .webhook_deliveries()
            .into_iter()
            .map(|d| d.execution_id)
            .collect();
        outcomes.push(ids.iter().map(|id| sent.contains(id)).collect::<Vec<_>>());
    }
    assert_eq!(outcomes[0], outcomes[1], "same seed, same losses");

    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(200, None).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.set_webhook_faults(WebhookFaults {
        lost_rate: 1.0,
        ..WebhookFaults::default()
    });
    fail_many(&sim, &clock, &wf, 3);
    clock.advance(Duration::from_secs(600));
    assert_eq!(sim.deliver_due().await, DeliveryReport::default());
    assert!(rx.seen().is_empty());
    assert_eq!(sim.webhook_stats().lost, 3);
}

#[tokio::test]
async fn late_events_wait_before_their_first_attempt() {
    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(200, None).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.set_webhook_faults(WebhookFaults {
        late_by: Duration::from_secs(30),
        ..WebhookFaults::default()
    });
    sim.start_execution(&wf, None, ExecStatus::Handoff);
    let t0 = clock.now();
    assert_eq!(sim.deliver_due().await.pending, 1);
    clock.set(t0 + Duration::from_secs(30) - Duration::from_micros(1));
    assert_eq!(sim.deliver_due().await.sent, 0);
    clock.set(t0 + Duration::from_secs(30));
    assert_eq!(sim.deliver_due().await.delivered, 1);
    // occurred_at stays the instant of the transition.
    assert_eq!(rx.seen()[0].json()["occurred_at"], rfc3339(t0));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_retried_and_dropped() {
    let (sim, clock, wf, _) = scripted();
    let rx = Receiver::start(200, Some(SECRET)).await;
    sim.register_webhook(&rx.url, SECRET, &BOTH);
    sim.set_webhook_faults(WebhookFaults {
        wrong_secret: true,
        ..WebhookFaults::default()
    });
    sim.start_execution(&wf, None, ExecStatus::Failed);
    let mut dropped = 0;
    for _ in 0..4 {
        let report = sim.deliver_due().await;
        assert_eq!((report.sent, report.failed), (1, 1));
        dropped += report.dropped;
        clock.advance(Duration::from_secs(90));
    }
    assert_eq!(dropped, 1);
    let seen = rx.seen();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter()
            .all(|r| r.header("x-webhook-signature") != webhook_signature(SECRET, &r.body))
    );
    // With the fault off, the same receiver accepts new events.
    sim.set_webhook_faults(WebhookFaults::default());
    sim.start_execution(&wf, None, ExecStatus::Failed);
    assert_eq!(sim.deliver_due().await.delivered, 1);
    let stats = sim.webhook_stats();
    assert_eq!((stats.dropped, stats.delivered), (1, 1));
}

#[tokio::test]
async fn the_delivery_driver_sends_on_the_system_clock() {
    let sim = Simulator::empty(KEY, Clock::system());
    let wf = sim.add_workflow("Support", "active");
    let rx = Receiver::start(200, None).await;
    let (_id, driver) = sim.start_webhooks(&rx.url, SECRET);
    sim.start_execution(&wf, None, ExecStatus::Handoff);
    // The driver's first tick is immediate; wait for it by polling the stats, not by timing.
    for _ in 0..500 {
        if sim.webhook_stats().delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    driver.abort();
    assert_eq!(sim.webhook_stats().delivered, 1);
    assert_eq!(rx.seen().len(), 1);
}
