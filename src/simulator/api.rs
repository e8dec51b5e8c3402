//! The HTTP face of the simulator: routes under `/platform/v1`, the per-request gate (latency,
//! auth, rate limit, injected faults) and the JSON shapes of the published OpenAPI schemas.
//!
//! Endpoints (`GET`; docs/kapso-api.md §§2–5):
//! - `/workflows` and `/workflows/{workflow_id}`
//! - `/workflows/{workflow_id}/executions`
//! - `/workflow_executions/{execution_id}`
//! - `/whatsapp/conversations` and `/whatsapp/conversations/{conversation_id}`
//! - `/whatsapp/conversations/{conversation_id}/flow_executions`
//!
//! and, for project webhooks (docs/kapso-api.md §10; handlers in `webhooks.rs`),
//! `GET|POST /whatsapp/webhooks` and `DELETE /whatsapp/webhooks/{webhook_id}`.
//!
//! What a body shows also depends on the world's [`Variance`]: timestamp precision and offset,
//! fields left out or null, duplicated rows, overridden `started_at` values, hidden workflows.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound::{Included, Unbounded};
use std::sync::Arc;

use axum::Router;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::codec::{
    CursorColumn, Key, TimeFormat, Ts, Uid, decode_cursor, encode_cursor, micros, parse_time,
    parse_uuid,
};
use super::paging::{Page, PageRequest, page};
use super::traffic::{Admission, endpoint_of};
use super::variance::{Precision, Presence, StartOverride, Variance};
use super::world::{Execution, Step, Workflow, World};
use super::{Drift, ExecStatus, Shared, chance, lock};

/// Statuses a row shows under the `unknown_status_rate` fault: values no spec lists.
const UNKNOWN_STATUSES: [&str; 3] = ["paused_by_admin", "queued", "cancelling"];

/// Builds the router; every request passes through [`gate`] first.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/workflows", get(list_workflows))
        .route("/workflows/{workflow_id}", get(get_workflow))
        .route(
            "/workflows/{workflow_id}/executions",
            get(list_workflow_executions),
        )
        .route("/workflow_executions/{execution_id}", get(get_execution))
        .route("/whatsapp/conversations", get(list_conversations))
        .route(
            "/whatsapp/conversations/{conversation_id}",
            get(get_conversation),
        )
        .route(
            "/whatsapp/conversations/{conversation_id}/flow_executions",
            get(list_conversation_executions),
        )
        .merge(super::webhooks::routes());
    Router::new()
        .nest("/platform/v1", api)
        .fallback(not_found_route)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

// ----- errors and bodies ---------------------------------------------------------------

/// A flat Kapso error body, `{"error": …}` (docs/kapso-api.md §9).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str) -> ApiError {
        ApiError {
            status,
            error,
            message: None,
        }
    }

    fn invalid(error: &'static str) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.message {
            Some(message) => json!({ "error": self.error, "message": message }),
            None => json!({ "error": self.error }),
        };
        json_response(self.status, &body)
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `{"data": …}` with status 200.
fn data(body: impl Serialize) -> Response {
    #[derive(Serialize)]
    struct Data<T> {
        data: T,
    }
    json_response(StatusCode::OK, &Data { data: body })
}

/// A field that a variance may leave out or set to `null`.
#[derive(Clone, Copy, Debug)]
enum Field<T> {
    Value(T),
    Null,
    Absent,
}

impl<T> Field<T> {
    /// `value` as `presence` says (`Present` with no value is `null`).
    fn new(presence: Presence, value: Option<T>) -> Field<T> {
        match (presence, value) {
            (Presence::Present, Some(v)) => Field::Value(v),
            (Presence::Present | Presence::Null, _) => Field::Null,
            (Presence::Absent, _) => Field::Absent,
        }
    }

    fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Value(v) => v.serialize(s),
            Field::Null | Field::Absent => s.serialize_none(),
        }
    }
}

/// The format of timestamps the variance gives no precision of their own (full precision,
/// in the variance's offset).
fn base_format(v: &Variance) -> TimeFormat {
    TimeFormat {
        precision: Precision::Micros,
        offset: v.utc_offset,
    }
}

/// The format of cursor timestamps.
fn cursor_format(v: &Variance) -> TimeFormat {
    base_format(v).with_precision(v.precision.cursor)
}

async fn not_found_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

// ----- the gate ------------------------------------------------------------------------

/// Latency, auth, rate limit and faults, in that order, around every handler.
async fn gate(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_of(req.uri().path());
    let latency = sh.latency + lock(&sh.faults).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = admit_and_run(&sh, req, next).await;
    lock(&sh.traffic).record(endpoint, response.status().as_u16());
    response
}

async fn admit_and_run(sh: &Shared, req: Request, next: Next) -> Response {
    let expected = lock(&sh.api_key).clone();
    let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    // The only scheme is X-API-Key (docs/kapso-api.md §1); the legacy API's 401 text (§9).
    if expected.is_empty() || given != Some(expected.as_str()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "Invalid or missing API key")
            .into_response();
    }
    let throttle = lock(&sh.faults).throttle_secs;
    let admission = {
        let mut traffic = lock(&sh.traffic);
        match throttle {
            Some(secs) => traffic.throttle(&expected, Instant::now(), sh.rate_limit, secs),
            None => traffic.admit(&expected, Instant::now(), sh.rate_limit),
        }
    };
    let (mut response, limit, remaining) = match admission {
        Admission::Limited {
            limit,
            retry_after_secs,
        } => {
            let mut response = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: "Rate limit exceeded",
                message: Some(format!(
                    "You have exceeded {limit} requests per minute for this API key. \
                     Retry after {retry_after_secs} seconds."
                )),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            // A storm (the throttle fault) comes from in front of the limiter, without
            // `X-RateLimit-*` headers: only `Retry-After` says when to come back.
            (response, throttle.is_none().then_some(limit), 0)
        }
        Admission::Accepted { limit, remaining } => {
            let response = match sh.server_fault() {
                Some(status) => ApiError::new(status, "Internal server error").into_response(),
                None => distort(sh, next.run(req).await).await,
            };
            (response, limit, remaining)
        }
    };
    if let Some(limit) = limit {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    }
    response
}

/// The faults that change a 200's body, in order: schema drift, malformed JSON, then how the
/// bytes travel (a huge padded page, a truncated transfer or a stalled one).
async fn distort(sh: &Shared, response: Response) -> Response {
    if response.status() != StatusCode::OK {
        return response;
    }
    let faults = lock(&sh.faults).clone();
    let (malformed, half, truncated) = {
        let mut rng = lock(&sh.fault_rng);
        let malformed = chance(&mut rng, faults.malformed_rate);
        let half = malformed && rng.random_bool(0.5);
        (malformed, half, chance(&mut rng, faults.truncated_rate))
    };
    let drifting = faults.drift != Drift::default();
    if !drifting
        && !malformed
        && !truncated
        && faults.body_stall.is_zero()
        && faults.padding_bytes == 0
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    if drifting {
        if let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) {
            drift(&mut value, faults.drift);
            bytes = serde_json::to_vec(&value).map_or(bytes, Bytes::from);
        }
    }
    if malformed {
        // Half the body, or an unterminated `{"data": [`.
        bytes = if half && bytes.len() > 1 {
            bytes.slice(..bytes.len() / 2)
        } else {
            Bytes::from_static(b"{\"data\": [")
        };
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if faults.padding_bytes > 0 {
        padded(bytes, faults.padding_bytes, sh.padding_sent.clone())
    } else if truncated {
        // The full length is announced, half is sent, then the connection is reset.
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        let head = bytes.slice(..bytes.len() / 2);
        Body::from_stream(futures::stream::iter([
            Ok(head),
            Err(std::io::Error::other(
                "connection cut by the truncated_rate fault",
            )),
        ]))
    } else if !faults.body_stall.is_zero() {
        let head = bytes.slice(..bytes.len() / 2);
        let tail = bytes.slice(bytes.len() / 2..);
        let stall = faults.body_stall;
        let first = futures::stream::iter([Ok::<_, std::io::Error>(head)]);
        Body::from_stream(first.chain(futures::stream::once(async move {
            tokio::time::sleep(stall).await;
            Ok(tail)
        })))
    } else {
        Body::from(bytes)
    };
    Response::from_parts(parts, body)
}

/// Schema drift of one body (see [`Drift`]).
fn drift(body: &mut Value, d: Drift) {
    if d.non_uuid_ids {
        dashless_ids(body);
    }
    let Value::Object(envelope) = body else {
        return;
    };
    if d.extra_fields {
        envelope.insert("request_id".into(), json!("req_9f1c2e"));
        if let Some(Value::Object(paging)) = envelope.get_mut("paging") {
            paging.insert("total_estimate".into(), json!(12345));
        }
    }
    match envelope.get_mut("data") {
        Some(Value::Array(rows)) => rows.iter_mut().for_each(|row| drift_object(row, d, true)),
        Some(row) => drift_object(row, d, true),
        None => {}
    }
}

fn drift_object(value: &mut Value, d: Drift, top: bool) {
    let Value::Object(obj) = value else {
        return;
    };
    if d.missing_ids && top {
        obj.remove("id");
    }
    if d.null_fields || d.missing_fields {
        let kept = |k: &str| k == "id" || (top && matches!(k, "status" | "workflow"));
        let other: Vec<String> = obj.keys().filter(|k| !kept(k)).cloned().collect();
        for k in other {
            if d.missing_fields {
                obj.remove(&k);
            } else {
                obj.insert(k, Value::Null);
            }
        }
    }
    if d.extra_fields {
        obj.insert(
            "added_later".into(),
            json!({ "nested": [1, "two", null], "flag": true }),
        );
    }
    if top {
        if let Some(workflow) = obj.get_mut("workflow") {
            drift_object(
                workflow,
                Drift {
                    missing_ids: false,
                    ..d
                },
                false,
            );
        }
    }
}

/// Rewrites every canonical UUID string as 32 hex digits without dashes.
fn dashless_ids(value: &mut Value) {
    match value {
        Value::String(s) if s.len() == 36 && parse_uuid(s).is_some() => {
            *s = s.replace('-', "");
        }
        Value::Array(items) => items.iter_mut().for_each(dashless_ids),
        Value::Object(map) => map.values_mut().for_each(dashless_ids),
        _ => {}
    }
}

/// `{"padding":"aaa…",` + the rest of `body`, streamed in 64 KiB chunks; `sent` counts the
/// padding bytes the connection has taken.
fn padded(body: Bytes, padding: u64, sent: Arc<AtomicU64>) -> Body {
    const CHUNK: usize = 64 * 1024;
    static FILL: [u8; CHUNK] = [b'a'; CHUNK];
    let rest = if body.first() == Some(&b'{') && body.len() > 2 {
        let mut rest = b"\",".to_vec();
        rest.extend_from_slice(&body[1..]);
        Bytes::from(rest)
    } else {
        // Not an object: the padding becomes a field of a wrapper the client cannot use.
        Bytes::from_static(b"\"}")
    };
    let head = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
        b"{\"padding\":\"",
    ))]);
    let fill = futures::stream::unfold(padding, move |left| {
        let sent = sent.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            sent.fetch_add(n as u64, Ordering::Relaxed);
            Some((Ok(Bytes::from_static(&FILL[..n])), left - n as u64))
        }
    });
    let tail = futures::stream::iter([Ok(rest)]);
    Body::from_stream(head.chain(fill).chain(tail))
}

// ----- query parameters ----------------------------------------------------------------

/// Query parameters; the last occurrence wins and empty values count as absent.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        let raw = raw.unwrap_or_default();
        Params(
            url::form_urlencoded::parse(raw.as_bytes())
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit`: 1..=100, default 20 (spec); anything else is a 422.
    fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(20),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n @ 1..=100) => Ok(n),
                _ => Err(ApiError::invalid(
                    "limit must be an integer between 1 and 100",
                )),
            },
        }
    }

    fn exec_status(&self) -> Result<Option<ExecStatus>, ApiError> {
        self.get("status")
            .map(|s| {
                ExecStatus::parse(s).ok_or(ApiError::invalid(
                    "status must be one of: running, waiting, ended, failed, handoff",
                ))
            })
            .transpose()
    }

    fn time(&self, name: &'static str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|s| parse_time(s).ok_or_else(|| invalid_time(name)))
            .transpose()
    }

    fn cursor(&self, name: &str, column: CursorColumn) -> Result<Option<Key>, ApiError> {
        self.get(name)
            .map(|s| decode_cursor(column, s).ok_or(ApiError::invalid("Invalid pagination cursor")))
            .transpose()
    }

    /// Limit, cursors and an inclusive time range taken from `after`/`before` parameters.
    fn page_request(
        &self,
        column: CursorColumn,
        after: &'static str,
        before: &'static str,
    ) -> Result<PageRequest, ApiError> {
        let lo = self.time(after)?.map_or(Unbounded, |t| Included((t, 0)));
        let hi = self
            .time(before)?
            .map_or(Unbounded, |t| Included((t, u128::MAX)));
        Ok(PageRequest {
            lo,
            hi,
            after: self.cursor("after", column)?,
            before: self.cursor("before", column)?,
            limit: self.limit()?,
            repeat: None,
        })
    }
}

fn invalid_time(name: &str) -> ApiError {
    ApiError::invalid(match name {
        "created_after" => "created_after must be an ISO 8601 timestamp",
        "created_before" => "created_before must be an ISO 8601 timestamp",
        "last_active_after" => "last_active_after must be an ISO 8601 timestamp",
        "last_active_before" => "last_active_before must be an ISO 8601 timestamp",
        _ => "Invalid timestamp",
    })
}

// ----- JSON shapes ---------------------------------------------------------------------

/// `Workflow` (openapi-workflows.yaml).
#[derive(Serialize)]
struct WorkflowJson<'a> {
    id: Uid,
    name: &'a str,
    slug: &'a str,
    description: Option<&'a str>,
    status: &'a str,
    lock_version: i64,
    message_debounce_seconds: i64,
    agent_default_tools_version: i64,
    inbound_message_read_mode: &'a str,
    #[serde(skip_serializing_if = "Field::is_absent")]
    created_at: Field<Ts>,
    updated_at: Ts,
    project_id: Uid,
    #[serde(skip_serializing_if = "Field::is_absent")]
    execution_count: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    last_executed_at: Field<Ts>,
}

/// A workflow as `now_us` sees it, through the world's variance.
fn workflow_json<'a>(world: &World, w: &'a Workflow, now_us: i64) -> WorkflowJson<'a> {
    let v = &world.variance;
    let base = base_format(v);
    let cutoff = |lag: std::time::Duration| {
        (!lag.is_zero())
            .then(|| now_us.saturating_sub(i64::try_from(lag.as_micros()).unwrap_or(i64::MAX)))
    };
    let count = world.shown_execution_count(w, cutoff(v.execution_count_lag), v.shrinking_count);
    let last = world.shown_last_executed(w, cutoff(v.last_executed_at_lag));
    let created = (!v.omit_created_at && !w.omit_created_at).then_some(w.created_us);
    WorkflowJson {
        id: Uid(w.id),
        name: &w.name,
        slug: &w.slug,
        description: w.description.as_deref(),
        status: &w.status,
        lock_version: w.lock_version,
        message_debounce_seconds: w.debounce_seconds,
        agent_default_tools_version: 2,
        inbound_message_read_mode: w.read_mode,
        created_at: match created {
            Some(us) => Field::Value(base.with_precision(v.precision.workflow_created_at).ts(us)),
            None => Field::Absent,
        },
        updated_at: base.ts(w.updated_us),
        project_id: Uid(world.project_id),
        execution_count: Field::new(v.execution_count, Some(count)),
        last_executed_at: Field::new(
            v.last_executed_at,
            last.map(|us| {
                base.with_precision(v.precision.workflow_last_executed_at)
                    .ts(us)
            }),
        ),
    }
}

/// `WorkflowMinimal`.
#[derive(Serialize)]
struct WorkflowMin<'a> {
    id: Uid,
    name: &'a str,
    status: &'a str,
}

/// `WorkflowStepReference`.
#[derive(Serialize)]
struct StepRef<'a> {
    id: Uid,
    identifier: &'a str,
    stepable_type: &'a str,
    position: Position,
}

#[derive(Serialize)]
struct Position {
    x: f64,
    y: f64,
}

fn step_ref(step: &Step) -> StepRef<'_> {
    StepRef {
        id: Uid(step.id),
        identifier: step.identifier,
        stepable_type: step.stepable_type,
        position: Position {
            x: step.x,
            y: step.y,
        },
    }
}

/// `WorkflowExecutionSummary`.
#[derive(Serialize)]
struct ExecRow<'a> {
    id: Uid,
    status: &'a str,
    tracking_id: Option<Uid>,
    whatsapp_conversation_id: Option<Uid>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    started_at: Field<Ts>,
    last_event_at: Ts,
    ended_at: Option<Ts>,
    workflow: WorkflowMin<'a>,
    current_step: StepRef<'a>,
}

/// Rendering state: the world (with its variance) plus the unknown-status fault.
struct Render<'a> {
    world: &'a World,
    unknown_rate: f64,
    rng: std::sync::MutexGuard<'a, StdRng>,
    /// Full precision in the variance's offset; each field takes its own precision from it.
    base: TimeFormat,
}

impl<'a> Render<'a> {
    fn new(sh: &'a Shared, world: &'a World) -> Render<'a> {
        let unknown_rate = lock(&sh.faults).unknown_status_rate;
        Render {
            world,
            unknown_rate,
            rng: lock(&sh.fault_rng),
            base: base_format(&world.variance),
        }
    }

    fn status(&mut self, e: &'a Execution) -> &'a str {
        // A status the world already holds outside the enum is shown as it is, without a
        // draw, so the fault's random sequence is the same as without that variance.
        if e.unknown.is_some() {
            self.world.status_str(e)
        } else if chance(&mut self.rng, self.unknown_rate) {
            UNKNOWN_STATUSES[self.rng.random_range(0..UNKNOWN_STATUSES.len())]
        } else {
            e.status.as_str()
        }
    }

    /// `started_at` as the variance renders it (an override, or the truncated true start).
    fn started_at(&self, e: &Execution) -> Field<Ts> {
        let v = &self.world.variance;
        let ts = self
            .base
            .with_precision(v.precision.started_at)
            .ts(e.started_us);
        let chosen = self.world.start_overrides.get(&e.id).copied();
        match chosen.or_else(|| v.hashed_start_override(e.id)) {
            None => Field::Value(ts),
            Some(StartOverride::Missing) => Field::Absent,
            Some(StartOverride::Null) => Field::Null,
            Some(StartOverride::Year(year)) => Field::Value(Ts {
                year: Some(year),
                ..ts
            }),
        }
    }

    fn row(&mut self, e: &'a Execution) -> ExecRow<'a> {
        let wf = &self.world.workflows[e.workflow as usize];
        let p = self.world.variance.precision;
        ExecRow {
            id: Uid(e.id),
            status: self.status(e),
            tracking_id: e.tracking_id.map(Uid),
            whatsapp_conversation_id: e
                .conversation
                .map(|c| Uid(self.world.conversations[c as usize].id)),
            started_at: self.started_at(e),
            last_event_at: self
                .base
                .with_precision(p.last_event_at)
                .ts(e.last_event_us),
            ended_at: e
                .ended_us
                .map(|us| self.base.with_precision(p.ended_at).ts(us)),
            workflow: WorkflowMin {
                id: Uid(wf.id),
                name: &wf.name,
                status: &wf.status,
            },
            current_step: step_ref(wf.step_for(e)),
        }
    }

    /// `WorkflowExecutionListResponse` for a page of an execution index.
    fn execution_list(&mut self, page: &Page, req: &PageRequest, looping: bool) -> Response {
        let rows: Vec<ExecRow<'a>> = page
            .rows
            .iter()
            .filter_map(|k| self.world.execution_at(k))
            .map(|e| self.row(e))
            .collect();
        let format = cursor_format(&self.world.variance);
        json_response(
            StatusCode::OK,
            &json!({
                "data": rows,
                "paging": paging(CursorColumn::CreatedAt, page, req, looping, format),
            }),
        )
    }
}

/// The `paging` object (docs/kapso-api.md §3): `cursors` of the first/last row; `next` is the last
/// row's cursor iff older rows exist, `previous` the first row's iff newer rows exist. Whether
/// older rows exist is decided on full-precision keys, as a server fetching `limit + 1` rows
/// would, so with a truncated cursor `next` can lead to an empty page.
fn paging(
    column: CursorColumn,
    page: &Page,
    req: &PageRequest,
    looping: bool,
    format: TimeFormat,
) -> Value {
    let cursor = |k: Key| encode_cursor(column, k, format);
    let first = page.rows.first().map(|&k| cursor(k));
    let last = page.rows.last().map(|&k| cursor(k));
    let mut cursors = serde_json::Map::new();
    if let (Some(first), Some(last)) = (&first, &last) {
        cursors.insert("before".into(), Value::from(first.as_str()));
        cursors.insert("after".into(), Value::from(last.as_str()));
    }
    let next = if looping {
        // The fault: `next` always hands back the cursor this page was fetched with.
        req.after.map(cursor).or(last)
    } else {
        last.filter(|_| page.has_older)
    };
    json!({
        "cursors": cursors,
        "next": next,
        "previous": first.filter(|_| page.has_newer),
    })
}

// ----- handlers ------------------------------------------------------------------------

type SharedState = State<Arc<Shared>>;

/// A path id; a rejected path is treated like an unknown id (404).
type IdPath = Result<Path<String>, PathRejection>;

fn path_id(path: IdPath) -> Option<u128> {
    path.ok().and_then(|Path(id)| parse_uuid(&id))
}

/// The workflow the path names, or the API's 404.
fn workflow_at(world: &World, path: IdPath) -> Result<u32, ApiError> {
    path_id(path)
        .and_then(|id| world.workflow_index(id))
        .ok_or(ApiError::new(StatusCode::NOT_FOUND, "Workflow not found"))
}

/// The conversation the path names, or the API's 404.
fn conversation_at(world: &World, path: IdPath) -> Result<u32, ApiError> {
    path_id(path)
        .and_then(|id| world.conversation_index(id))
        .ok_or(ApiError::new(
            StatusCode::NOT_FOUND,
            "Conversation not found",
        ))
}

async fn list_workflows(
    State(sh): SharedState,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let status = p.get("status");
    if status.is_some_and(|s| !matches!(s, "draft" | "active" | "archived")) {
        return Err(ApiError::invalid(
            "status must be one of: draft, active, archived",
        ));
    }
    let name = p.get("name_contains").map(str::to_lowercase);
    let after = p.time("created_after")?;
    let before = p.time("created_before")?;
    let now_us = micros(sh.clock.now());
    let mut guard = lock(&sh.world);
    let (empty, hidden) = guard.take_listing();
    let world = &*guard;
    if empty {
        return Ok(data(Vec::<WorkflowJson<'_>>::new()));
    }
    let mut found: Vec<&Workflow> = world
        .workflows
        .iter()
        .enumerate()
        .filter(|&(i, w)| !w.deleted && !hidden.contains(&(i as u32)))
        .map(|(_, w)| w)
        .filter(|w| status.is_none_or(|s| w.status == s))
        .filter(|w| {
            name.as_ref()
                .is_none_or(|n| w.name.to_lowercase().contains(n))
        })
        .filter(|w| after.is_none_or(|t| w.created_us >= t))
        .filter(|w| before.is_none_or(|t| w.created_us <= t))
        .collect();
    // Newest created first, no paging (docs/kapso-api.md §4).
    found.sort_by_key(|w| std::cmp::Reverse((w.created_us, w.id)));
    if world.variance.duplicate_workflows {
        if let Some(&first) = found.first() {
            found.push(first);
        }
    }
    let rows: Vec<WorkflowJson<'_>> = found
        .into_iter()
        .map(|w| workflow_json(world, w, now_us))
        .collect();
    Ok(data(rows))
}

async fn get_workflow(State(sh): SharedState, path: IdPath) -> Result<Response, ApiError> {
    let now_us = micros(sh.clock.now());
    let world = lock(&sh.world);
    let w = workflow_at(&world, path)?;
    Ok(data(workflow_json(
        &world,
        &world.workflows[w as usize],
        now_us,
    )))
}

/// The error a workflow's executions list is scripted to answer with.
fn scripted_error(status: u16) -> ApiError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error = match status {
        StatusCode::NOT_FOUND => "Workflow not found",
        StatusCode::UNPROCESSABLE_ENTITY => "Workflow executions cannot be listed",
        _ => "Request failed",
    };
    ApiError::new(status, error)
}

/// An empty index, for lists that have no stale part.
static NO_KEYS: BTreeSet<Key> = BTreeSet::new();

/// The indexes a list with an optional status filter pages over: `all`, or the status's set
/// plus (with the stale-lists variance) the executions still listed under it.
fn execution_sets<'a>(
    world: &World,
    status: Option<ExecStatus>,
    all: &'a BTreeSet<Key>,
    by_status: &'a [BTreeSet<Key>; 5],
    stale: &'a [BTreeSet<Key>; 5],
) -> [&'a BTreeSet<Key>; 2] {
    match status {
        None => [all, &NO_KEYS],
        Some(s) if world.variance.stale_live_lists => [&by_status[s.index()], &stale[s.index()]],
        Some(s) => [&by_status[s.index()], &NO_KEYS],
    }
}

/// The overlapping-pages variance: the row an `after` cursor names leads the next page.
fn with_repeat(world: &World, mut req: PageRequest) -> PageRequest {
    if world.variance.overlapping_pages {
        req.repeat = req
            .after
            .and_then(|k| world.execution(k.1))
            .map(Execution::key);
    }
    req
}

async fn list_workflow_executions(
    State(sh): SharedState,
    path: IdPath,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let world = lock(&sh.world);
    let wi = workflow_at(&world, path)?;
    if let Some(status) = world.workflows[wi as usize].executions_error {
        return Err(scripted_error(status));
    }
    let p = Params::parse(q);
    let status = p.exec_status()?;
    // `created_after`/`created_before` filter on started_at, inclusive (docs/kapso-api.md §5).
    let req = p.page_request(CursorColumn::CreatedAt, "created_after", "created_before")?;
    let req = with_repeat(&world, req);
    // `waiting_reason` is accepted but not modelled: the API exposes no reason field (docs/kapso-api.md §5).
    let page = match p.get("whatsapp_conversation_id") {
        Some(conv) => match parse_uuid(conv).and_then(|id| world.conversation_index(id)) {
            Some(ci) => {
                // A conversation's own index is small, so filtering it by workflow is cheap.
                let c = &world.conversations[ci as usize];
                let sets = execution_sets(&world, status, &c.all, &c.by_status, &c.stale);
                page(&sets, &req, |k| {
                    world.execution_at(k).is_some_and(|e| e.workflow == wi)
                })
            }
            None => Page::default(),
        },
        None => {
            let w = &world.workflows[wi as usize];
            let sets = execution_sets(&world, status, &w.all, &w.by_status, &w.stale);
            page(&sets, &req, |_| true)
        }
    };
    let looping = lock(&sh.faults).looping_cursor;
    Ok(Render::new(&sh, &world).execution_list(&page, &req, looping))
}

async fn list_conversation_executions(
    State(sh): SharedState,
    path: IdPath,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let world = lock(&sh.world);
    let ci = conversation_at(&world, path)?;
    let p = Params::parse(q);
    let status = p.exec_status()?;
    let req = p.page_request(CursorColumn::CreatedAt, "created_after", "created_before")?;
    let req = with_repeat(&world, req);
    let c = &world.conversations[ci as usize];
    let sets = execution_sets(&world, status, &c.all, &c.by_status, &c.stale);
    let page = page(&sets, &req, |_| true);
    let looping = lock(&sh.faults).looping_cursor;
    Ok(Render::new(&sh, &world).execution_list(&page, &req, looping))
}

async fn get_execution(State(sh): SharedState, path: IdPath) -> Result<Response, ApiError> {
    let world = lock(&sh.world);
    let e = path_id(path)
        .and_then(|id| world.execution(id))
        .ok_or(ApiError::new(
            StatusCode::NOT_FOUND,
            "Workflow execution not found",
        ))?;
    let mut render = Render::new(&sh, &world);
    let row = render.row(e);
    Ok(data(execution_detail(&world, e, row, render.base)))
}

/// `WorkflowExecutionDetail`: the summary plus error details, context and a synthetic event
/// log consistent with the execution's timestamps.
fn execution_detail<'a>(
    world: &'a World,
    e: &'a Execution,
    row: ExecRow<'a>,
    base: TimeFormat,
) -> Value {
    const ERRORS: [&str; 3] = [
        "Timeout while calling the order service",
        "Agent exceeded maximum iterations",
        "Template message rejected by WhatsApp",
    ];
    let wf = &world.workflows[e.workflow as usize];
    let current = wf.step_for(e);
    let start = wf.steps.first().unwrap_or(current);
    let message = ERRORS[(e.id % ERRORS.len() as u128) as usize];
    let error_details = (e.status == ExecStatus::Failed).then(|| {
        json!({
            "message": message,
            "step_identifier": current.identifier,
            "error_class": "Kapso::Workflows::StepError",
            "backtrace": ["app/models/flow_agent_step.rb:120:in `execute'"],
        })
    });
    let conversation = e.conversation.map(|c| &world.conversations[c as usize]);
    let mut system = json!({ "trigger_type": if conversation.is_some() { "inbound_message" } else { "api_call" } });
    if let Some(t) = e.tracking_id {
        system["tracking_id"] = json!(Uid(t));
    }
    let context = match conversation {
        Some(c) => json!({ "channel": "whatsapp", "phone_number": format!("+{}", c.phone_number) }),
        None => json!({ "channel": "api" }),
    };
    let event = |n: u64, event_type: &str, at: i64, step: &Step, payload: Value| {
        json!({
            "id": Uid(super::codec::derived_uuid(e.id, n)),
            "event_type": event_type,
            "direction": null,
            "edge_label": null,
            "created_at": base.ts(at),
            "payload": payload,
            "step": step_ref(step),
        })
    };
    let mut events = vec![event(
        0,
        "execution_started",
        e.started_us,
        start,
        json!({}),
    )];
    let last = match e.status {
        ExecStatus::Running => ("agent_iteration_started", json!({ "iteration": 1 })),
        ExecStatus::Waiting => (
            "step_entered",
            json!({ "waiting_reason": "wait_for_response" }),
        ),
        ExecStatus::Handoff => ("action_performed", json!({ "action": "handoff" })),
        ExecStatus::Ended => ("execution_ended", json!({})),
        ExecStatus::Failed => ("execution_failed", json!({ "error": message })),
    };
    if e.last_event_us > e.started_us || e.status.is_terminal() {
        events.push(event(1, last.0, e.last_event_us, current, last.1));
    }
    let mut detail = match serde_json::to_value(&row) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    detail.insert("error_details".into(), error_details.unwrap_or(Value::Null));
    detail.insert(
        "resumable_execution_id".into(),
        if e.status == ExecStatus::Waiting && e.unknown.is_none() {
            json!(Uid(e.id))
        } else {
            Value::Null
        },
    );
    detail.insert(
        "execution_context".into(),
        json!({
            "vars": { "customer_name": conversation.map(|c| c.contact_name.as_str()) },
            "system": system,
            "context": context,
            "metadata": { "request": { "timestamp": base.ts(e.started_us) } },
        }),
    );
    detail.insert("events".into(), Value::Array(events));
    Value::Object(detail)
}

/// `WhatsappConversation` (openapi-platform.yaml).
fn conversation_json(world: &World, ci: u32) -> Value {
    let c = &world.conversations[ci as usize];
    let ts = |us| base_format(&world.variance).ts(us);
    json!({
        "id": Uid(c.id),
        "phone_number": c.phone_number,
        "business_scoped_user_id": null,
        "parent_business_scoped_user_id": null,
        "username": null,
        "status": if c.ended { "ended" } else { "active" },
        "last_active_at": ts(c.last_active_us),
        "created_at": ts(c.created_us),
        "updated_at": ts(c.last_active_us),
        "metadata": {},
        "phone_number_id": world.phone_number_id,
        "kapso": {
            "contact_name": c.contact_name,
            "messages_count": c.messages_count,
            "last_message_id": format!("wamid.{}", Uid(c.id).to_string().replace('-', "")),
            "last_message_type": "text",
            "last_message_timestamp": ts(c.last_active_us),
            "last_message_text": "Thanks!",
            "last_inbound_at": ts(c.last_active_us),
            "last_outbound_at": ts(c.last_active_us),
        },
    })
}

async fn list_conversations(
    State(sh): SharedState,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let ended = match p.get("status") {
        None => None,
        Some("active") => Some(false),
        Some("ended") => Some(true),
        Some(_) => return Err(ApiError::invalid("status must be one of: active, ended")),
    };
    if p.get("assigned_user_id").is_some() && p.get("unassigned") == Some("true") {
        return Err(ApiError::invalid(
            "assigned_user_id cannot be combined with unassigned",
        ));
    }
    // Keyset on (last_active_at, id), latest activity first (docs/kapso-api.md §3); the bounds are
    // taken as inclusive like the other date filters.
    let req = p.page_request(
        CursorColumn::LastActiveAt,
        "last_active_after",
        "last_active_before",
    )?;
    let created_after = p.time("created_after")?;
    let created_before = p.time("created_before")?;
    let phone = p.get("phone_number");
    let phone_number_id = p.get("phone_number_id");
    // Nobody is assigned in the simulator, so an assignee filter matches nothing.
    let assigned = p.get("assigned_user_id").is_some();
    let world = lock(&sh.world);
    let keep = |k: &Key| {
        let Some(ci) = world.conversation_index(k.1) else {
            return false;
        };
        let c = &world.conversations[ci as usize];
        !assigned
            && created_after.is_none_or(|t| c.created_us >= t)
            && created_before.is_none_or(|t| c.created_us <= t)
            && phone.is_none_or(|ph| c.phone_number.contains(ph.trim_start_matches('+')))
            && phone_number_id.is_none_or(|id| id == world.phone_number_id)
    };
    let set = ended.map_or(&world.conv_all, |e| &world.conv_by_status[usize::from(e)]);
    let page = page(&[set], &req, keep);
    let rows: Vec<Value> = page
        .rows
        .iter()
        .filter_map(|k| world.conversation_index(k.1))
        .map(|ci| conversation_json(&world, ci))
        .collect();
    let looping = lock(&sh.faults).looping_cursor;
    let format = cursor_format(&world.variance);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "data": rows,
            "paging": paging(CursorColumn::LastActiveAt, &page, &req, looping, format),
        }),
    ))
}

async fn get_conversation(State(sh): SharedState, path: IdPath) -> Result<Response, ApiError> {
    let world = lock(&sh.world);
    let ci = conversation_at(&world, path)?;
    Ok(data(conversation_json(&world, ci)))
}
