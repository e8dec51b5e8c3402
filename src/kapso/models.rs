//! Tolerant models of the Kapso JSON the exporter reads.
//!
//! Kapso's documented examples disagree with its own schemas (non-UUID ids, missing required
//! fields, timestamps with and without fractional seconds), so every field except `id` is
//! optional, ids are plain strings and statuses have an `Unknown` arm (docs/kapso-api.md §5, §7).

use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The status of a workflow execution, with one bucket for values Kapso may add later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecutionStatus {
    Running,
    Waiting,
    Handoff,
    Ended,
    Failed,
    Unknown,
}

impl ExecutionStatus {
    /// The statuses an execution can still leave: the exporter lists these every poll.
    pub const LIVE: [ExecutionStatus; 3] = [Self::Running, Self::Waiting, Self::Handoff];
    /// The statuses in which an execution waits for someone: stall gauges cover these.
    pub const STALLABLE: [ExecutionStatus; 2] = [Self::Waiting, Self::Handoff];
    /// The final statuses counted by `kapso_workflow_executions_finished_total`.
    pub const TERMINAL: [ExecutionStatus; 2] = [Self::Ended, Self::Failed];

    pub fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "handoff" => Self::Handoff,
            "ended" => Self::Ended,
            "failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Handoff => "handoff",
            Self::Ended => "ended",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Waiting | Self::Handoff)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ended | Self::Failed)
    }
}

impl serde::Serialize for ExecutionStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExecutionStatus {
    /// Any value that is not a known status string is `Unknown`: a status of the wrong type
    /// (a number, an object) must not fail the whole page.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Self::parse(&s),
            _ => Self::Unknown,
        })
    }
}

/// A workflow as returned by `GET /workflows`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Workflow {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub status: Option<String>,
    /// Total executions ever created for the workflow; its delta tells whether any started.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub execution_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient_timestamp")]
    pub last_executed_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient_timestamp")]
    pub created_at: Option<OffsetDateTime>,
}

/// The workflow summary embedded in execution rows.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct WorkflowMinimal {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub status: Option<String>,
}

/// One execution row of a list endpoint (or the summary part of the detail endpoint).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Execution {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    #[serde(default = "unknown_status")]
    pub status: ExecutionStatus,
    #[serde(default, deserialize_with = "lenient_string")]
    pub whatsapp_conversation_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_timestamp")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "lenient_timestamp")]
    pub last_event_at: Option<OffsetDateTime>,
    /// Boxed: a poll holds every live row, and most rows have no use for it.
    #[serde(default, deserialize_with = "lenient_workflow")]
    pub workflow: Option<Box<WorkflowMinimal>>,
    /// The step the execution is at (its last step once finished); `None` when the row has
    /// no usable `current_step`.
    #[serde(default, deserialize_with = "lenient_step")]
    pub current_step: Option<Box<StepRef>>,
}

/// `current_step` of an execution row: the spec requires `id` and `identifier`, the
/// endpoint's own example sends `identifier` and `stepable_type` only (docs/kapso-api.md).
/// `identifier` is the node id in the workflow graph; without it the step's `id` stands in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRef {
    pub identifier: String,
    /// A Ruby class name such as `FlowWaitStep`; empty when the row does not say.
    pub step_type: String,
}

#[derive(Deserialize)]
struct RawStep {
    #[serde(default, deserialize_with = "lenient_string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    identifier: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    stepable_type: Option<String>,
}

fn unknown_status() -> ExecutionStatus {
    ExecutionStatus::Unknown
}

/// The `paging` object of cursor-paginated lists.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Paging {
    #[serde(default, deserialize_with = "lenient_string")]
    pub next: Option<String>,
}

/// `{"data": [...], "paging": {...}}`; `paging` may be missing on non-paginated lists.
#[derive(Clone, Debug, Deserialize)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub paging: Option<Paging>,
}

/// `{"data": {...}}`
#[derive(Clone, Debug, Deserialize)]
pub struct ItemResponse<T> {
    pub data: T,
}

/// A WhatsApp conversation row (only what discovery needs).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Conversation {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient_timestamp")]
    pub last_active_at: Option<OffsetDateTime>,
}

/// Kapso's flat error body `{"error": "...", "message": "..."}`; Graph-style bodies have an
/// object in `error`, read for its `message`.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let pick = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    match v.get("error") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(obj @ serde_json::Value::Object(_)) => obj.get("message").and_then(pick),
        _ => v.get("message").and_then(pick),
    }
}

/// Parses an RFC 3339 timestamp with or without fractional seconds.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Formats a timestamp as Kapso does (UTC, microseconds), for `created_after` filters.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format_args!(
            "expected a string or number id, got {other}"
        ))),
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

fn lenient_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => parse_timestamp(&s),
        _ => None,
    })
}

fn lenient_workflow<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<WorkflowMinimal>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok().map(Box::new))
}

/// Longest step identifier or type kept; longer ones are cut (a label value, not a payload).
const MAX_STEP_LABEL: usize = 128;

fn lenient_step<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<StepRef>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let Ok(raw) = serde_json::from_value::<RawStep>(v) else {
        return Ok(None);
    };
    let cut = |s: String| -> String {
        if s.len() <= MAX_STEP_LABEL {
            return s;
        }
        let mut end = MAX_STEP_LABEL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    let Some(identifier) = raw.identifier.or(raw.id).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(Box::new(StepRef {
        identifier: cut(identifier),
        step_type: cut(raw.stepable_type.unwrap_or_default()),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_step_is_read_leniently() {
        let step = |v: &str| -> Option<(String, String)> {
            let row: Execution =
                serde_json::from_str(&format!(r#"{{"id":"e1","current_step":{v}}}"#))
                    .expect("the row decodes whatever current_step is");
            row.current_step.map(|s| (s.identifier, s.step_type))
        };
        let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(
            step(
                r#"{"id":"7f1c","identifier":"ask","stepable_type":"FlowWaitStep","position":{"x":1,"y":2}}"#
            ),
            pair("ask", "FlowWaitStep")
        );
        // The spec's required `id` alone stands in for the identifier.
        assert_eq!(step(r#"{"id":"7f1c"}"#), pair("7f1c", ""));
        assert_eq!(step(r#"{"identifier":42}"#), pair("42", ""));
        for absent in [
            "null",
            "{}",
            r#"{"identifier":""}"#,
            "[]",
            r#""start""#,
            "3",
        ] {
            assert_eq!(step(absent), None, "{absent}");
        }
        let long = "x".repeat(300);
        let (id, _) = step(&format!(r#"{{"identifier":"{long}"}}"#)).expect("kept");
        assert_eq!(id.len(), MAX_STEP_LABEL);
    }

    #[test]
    fn decodes_the_documented_example_row() {
        // The endpoint's own example: non-UUID workflow id, current_step without `id`.
        let body = r#"{"data":[{"id":"550e8400-e29b-41d4-a716-446655440000","status":"waiting",
            "tracking_id":null,"whatsapp_conversation_id":"c63ced48","started_at":"2025-12-05T10:00:00Z",
            "last_event_at":"2025-12-05T10:05:00.123456Z","ended_at":null,
            "workflow":{"id":"flow_789","name":"Support","status":"active"},
            "current_step":{"identifier":"wait_response","stepable_type":"FlowWaitStep"}}],
            "paging":{"cursors":{"before":"a","after":"b"},"next":null,"previous":null}}"#;
        let page: ListResponse<Execution> = serde_json::from_str(body).expect("decodes");
        let row = &page.data[0];
        assert_eq!(row.status, ExecutionStatus::Waiting);
        assert_eq!(
            row.current_step.as_deref(),
            Some(&StepRef {
                identifier: "wait_response".into(),
                step_type: "FlowWaitStep".into()
            })
        );
        assert_eq!(
            row.workflow.as_ref().and_then(|w| w.id.as_deref()),
            Some("flow_789")
        );
        assert_eq!(row.last_event_at.map(|t| t.microsecond()), Some(123_456));
        assert_eq!(page.paging.and_then(|p| p.next), None);
    }

    #[test]
    fn tolerates_missing_null_and_unknown_fields() {
        let row: Execution = serde_json::from_str(
            r#"{"id":42,"status":"paused_by_admin","started_at":"not a date","workflow":"x","extra":[1]}"#,
        )
        .expect("decodes");
        assert_eq!(row.id, "42");
        assert_eq!(row.status, ExecutionStatus::Unknown);
        assert_eq!(row.started_at, None);
        assert_eq!(row.workflow, None);
        let row: Execution = serde_json::from_str(r#"{"id":"a","status":null}"#).expect("decodes");
        assert_eq!(row.status, ExecutionStatus::Unknown);
        let row: Execution =
            serde_json::from_str(r#"{"id":"a","status":{"code":3}}"#).expect("decodes");
        assert_eq!(row.status, ExecutionStatus::Unknown);
        assert!(serde_json::from_str::<Execution>(r#"{"status":"running"}"#).is_err());
    }

    #[test]
    fn reads_flat_and_graph_error_bodies() {
        assert_eq!(
            error_message(br#"{"error":"Conversation not found"}"#).as_deref(),
            Some("Conversation not found")
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"bad token","code":190}}"#).as_deref(),
            Some("bad token")
        );
        assert_eq!(error_message(b"<html>"), None);
    }

    #[test]
    fn timestamps_round_trip_with_microseconds() {
        let t = parse_timestamp("2026-05-15T13:05:00.000001Z").expect("parses");
        assert_eq!(format_timestamp(t), "2026-05-15T13:05:00.000001Z");
        let t = parse_timestamp("2026-05-15T13:05:00Z").expect("parses");
        assert_eq!(format_timestamp(t), "2026-05-15T13:05:00.000000Z");
    }
}
