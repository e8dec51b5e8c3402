//! Metric names, help texts and labels; the snapshot is encoded at scrape time.
//!
//! Nothing here calls Kapso: a scrape reads the last snapshot of each project and the clock.
//! Stall gauges are computed from `last_event_at` against the scrape's "now", so they keep
//! growing between polls. Series are emitted in a deterministic order.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::clock::Clock;
use crate::clock::micros;
use crate::kapso::{ApiError, ExecutionStatus};
use crate::state::{
    self, ConversationSeries, CounterSnapshot, ProjectState, SharedProject, Snapshot,
};

/// `Content-Type` of the classic text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes every project's state at scrape time.
#[derive(Debug)]
pub struct KapsoCollector {
    projects: Vec<SharedProject>,
    clock: Clock,
    stall_thresholds: Vec<u64>,
    revision: &'static str,
}

/// The exporter's registry: one collector for everything.
pub fn registry(
    projects: Vec<SharedProject>,
    clock: Clock,
    stall_thresholds: &[std::time::Duration],
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KapsoCollector {
        projects,
        clock,
        stall_thresholds: stall_thresholds.iter().map(|d| d.as_secs()).collect(),
        revision: env!("KAPSO_EXPORTER_REVISION"),
    }));
    registry
}

/// Renders the registry in the classic text format or OpenMetrics into `out` (which may send
/// it on in pieces: the exposition at scale L is 66 MiB).
pub fn render_into<W: std::fmt::Write>(
    registry: &Registry,
    openmetrics: bool,
    out: &mut W,
) -> std::fmt::Result {
    if openmetrics {
        prometheus_client::encoding::text::encode(out, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(out, registry)
    }
}

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus does when it prefers it).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut best: Option<(f32, bool)> = None;
    for part in accept.split(',') {
        let mut fields = part.split(';').map(str::trim);
        let media = fields.next().unwrap_or("").to_ascii_lowercase();
        let q = fields
            .filter_map(|f| f.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let om = match media.as_str() {
            "application/openmetrics-text" => true,
            "text/plain" | "*/*" | "text/*" => false,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, om));
        }
    }
    best.is_some_and(|(_, om)| om)
}

/// The parts of a project's state a scrape reads, copied out of the lock.
struct View {
    name: String,
    snapshot: Arc<Snapshot>,
    counters: Arc<CounterSnapshot>,
    up: bool,
    ready: bool,
    last_success: Option<f64>,
    last_duration: Option<f64>,
    last_requests: u64,
    interval: f64,
    budget: u32,
    polls: [(&'static str, u64); 2],
    errors: Vec<(&'static str, u64)>,
    requests: Vec<((&'static str, String), u64)>,
    remaining: Option<u64>,
    paused_for: Option<f64>,
    storage: Option<crate::state::StorageStats>,
}

impl View {
    fn of(p: &ProjectState) -> Self {
        Self {
            name: p.name.clone(),
            snapshot: p.snapshot.clone(),
            counters: p.counters.clone(),
            up: p.up,
            ready: p.ready,
            last_success: p
                .last_success
                .map(|t| t.unix_timestamp_nanos() as f64 / 1e9),
            last_duration: p.last_poll_duration.map(|d| d.as_secs_f64()),
            last_requests: p.last_poll_requests,
            interval: p.poll_interval.as_secs_f64(),
            budget: p.rate_limit,
            polls: [("success", p.polls_success), ("error", p.polls_error)],
            errors: ApiError::KINDS
                .iter()
                .map(|k| (*k, p.errors.get(k).copied().unwrap_or(0)))
                .collect(),
            requests: p.api.requests().into_iter().collect(),
            remaining: p.api.rate_limit_remaining(),
            paused_for: p.api.paused_for().map(|d| d.as_secs_f64()),
            storage: p.storage.clone(),
        }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;
/// Owned label pairs and a value.
type Series = Vec<(Vec<(&'static str, String)>, f64)>;

/// The workflow name of `id` from a sorted (id, name) table, else the id itself.
fn workflow_name<'a>(names: &'a [(Arc<str>, String)], id: &'a str) -> &'a str {
    names
        .binary_search_by(|(k, _)| k.as_ref().cmp(id))
        .map_or(id, |j| names[j].1.as_str())
}

/// Labels of one per-conversation series, borrowed from the view and its snapshot.
fn conversation_labels<'a>(
    view: &'a View,
    names: &'a [(Arc<str>, String)],
    s: &'a ConversationSeries,
) -> Labels<'a> {
    vec![
        ("project", view.name.as_str()),
        ("conversation_id", &*s.conversation_id),
        ("workflow_id", &*s.workflow_id),
        ("workflow", workflow_name(names, &s.workflow_id)),
        ("status", s.status.as_str()),
    ]
}

/// Writes one family: its descriptor, then each series.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels<'a>, Value)>,
) -> std::fmt::Result {
    let mut fam = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in series {
        let m = fam.encode_family(&labels)?;
        match value {
            Value::Gauge(v) => ConstGauge::new(v).encode(m)?,
            Value::Counter(v) => ConstCounter::new(v).encode(m)?,
        }
    }
    Ok(())
}

enum Value {
    Gauge(f64),
    Counter(u64),
}

fn gauge(v: impl Into<f64>) -> Value {
    Value::Gauge(v.into())
}

impl Collector for KapsoCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let views: Vec<View> = self
            .projects
            .iter()
            .map(|p| View::of(&state::read(p)))
            .collect();
        let now = micros(self.clock.now());
        let stall_seconds =
            |oldest: Option<i64>| oldest.map_or(0.0, |t| ((now - t) as f64 / 1e6).max(0.0));
        let wf_name = |v: &View, id: &str| -> String {
            v.snapshot
                .workflows
                .get(id)
                .map_or_else(|| id.to_owned(), |m| m.name.clone())
        };
        // Workflow names are looked up once per scrape, not per series.
        let names: Vec<Vec<(Arc<str>, String)>> = views
            .iter()
            .map(|v| {
                v.snapshot
                    .workflows
                    .keys()
                    .map(|id| (id.clone(), wf_name(v, id)))
                    .collect()
            })
            .collect();
        let name_of = |i: usize, id: &str| -> String {
            names[i]
                .binary_search_by(|(k, _)| k.as_ref().cmp(id))
                .map_or_else(|_| wf_name(&views[i], id), |j| names[i][j].1.clone())
        };

        let mut rows = Vec::new();
        for (i, v) in views.iter().enumerate() {
            for ((wf, status), bucket) in &v.snapshot.live {
                rows.push((i, wf.clone(), *status, bucket.count));
            }
        }
        let owned: Vec<(Vec<(&'static str, String)>, f64)> = rows
            .iter()
            .map(|(i, wf, status, count)| {
                (
                    vec![
                        ("project", views[*i].name.clone()),
                        ("workflow_id", wf.to_string()),
                        ("workflow", name_of(*i, wf)),
                        ("status", status.as_str().to_owned()),
                    ],
                    *count as f64,
                )
            })
            .collect();
        family(
            &mut enc,
            "kapso_workflow_executions",
            "Executions now in a live status (running, waiting, handoff), per workflow.",
            MetricType::Gauge,
            owned.iter().map(|(l, v)| (borrow(l), gauge(*v))),
        )?;

        // Per-conversation series can number hundreds of thousands: their labels borrow from
        // the snapshot and are built one series at a time, never all at once.
        family(
            &mut enc,
            "kapso_conversation_workflow_executions",
            "Executions now in a live status, per conversation with a live execution (capped by --metrics.max-conversations, most stalled first).",
            MetricType::Gauge,
            views.iter().zip(&names).flat_map(|(v, names)| {
                v.snapshot
                    .conversations
                    .iter()
                    .map(move |s| (conversation_labels(v, names, s), gauge(s.count as f64)))
            }),
        )?;
        family(
            &mut enc,
            "kapso_conversation_execution_stalled_seconds",
            "Longest time since the last event among a conversation's executions in waiting or handoff.",
            MetricType::Gauge,
            views.iter().zip(&names).flat_map(|(v, names)| {
                v.snapshot
                    .conversations
                    .iter()
                    .filter(|s| ExecutionStatus::STALLABLE.contains(&s.status))
                    .map(move |s| {
                        (
                            conversation_labels(v, names, s),
                            gauge(stall_seconds(s.oldest_last_event)),
                        )
                    })
            }),
        )?;

        let mut stalled = Vec::new();
        let mut over = Vec::new();
        let thresholds: Vec<(String, i64)> = self
            .stall_thresholds
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    i64::try_from(*s)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(1_000_000),
                )
            })
            .collect();
        for (i, v) in views.iter().enumerate() {
            for ((wf, status), bucket) in &v.snapshot.live {
                if !ExecutionStatus::STALLABLE.contains(status) {
                    continue;
                }
                let labels = vec![
                    ("project", v.name.clone()),
                    ("workflow_id", wf.to_string()),
                    ("workflow", name_of(i, wf)),
                    ("status", status.as_str().to_owned()),
                ];
                stalled.push((
                    labels.clone(),
                    stall_seconds(bucket.last_events.first().copied()),
                ));
                for (label, thr) in &thresholds {
                    let n = bucket
                        .last_events
                        .partition_point(|t| *t < now.saturating_sub(*thr));
                    let mut l = labels.clone();
                    l.push(("over", label.clone()));
                    over.push((l, n as f64));
                }
            }
        }
        family(
            &mut enc,
            "kapso_workflow_execution_stalled_seconds",
            "Longest time since the last event among a workflow's executions in waiting or handoff; 0 when there are none.",
            MetricType::Gauge,
            stalled.iter().map(|(l, v)| (borrow(l), gauge(*v))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_executions_stalled",
            "Executions in waiting or handoff with no event for more than `over` seconds.",
            MetricType::Gauge,
            over.iter().map(|(l, v)| (borrow(l), gauge(*v))),
        )?;

        let mut info = Vec::new();
        let mut started = Vec::new();
        let mut finished = Vec::new();
        let mut handoffs = Vec::new();
        let mut workflow_up: Series = Vec::new();
        let mut workflow_success: Series = Vec::new();
        let mut outcome_unknown: Series = Vec::new();
        let mut workflow_errors = Vec::new();
        for (i, v) in views.iter().enumerate() {
            for (wf, meta) in &v.snapshot.workflows {
                info.push(vec![
                    ("project", v.name.clone()),
                    ("workflow_id", wf.to_string()),
                    ("workflow", meta.name.clone()),
                    ("workflow_status", meta.status.clone()),
                ]);
            }
            let base = |wf: &str| {
                vec![
                    ("project", v.name.clone()),
                    ("workflow_id", wf.to_owned()),
                    ("workflow", name_of(i, wf)),
                ]
            };
            for (wf, n) in &v.counters.started {
                started.push((base(wf), *n));
            }
            for ((wf, status), n) in &v.counters.finished {
                let mut l = base(wf);
                l.push(("status", status.as_str().to_owned()));
                finished.push((l, *n));
            }
            for (wf, n) in &v.counters.handoffs {
                handoffs.push((base(wf), *n));
            }
            for (wf, h) in &v.snapshot.workflow_health {
                workflow_up.push((base(wf), f64::from(u8::from(h.up))));
                if let Some(t) = h.last_success {
                    workflow_success.push((base(wf), t as f64 / 1e6));
                }
            }
            for (wf, n) in &v.snapshot.outcome_unknown {
                outcome_unknown.push((base(wf), *n as f64));
            }
            for ((wf, kind), n) in &v.snapshot.workflow_errors {
                let mut l = base(wf);
                l.push(("kind", (*kind).to_owned()));
                workflow_errors.push((l, *n));
            }
        }
        family(
            &mut enc,
            "kapso_workflow_info",
            "Metadata of each known workflow; always 1.",
            MetricType::Gauge,
            info.iter().map(|l| (borrow(l), gauge(1.0))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_executions_started",
            "Executions started since the exporter's first poll, each counted once by id.",
            MetricType::Counter,
            started.iter().map(|(l, n)| (borrow(l), Value::Counter(*n))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_executions_finished",
            "Executions Kapso reported ended or failed since the exporter started, each counted once by id.",
            MetricType::Counter,
            finished
                .iter()
                .map(|(l, n)| (borrow(l), Value::Counter(*n))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_execution_handoffs",
            "Entries into handoff seen since the exporter started, each counted once.",
            MetricType::Counter,
            handoffs
                .iter()
                .map(|(l, n)| (borrow(l), Value::Counter(*n))),
        )?;

        family(
            &mut enc,
            "kapso_workflow_executions_outcome_unknown",
            "Executions that left the live statuses and whose outcome Kapso has not told yet (not counted as finished until it does).",
            MetricType::Gauge,
            outcome_unknown.iter().map(|(l, v)| (borrow(l), gauge(*v))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_up",
            "1 when the last poll of the workflow committed, 0 while its series show an older state.",
            MetricType::Gauge,
            workflow_up.iter().map(|(l, v)| (borrow(l), gauge(*v))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_last_success_timestamp_seconds",
            "Unix time of the last poll of the workflow that committed.",
            MetricType::Gauge,
            workflow_success.iter().map(|(l, v)| (borrow(l), gauge(*v))),
        )?;
        family(
            &mut enc,
            "kapso_workflow_poll_errors",
            "Polls of one workflow that failed on their own (the rest of the project updated), by kind of error.",
            MetricType::Counter,
            workflow_errors
                .iter()
                .map(|(l, n)| (borrow(l), Value::Counter(*n))),
        )?;

        self.encode_health(&mut enc, &views)
    }
}

impl KapsoCollector {
    fn encode_health(&self, enc: &mut DescriptorEncoder, views: &[View]) -> std::fmt::Result {
        let now_secs = self.clock.now().unix_timestamp_nanos() as f64 / 1e9;
        let per_project =
            |f: &dyn Fn(&View) -> Option<f64>| -> Vec<(Vec<(&'static str, String)>, f64)> {
                views
                    .iter()
                    .filter_map(|v| f(v).map(|x| (vec![("project", v.name.clone())], x)))
                    .collect()
            };
        let gauges: [(&str, &str, Series); 15] = [
            (
                "kapso_up",
                "1 when the last poll read the workflow list and no request failed for a reason that concerns the whole API key, else 0.",
                per_project(&|v| Some(f64::from(u8::from(v.up)))),
            ),
            (
                "kapso_project_ready",
                "1 once the project completed its first poll.",
                per_project(&|v| Some(f64::from(u8::from(v.ready)))),
            ),
            (
                "kapso_last_poll_success_timestamp_seconds",
                "Unix time of the last complete poll of the project.",
                per_project(&|v| v.last_success),
            ),
            (
                "kapso_poll_duration_seconds",
                "How long the last poll of the project took.",
                per_project(&|v| v.last_duration),
            ),
            (
                "kapso_poll_interval_seconds",
                "Configured time between two polls of the project.",
                per_project(&|v| Some(v.interval)),
            ),
            (
                "kapso_api_requests_per_poll",
                "Kapso API requests made by the last poll of the project.",
                per_project(&|v| Some(v.last_requests as f64)),
            ),
            (
                "kapso_api_rate_limit_remaining",
                "Last X-RateLimit-Remaining header Kapso sent.",
                per_project(&|v| v.remaining.map(|r| r as f64)),
            ),
            (
                "kapso_api_rate_limit_budget",
                "Requests per minute the exporter may spend on the project's API key.",
                per_project(&|v| Some(f64::from(v.budget))),
            ),
            (
                "kapso_conversations_live",
                "Conversations with a live execution, before the --metrics.max-conversations cap.",
                per_project(&|v| Some(v.snapshot.conversations_total as f64)),
            ),
            (
                "kapso_api_paused_until_timestamp_seconds",
                "Unix time until which requests of the key wait (a 429's Retry-After, capped at 15 minutes, or X-RateLimit-Remaining: 0); 0 when they do not.",
                per_project(&|v| Some(v.paused_for.map_or(0.0, |d| now_secs + d))),
            ),
            (
                "kapso_storage_restored",
                "1 when the project's counters continued from the state saved in --storage.path at start, 0 when they started fresh.",
                per_project(&|v| v.storage.as_ref().map(|s| f64::from(u8::from(s.restored)))),
            ),
            (
                "kapso_storage_last_write_timestamp_seconds",
                "Unix time of the last successful write of the project's state to --storage.path.",
                per_project(&|v| {
                    v.storage
                        .as_ref()?
                        .last_write
                        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
                }),
            ),
            (
                "kapso_storage_last_write_bytes",
                "Size of the project's state file at its last successful write.",
                per_project(&|v| v.storage.as_ref().map(|s| s.last_bytes as f64)),
            ),
            (
                "kapso_storage_last_write_duration_seconds",
                "How long the last write of the project's state took (encoding and fsync).",
                per_project(&|v| v.storage.as_ref()?.last_duration.map(|d| d.as_secs_f64())),
            ),
            (
                "kapso_conversations_failed",
                "Watched conversations whose last listing failed; their series show an older state.",
                per_project(&|v| Some(v.snapshot.conversations_down as f64)),
            ),
        ];
        for (name, help, series) in &gauges {
            family(
                enc,
                name,
                help,
                MetricType::Gauge,
                series.iter().map(|(l, v)| (borrow(l), gauge(*v))),
            )?;
        }
        let mut polls = Vec::new();
        let mut errors = Vec::new();
        let mut requests = Vec::new();
        let mut anomalies = Vec::new();
        let mut writes = Vec::new();
        for v in views {
            if let Some(s) = &v.storage {
                for (result, n) in [("success", s.writes_ok), ("error", s.writes_failed)] {
                    writes.push((
                        vec![("project", v.name.clone()), ("result", result.to_owned())],
                        n,
                    ));
                }
            }
            for (kind, n) in &v.snapshot.anomalies {
                anomalies.push((
                    vec![("project", v.name.clone()), ("kind", (*kind).to_owned())],
                    *n,
                ));
            }
            for (result, n) in v.polls {
                polls.push((
                    vec![("project", v.name.clone()), ("result", result.to_owned())],
                    n,
                ));
            }
            for (kind, n) in &v.errors {
                errors.push((
                    vec![("project", v.name.clone()), ("kind", (*kind).to_owned())],
                    *n,
                ));
            }
            for ((endpoint, code), n) in &v.requests {
                requests.push((
                    vec![
                        ("project", v.name.clone()),
                        ("endpoint", (*endpoint).to_owned()),
                        ("code", code.clone()),
                    ],
                    *n,
                ));
            }
        }
        let counters = [
            ("kapso_polls", "Polls of the project, by result.", polls),
            (
                "kapso_poll_errors",
                "Failed polls of the project, by kind of error.",
                errors,
            ),
            (
                "kapso_api_requests",
                "Kapso API requests made, by endpoint template and HTTP status (error for transport failures).",
                requests,
            ),
            (
                "kapso_api_anomalies",
                "Answers of the Kapso API the exporter had to work around, by kind.",
                anomalies,
            ),
            (
                "kapso_storage_writes",
                "Writes of the project's state to --storage.path, by result.",
                writes,
            ),
        ];
        for (name, help, series) in &counters {
            family(
                enc,
                name,
                help,
                MetricType::Counter,
                series.iter().map(|(l, n)| (borrow(l), Value::Counter(*n))),
            )?;
        }
        let build = [vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("revision", self.revision.to_owned()),
        ]];
        family(
            enc,
            "kapso_exporter_build_info",
            "Version and git revision of the exporter; always 1.",
            MetricType::Gauge,
            build.iter().map(|l| (borrow(l), gauge(1.0))),
        )
    }
}

fn borrow<'a>(labels: &'a [(&'static str, String)]) -> Labels<'a> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_negotiation() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0"
        )));
        // Prometheus 2.42's default scrape Accept header.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some(
            "text/plain;q=1,application/openmetrics-text;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
    }
}
