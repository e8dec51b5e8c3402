//! The webhook receiver: Kapso's `workflow.execution.failed` and `workflow.execution.handoff`
//! deliveries, counted the moment they arrive (docs/kapso-api.md §10).
//!
//! It listens on an address of its own (`--webhook.listen-address`), since it faces Kapso on
//! the internet while `/metrics` stays internal. `POST /webhooks/kapso` takes the deliveries
//! of a single project, `POST /webhooks/kapso/{project}` those of a named one. Each delivery:
//! 1. a body over [`BODY_LIMIT`] is refused (413) before anything else reads it;
//! 2. `X-Webhook-Signature` must be the hex HMAC-SHA256 of the raw body with the project's
//!    secret, compared in constant time before the body is parsed (401 otherwise);
//! 3. the body must be a JSON object (400 otherwise); events other than the two above are
//!    answered 200 and not used, so that Kapso does not retry them;
//! 4. a delivery seen before, by `X-Idempotency-Key` or by (event, execution, `occurred_at`),
//!    is answered 200 as a duplicate ([`Dedupe`]);
//! 5. the event goes to the project's tracker ([`Tracker::apply_event`]), which counts what
//!    no poll and no earlier event counted, and the project's counters are shown at once.
//!
//! Kapso's signature carries no timestamp, so a replayed delivery is only absorbed by the
//! dedupe window (and by the tracker, which counts each failure and handoff entry once).
//!
//! [`Tracker::apply_event`]: crate::poller::tracker::Tracker::apply_event

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{Clock, Micros, micros, plausible};
use crate::kapso::models::parse_timestamp;
use crate::metrics::{
    ProjectLabels, ProjectResult, ProjectSource, Value, WEBHOOK_DEDUPE_KEYS,
    WEBHOOK_HANDOFF_EVENTS, WEBHOOK_LAST_ACCEPTED, WEBHOOK_REQUESTS,
};
use crate::poller::tracker::{Applied, Event, EventKind};
use crate::poller::{self, SharedTracker};
use crate::state::{self, SharedProject};

/// The largest body read; a larger one is answered 413.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// How long a delivery is remembered as seen: Kapso retries after 10 s, 40 s and 90 s (about
/// 140 s in all); ten minutes cover that with room for late deliveries.
pub const DEDUPE_FOR: Duration = Duration::from_secs(600);
/// The most deliveries remembered per project (two keys each, 8 bytes a key): past it the
/// oldest are forgotten first, so a flood of unique keys cannot grow memory. The tracker
/// still counts each execution's failure and handoff entry once without them.
pub const DEDUPE_MAX: usize = 100_000;
/// The most recent failures kept for the landing page, per project.
pub const RECENT_FAILURES: usize = 10;
/// Characters of a failure's error message kept for the landing page.
const MESSAGE_CHARS: usize = 200;

/// The `result` label of `kapso_webhook_requests_total`.
pub const RESULTS: [&str; 7] = [
    "accepted",
    "duplicate",
    "invalid_signature",
    "malformed",
    "ignored",
    "too_large",
    "unknown_project",
];

/// The `source` label of `kapso_webhook_handoff_events_total` (Kapso's documented values;
/// anything else is `other`).
pub const HANDOFF_SOURCES: [&str; 3] = ["agent_tool", "action_step", "other"];

/// A webhook secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// The hex HMAC-SHA256 of `body`, as Kapso signs it.
    pub fn sign(&self, body: &[u8]) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.0);
        let tag = aws_lc_rs::hmac::sign(&key, body);
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `signature` (hex, either case) is the HMAC-SHA256 of `body`, in constant time.
    fn verifies(&self, body: &[u8], signature: &str) -> bool {
        let Some(tag) = hex(signature.trim()) else {
            return false;
        };
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.0);
        aws_lc_rs::hmac::verify(&key, body, &tag).is_ok()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// 64 hex digits as 32 bytes.
fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// One project's receiving end.
pub struct Endpoint {
    pub project: String,
    pub secret: WebhookSecret,
    pub tracker: SharedTracker,
    pub state: SharedProject,
    pub conversation_mode: bool,
    /// Shared with the poller, which saves it with the project's state.
    pub deliveries: Arc<Mutex<Dedupe>>,
}

/// Deliveries seen within [`DEDUPE_FOR`], at most [`DEDUPE_MAX`], by key. Keys are kept as
/// 64 bits of a SHA-256 salted per window (so that nobody can aim collisions at them), and
/// saved with the project's state (`--storage.path`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Dedupe {
    salt: [u8; 16],
    order: VecDeque<(Micros, u64)>,
    /// The hashes of `order`; rebuilt after loading.
    #[serde(skip)]
    keys: HashSet<u64>,
}

impl Default for Dedupe {
    fn default() -> Self {
        Self {
            salt: rand::random(),
            order: VecDeque::new(),
            keys: HashSet::new(),
        }
    }
}

impl Dedupe {
    fn hash(&self, key: &str) -> u64 {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&self.salt);
        ctx.update(key.as_bytes());
        let digest = ctx.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_le_bytes(first)
    }

    /// Whether any of `keys` was seen; if none was, they are remembered from `now`.
    fn check(&mut self, keys: &[&str], now: Micros) -> bool {
        if self.keys.len() != self.order.len() {
            self.keys = self.order.iter().map(|(_, h)| *h).collect();
        }
        let window = i64::try_from(DEDUPE_FOR.as_micros()).unwrap_or(i64::MAX);
        let room = 2 * DEDUPE_MAX - keys.len().min(2 * DEDUPE_MAX);
        while let Some(&(at, key)) = self.order.front() {
            if at.saturating_add(window) > now && self.order.len() <= room {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&key);
        }
        let hashed: Vec<u64> = keys.iter().map(|k| self.hash(k)).collect();
        if hashed.iter().any(|h| self.keys.contains(h)) {
            return true;
        }
        for h in hashed {
            if self.keys.insert(h) {
                self.order.push_back((now, h));
            }
        }
        false
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A failure a webhook told of, for the landing page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentFailure {
    pub occurred_at: OffsetDateTime,
    pub workflow_id: String,
    pub execution_id: String,
    /// `error.message`, shortened to 200 characters.
    pub message: String,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    results: BTreeMap<&'static str, u64>,
    last_accepted: Option<OffsetDateTime>,
    handoff_sources: BTreeMap<&'static str, u64>,
    failures: VecDeque<RecentFailure>,
}

struct Project {
    endpoint: Endpoint,
    stats: Mutex<Stats>,
}

struct Inner {
    projects: BTreeMap<String, Project>,
    clock: Clock,
    /// Requests for a project that does not exist.
    unknown: Mutex<u64>,
}

/// The receiver of every project's deliveries; clones share it.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fields of a delivery the exporter reads; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Payload {
    event: Option<serde_json::Value>,
    occurred_at: Option<serde_json::Value>,
    workflow_id: Option<serde_json::Value>,
    workflow_execution_id: Option<serde_json::Value>,
    whatsapp_conversation_id: Option<serde_json::Value>,
    handoff: Option<serde_json::Value>,
    error: Option<serde_json::Value>,
}

/// A string or number field as a non-empty string.
fn text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Why a delivery is answered as it is: the `result` label and the HTTP status.
fn answer(result: &'static str) -> Response {
    let status = match result {
        "invalid_signature" => StatusCode::UNAUTHORIZED,
        "malformed" => StatusCode::BAD_REQUEST,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unknown_project" => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{result}\n"),
    )
        .into_response()
}

impl Receiver {
    pub fn new(endpoints: Vec<Endpoint>, clock: Clock) -> Self {
        let projects = endpoints
            .into_iter()
            .map(|e| {
                let stats = Stats {
                    results: RESULTS.iter().map(|r| (*r, 0)).collect(),
                    handoff_sources: HANDOFF_SOURCES.iter().map(|s| (*s, 0)).collect(),
                    ..Stats::default()
                };
                (
                    e.project.clone(),
                    Project {
                        endpoint: e,
                        stats: Mutex::new(stats),
                    },
                )
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                projects,
                clock,
                unknown: Mutex::new(0),
            }),
        }
    }

    /// `POST /webhooks/kapso` (the single project) and `POST /webhooks/kapso/{project}`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhooks/kapso", post(receive_single))
            .route("/webhooks/kapso/{project}", post(receive_named))
            .with_state(self.clone())
    }

    /// The metrics of the receiver.
    pub fn collector(&self) -> WebhookCollector {
        WebhookCollector {
            receiver: self.clone(),
        }
    }

    /// The most recent failures webhooks told of for `project`, newest first.
    pub fn recent_failures(&self, project: &str) -> Vec<RecentFailure> {
        self.inner
            .projects
            .get(project)
            .map(|p| lock(&p.stats).failures.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Handles one delivery for `project` (`None`: the single project's path).
    pub async fn deliver(
        &self,
        project: Option<&str>,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let target = match project {
            Some(name) => self.inner.projects.get(name),
            None if self.inner.projects.len() == 1 => self.inner.projects.values().next(),
            None => None,
        };
        let Some(p) = target else {
            *lock(&self.inner.unknown) += 1;
            return answer("unknown_project");
        };
        let result = self.handle(p, headers, body).await;
        *lock(&p.stats).results.entry(result).or_default() += 1;
        answer(result)
    }

    async fn handle(&self, p: &Project, headers: &HeaderMap, body: Body) -> &'static str {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
            return "too_large";
        }
        let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
            return "too_large";
        };
        let signature = headers
            .get("x-webhook-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !p.endpoint.secret.verifies(&body, signature) {
            return "invalid_signature";
        }
        let Ok(payload) = serde_json::from_slice::<Payload>(&body) else {
            return "malformed";
        };
        let name = text(payload.event.as_ref()).or_else(|| {
            headers
                .get("x-webhook-event")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let kind = match name.as_deref() {
            Some("workflow.execution.failed") => EventKind::Failed,
            Some("workflow.execution.handoff") => EventKind::Handoff,
            _ => return "ignored",
        };
        let now = micros(self.inner.clock.now());
        let occurred_at = text(payload.occurred_at.as_ref())
            .and_then(|s| parse_timestamp(&s))
            .and_then(|t| plausible(Some(t), now));
        let (Some(execution_id), Some(workflow_id), Some(occurred_at)) = (
            text(payload.workflow_execution_id.as_ref()),
            text(payload.workflow_id.as_ref()),
            occurred_at,
        ) else {
            return "malformed";
        };
        let kind_name = name.unwrap_or_default();
        let content_key = format!("{kind_name}\n{execution_id}\n{occurred_at}");
        let idempotency = headers
            .get("x-idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.trim().is_empty())
            .map(|k| format!("key\n{}", k.trim()));
        let mut keys = vec![content_key.as_str()];
        keys.extend(idempotency.as_deref());
        if lock(&p.endpoint.deliveries).check(&keys, now) {
            return "duplicate";
        }
        let event = Event {
            kind,
            workflow_id: workflow_id.clone(),
            execution_id: execution_id.clone(),
            conversation_id: text(payload.whatsapp_conversation_id.as_ref()),
            occurred_at,
        };
        let (applied, counters) = {
            let mut tracker = poller::lock(&p.endpoint.tracker);
            let applied = tracker.apply_event(&event, p.endpoint.conversation_mode, now);
            (applied, Arc::new(tracker.counter_snapshot()))
        };
        state::write(&p.endpoint.state).update_counters(counters);
        let mut stats = lock(&p.stats);
        match kind {
            EventKind::Handoff => {
                let source = payload
                    .handoff
                    .as_ref()
                    .and_then(|h| h.get("source"))
                    .and_then(|s| s.as_str())
                    .and_then(|s| HANDOFF_SOURCES.iter().find(|k| **k == s))
                    .copied()
                    .unwrap_or("other");
                *stats.handoff_sources.entry(source).or_default() += 1;
            }
            EventKind::Failed => {
                let message = payload
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MESSAGE_CHARS)
                    .collect();
                stats.failures.push_front(RecentFailure {
                    occurred_at: crate::clock::from_micros(occurred_at),
                    workflow_id,
                    execution_id,
                    message,
                });
                stats.failures.truncate(RECENT_FAILURES);
            }
        }
        match applied {
            Applied::Counted | Applied::AlreadyCounted => {
                stats.last_accepted = Some(self.inner.clock.now());
                "accepted"
            }
            Applied::NotCounted(reason) => {
                tracing::debug!(project = %p.endpoint.project, reason, "webhook event not counted");
                "ignored"
            }
        }
    }
}

async fn receive_single(State(r): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    r.deliver(None, &headers, body).await
}

async fn receive_named(
    State(r): State<Receiver>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    r.deliver(Some(&project), &headers, body).await
}

/// `kapso_webhook_*`, from the receiver's own counts.
pub struct WebhookCollector {
    receiver: Receiver,
}

impl fmt::Debug for WebhookCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookCollector")
    }
}

impl Collector for WebhookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let inner = &self.receiver.inner;
        let stats: Vec<(&str, Stats, usize)> = inner
            .projects
            .iter()
            .map(|(name, p)| {
                let copy = lock(&p.stats).clone();
                (name.as_str(), copy, lock(&p.endpoint.deliveries).len())
            })
            .collect();
        let unknown = *lock(&inner.unknown);
        let enc = &mut encoder;
        let result = |project, result| ProjectResult { project, result };
        WEBHOOK_REQUESTS.emit(
            enc,
            stats
                .iter()
                .flat_map(|(project, s, _)| {
                    s.results
                        .iter()
                        .map(|(r, n)| (result(project, r), Value::Counter(*n)))
                })
                .chain([(result("", "unknown_project"), Value::Counter(unknown))]),
        )?;
        WEBHOOK_LAST_ACCEPTED.emit(
            enc,
            stats.iter().filter_map(|(project, s, _)| {
                let t = s.last_accepted?;
                Some((
                    ProjectLabels { project },
                    Value::Gauge(t.unix_timestamp_nanos() as f64 / 1e9),
                ))
            }),
        )?;
        WEBHOOK_HANDOFF_EVENTS.emit(
            enc,
            stats.iter().flat_map(|(project, s, _)| {
                s.handoff_sources
                    .iter()
                    .map(|(source, n)| (ProjectSource { project, source }, Value::Counter(*n)))
            }),
        )?;
        WEBHOOK_DEDUPE_KEYS.emit(
            enc,
            stats
                .iter()
                .map(|(project, _, keys)| (ProjectLabels { project }, Value::Gauge(*keys as f64))),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_in_hex_of_either_case_and_nothing_else() {
        let secret = WebhookSecret::new("s3cret");
        let body = br#"{"event":"workflow.execution.failed"}"#;
        let sig = secret.sign(body);
        assert_eq!(sig.len(), 64);
        assert!(secret.verifies(body, &sig));
        assert!(secret.verifies(body, &sig.to_uppercase()));
        assert!(!secret.verifies(b"{}", &sig));
        assert!(!WebhookSecret::new("other").verifies(body, &sig));
        for bad in ["", "sha256=", &sig[..63], &format!("{sig}0"), "zz"] {
            assert!(!secret.verifies(body, bad), "{bad:?}");
        }
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn dedupe_remembers_within_the_window_and_stays_bounded() {
        let mut d = Dedupe::default();
        let minute = 60_000_000;
        assert!(!d.check(&["a", "key\n1"], 0));
        assert!(d.check(&["a"], minute));
        assert!(d.check(&["b", "key\n1"], minute));
        assert!(
            !d.check(&["b"], minute),
            "nothing of a duplicate is remembered"
        );
        // Past the window, forgotten.
        assert!(!d.check(&["a"], 11 * minute));
        let mut d = Dedupe::default();
        for i in 0..3 * DEDUPE_MAX {
            d.check(&[&i.to_string()], 0);
        }
        assert!(d.len() <= 2 * DEDUPE_MAX, "{} keys", d.len());
    }
}
