//! Readers of the counting metrics, shared by `tests/it/counting_model.rs` and
//! `tests/it/counting_regressions.rs`: series are found by `workflow_id` (and `status`, `kind`),
//! whatever the workflow's name, in project `default`.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use kapso_exporter::simulator::{ExecStatus, GroundTruth};

use super::support::Samples;

/// The three counters and hand-offs of one workflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Counts {
    pub started: u64,
    pub ended: u64,
    pub failed: u64,
    pub handoffs: u64,
}

impl Counts {
    /// Field by field `self <= other`.
    pub fn all_le(&self, other: &Counts) -> bool {
        self.started <= other.started
            && self.ended <= other.ended
            && self.failed <= other.failed
            && self.handoffs <= other.handoffs
    }

    /// `(started, ended, failed)`.
    pub fn sef(&self) -> (u64, u64, u64) {
        (self.started, self.ended, self.failed)
    }
}

/// The value of the one series of `name` with `workflow_id = wf` and the `extra` labels.
pub fn wf_value(s: &Samples, name: &str, wf: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut found = s.iter().filter(|((n, labels), _)| {
        n == name
            && labels.get("workflow_id").map(String::as_str) == Some(wf)
            && labels.get("project").map(String::as_str) == Some("default")
            && extra
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    });
    let first = found.next().map(|(_, v)| *v);
    assert!(
        found.next().is_none(),
        "{name} of {wf} {extra:?}: several series"
    );
    first
}

/// The counters of a workflow, `None` when it has no counter series.
pub fn counts(s: &Samples, wf: &str) -> Option<Counts> {
    let started = wf_value(s, "kapso_workflow_executions_started_total", wf, &[])?;
    let finished = |st: &str| {
        wf_value(
            s,
            "kapso_workflow_executions_finished_total",
            wf,
            &[("status", st)],
        )
        .unwrap_or_else(|| panic!("finished_total{{status={st}}} of {wf} missing"))
    };
    let handoffs = wf_value(s, "kapso_workflow_execution_handoffs_total", wf, &[])
        .unwrap_or_else(|| panic!("handoffs_total of {wf} missing"));
    Some(Counts {
        started: started as u64,
        ended: finished("ended") as u64,
        failed: finished("failed") as u64,
        handoffs: handoffs as u64,
    })
}

/// `kapso_workflow_executions{status}` of a workflow.
pub fn live(s: &Samples, wf: &str, status: ExecStatus) -> Option<u64> {
    wf_value(
        s,
        "kapso_workflow_executions",
        wf,
        &[("status", status.as_str())],
    )
    .map(|v| v as u64)
}

/// The three live gauges of a workflow, `running`, `waiting`, `handoff`.
pub fn live3(s: &Samples, wf: &str) -> Option<[u64; 3]> {
    Some([
        live(s, wf, ExecStatus::Running)?,
        live(s, wf, ExecStatus::Waiting)?,
        live(s, wf, ExecStatus::Handoff)?,
    ])
}

/// The ground truth's live counts of a workflow, in the order of [`live3`].
pub fn truth_live3(t: &GroundTruth, wf: &str) -> [u64; 3] {
    ExecStatus::LIVE.map(|st| t.live_count(wf, st))
}

/// The ground truth's counters of a workflow (0 for an unknown one).
pub fn truth_counts(t: &GroundTruth, wf: &str) -> Counts {
    let finished = |st| t.finished.get(&(wf.to_owned(), st)).copied().unwrap_or(0);
    Counts {
        started: t.started.get(wf).copied().unwrap_or(0),
        ended: finished(ExecStatus::Ended),
        failed: finished(ExecStatus::Failed),
        handoffs: t.handoffs.get(wf).copied().unwrap_or(0),
    }
}

/// `kapso_workflow_up` of a workflow.
pub fn up(s: &Samples, wf: &str) -> Option<f64> {
    wf_value(s, "kapso_workflow_up", wf, &[])
}

/// `kapso_workflow_poll_errors_total{kind}` of a workflow (0 when absent).
pub fn poll_errors(s: &Samples, wf: &str, kind: &str) -> f64 {
    wf_value(s, "kapso_workflow_poll_errors_total", wf, &[("kind", kind)]).unwrap_or(0.0)
}

/// `kapso_workflow_executions_outcome_unknown` of a workflow.
pub fn outcome_unknown(s: &Samples, wf: &str) -> Option<u64> {
    wf_value(s, "kapso_workflow_executions_outcome_unknown", wf, &[]).map(|v| v as u64)
}

/// `kapso_workflow_last_success_timestamp_seconds` of a workflow.
pub fn last_success(s: &Samples, wf: &str) -> Option<f64> {
    wf_value(s, "kapso_workflow_last_success_timestamp_seconds", wf, &[])
}

/// `kapso_api_anomalies_total{kind}` (0 when absent).
pub fn anomalies(s: &Samples, kind: &str) -> f64 {
    s.iter()
        .find(|((n, l), _)| {
            n == "kapso_api_anomalies_total" && l.get("kind").map(String::as_str) == Some(kind)
        })
        .map_or(0.0, |(_, v)| *v)
}

/// Every series of one workflow (any metric whose `workflow_id` is `wf`) but those in `skip`
/// and the stall metrics (computed at scrape time from the clock), to compare a workflow's
/// whole state before and after a poll.
pub fn workflow_series(s: &Samples, wf: &str, skip: &[&str]) -> Samples {
    const STALL: [&str; 3] = [
        "kapso_workflow_execution_stalled_seconds",
        "kapso_workflow_executions_stalled",
        "kapso_workflow_step_stalled_seconds",
    ];
    s.iter()
        .filter(|((n, l), _)| {
            l.get("workflow_id").map(String::as_str) == Some(wf)
                && !skip.contains(&n.as_str())
                && !STALL.contains(&n.as_str())
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The series whose values differ between two sets (missing on one side shown as `None`),
/// as lines, for readable assertion messages.
pub fn differences(a: &Samples, b: &Samples) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{} {:?}: {:?} -> {:?}", k.0, k.1, a.get(k), b.get(k)))
        .collect()
}

/// Milliseconds, for clock steps.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
