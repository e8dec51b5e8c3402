//! The latest snapshot of each project and what its last poll did.
//!
//! Pollers write here; the metrics collector and the landing page read. A failed poll keeps
//! the previous snapshot, so `/metrics` always serves the last good state, and the age of that
//! state is visible through `kapso_last_poll_success_timestamp_seconds`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;

use crate::kapso::{ApiStats, ExecutionStatus};

/// A workflow as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkflowMeta {
    pub name: String,
    pub status: String,
}

/// Live executions of one (workflow, status): their `last_event_at`, sorted ascending.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveBucket {
    /// Unix microseconds; one entry per execution with a known `last_event_at`.
    pub last_events: Vec<i64>,
    pub count: u64,
}

/// Live executions of one (conversation, workflow, status).
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationSeries {
    pub conversation_id: Arc<str>,
    pub workflow_id: Arc<str>,
    pub status: ExecutionStatus,
    pub count: u64,
    /// Unix microseconds of the oldest `last_event_at`, if any is known.
    pub oldest_last_event: Option<i64>,
}

/// A step of a workflow graph as the step series label it: `current_step.identifier` and
/// `current_step.stepable_type` (both empty for rows without `current_step`).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct StepKey {
    pub id: Arc<str>,
    pub step_type: Arc<str>,
}

impl StepKey {
    /// The step label value that the steps beyond `--metrics.max-steps-per-workflow` share.
    pub const OTHER: &'static str = "other";

    /// The series the steps beyond the cap share.
    pub fn other() -> Self {
        Self {
            id: Arc::from(Self::OTHER),
            step_type: Arc::from(""),
        }
    }
}

/// Live executions of one (workflow, step), by live status in [`ExecutionStatus::LIVE`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSeries {
    pub workflow_id: Arc<str>,
    pub step: StepKey,
    pub count: [u64; 3],
    /// Unix microseconds of the oldest `last_event_at` per live status, if any is known.
    pub oldest_last_event: [Option<i64>; 3],
}

impl StepSeries {
    pub fn empty(workflow_id: Arc<str>, step: StepKey) -> Self {
        Self {
            workflow_id,
            step,
            count: [0; 3],
            oldest_last_event: [None; 3],
        }
    }

    /// Adds `n` executions in `status` whose oldest `last_event_at` is `oldest`.
    pub fn add(&mut self, status: ExecutionStatus, n: u64, oldest: Option<i64>) {
        let Some(i) = ExecutionStatus::LIVE.iter().position(|s| *s == status) else {
            return;
        };
        self.count[i] += n;
        self.oldest_last_event[i] = match (self.oldest_last_event[i], oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Adds another step's executions (folding it into this one).
    pub fn merge(&mut self, other: &StepSeries) {
        for (i, s) in ExecutionStatus::LIVE.into_iter().enumerate() {
            self.add(s, other.count[i], other.oldest_last_event[i]);
        }
    }

    /// Live executions at the step.
    pub fn total(&self) -> u64 {
        self.count.iter().sum()
    }
}

/// Whether one workflow's last poll committed, and when one last did (project mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkflowHealth {
    pub up: bool,
    /// Unix microseconds.
    pub last_success: Option<i64>,
}

/// The counters of one project. Polls and webhook events both replace them; `generation`
/// orders the copies, so an older one never replaces a newer one (counters never go back).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterSnapshot {
    pub generation: u64,
    pub started: BTreeMap<Arc<str>, u64>,
    pub finished: BTreeMap<(Arc<str>, ExecutionStatus), u64>,
    pub handoffs: BTreeMap<Arc<str>, u64>,
    /// Failed executions by (workflow, the step the failed row showed).
    pub step_failures: BTreeMap<(Arc<str>, StepKey), u64>,
}

/// Everything one successful poll established.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Known workflows by id.
    pub workflows: BTreeMap<Arc<str>, WorkflowMeta>,
    /// Every known workflow x live status (zero-filled).
    pub live: BTreeMap<(Arc<str>, ExecutionStatus), LiveBucket>,
    /// Per-conversation series, most stalled conversations first, already capped.
    pub conversations: Vec<ConversationSeries>,
    /// Conversations with a live execution, before the cap.
    pub conversations_total: usize,
    /// Per (workflow, step) with a live execution or seen within the last hour, sorted; the
    /// least populated steps past `--metrics.max-steps-per-workflow` folded into `other`.
    pub steps: Vec<StepSeries>,
    /// The counters as of this snapshot; `ProjectState::counters` may be newer.
    pub counters: Arc<CounterSnapshot>,
    /// Per workflow (project mode): whether its last poll committed.
    pub workflow_health: BTreeMap<Arc<str>, WorkflowHealth>,
    /// Executions that left the live lists and whose outcome Kapso has not told yet.
    pub outcome_unknown: BTreeMap<Arc<str>, u64>,
    /// What Kapso answered that had to be worked around, by kind (zero-filled).
    pub anomalies: BTreeMap<&'static str, u64>,
    /// Failed polls of one workflow, by kind of error.
    pub workflow_errors: BTreeMap<(Arc<str>, &'static str), u64>,
    /// Watched conversations whose last listing failed (conversation mode).
    pub conversations_down: usize,
}

/// What `--storage.path` did for one project.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StorageStats {
    /// Whether the counters continued from a saved state at start.
    pub restored: bool,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub last_write: Option<OffsetDateTime>,
    pub last_bytes: u64,
    pub last_duration: Option<Duration>,
}

/// The state of one project.
#[derive(Debug)]
pub struct ProjectState {
    pub name: String,
    pub poll_interval: Duration,
    pub rate_limit: u32,
    pub api: Arc<ApiStats>,
    pub snapshot: Arc<Snapshot>,
    /// The latest counters, from the last poll or a later webhook event.
    pub counters: Arc<CounterSnapshot>,
    /// Whether the last poll completed.
    pub up: bool,
    /// Whether any poll has completed.
    pub ready: bool,
    pub last_success: Option<OffsetDateTime>,
    pub last_poll_duration: Option<Duration>,
    pub last_poll_requests: u64,
    pub last_error: Option<String>,
    pub polls_success: u64,
    pub polls_error: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// With `--storage.path`.
    pub storage: Option<StorageStats>,
}

/// A shared handle on one project's state.
pub type SharedProject = Arc<RwLock<ProjectState>>;

impl ProjectState {
    pub fn new(name: &str, poll_interval: Duration, rate_limit: u32, api: Arc<ApiStats>) -> Self {
        Self {
            name: name.to_owned(),
            poll_interval,
            rate_limit,
            api,
            snapshot: Arc::default(),
            counters: Arc::default(),
            up: false,
            ready: false,
            last_success: None,
            last_poll_duration: None,
            last_poll_requests: 0,
            last_error: None,
            polls_success: 0,
            polls_error: 0,
            errors: BTreeMap::new(),
            storage: None,
        }
    }

    pub fn shared(self) -> SharedProject {
        Arc::new(RwLock::new(self))
    }

    /// Shows `counters` unless a newer copy is already shown.
    pub fn update_counters(&mut self, counters: Arc<CounterSnapshot>) {
        if counters.generation >= self.counters.generation {
            self.counters = counters;
        }
    }

    /// Serves `snapshot`, and its counters unless newer ones are served.
    pub fn replace_snapshot(&mut self, snapshot: Snapshot) {
        self.update_counters(snapshot.counters.clone());
        self.snapshot = Arc::new(snapshot);
    }

    /// Records a completed poll and its snapshot.
    pub fn record_success(
        &mut self,
        snapshot: Snapshot,
        at: OffsetDateTime,
        took: Duration,
        requests: u64,
    ) {
        self.replace_snapshot(snapshot);
        self.up = true;
        self.ready = true;
        self.last_success = Some(at);
        self.last_poll_duration = Some(took);
        self.last_poll_requests = requests;
        self.last_error = None;
        self.polls_success += 1;
    }

    /// Records a poll that failed after some of its workflows (or conversations) committed:
    /// their part of the snapshot is new, the project counts as down.
    pub fn record_partial(
        &mut self,
        snapshot: Snapshot,
        kind: &'static str,
        message: String,
        took: Duration,
        requests: u64,
    ) {
        self.replace_snapshot(snapshot);
        self.record_failure(kind, message, took, requests);
    }

    /// Records a failed poll; the previous snapshot stays.
    pub fn record_failure(
        &mut self,
        kind: &'static str,
        message: String,
        took: Duration,
        requests: u64,
    ) {
        self.up = false;
        self.last_poll_duration = Some(took);
        self.last_poll_requests = requests;
        self.last_error = Some(message);
        self.polls_error += 1;
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// Read access that survives a panicked writer.
pub fn read(p: &SharedProject) -> std::sync::RwLockReadGuard<'_, ProjectState> {
    p.read().unwrap_or_else(|e| e.into_inner())
}

/// Write access that survives a panicked writer.
pub fn write(p: &SharedProject) -> std::sync::RwLockWriteGuard<'_, ProjectState> {
    p.write().unwrap_or_else(|e| e.into_inner())
}
