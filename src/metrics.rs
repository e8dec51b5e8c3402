//! Metric names, help texts and labels; the snapshot is encoded at scrape time.
//!
//! Nothing here calls Kapso: a scrape reads the last snapshot of each project and the clock.
//! Stall gauges are computed from `last_event_at` against the scrape's "now", so they keep
//! growing between polls. Series are emitted in a deterministic order.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::clock::{Clock, Micros, micros};
use crate::kapso::{ApiError, ExecutionStatus};
use crate::state::{
    self, ConversationSeries, CounterSnapshot, LiveBucket, ProjectState, SharedProject, Snapshot,
    StepKey, StepSeries,
};

mod families;

pub use families::*;

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
            last_success: p.last_success.map(unix_seconds),
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

/// Workflow names by id, from one snapshot, sorted: the one lookup every workflow series uses.
struct Names(Vec<(Arc<str>, String)>);

impl Names {
    fn of(snapshot: &Snapshot) -> Self {
        Names(
            snapshot
                .workflows
                .iter()
                .map(|(id, m)| (id.clone(), m.name.clone()))
                .collect(),
        )
    }

    /// The name of workflow `id`, else the id itself.
    fn get<'a>(&'a self, id: &'a str) -> &'a str {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(id))
            .map_or(id, |j| self.0[j].1.as_str())
    }
}

/// One project as a scrape reads it: the view and its names.
struct Scraped {
    view: View,
    names: Names,
}

impl Scraped {
    fn workflow<'a>(&'a self, id: &'a str) -> Workflow<'a> {
        Workflow {
            project: &self.view.name,
            workflow_id: id,
            workflow: self.names.get(id),
        }
    }

    fn workflow_status<'a>(&'a self, id: &'a str, status: ExecutionStatus) -> WorkflowStatus<'a> {
        WorkflowStatus {
            project: &self.view.name,
            workflow_id: id,
            workflow: self.names.get(id),
            status: status.as_str(),
        }
    }

    fn step<'a>(&'a self, id: &'a str, step: &'a StepKey) -> Step<'a> {
        Step {
            project: &self.view.name,
            workflow_id: id,
            workflow: self.names.get(id),
            step: &step.id,
            step_type: &step.step_type,
        }
    }

    fn step_status<'a>(&'a self, s: &'a StepSeries, status: ExecutionStatus) -> StepStatus<'a> {
        StepStatus {
            project: &self.view.name,
            workflow_id: &s.workflow_id,
            workflow: self.names.get(&s.workflow_id),
            step: &s.step.id,
            step_type: &s.step.step_type,
            status: status.as_str(),
        }
    }

    fn conversation<'a>(&'a self, s: &'a ConversationSeries) -> Conversation<'a> {
        Conversation {
            project: &self.view.name,
            conversation_id: &s.conversation_id,
            workflow_id: &s.workflow_id,
            workflow: self.names.get(&s.workflow_id),
            status: s.status.as_str(),
        }
    }

    fn result<'a>(&'a self, result: &'a str) -> ProjectResult<'a> {
        ProjectResult {
            project: &self.view.name,
            result,
        }
    }

    fn kind<'a>(&'a self, kind: &'a str) -> ProjectKind<'a> {
        ProjectKind {
            project: &self.view.name,
            kind,
        }
    }

    fn project(&self) -> ProjectLabels<'_> {
        ProjectLabels {
            project: &self.view.name,
        }
    }
}

fn gauge(v: impl Into<f64>) -> Value {
    Value::Gauge(v.into())
}

/// The scrape's clock, for stall gauges.
#[derive(Clone, Copy)]
struct Now(Micros);

impl Now {
    /// Seconds since the oldest `last_event_at`, 0 without one.
    fn stall(self, oldest: Option<i64>) -> Value {
        gauge(oldest.map_or(0.0, |t| ((self.0 - t) as f64 / 1e6).max(0.0)))
    }
}

impl Collector for KapsoCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let projects: Vec<Scraped> = self
            .projects
            .iter()
            .map(|p| {
                let view = View::of(&state::read(p));
                let names = Names::of(&view.snapshot);
                Scraped { view, names }
            })
            .collect();
        let now = Now(micros(self.clock.now()));
        let enc = &mut enc;
        workflow_executions(enc, &projects)?;
        conversation_executions(enc, &projects)?;
        conversation_stalled(enc, &projects, now)?;
        workflow_stalled_seconds(enc, &projects, now)?;
        workflow_stalled(enc, &projects, now, &self.stall_thresholds)?;
        step_executions(enc, &projects)?;
        step_stalled_seconds(enc, &projects, now)?;
        step_failures(enc, &projects)?;
        workflow_families(enc, &projects)?;
        project_gauges(enc, &projects, self.clock.now())?;
        project_counters(enc, &projects)?;
        BUILD_INFO.emit(
            enc,
            [(
                Build {
                    version: env!("CARGO_PKG_VERSION"),
                    revision: self.revision,
                },
                gauge(1.0),
            )],
        )
    }
}

fn workflow_executions(enc: &mut DescriptorEncoder, projects: &[Scraped]) -> std::fmt::Result {
    WORKFLOW_EXECUTIONS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view.snapshot.live.iter().map(|((wf, status), bucket)| {
                (p.workflow_status(wf, *status), gauge(bucket.count as f64))
            })
        }),
    )
}

// Per-conversation series can number hundreds of thousands: their labels borrow from the
// snapshot and are built one series at a time, never all at once.
fn conversation_executions(enc: &mut DescriptorEncoder, projects: &[Scraped]) -> std::fmt::Result {
    CONVERSATION_EXECUTIONS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .conversations
                .iter()
                .map(|s| (p.conversation(s), gauge(s.count as f64)))
        }),
    )
}

fn conversation_stalled(
    enc: &mut DescriptorEncoder,
    projects: &[Scraped],
    now: Now,
) -> std::fmt::Result {
    CONVERSATION_STALLED.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .conversations
                .iter()
                .filter(|s| ExecutionStatus::STALLABLE.contains(&s.status))
                .map(move |s| (p.conversation(s), now.stall(s.oldest_last_event)))
        }),
    )
}

/// The `waiting` and `handoff` buckets of every workflow.
fn stallable(p: &Scraped) -> impl Iterator<Item = (&Arc<str>, ExecutionStatus, &LiveBucket)> {
    p.view
        .snapshot
        .live
        .iter()
        .filter(|((_, s), _)| ExecutionStatus::STALLABLE.contains(s))
        .map(|((wf, s), b)| (wf, *s, b))
}

fn workflow_stalled_seconds(
    enc: &mut DescriptorEncoder,
    projects: &[Scraped],
    now: Now,
) -> std::fmt::Result {
    WORKFLOW_STALLED_SECONDS.emit(
        enc,
        projects.iter().flat_map(|p| {
            stallable(p).map(move |(wf, status, bucket)| {
                (
                    p.workflow_status(wf, status),
                    now.stall(bucket.last_events.first().copied()),
                )
            })
        }),
    )
}

fn workflow_stalled(
    enc: &mut DescriptorEncoder,
    projects: &[Scraped],
    now: Now,
    thresholds: &[u64],
) -> std::fmt::Result {
    let thresholds: Vec<(String, i64)> = thresholds
        .iter()
        .map(|s| {
            let us = i64::try_from(*s)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000);
            (s.to_string(), now.0.saturating_sub(us))
        })
        .collect();
    let thresholds = &thresholds;
    WORKFLOW_STALLED.emit(
        enc,
        projects.iter().flat_map(|p| {
            stallable(p).flat_map(move |(wf, status, bucket)| {
                thresholds.iter().map(move |(over, before)| {
                    let n = bucket.last_events.partition_point(|t| t < before);
                    (
                        StalledOver {
                            project: &p.view.name,
                            workflow_id: wf,
                            workflow: p.names.get(wf),
                            status: status.as_str(),
                            over,
                        },
                        gauge(n as f64),
                    )
                })
            })
        }),
    )
}

fn step_executions(enc: &mut DescriptorEncoder, projects: &[Scraped]) -> std::fmt::Result {
    STEP_EXECUTIONS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view.snapshot.steps.iter().flat_map(move |s| {
                ExecutionStatus::LIVE
                    .into_iter()
                    .zip(s.count)
                    .map(move |(status, n)| (p.step_status(s, status), gauge(n as f64)))
            })
        }),
    )
}

fn step_stalled_seconds(
    enc: &mut DescriptorEncoder,
    projects: &[Scraped],
    now: Now,
) -> std::fmt::Result {
    STEP_STALLED_SECONDS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view.snapshot.steps.iter().flat_map(move |s| {
                ExecutionStatus::LIVE
                    .into_iter()
                    .zip(s.oldest_last_event)
                    .filter(|(status, _)| ExecutionStatus::STALLABLE.contains(status))
                    .map(move |(status, oldest)| (p.step_status(s, status), now.stall(oldest)))
            })
        }),
    )
}

fn step_failures(enc: &mut DescriptorEncoder, projects: &[Scraped]) -> std::fmt::Result {
    STEP_FAILURES.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .counters
                .step_failures
                .iter()
                .map(|((wf, step), n)| (p.step(wf, step), Value::Counter(*n)))
        }),
    )
}

/// The per-workflow families other than live counts and stalls.
fn workflow_families(enc: &mut DescriptorEncoder, projects: &[Scraped]) -> std::fmt::Result {
    WORKFLOW_INFO.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view.snapshot.workflows.iter().map(|(wf, meta)| {
                (
                    WorkflowInfo {
                        project: &p.view.name,
                        workflow_id: wf,
                        workflow: &meta.name,
                        workflow_status: &meta.status,
                    },
                    gauge(1.0),
                )
            })
        }),
    )?;
    STARTED.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .counters
                .started
                .iter()
                .map(|(wf, n)| (p.workflow(wf), Value::Counter(*n)))
        }),
    )?;
    FINISHED.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .counters
                .finished
                .iter()
                .map(|((wf, s), n)| (p.workflow_status(wf, *s), Value::Counter(*n)))
        }),
    )?;
    HANDOFFS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .counters
                .handoffs
                .iter()
                .map(|(wf, n)| (p.workflow(wf), Value::Counter(*n)))
        }),
    )?;
    OUTCOME_UNKNOWN.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .outcome_unknown
                .iter()
                .map(|(wf, n)| (p.workflow(wf), gauge(*n as f64)))
        }),
    )?;
    WORKFLOW_UP.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .workflow_health
                .iter()
                .map(|(wf, h)| (p.workflow(wf), gauge(u8::from(h.up))))
        }),
    )?;
    WORKFLOW_LAST_SUCCESS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .workflow_health
                .iter()
                .filter_map(|(wf, h)| {
                    h.last_success
                        .map(|t| (p.workflow(wf), gauge(t as f64 / 1e6)))
                })
        }),
    )?;
    WORKFLOW_POLL_ERRORS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .workflow_errors
                .iter()
                .map(|((wf, kind), n)| {
                    (
                        WorkflowKind {
                            project: &p.view.name,
                            workflow_id: wf,
                            workflow: p.names.get(wf),
                            kind,
                        },
                        Value::Counter(*n),
                    )
                })
        }),
    )
}

/// One gauge per project, absent where `value` says nothing.
fn per_project(
    enc: &mut DescriptorEncoder,
    family: &Family,
    projects: &[Scraped],
    value: impl Fn(&View) -> Option<f64>,
) -> std::fmt::Result {
    family.emit(
        enc,
        projects
            .iter()
            .filter_map(|p| value(&p.view).map(|v| (p.project(), gauge(v)))),
    )
}

fn project_gauges(
    enc: &mut DescriptorEncoder,
    projects: &[Scraped],
    now: time::OffsetDateTime,
) -> std::fmt::Result {
    let now_secs = unix_seconds(now);
    let flag = |b: bool| Some(f64::from(u8::from(b)));
    per_project(enc, &UP, projects, |v| flag(v.up))?;
    per_project(enc, &PROJECT_READY, projects, |v| flag(v.ready))?;
    per_project(enc, &LAST_POLL_SUCCESS, projects, |v| v.last_success)?;
    per_project(enc, &POLL_DURATION, projects, |v| v.last_duration)?;
    per_project(enc, &POLL_INTERVAL, projects, |v| Some(v.interval))?;
    per_project(enc, &REQUESTS_PER_POLL, projects, |v| {
        Some(v.last_requests as f64)
    })?;
    per_project(enc, &RATE_LIMIT_REMAINING, projects, |v| {
        v.remaining.map(|r| r as f64)
    })?;
    per_project(enc, &RATE_LIMIT_BUDGET, projects, |v| {
        Some(f64::from(v.budget))
    })?;
    per_project(enc, &CONVERSATIONS_LIVE, projects, |v| {
        Some(v.snapshot.conversations_total as f64)
    })?;
    per_project(enc, &PAUSED_UNTIL, projects, |v| {
        Some(v.paused_for.map_or(0.0, |d| now_secs + d))
    })?;
    per_project(enc, &STORAGE_RESTORED, projects, |v| {
        flag(v.storage.as_ref()?.restored)
    })?;
    per_project(enc, &STORAGE_LAST_WRITE, projects, |v| {
        v.storage.as_ref()?.last_write.map(unix_seconds)
    })?;
    per_project(enc, &STORAGE_LAST_BYTES, projects, |v| {
        v.storage.as_ref().map(|s| s.last_bytes as f64)
    })?;
    per_project(enc, &STORAGE_LAST_DURATION, projects, |v| {
        v.storage.as_ref()?.last_duration.map(|d| d.as_secs_f64())
    })?;
    per_project(enc, &CONVERSATIONS_FAILED, projects, |v| {
        Some(v.snapshot.conversations_down as f64)
    })
}

fn project_counters(enc: &mut DescriptorEncoder, projects: &[Scraped]) -> std::fmt::Result {
    POLLS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .polls
                .iter()
                .map(|(result, n)| (p.result(result), Value::Counter(*n)))
        }),
    )?;
    POLL_ERRORS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .errors
                .iter()
                .map(|(kind, n)| (p.kind(kind), Value::Counter(*n)))
        }),
    )?;
    API_REQUESTS.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view.requests.iter().map(|((endpoint, code), n)| {
                (
                    Request {
                        project: &p.view.name,
                        endpoint,
                        code,
                    },
                    Value::Counter(*n),
                )
            })
        }),
    )?;
    API_ANOMALIES.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view
                .snapshot
                .anomalies
                .iter()
                .map(|(kind, n)| (p.kind(kind), Value::Counter(*n)))
        }),
    )?;
    STORAGE_WRITES.emit(
        enc,
        projects.iter().flat_map(|p| {
            p.view.storage.iter().flat_map(|s| {
                [("success", s.writes_ok), ("error", s.writes_failed)]
                    .map(|(result, n)| (p.result(result), Value::Counter(n)))
            })
        }),
    )
}

fn unix_seconds(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
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
