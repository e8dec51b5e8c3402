//! The table of every metric family the exporter serves: name, type, labels and help text.
//!
//! Collectors write through [`Family::emit`], whose label sets are types ([`label_sets!`]), so a
//! family's labels are fixed where it is declared. The README's metrics table is checked
//! against [`FAMILIES`] (`tests/it/exposition.rs`), and what `/metrics` serves against both.

use std::fmt;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Whether a family is a gauge or a counter (served with `_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One metric family.
#[derive(Debug)]
pub struct Family {
    /// Without the `_total` suffix of counters.
    pub name: &'static str,
    pub kind: Kind,
    /// Label names in the order served (`project` first where a series has it).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// A label set whose names are known without a value: what [`Family::emit`] checks.
pub trait LabelNames: EncodeLabelSet {
    const NAMES: &'static [&'static str];
}

/// Declares label-set structs of borrowed strings, encoded in field order.
macro_rules! label_sets {
    ($($(#[$doc:meta])* $name:ident { $($field:ident),+ })*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<'a> {
            $(pub $field: &'a str),+
        }

        impl EncodeLabelSet for $name<'_> {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
                $(EncodeLabel::encode(&(stringify!($field), self.$field), encoder.encode_label())?;)+
                Ok(())
            }
        }

        impl LabelNames for $name<'_> {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];
        }
    )*};
}

label_sets! {
    /// A project-wide series.
    ProjectLabels { project }
    ProjectResult { project, result }
    ProjectKind { project, kind }
    ProjectSource { project, source }
    Request { project, endpoint, code }
    Workflow { project, workflow_id, workflow }
    WorkflowStatus { project, workflow_id, workflow, status }
    WorkflowKind { project, workflow_id, workflow, kind }
    WorkflowInfo { project, workflow_id, workflow, workflow_status }
    StalledOver { project, workflow_id, workflow, status, over }
    Conversation { project, conversation_id, workflow_id, workflow, status }
    Step { project, workflow_id, workflow, step, step_type }
    StepStatus { project, workflow_id, workflow, step, step_type, status }
    Build { version, revision }
    Task { task }
}

/// A sample's value.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    Gauge(f64),
    Counter(u64),
}

impl Family {
    /// Writes the family's descriptor, then one sample per item of `series`.
    pub fn emit<L: LabelNames>(
        &self,
        encoder: &mut DescriptorEncoder,
        series: impl IntoIterator<Item = (L, Value)>,
    ) -> fmt::Result {
        debug_assert_eq!(L::NAMES, self.labels, "labels of {}", self.name);
        let metric_type = match self.kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, metric_type)?;
        for (labels, value) in series {
            let m = family.encode_family(&labels)?;
            match value {
                Value::Gauge(v) => ConstGauge::new(v).encode(m)?,
                Value::Counter(v) => ConstCounter::new(v).encode(m)?,
            }
        }
        Ok(())
    }

    /// The name a scrape shows (`_total` for counters).
    pub fn served_name(&self) -> String {
        match self.kind {
            Kind::Gauge => self.name.to_owned(),
            Kind::Counter => format!("{}_total", self.name),
        }
    }
}

/// Declares each family as a constant and lists them all in [`FAMILIES`], in the order served.
macro_rules! families {
    ($($ident:ident: $name:literal, $kind:ident, $labels:ident, $help:literal;)*) => {
        $(pub const $ident: Family = Family {
            name: $name,
            kind: Kind::$kind,
            labels: <$labels<'static> as LabelNames>::NAMES,
            help: $help,
        };)*
        /// Every family, in the order `/metrics` serves them.
        pub const FAMILIES: &[&Family] = &[$(&$ident),*];
    };
}

families! {
    WORKFLOW_EXECUTIONS: "kapso_workflow_executions", Gauge, WorkflowStatus,
        "Executions now in a live status (running, waiting, handoff), per workflow.";
    CONVERSATION_EXECUTIONS: "kapso_conversation_workflow_executions", Gauge, Conversation,
        "Executions now in a live status, per conversation with a live execution (capped by --metrics.max-conversations, most stalled first).";
    CONVERSATION_STALLED: "kapso_conversation_execution_stalled_seconds", Gauge, Conversation,
        "Longest time since the last event among a conversation's executions in waiting or handoff.";
    WORKFLOW_STALLED_SECONDS: "kapso_workflow_execution_stalled_seconds", Gauge, WorkflowStatus,
        "Longest time since the last event among a workflow's executions in waiting or handoff; 0 when there are none.";
    WORKFLOW_STALLED: "kapso_workflow_executions_stalled", Gauge, StalledOver,
        "Executions in waiting or handoff with no event for more than `over` seconds.";
    STEP_EXECUTIONS: "kapso_workflow_step_executions", Gauge, StepStatus,
        "Executions now in a live status at a step of the workflow (current_step), zero-filled for steps seen within the last hour; past --metrics.max-steps-per-workflow the least populated steps share step=\"other\".";
    STEP_STALLED_SECONDS: "kapso_workflow_step_stalled_seconds", Gauge, StepStatus,
        "Longest time since the last event among the executions in waiting or handoff at a step; 0 when there are none.";
    STEP_FAILURES: "kapso_workflow_step_failures", Counter, Step,
        "Executions that failed at a step (the current_step of the failed row), each counted once by id; past --metrics.max-steps-per-workflow steps, new steps count under step=\"other\".";
    WORKFLOW_INFO: "kapso_workflow_info", Gauge, WorkflowInfo,
        "Metadata of each known workflow; always 1.";
    STARTED: "kapso_workflow_executions_started", Counter, Workflow,
        "Executions started since the exporter's first poll, each counted once by id.";
    FINISHED: "kapso_workflow_executions_finished", Counter, WorkflowStatus,
        "Executions Kapso reported ended or failed since the exporter started, each counted once by id.";
    HANDOFFS: "kapso_workflow_execution_handoffs", Counter, Workflow,
        "Entries into handoff seen since the exporter started, each counted once.";
    OUTCOME_UNKNOWN: "kapso_workflow_executions_outcome_unknown", Gauge, Workflow,
        "Executions that left the live statuses and whose outcome Kapso has not told yet (not counted as finished until it does).";
    WORKFLOW_UP: "kapso_workflow_up", Gauge, Workflow,
        "1 when the last poll of the workflow committed, 0 while its series show an older state.";
    WORKFLOW_LAST_SUCCESS: "kapso_workflow_last_success_timestamp_seconds", Gauge, Workflow,
        "Unix time of the last poll of the workflow that committed.";
    WORKFLOW_POLL_ERRORS: "kapso_workflow_poll_errors", Counter, WorkflowKind,
        "Polls of one workflow that failed on their own (the rest of the project updated), by kind of error.";
    UP: "kapso_up", Gauge, ProjectLabels,
        "1 when the last poll read the workflow list and no request failed for a reason that concerns the whole API key, else 0.";
    PROJECT_READY: "kapso_project_ready", Gauge, ProjectLabels,
        "1 once the project completed its first poll.";
    LAST_POLL_SUCCESS: "kapso_last_poll_success_timestamp_seconds", Gauge, ProjectLabels,
        "Unix time of the last complete poll of the project.";
    POLL_DURATION: "kapso_poll_duration_seconds", Gauge, ProjectLabels,
        "How long the last poll of the project took.";
    POLL_INTERVAL: "kapso_poll_interval_seconds", Gauge, ProjectLabels,
        "Configured time between two polls of the project.";
    REQUESTS_PER_POLL: "kapso_api_requests_per_poll", Gauge, ProjectLabels,
        "Kapso API requests made by the last poll of the project.";
    RATE_LIMIT_REMAINING: "kapso_api_rate_limit_remaining", Gauge, ProjectLabels,
        "Last X-RateLimit-Remaining header Kapso sent.";
    RATE_LIMIT_BUDGET: "kapso_api_rate_limit_budget", Gauge, ProjectLabels,
        "Requests per minute the exporter may spend on the project's API key.";
    CONVERSATIONS_LIVE: "kapso_conversations_live", Gauge, ProjectLabels,
        "Conversations with a live execution, before the --metrics.max-conversations cap.";
    PAUSED_UNTIL: "kapso_api_paused_until_timestamp_seconds", Gauge, ProjectLabels,
        "Unix time until which requests of the key wait (a 429's Retry-After, capped at 15 minutes, or X-RateLimit-Remaining: 0); 0 when they do not.";
    STORAGE_RESTORED: "kapso_storage_restored", Gauge, ProjectLabels,
        "1 when the project's counters continued from the state saved in --storage.path at start, 0 when they started fresh.";
    STORAGE_LAST_WRITE: "kapso_storage_last_write_timestamp_seconds", Gauge, ProjectLabels,
        "Unix time of the last successful write of the project's state to --storage.path.";
    STORAGE_LAST_BYTES: "kapso_storage_last_write_bytes", Gauge, ProjectLabels,
        "Size of the project's state file at its last successful write.";
    STORAGE_LAST_DURATION: "kapso_storage_last_write_duration_seconds", Gauge, ProjectLabels,
        "How long the last write of the project's state took (encoding and fsync).";
    CONVERSATIONS_FAILED: "kapso_conversations_failed", Gauge, ProjectLabels,
        "Watched conversations whose last listing failed; their series show an older state.";
    POLLS: "kapso_polls", Counter, ProjectResult,
        "Polls of the project, by result.";
    POLL_ERRORS: "kapso_poll_errors", Counter, ProjectKind,
        "Failed polls of the project, by kind of error.";
    API_REQUESTS: "kapso_api_requests", Counter, Request,
        "Kapso API requests made, by endpoint template and HTTP status (error for transport failures).";
    API_ANOMALIES: "kapso_api_anomalies", Counter, ProjectKind,
        "Answers of the Kapso API the exporter had to work around, by kind.";
    STORAGE_WRITES: "kapso_storage_writes", Counter, ProjectResult,
        "Writes of the project's state to --storage.path, by result.";
    BUILD_INFO: "kapso_exporter_build_info", Gauge, Build,
        "Version and git revision of the exporter; always 1.";
    WEBHOOK_REQUESTS: "kapso_webhook_requests", Counter, ProjectResult,
        "Webhook deliveries received, by result (accepted, duplicate, invalid_signature, malformed, ignored, too_large, unknown_project; the last under project=\"\").";
    WEBHOOK_LAST_ACCEPTED: "kapso_webhook_last_accepted_timestamp_seconds", Gauge, ProjectLabels,
        "Unix time of the last accepted webhook delivery (absent until one was).";
    WEBHOOK_HANDOFF_EVENTS: "kapso_webhook_handoff_events", Counter, ProjectSource,
        "Handoff events received (duplicates excluded), by Kapso's handoff source.";
    WEBHOOK_DEDUPE_KEYS: "kapso_webhook_dedupe_keys", Gauge, ProjectLabels,
        "Delivery keys remembered to recognise duplicates (bounded).";
    TASK_UP: "kapso_exporter_task_up", Gauge, Task,
        "Whether a background task of the exporter runs: 1 while it does, 0 once it panicked or ended before shutdown (then /-/healthy answers 503).";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(f.name.starts_with("kapso_"), "{}", f.name);
            assert!(
                !f.name.ends_with("_total"),
                "{}: the suffix is added",
                f.name
            );
            assert!(f.help.ends_with('.'), "{}: help is a sentence", f.name);
        }
    }
}
