//! Kapso project webhooks (docs/kapso-api.md §10): registration under `/platform/v1/whatsapp/webhooks`
//! and the delivery of `workflow.execution.failed` / `workflow.execution.handoff` events for the
//! simulator's own transitions, signed, retried on Kapso's schedule and optionally broken by
//! [`WebhookFaults`].
//!
//! Every counted entry into `failed` or `handoff` in the world (the increments of
//! [`GroundTruth::finished`](super::GroundTruth::finished)`[failed]` and
//! [`GroundTruth::handoffs`](super::GroundTruth::handoffs)) queues one event per active
//! webhook subscribed to its name. Nothing is sent until [`Simulator::deliver_due`] runs: it
//! sends every attempt due at the clock's instant, one after the other (in queue order, or
//! shuffled under [`WebhookFaults::reorder`]), so a test on a manual clock drives the retry
//! schedule step by step without sleeping.
//!
//! [`Simulator::deliver_due`]: super::Simulator::deliver_due

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use hmac::{Hmac, KeyInit, Mac};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::codec::{Uid, micros, new_uuid, parse_uuid, rfc3339_micros};
use super::world::Transition;
use super::{Shared, chance, lock};

/// The event sent when an execution enters `failed`.
pub const EVENT_FAILED: &str = "workflow.execution.failed";
/// The event sent when an execution enters `handoff`.
pub const EVENT_HANDOFF: &str = "workflow.execution.handoff";

/// Kapso's waits before the 2nd, 3rd and 4th attempt of an undelivered event (docs/kapso-api.md
/// §10); after a 4th failure the event is dropped.
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(40),
    Duration::from_secs(90),
];

/// How long after a delivery a duplicate of it (the duplicate faults) is due, scaled by
/// [`WebhookOptions::retry_scale`].
pub const DUPLICATE_DELAY: Duration = Duration::from_secs(5);

/// How deliveries are timed.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Factor on [`RETRY_DELAYS`] and [`DUPLICATE_DELAY`] (1.0: Kapso's schedule; 0.1 makes
    /// it 1 s, 4 s, 9 s). Negative or non-finite values count as 0.
    pub retry_scale: f64,
    /// Real time one POST may take before it counts as a failed attempt (Kapso: 10 s).
    pub timeout: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            retry_scale: 1.0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Ways deliveries go wrong, drawn from a generator seeded from
/// [`SimulatorConfig::seed`](super::SimulatorConfig::seed), so a run is reproducible. All off
/// by default; change them with [`Simulator::set_webhook_faults`](super::Simulator::set_webhook_faults).
/// They apply to events queued (lost, late, wrong secret) or delivered (duplicates) from then
/// on, and to delivery rounds run from then on (reorder).
#[derive(Clone, Debug, Default)]
pub struct WebhookFaults {
    /// Probability that a delivered event is delivered once more, [`DUPLICATE_DELAY`] later,
    /// with the same idempotency key and body (a copy is not copied again).
    pub duplicate_rate: f64,
    /// Probability that a delivered event is delivered once more, [`DUPLICATE_DELAY`] later,
    /// with a new idempotency key but the same body: dedupe must then use (event, execution
    /// id, occurred_at).
    pub duplicate_new_key_rate: f64,
    /// The attempts of one [`Simulator::deliver_due`](super::Simulator::deliver_due) round go
    /// out in a shuffled order instead of queue order.
    pub reorder: bool,
    /// Probability that an event is never sent at all (counted in [`WebhookStats::lost`]).
    pub lost_rate: f64,
    /// Extra delay (on the simulator's clock, not scaled) before an event's first attempt,
    /// for example to make it arrive after the exporter's next poll.
    pub late_by: Duration,
    /// Events are signed with a wrong secret: a receiver that checks signatures answers 401,
    /// so Kapso retries them on its schedule and then drops them.
    pub wrong_secret: bool,
}

/// What one delivery round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// POSTs sent.
    pub sent: u64,
    /// POSTs answered with a 2xx.
    pub delivered: u64,
    /// POSTs that failed (non-2xx, refused connection, timeout).
    pub failed: u64,
    /// Events dropped after their 4th failed attempt.
    pub dropped: u64,
    /// Attempts still queued after the round (due now or later).
    pub pending: u64,
}

/// Counts for one event name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events queued (one per transition and subscribed webhook; not lost ones, not copies).
    pub queued: u64,
    /// Deliveries (copies included).
    pub delivered: u64,
    /// Events dropped after 4 failed attempts.
    pub dropped: u64,
    /// Events lost (never sent).
    pub lost: u64,
}

/// Webhook statistics since the simulator was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events queued (not lost ones, not duplicate copies).
    pub queued: u64,
    /// Duplicate copies queued by the duplicate faults.
    pub duplicates: u64,
    /// Events lost by [`WebhookFaults::lost_rate`].
    pub lost: u64,
    /// POSTs sent.
    pub attempts: u64,
    /// POSTs answered with a 2xx.
    pub delivered: u64,
    /// POSTs that failed.
    pub failed_attempts: u64,
    /// Events (or copies) dropped after 4 failed attempts.
    pub dropped: u64,
    /// Attempts queued now.
    pub pending: u64,
    /// The same counts per event name.
    pub by_event: BTreeMap<String, EventCounts>,
}

/// One successful delivery, as the receiver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredEvent {
    /// The registered webhook's id.
    pub webhook_id: String,
    /// `workflow.execution.failed` or `workflow.execution.handoff`.
    pub event: String,
    /// `workflow_execution_id` of the body.
    pub execution_id: String,
    /// `workflow_id` of the body.
    pub workflow_id: String,
    /// `occurred_at` of the body.
    pub occurred_at: String,
    /// `X-Idempotency-Key` of the request.
    pub idempotency_key: String,
    /// Which attempt got the 2xx (1 to 4).
    pub attempt: u32,
    /// A copy sent by a duplicate fault.
    pub duplicate: bool,
}

/// A registered webhook.
#[derive(Clone, Debug)]
struct Webhook {
    id: u128,
    url: String,
    kind: String,
    events: Vec<String>,
    active: bool,
    created_us: i64,
    secret_key: String,
    headers: Map<String, Value>,
    payload_version: String,
}

/// One queued attempt of one event (or copy).
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    seq: u64,
    webhook: u128,
    url: String,
    event: &'static str,
    execution_id: String,
    workflow_id: String,
    occurred_at: String,
    key: String,
    body: Bytes,
    signature: String,
    payload_version: String,
    headers: Vec<(String, String)>,
    /// The attempt number this is (1 to 4).
    attempt: u32,
    due_us: i64,
    duplicate: bool,
}

/// How one attempt ended.
pub(crate) enum Outcome {
    Delivered,
    Failed,
}

/// Every webhook, the queue and the statistics.
pub(crate) struct Webhooks {
    hooks: Vec<Webhook>,
    queue: Vec<Pending>,
    pub faults: WebhookFaults,
    pub options: WebhookOptions,
    rng: StdRng,
    seq: u64,
    stats: WebhookStats,
    delivered: Vec<DeliveredEvent>,
}

/// `Hmac<Sha256>` of `body` keyed with `secret`, as 64 lowercase hex digits.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// `d` scaled by `scale`, in microseconds.
fn scaled_us(d: Duration, scale: f64) -> i64 {
    let scale = if scale.is_finite() {
        scale.max(0.0)
    } else {
        0.0
    };
    (d.as_micros() as f64 * scale).round().min(i64::MAX as f64) as i64
}

/// Deterministic details of an event from the execution id (no random draw, so the world's
/// and the faults' sequences do not depend on them).
fn details(t: &Transition) -> (&'static str, Value) {
    const ERRORS: [&str; 3] = [
        "Action step failed: HTTP 500",
        "Agent step timed out after 60s",
        "Function invocation failed: TypeError",
    ];
    if t.failed {
        let message = ERRORS[(t.execution_id % 3) as usize];
        ("error", json!({ "message": message }))
    } else if t.execution_id % 4 == 0 {
        // An action step hands off without a reason (the field is optional).
        ("handoff", json!({ "source": "action_step" }))
    } else {
        (
            "handoff",
            json!({ "reason": "Customer asked for a human agent", "source": "agent_tool" }),
        )
    }
}

impl Webhooks {
    pub fn new(seed: u64) -> Webhooks {
        Webhooks {
            hooks: Vec::new(),
            queue: Vec::new(),
            faults: WebhookFaults::default(),
            options: WebhookOptions::default(),
            rng: StdRng::seed_from_u64(seed ^ 0x0EB4_00C5),
            seq: 0,
            stats: WebhookStats::default(),
            delivered: Vec::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Registers a webhook at `now_us`; returns its index.
    fn add(&mut self, new: NewWebhook, now_us: i64) -> usize {
        let id = new_uuid(&mut self.rng);
        self.hooks.push(Webhook {
            id,
            url: new.url,
            kind: new.kind,
            events: new.events,
            active: new.active,
            created_us: now_us,
            secret_key: new.secret_key,
            headers: new.headers,
            payload_version: new.payload_version,
        });
        self.hooks.len() - 1
    }

    /// Registers a Kapso-kind, active, v2 webhook; returns its id.
    pub fn register(&mut self, url: &str, secret: &str, events: &[&str], now_us: i64) -> u128 {
        let i = self.add(
            NewWebhook {
                url: url.to_owned(),
                kind: "kapso".to_owned(),
                secret_key: secret.to_owned(),
                active: true,
                events: events.iter().map(|e| (*e).to_owned()).collect(),
                payload_version: "v2".to_owned(),
                headers: Map::new(),
            },
            now_us,
        );
        self.hooks[i].id
    }

    /// Removes a webhook and its queued attempts; `false` if unknown.
    pub fn remove(&mut self, id: u128) -> bool {
        let before = self.hooks.len();
        self.hooks.retain(|h| h.id != id);
        self.queue.retain(|p| p.webhook != id);
        self.hooks.len() != before
    }

    fn render(&self, h: &Webhook, project_id: u128) -> Value {
        let at = rfc3339_micros(h.created_us);
        json!({
            "id": Uid(h.id).to_string(),
            "url": h.url,
            "kind": h.kind,
            "events": h.events,
            "active": h.active,
            "created_at": at,
            "updated_at": at,
            "project_id": Uid(project_id).to_string(),
            "phone_number_id": null,
            "secret_key": h.secret_key,
            "headers": h.headers,
            "payload_version": h.payload_version,
        })
    }

    /// Queues one event per transition and active subscribed webhook, due at once (at
    /// `now_us` or the transition's instant if earlier) plus [`WebhookFaults::late_by`].
    pub fn enqueue(&mut self, project_id: u128, transitions: &[Transition], now_us: i64) {
        for t in transitions {
            let event = if t.failed {
                EVENT_FAILED
            } else {
                EVENT_HANDOFF
            };
            let targets: Vec<Webhook> = self
                .hooks
                .iter()
                .filter(|h| h.active && h.kind == "kapso" && h.events.iter().any(|e| e == event))
                .cloned()
                .collect();
            for hook in targets {
                self.enqueue_one(project_id, t, event, &hook, now_us);
            }
        }
    }

    fn enqueue_one(
        &mut self,
        project_id: u128,
        t: &Transition,
        event: &'static str,
        h: &Webhook,
        now_us: i64,
    ) {
        let counts = self.stats.by_event.entry(event.to_owned()).or_default();
        if chance(&mut self.rng, self.faults.lost_rate) {
            counts.lost += 1;
            self.stats.lost += 1;
            return;
        }
        counts.queued += 1;
        self.stats.queued += 1;
        let occurred_at = rfc3339_micros(t.at_us);
        let execution_id = Uid(t.execution_id).to_string();
        let workflow_id = Uid(t.workflow_id).to_string();
        let (detail_key, detail) = details(t);
        let mut body = json!({
            "event": event,
            "occurred_at": occurred_at,
            "project_id": Uid(project_id).to_string(),
            "workflow_id": workflow_id,
            "workflow_execution_id": execution_id,
            "status": if t.failed { "failed" } else { "handoff" },
            "tracking_id": null,
            "channel": "whatsapp",
            "whatsapp_conversation_id": t.conversation_id.map(|c| Uid(c).to_string()),
        });
        body[detail_key] = detail;
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let secret = if self.faults.wrong_secret {
            format!("{}-not-the-secret", h.secret_key)
        } else {
            h.secret_key.clone()
        };
        let key = Uid(new_uuid(&mut self.rng)).to_string();
        let seq = self.next_seq();
        let late = i64::try_from(self.faults.late_by.as_micros()).unwrap_or(i64::MAX);
        self.queue.push(Pending {
            seq,
            webhook: h.id,
            url: h.url.clone(),
            event,
            execution_id,
            workflow_id,
            occurred_at,
            key,
            signature: signature(&secret, &body),
            body,
            payload_version: h.payload_version.clone(),
            headers: h
                .headers
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect(),
            attempt: 1,
            // A start bumped past the clock (strictly increasing started_at) is not held back.
            due_us: t.at_us.min(now_us).saturating_add(late),
            duplicate: false,
        });
    }

    /// Takes every attempt due at `now_us` out of the queue, in the order to send them.
    pub fn take_due(&mut self, now_us: i64) -> Vec<Pending> {
        let (mut due, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|p| p.due_us <= now_us);
        self.queue = rest;
        due.sort_by_key(|p| (p.due_us, p.seq));
        if self.faults.reorder {
            due.shuffle(&mut self.rng);
        }
        due
    }

    /// Records what the attempts taken at `now_us` did and schedules retries and copies.
    pub fn finish(&mut self, now_us: i64, results: Vec<(Pending, Outcome)>) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let scale = self.options.retry_scale;
        for (p, outcome) in results {
            report.sent += 1;
            self.stats.attempts += 1;
            match outcome {
                Outcome::Delivered => {
                    report.delivered += 1;
                    self.stats.delivered += 1;
                    self.stats
                        .by_event
                        .entry(p.event.to_owned())
                        .or_default()
                        .delivered += 1;
                    self.delivered.push(DeliveredEvent {
                        webhook_id: Uid(p.webhook).to_string(),
                        event: p.event.to_owned(),
                        execution_id: p.execution_id.clone(),
                        workflow_id: p.workflow_id.clone(),
                        occurred_at: p.occurred_at.clone(),
                        idempotency_key: p.key.clone(),
                        attempt: p.attempt,
                        duplicate: p.duplicate,
                    });
                    if !p.duplicate {
                        self.copies(&p, now_us);
                    }
                }
                Outcome::Failed => {
                    report.failed += 1;
                    self.stats.failed_attempts += 1;
                    match RETRY_DELAYS.get(p.attempt as usize - 1) {
                        Some(&delay) => {
                            let due_us = now_us.saturating_add(scaled_us(delay, scale));
                            self.queue.push(Pending {
                                attempt: p.attempt + 1,
                                due_us,
                                ..p
                            });
                        }
                        None => {
                            report.dropped += 1;
                            self.stats.dropped += 1;
                            self.stats
                                .by_event
                                .entry(p.event.to_owned())
                                .or_default()
                                .dropped += 1;
                        }
                    }
                }
            }
        }
        report.pending = self.queue.len() as u64;
        report
    }

    /// The duplicate faults' copies of a delivered event.
    fn copies(&mut self, p: &Pending, now_us: i64) {
        let due_us = now_us.saturating_add(scaled_us(DUPLICATE_DELAY, self.options.retry_scale));
        let same_key = chance(&mut self.rng, self.faults.duplicate_rate);
        let new_key = chance(&mut self.rng, self.faults.duplicate_new_key_rate);
        for fresh in [same_key.then_some(false), new_key.then_some(true)]
            .into_iter()
            .flatten()
        {
            let key = if fresh {
                Uid(new_uuid(&mut self.rng)).to_string()
            } else {
                p.key.clone()
            };
            let seq = self.next_seq();
            self.stats.duplicates += 1;
            self.queue.push(Pending {
                seq,
                key,
                attempt: 1,
                due_us,
                duplicate: true,
                ..p.clone()
            });
        }
    }

    pub fn stats(&self) -> WebhookStats {
        let mut stats = self.stats.clone();
        stats.pending = self.queue.len() as u64;
        stats
    }

    pub fn delivered(&self) -> Vec<DeliveredEvent> {
        self.delivered.clone()
    }
}

/// Sends one attempt: `Delivered` on a 2xx, `Failed` on anything else.
pub(crate) async fn send(client: &reqwest::Client, p: &Pending, timeout: Duration) -> Outcome {
    let mut req = client.post(&p.url).timeout(timeout);
    const OURS: [&str; 5] = [
        "content-type",
        "x-webhook-event",
        "x-webhook-signature",
        "x-idempotency-key",
        "x-webhook-payload-version",
    ];
    for (k, v) in &p.headers {
        if !OURS.contains(&k.to_ascii_lowercase().as_str()) {
            req = req.header(k, v);
        }
    }
    let req = req
        .header("Content-Type", "application/json")
        .header("X-Webhook-Event", p.event)
        .header("X-Webhook-Signature", &p.signature)
        .header("X-Idempotency-Key", &p.key)
        .header("X-Webhook-Payload-Version", &p.payload_version)
        .body(p.body.clone());
    match req.send().await {
        Ok(resp) if resp.status().is_success() => {
            // Read the answer so the connection can be reused; its content does not matter.
            let _ = resp.bytes().await;
            Outcome::Delivered
        }
        Ok(resp) => {
            tracing::debug!(url = %p.url, status = %resp.status(), "webhook attempt refused");
            Outcome::Failed
        }
        Err(e) => {
            tracing::debug!(url = %p.url, error = %e, "webhook attempt failed");
            Outcome::Failed
        }
    }
}

// ----- the registration API ------------------------------------------------------------

/// `POST|GET /whatsapp/webhooks` and `DELETE /whatsapp/webhooks/{id}`, behind the same gate
/// (auth, rate limit, faults) as every other endpoint.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/whatsapp/webhooks", get(list).post(create))
        .route("/whatsapp/webhooks/{webhook_id}", delete(remove))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// A validated registration body.
struct NewWebhook {
    url: String,
    kind: String,
    secret_key: String,
    active: bool,
    events: Vec<String>,
    payload_version: String,
    headers: Map<String, Value>,
}

fn parse_new(body: &[u8]) -> Result<NewWebhook, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "Invalid JSON body")?;
    let w = value
        .get("whatsapp_webhook")
        .and_then(Value::as_object)
        .ok_or("whatsapp_webhook is required")?;
    let url = w
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or("url is required")?;
    let parsed = url::Url::parse(url).map_err(|_| "url must be a valid http(s) URL")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("url must be a valid http(s) URL");
    }
    let secret_key = w
        .get("secret_key")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("secret_key is required")?;
    let kind = match w.get("kind") {
        None | Some(Value::Null) => "kapso",
        Some(Value::String(k)) if k == "kapso" || k == "meta" => k.as_str(),
        Some(_) => return Err("kind must be kapso or meta"),
    };
    let events = match (kind, w.get("events")) {
        ("meta", _) => Vec::new(),
        (_, Some(Value::Array(items))) if !items.is_empty() => items
            .iter()
            .map(|e| e.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("events must be a non-empty array of strings")?,
        _ => return Err("events must be a non-empty array of strings"),
    };
    let active = match w.get("active") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("active must be a boolean"),
    };
    let payload_version = match w.get("payload_version") {
        None | Some(Value::Null) => "v2".to_owned(),
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err("payload_version must be a string"),
    };
    let headers = match w.get("headers") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h.clone(),
        Some(_) => return Err("headers must be an object"),
    };
    Ok(NewWebhook {
        url: url.to_owned(),
        kind: kind.to_owned(),
        secret_key: secret_key.to_owned(),
        active,
        events,
        payload_version,
        headers,
    })
}

async fn create(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let new = match parse_new(&body) {
        Ok(new) => new,
        Err(message) => return invalid(message),
    };
    let now_us = micros(sh.clock.now());
    // Lock order everywhere: world, then webhooks.
    let mut world = lock(&sh.world);
    world.record_transitions();
    let project_id = world.project_id;
    let mut hooks = lock(&sh.webhooks);
    let i = hooks.add(new, now_us);
    let data = hooks.render(&hooks.hooks[i], project_id);
    (StatusCode::CREATED, axum::Json(json!({ "data": data }))).into_response()
}

/// Every webhook in one page (the first [`LIST_PAGE`]; `page` and `per_page` are not read),
/// with the spec's page-number `meta`.
async fn list(State(sh): State<Arc<Shared>>) -> Response {
    let project_id = lock(&sh.world).project_id;
    let hooks = lock(&sh.webhooks);
    let data: Vec<Value> = hooks
        .hooks
        .iter()
        .take(LIST_PAGE)
        .map(|h| hooks.render(h, project_id))
        .collect();
    let total = hooks.hooks.len();
    let meta = json!({
        "page": 1,
        "per_page": LIST_PAGE,
        "total_pages": total.div_ceil(LIST_PAGE),
        "total_count": total,
    });
    (
        StatusCode::OK,
        axum::Json(json!({ "data": data, "meta": meta })),
    )
        .into_response()
}

/// Webhooks per `GET /whatsapp/webhooks` answer.
const LIST_PAGE: usize = 100;

async fn remove(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let removed = parse_uuid(&id).is_some_and(|id| lock(&sh.webhooks).remove(id));
    if removed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "Webhook not found")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_lowercase_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn registration_bodies_are_validated() {
        let ok = br#"{"whatsapp_webhook":{"url":"https://x.test/h","secret_key":"s","events":["workflow.execution.failed"]}}"#;
        let new = parse_new(ok).expect("valid");
        assert_eq!(
            (new.kind.as_str(), new.active, new.payload_version.as_str()),
            ("kapso", true, "v2")
        );
        for bad in [
            &br#"{"whatsapp_webhook":{"secret_key":"s","events":["a"]}}"#[..],
            br#"{"whatsapp_webhook":{"url":"ftp://x.test/h","secret_key":"s","events":["a"]}}"#,
            br#"{"whatsapp_webhook":{"url":"https://x.test/h","secret_key":"s","events":[]}}"#,
            br#"{"whatsapp_webhook":{"url":"https://x.test/h","events":["a"]}}"#,
            br#"{"url":"https://x.test/h"}"#,
            b"not json",
        ] {
            assert!(parse_new(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn failed_attempts_are_retried_after_10_40_90_seconds_then_dropped() {
        let mut w = Webhooks::new(1);
        w.options.retry_scale = 0.5;
        w.register("http://127.0.0.1:9/h", "s", &[EVENT_FAILED], 0);
        let t = Transition {
            failed: true,
            at_us: 1_000,
            workflow_id: 1,
            execution_id: 2,
            conversation_id: None,
        };
        w.enqueue(7, &[t], 1_000);
        let mut now = 1_000;
        let mut keys = Vec::new();
        for (i, wait) in [5_000_000, 20_000_000, 45_000_000].into_iter().enumerate() {
            assert!(w.take_due(now - 1).is_empty());
            let due = w.take_due(now);
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].attempt, i as u32 + 1);
            keys.push(due[0].key.clone());
            let report = w.finish(now, due.into_iter().map(|p| (p, Outcome::Failed)).collect());
            assert_eq!((report.failed, report.dropped, report.pending), (1, 0, 1));
            now += wait;
        }
        let due = w.take_due(now);
        assert_eq!(due[0].attempt, 4);
        keys.push(due[0].key.clone());
        let report = w.finish(now, due.into_iter().map(|p| (p, Outcome::Failed)).collect());
        assert_eq!((report.dropped, report.pending), (1, 0));
        assert!(keys.windows(2).all(|k| k[0] == k[1]));
        assert_eq!(w.stats().by_event[EVENT_FAILED].dropped, 1);
    }
}
