//! The webhook receiver, end to end through its router, and how its events merge with
//! polling: the exporter in process against the simulator on one manual clock, deliveries
//! signed by hand as Kapso signs them (docs/kapso-api.md §10), counters compared with
//! the simulator's ground truth.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::counting_support::{Counts, counts, truth_counts};
use crate::support::{Harness, KEY, Samples, WEBHOOK_SECRET, get, parse, test_start};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use kapso_exporter::clock::Clock;
use kapso_exporter::kapso::models::format_timestamp;
use kapso_exporter::simulator::{ExecStatus, Simulator};
use kapso_exporter::webhook::{BODY_LIMIT, WebhookSecret};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use ExecStatus::{Ended, Failed, Handoff, Running, Waiting};

const FAILED: &str = "workflow.execution.failed";
const HANDOFF: &str = "workflow.execution.handoff";

/// A delivery as Kapso sends it.
struct Delivery {
    body: Vec<u8>,
    event: String,
    signature: Option<String>,
    key: Option<String>,
}

impl Delivery {
    fn new(body: Vec<u8>, event: &str) -> Self {
        let signature = Some(WebhookSecret::new(WEBHOOK_SECRET).sign(&body));
        Self {
            body,
            event: event.to_owned(),
            signature,
            key: Some(format!("idem-{}", rand_key())),
        }
    }

    fn signed_with(mut self, secret: &str) -> Self {
        self.signature = Some(WebhookSecret::new(secret).sign(&self.body));
        self
    }

    fn request(&self, path: &str) -> Request<Body> {
        let mut r = Request::post(path)
            .header("content-type", "application/json")
            .header("x-webhook-event", &self.event)
            .header("x-webhook-payload-version", "v2");
        if let Some(s) = &self.signature {
            r = r.header("x-webhook-signature", s);
        }
        if let Some(k) = &self.key {
            r = r.header("x-idempotency-key", k);
        }
        r.body(Body::from(self.body.clone())).unwrap()
    }
}

fn rand_key() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The body of one event, payload v2.
fn payload(event: &str, wf: &str, exec: &str, occurred_at: time::OffsetDateTime) -> Value {
    let mut v = json!({
        "event": event,
        "occurred_at": format_timestamp(occurred_at),
        "project_id": "7f0c0d3e-4d0c-4d6b-9a43-7d3c1c1b0e11",
        "workflow_id": wf,
        "workflow_execution_id": exec,
        "status": if event == FAILED { "failed" } else { "handoff" },
        "tracking_id": null,
        "channel": "whatsapp",
        "whatsapp_conversation_id": null,
    });
    if event == FAILED {
        v["error"] = json!({"message": "Action step failed: HTTP 500"});
    } else {
        v["handoff"] = json!({"reason": "customer asked for a human", "source": "agent_tool"});
    }
    v
}

fn delivery(event: &str, wf: &str, exec: &str, at: time::OffsetDateTime) -> Delivery {
    Delivery::new(
        serde_json::to_vec(&payload(event, wf, exec, at)).unwrap(),
        event,
    )
}

async fn world(extra: &[&str]) -> (Clock, Harness) {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let mut args = vec!["--webhook.listen-address", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let h = Harness::new(sim, clock.clone(), &args).await;
    (clock, h)
}

async fn send_to(h: &Harness, path: &str, d: &Delivery) -> (StatusCode, String) {
    let router = h.exporter.webhooks.as_ref().unwrap().1.clone();
    let resp = router.oneshot(d.request(path)).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).trim().to_owned())
}

async fn send(h: &Harness, d: &Delivery) -> (StatusCode, String) {
    send_to(h, "/webhooks/kapso", d).await
}

async fn samples(h: &Harness) -> Samples {
    parse(&h.scrape().await)
}

async fn shown(h: &Harness, wf: &str) -> Counts {
    counts(&samples(h).await, wf).unwrap_or_default()
}

fn results(s: &Samples, result: &str) -> f64 {
    get(
        s,
        "kapso_webhook_requests_total",
        &[("project", "default"), ("result", result)],
    )
    .unwrap_or(-1.0)
}

async fn assert_truth(h: &Harness, wf: &str, when: &str) {
    let truth = truth_counts(&h.sim.ground_truth(), wf);
    let got = shown(h, wf).await;
    assert_eq!(
        (got.sef(), got.handoffs),
        (truth.sef(), truth.handoffs),
        "{when}: (started, ended, failed), handoffs of {wf}"
    );
}

// ----- the receiver ------------------------------------------------------------------------

#[tokio::test]
async fn every_answer_of_the_receiver_is_counted_by_result() {
    let (clock, mut h) = world(&[]).await;
    let wf = h.sim.add_workflow("Support", "active");
    h.sim.mark();
    h.poll().await;
    let now = clock.now();
    let good = delivery(FAILED, &wf, "exec-1", now);

    // Signatures: wrong secret, a changed body, none at all.
    let wrong = delivery(FAILED, &wf, "exec-2", now).signed_with("not-the-secret");
    assert_eq!(send(&h, &wrong).await.0, StatusCode::UNAUTHORIZED);
    let mut changed = delivery(FAILED, &wf, "exec-2", now);
    changed.body = serde_json::to_vec(&payload(FAILED, &wf, "exec-3", now)).unwrap();
    assert_eq!(send(&h, &changed).await.0, StatusCode::UNAUTHORIZED);
    let mut unsigned = delivery(FAILED, &wf, "exec-2", now);
    unsigned.signature = None;
    assert_eq!(send(&h, &unsigned).await.0, StatusCode::UNAUTHORIZED);

    // Malformed: not JSON, not an object, required fields missing or wrong.
    for body in [
        b"{not json".to_vec(),
        b"[1,2]".to_vec(),
        br#"{"event":"workflow.execution.failed","occurred_at":"yesterday","workflow_id":"w","workflow_execution_id":"e"}"#.to_vec(),
        br#"{"event":"workflow.execution.failed","occurred_at":"2026-11-24T12:00:00Z","workflow_id":"w"}"#.to_vec(),
    ] {
        let d = Delivery::new(body.clone(), FAILED);
        assert_eq!(
            send(&h, &d).await.0,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    // Events the exporter does not use are 200, so that Kapso does not retry them.
    let other = Delivery::new(
        br#"{"event":"whatsapp.phone_number.created","occurred_at":"2026-11-24T12:00:00Z"}"#
            .to_vec(),
        "whatsapp.phone_number.created",
    );
    assert_eq!(send(&h, &other).await, (StatusCode::OK, "ignored".into()));

    // Over the body limit, declared or not.
    let big = Delivery::new(vec![b' '; BODY_LIMIT + 1], FAILED);
    assert_eq!(send(&h, &big).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Accepted once; the same key again, or the same content under a new key, is a duplicate.
    assert_eq!(send(&h, &good).await, (StatusCode::OK, "accepted".into()));
    assert_eq!(send(&h, &good).await, (StatusCode::OK, "duplicate".into()));
    let mut rekeyed = delivery(FAILED, &wf, "exec-1", now);
    rekeyed.key = Some("another-key".into());
    assert_eq!(
        send(&h, &rekeyed).await,
        (StatusCode::OK, "duplicate".into())
    );

    // Unknown project.
    assert_eq!(
        send_to(&h, "/webhooks/kapso/nope", &good).await.0,
        StatusCode::NOT_FOUND
    );
    // GET is not a delivery.
    let router = h.exporter.webhooks.as_ref().unwrap().1.clone();
    let resp = router
        .oneshot(Request::get("/webhooks/kapso").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    let s = samples(&h).await;
    for (result, n) in [
        ("accepted", 1.0),
        ("duplicate", 2.0),
        ("invalid_signature", 3.0),
        ("malformed", 4.0),
        ("ignored", 1.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(results(&s, result), n, "result={result}");
    }
    assert_eq!(
        get(
            &s,
            "kapso_webhook_requests_total",
            &[("project", ""), ("result", "unknown_project")]
        ),
        Some(1.0)
    );
    assert!(
        get(
            &s,
            "kapso_webhook_last_accepted_timestamp_seconds",
            &[("project", "default")]
        )
        .is_some()
    );
}

#[tokio::test]
async fn a_named_project_receives_on_its_own_path() {
    let (clock, mut h) = world(&[]).await;
    let wf = h.sim.add_workflow("Support", "active");
    h.poll().await;
    let d = delivery(HANDOFF, &wf, "exec-1", clock.now());
    assert_eq!(
        send_to(&h, "/webhooks/kapso/default", &d).await,
        (StatusCode::OK, "accepted".into())
    );
}

// ----- merging with polling -----------------------------------------------------------------

/// A workflow with one waiting execution, known to the exporter.
async fn one_waiting() -> (Clock, Harness, String, String) {
    let (clock, mut h) = world(&[]).await;
    let wf = h.sim.add_workflow("Support", "active");
    let exec = h.sim.start_execution(&wf, None, Waiting);
    clock.advance(Duration::from_secs(3600));
    h.sim.mark();
    h.poll().await;
    (clock, h, wf, exec)
}

#[tokio::test]
async fn a_failure_counts_at_delivery_and_the_poll_does_not_count_it_again() {
    let (clock, mut h, wf, exec) = one_waiting().await;
    clock.advance(Duration::from_secs(10));
    h.sim.set_status(&exec, Failed);
    let d = delivery(FAILED, &wf, &exec, clock.now());
    assert_eq!(send(&h, &d).await.1, "accepted");
    // Before any poll.
    assert_eq!(shown(&h, &wf).await.failed, 1);
    assert_truth(&h, &wf, "at delivery").await;
    // The landing page lists it with its message.
    let landing = h
        .exporter
        .router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let page = axum::body::to_bytes(landing.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("Recent failures") && page.contains("Action step failed: HTTP 500"),
        "{page}"
    );
    assert!(page.contains(&exec));
    clock.advance(Duration::from_secs(50));
    h.poll().await;
    assert_truth(&h, &wf, "after the poll").await;
    // A late retry of the same delivery, and the same failure under a new key.
    let mut again = delivery(FAILED, &wf, &exec, clock.now());
    assert_eq!(send(&h, &again).await.1, "accepted");
    again.key = Some("k2".into());
    send(&h, &again).await;
    h.poll().await;
    assert_truth(&h, &wf, "after late deliveries").await;
}

#[tokio::test]
async fn a_failure_the_poll_counted_first_is_not_counted_by_a_late_webhook() {
    let (clock, mut h, wf, exec) = one_waiting().await;
    clock.advance(Duration::from_secs(10));
    let failed_at = clock.now();
    h.sim.set_status(&exec, Failed);
    clock.advance(Duration::from_secs(50));
    h.poll().await;
    assert_truth(&h, &wf, "the poll").await;
    // Kapso's last retry, about 140 s after the failure.
    clock.advance(Duration::from_secs(80));
    let d = delivery(FAILED, &wf, &exec, failed_at);
    assert_eq!(send(&h, &d).await.1, "accepted");
    assert_truth(&h, &wf, "after the late webhook").await;
    assert_eq!(shown(&h, &wf).await.failed, 1);
}

#[tokio::test]
async fn a_failure_whose_webhook_never_came_is_counted_by_polling() {
    let (clock, mut h, wf, exec) = one_waiting().await;
    clock.advance(Duration::from_secs(10));
    h.sim.set_status(&exec, Failed);
    clock.advance(Duration::from_secs(50));
    h.poll().await;
    assert_eq!(shown(&h, &wf).await.failed, 1);
    assert_truth(&h, &wf, "polling alone").await;
}

#[tokio::test]
async fn a_handoff_entered_and_left_between_polls_counts_once_and_a_second_entry_twice() {
    let (clock, mut h, wf, exec) = one_waiting().await;
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&exec, Handoff);
    let first = delivery(HANDOFF, &wf, &exec, clock.now());
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&exec, Waiting);
    assert_eq!(send(&h, &first).await.1, "accepted");
    assert_eq!(shown(&h, &wf).await.handoffs, 1, "at delivery");
    clock.advance(Duration::from_secs(50));
    h.poll().await;
    assert_truth(&h, &wf, "the poll saw it waiting").await;

    // A second entry: the poll sees it in handoff before the webhook comes.
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&exec, Handoff);
    let second = delivery(HANDOFF, &wf, &exec, clock.now());
    clock.advance(Duration::from_secs(55));
    h.poll().await;
    assert_eq!(
        shown(&h, &wf).await.handoffs,
        2,
        "the poll counted the second"
    );
    assert_eq!(send(&h, &second).await.1, "accepted");
    assert_truth(&h, &wf, "the webhook of the second came late").await;

    // A third: the webhook first, then the poll that sees it still in handoff.
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&exec, Waiting);
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&exec, Handoff);
    send(&h, &delivery(HANDOFF, &wf, &exec, clock.now())).await;
    clock.advance(Duration::from_secs(50));
    h.poll().await;
    assert_truth(&h, &wf, "the third").await;
    assert_eq!(shown(&h, &wf).await.handoffs, 3);
    // It ends; a retry of the third comes after the poll saw it ended.
    h.sim.set_status(&exec, Ended);
    clock.advance(Duration::from_secs(60));
    h.poll().await;
    let mut retry = delivery(HANDOFF, &wf, &exec, clock.now() - Duration::from_secs(110));
    retry.key = None;
    send(&h, &retry).await;
    assert_truth(&h, &wf, "after it ended").await;
}

#[tokio::test]
async fn a_handoff_the_webhook_counted_is_not_counted_again_by_the_poll_that_sees_it() {
    let (clock, mut h, wf, exec) = one_waiting().await;
    clock.advance(Duration::from_secs(5));
    // A known execution enters handoff, and a new one starts in handoff.
    h.sim.set_status(&exec, Handoff);
    send(&h, &delivery(HANDOFF, &wf, &exec, clock.now())).await;
    clock.advance(Duration::from_secs(1));
    let born = h.sim.start_execution(&wf, None, Handoff);
    send(&h, &delivery(HANDOFF, &wf, &born, clock.now())).await;
    assert_eq!(shown(&h, &wf).await.handoffs, 2, "at delivery");
    clock.advance(Duration::from_secs(54));
    h.poll().await;
    assert_truth(&h, &wf, "the poll saw both in handoff").await;
    assert_eq!(shown(&h, &wf).await.handoffs, 2);
}

#[tokio::test]
async fn an_execution_born_and_failed_between_polls_counts_its_start_once_and_its_failure_once() {
    let (clock, mut h, wf, _) = one_waiting().await;
    clock.advance(Duration::from_secs(10));
    let e = h.sim.start_execution(&wf, None, Running);
    clock.advance(Duration::from_secs(2));
    h.sim.set_status(&e, Handoff);
    send(&h, &delivery(HANDOFF, &wf, &e, clock.now())).await;
    clock.advance(Duration::from_secs(2));
    h.sim.set_status(&e, Failed);
    send(&h, &delivery(FAILED, &wf, &e, clock.now())).await;
    let at_delivery = shown(&h, &wf).await;
    assert_eq!(
        (
            at_delivery.started,
            at_delivery.failed,
            at_delivery.handoffs
        ),
        (0, 1, 1)
    );
    clock.advance(Duration::from_secs(46));
    h.poll().await;
    assert_truth(&h, &wf, "after the poll").await;
    assert_eq!(shown(&h, &wf).await.started, 1);
}

#[tokio::test]
async fn events_of_a_workflow_not_listed_yet_count_under_its_id_and_join_its_name() {
    let (clock, mut h) = world(&[]).await;
    let old = h.sim.add_workflow("Old", "active");
    h.sim.mark();
    h.poll().await;
    clock.advance(Duration::from_secs(10));
    let wf = h.sim.add_workflow("Brand new", "active");
    let e = h.sim.start_execution(&wf, None, Running);
    clock.advance(Duration::from_secs(1));
    h.sim.set_status(&e, Failed);
    send(&h, &delivery(FAILED, &wf, &e, clock.now())).await;
    let s = samples(&h).await;
    // Not listed yet: its id stands for its name.
    let labels = [
        ("project", "default"),
        ("workflow_id", wf.as_str()),
        ("workflow", wf.as_str()),
        ("status", "failed"),
    ];
    assert_eq!(
        get(&s, "kapso_workflow_executions_finished_total", &labels),
        Some(1.0)
    );
    clock.advance(Duration::from_secs(49));
    h.poll().await;
    let s = samples(&h).await;
    let named = [
        ("project", "default"),
        ("workflow_id", wf.as_str()),
        ("workflow", "Brand new"),
        ("status", "failed"),
    ];
    assert_eq!(
        get(&s, "kapso_workflow_executions_finished_total", &named),
        Some(1.0)
    );
    assert_truth(&h, &wf, "after the poll learnt it").await;
    assert_truth(&h, &old, "the other workflow").await;
}

#[tokio::test]
async fn events_before_the_first_poll_are_left_to_polling() {
    let (clock, mut h) = world(&[]).await;
    let wf = h.sim.add_workflow("Support", "active");
    let e = h.sim.start_execution(&wf, None, Running);
    h.sim.set_status(&e, Failed);
    assert_eq!(
        send(&h, &delivery(FAILED, &wf, &e, clock.now())).await.1,
        "ignored"
    );
    clock.advance(Duration::from_secs(1));
    h.sim.mark();
    h.poll().await;
    assert_eq!(shown(&h, &wf).await.failed, 0);
}

#[tokio::test]
async fn concurrent_deliveries_with_duplicates_count_each_failure_once() {
    let (clock, mut h) = world(&[]).await;
    let wf = h.sim.add_workflow("Support", "active");
    let execs: Vec<String> = (0..40)
        .map(|_| h.sim.start_execution(&wf, None, Waiting))
        .collect();
    clock.advance(Duration::from_secs(3600));
    h.sim.mark();
    h.poll().await;
    clock.advance(Duration::from_secs(5));
    let mut deliveries = Vec::new();
    for e in &execs {
        h.sim.set_status(e, Failed);
        let d = delivery(FAILED, &wf, e, clock.now());
        let mut rekeyed = delivery(FAILED, &wf, e, clock.now());
        rekeyed.key = Some(format!("other-{e}"));
        deliveries.push(d.request("/webhooks/kapso"));
        deliveries.push(d.request("/webhooks/kapso"));
        deliveries.push(rekeyed.request("/webhooks/kapso"));
    }
    let router = h.exporter.webhooks.as_ref().unwrap().1.clone();
    let answers = futures::future::join_all(
        deliveries
            .into_iter()
            .map(|r| tokio::spawn(router.clone().oneshot(r))),
    )
    .await;
    assert!(
        answers
            .into_iter()
            .all(|a| a.unwrap().unwrap().status() == StatusCode::OK)
    );
    let s = samples(&h).await;
    assert_eq!(results(&s, "accepted"), 40.0);
    assert_eq!(results(&s, "duplicate"), 80.0);
    assert_eq!(shown(&h, &wf).await.failed, 40);
    clock.advance(Duration::from_secs(55));
    h.poll().await;
    assert_truth(&h, &wf, "after the poll").await;
}

#[tokio::test]
async fn conversation_mode_merges_events_of_watched_conversations_only() {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    let other = sim.add_conversation();
    let e = sim.start_execution(&wf, Some(&conv), Waiting);
    let unwatched = sim.start_execution(&wf, Some(&other), Waiting);
    clock.advance(Duration::from_secs(3600));
    let mut h = Harness::new(
        sim,
        clock.clone(),
        &[
            "--webhook.listen-address",
            "127.0.0.1:0",
            "--kapso.conversation-id",
            &conv,
        ],
    )
    .await;
    h.sim.mark();
    h.poll().await;
    let with_conversation = |event: &str, exec: &str, c: &str, at| {
        let mut v = payload(event, &wf, exec, at);
        v["whatsapp_conversation_id"] = json!(c);
        Delivery::new(serde_json::to_vec(&v).unwrap(), event)
    };
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&e, Handoff);
    send(&h, &with_conversation(HANDOFF, &e, &conv, clock.now())).await;
    clock.advance(Duration::from_secs(5));
    h.sim.set_status(&e, Failed);
    h.sim.set_status(&unwatched, Failed);
    send(&h, &with_conversation(FAILED, &e, &conv, clock.now())).await;
    let ignored = with_conversation(FAILED, &unwatched, &other, clock.now());
    assert_eq!(send(&h, &ignored).await.1, "ignored");
    let at_delivery = shown(&h, &wf).await;
    assert_eq!((at_delivery.failed, at_delivery.handoffs), (1, 1));
    clock.advance(Duration::from_secs(50));
    h.poll().await;
    let after = shown(&h, &wf).await;
    assert_eq!(
        (after.failed, after.handoffs),
        (1, 1),
        "nothing counted twice"
    );
}

// ----- the simulator's own deliveries, with Kapso's faults ----------------------------------

use kapso_exporter::simulator::{
    EVENT_FAILED, EVENT_HANDOFF, SimulatorConfig, StepTruth, Variance, WebhookFaults,
};

/// Totals over every workflow: (started, ended, failed, handoffs).
fn totals_shown(s: &Samples, truth: &kapso_exporter::simulator::GroundTruth) -> [u64; 4] {
    let mut t = [0; 4];
    for w in &truth.workflows {
        let c = counts(s, &w.id).unwrap_or_default();
        for (i, n) in [c.started, c.ended, c.failed, c.handoffs]
            .into_iter()
            .enumerate()
        {
            t[i] += n;
        }
    }
    t
}

/// Failures by step as `/metrics` shows them (the simulator's step labels).
fn step_failures_shown(s: &Samples) -> BTreeMap<StepTruth, u64> {
    support::series(s, "kapso_workflow_step_failures_total")
        .map(|(l, v)| (support::step_truth(l), v as u64))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn totals_true(truth: &kapso_exporter::simulator::GroundTruth) -> [u64; 4] {
    let mut t = [0; 4];
    for w in &truth.workflows {
        let c = truth_counts(truth, &w.id);
        for (i, n) in [c.started, c.ended, c.failed, c.handoffs]
            .into_iter()
            .enumerate()
        {
            t[i] += n;
        }
    }
    t
}

/// A populated simulator evolving on a manual clock, delivering its own webhooks (with
/// `faults`) to the exporter's receiver on a real socket, polls every minute. After every poll
/// nothing exceeds the truth; at rest everything is exact, handoffs included unless
/// deliveries were lost (then at most the truth).
async fn simulator_deliveries(faults: WebhookFaults, seed: u64, extra: &[&str]) {
    let clock = Clock::manual(test_start());
    let sim = Simulator::new(
        SimulatorConfig {
            api_key: KEY.to_owned(),
            workflows: 4,
            conversations: 20,
            live_executions: 60,
            terminal_executions: 40,
            seed,
            rate_limit_per_minute: None,
            latency: Duration::ZERO,
            variance: Variance::default(),
        },
        clock.clone(),
    );
    let mut args = vec!["--webhook.listen-address", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut h = Harness::new(sim.clone(), clock.clone(), &args).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/kapso", listener.local_addr().unwrap());
    let router = h.exporter.webhooks.as_ref().unwrap().1.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let refused = faults.wrong_secret;
    let lossy = faults.lost_rate > 0.0 || refused;
    // Conversation mode sees only executions of the conversations it watches (those active
    // within --kapso.discover-conversations): at most the truth, never more.
    let partial = extra.contains(&"--kapso.discover-conversations");
    sim.set_webhook_faults(faults);
    sim.mark();
    h.poll().await;
    sim.register_webhook(&url, WEBHOOK_SECRET, &[EVENT_FAILED, EVENT_HANDOFF]);
    sim.set_finish_rate(20.0);
    let mut last = [0; 4];
    let active: Vec<String> = sim
        .ground_truth()
        .workflows
        .iter()
        .filter(|w| w.status == "active")
        .map(|w| w.id.clone())
        .collect();
    for round in 0..8 {
        for step in 0..6 {
            clock.advance(Duration::from_secs(10));
            sim.tick(Duration::from_secs(10));
            // Besides the random workload: a hand-off entered and left between two polls,
            // which only a webhook can show.
            if step == 1 {
                let wf = &active[round % active.len()];
                let conv = sim.add_conversation();
                let e = sim.start_execution(wf, Some(&conv), Waiting);
                sim.set_status(&e, Handoff);
                clock.advance(Duration::from_secs(1));
                sim.set_status(&e, Waiting);
            }
            sim.deliver_due().await;
        }
        h.poll().await;
        sim.deliver_due().await;
        let truth = sim.ground_truth();
        let shown = totals_shown(&samples(&h).await, &truth);
        let want = totals_true(&truth);
        for i in 0..4 {
            assert!(
                shown[i] <= want[i],
                "round {round}: {shown:?} exceeds {want:?}"
            );
            assert!(
                shown[i] >= last[i],
                "round {round}: {shown:?} went back from {last:?}"
            );
        }
        last = shown;
        // A webhook counts a failure at once; its step is counted by the poll that reads the
        // failed row, never at a step the execution did not fail at.
        for (step, n) in step_failures_shown(&samples(&h).await) {
            let want = truth.step_failures.get(&step).copied().unwrap_or(0);
            assert!(n <= want, "round {round}: {step:?} {n} > {want}");
        }
    }
    // Rest: every retry, duplicate and late delivery delivered, the pending outcomes read.
    for _ in 0..20 {
        clock.advance(Duration::from_secs(30));
        sim.deliver_due().await;
    }
    h.poll().await;
    h.poll().await;
    let stats = sim.webhook_stats();
    assert_eq!(stats.pending, 0, "{stats:?}");
    if refused {
        assert_eq!(stats.delivered, 0, "{stats:?}");
        let s = samples(&h).await;
        assert!(
            results(&s, "invalid_signature") >= stats.queued as f64,
            "{stats:?}"
        );
    } else {
        assert!(stats.delivered > 10, "deliveries happened: {stats:?}");
    }
    let truth = sim.ground_truth();
    let shown = totals_shown(&samples(&h).await, &truth);
    let want = totals_true(&truth);
    if partial {
        assert!((0..4).all(|i| shown[i] <= want[i]), "{shown:?} vs {want:?}");
    } else {
        assert_eq!(shown[..3], want[..3], "started, ended, failed at rest");
        assert_eq!(
            step_failures_shown(&samples(&h).await),
            truth.step_failures,
            "failures by step at rest"
        );
    }
    if lossy || partial {
        assert!(shown[3] <= want[3]);
    } else {
        assert_eq!(shown[3], want[3], "every handoff entry, once: {stats:?}");
    }
    server.abort();
}

#[tokio::test]
async fn simulator_deliveries_count_failures_and_handoffs_exactly() {
    simulator_deliveries(WebhookFaults::default(), 1, &[]).await;
}

#[tokio::test]
async fn duplicated_reordered_and_late_deliveries_count_once() {
    let faults = WebhookFaults {
        duplicate_rate: 0.3,
        duplicate_new_key_rate: 0.3,
        reorder: true,
        late_by: Duration::from_secs(70),
        ..WebhookFaults::default()
    };
    simulator_deliveries(faults, 2, &[]).await;
}

#[tokio::test]
async fn lost_deliveries_are_left_to_polling_and_never_overcount() {
    let faults = WebhookFaults {
        lost_rate: 0.5,
        duplicate_rate: 0.2,
        reorder: true,
        ..WebhookFaults::default()
    };
    simulator_deliveries(faults, 3, &[]).await;
}

#[tokio::test]
async fn deliveries_signed_with_a_wrong_secret_are_refused_and_polling_counts() {
    // Refused deliveries are lost to the exporter, like lost ones: Kapso retries them on its
    // schedule, then drops them.
    let faults = WebhookFaults {
        wrong_secret: true,
        ..WebhookFaults::default()
    };
    simulator_deliveries(faults, 4, &[]).await;
}

#[tokio::test]
async fn conversation_mode_counts_simulator_deliveries_exactly() {
    let faults = WebhookFaults {
        duplicate_rate: 0.3,
        reorder: true,
        late_by: Duration::from_secs(70),
        ..WebhookFaults::default()
    };
    simulator_deliveries(faults, 5, &["--kapso.discover-conversations", "30d"]).await;
}

/// The same check over random worlds, fault mixes and modes: `PROPTEST_CASES` cases (default
/// 6, each about a second), seeded so that a failure reproduces.
#[test]
fn random_worlds_and_delivery_faults_never_overcount_and_are_exact_at_rest() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(6u32);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(0x4b41_5053_4f10),
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let strategy = (
        any::<u64>(),
        0.0..0.5f64,
        0.0..0.5f64,
        prop_oneof![Just(0.0), 0.0..0.6f64],
        any::<bool>(),
        prop_oneof![Just(0u64), 0..120u64],
        any::<bool>(),
    );
    let result = runner.run(
        &strategy,
        |(seed, dup, dup_new_key, lost, reorder, late, conversations)| {
            let faults = WebhookFaults {
                duplicate_rate: dup,
                duplicate_new_key_rate: dup_new_key,
                lost_rate: lost,
                reorder,
                late_by: Duration::from_secs(late),
                ..WebhookFaults::default()
            };
            let extra: &[&str] = if conversations {
                &["--kapso.discover-conversations", "30d"]
            } else {
                &[]
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(simulator_deliveries(faults, seed, extra));
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
