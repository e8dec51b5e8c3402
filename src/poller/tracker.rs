//! What the poller remembers between polls, and how the answers of one poll become counts.
//!
//! Pure logic, no I/O: the poller reads the live lists, asks the [planner](super::plan) which
//! extra requests each workflow needs, runs them, and hands the answers to [`Tracker`], which
//! commits them workflow by workflow (conversation by conversation in conversation mode).
//! A workflow whose requests failed commits nothing and keeps its last good state, so the next
//! successful poll of it accounts for both intervals.
//!
//! Counting is by identity, never by arithmetic on counts: each workflow remembers every
//! execution id it may meet again ([`Exec`]), and
//! - a start is counted once, for an id the tracker did not know, found by a listing whose
//!   window begins after everything already known ([`CountRule`]);
//! - a finish is counted once, with the status Kapso reported for that id (`ended` or
//!   `failed`), for an execution that was live (or pending) or started inside a counted window;
//! - an entry into `handoff` is counted when an id is seen in `handoff` and was last seen in
//!   another status (or is new).
//!
//! An execution that left the live lists without a known outcome is *pending*: it is not
//! counted as finished, it shows in `kapso_workflow_executions_outcome_unknown`, and later
//! polls look for it until Kapso tells its status (or says it is gone, which is counted as an
//! anomaly, not as a finish). `execution_count` and `last_executed_at` only decide whether a
//! window listing is needed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{Micros, micros, plausible};
use crate::kapso::{Execution, ExecutionStatus, Workflow};
use crate::state::{
    ConversationSeries, CounterSnapshot, LiveBucket, Snapshot, StepKey, WorkflowHealth,
    WorkflowMeta,
};

use super::plan::{
    self, Context, CountRule, MARGIN, PENDING_BY_ID_MAX, PRECISION_SLACK, Plan, WindowReason,
};

/// The workflow id used for rows that carry none.
pub const UNKNOWN_WORKFLOW: &str = "unknown";

/// Consecutive listings a known workflow may be missing from before the tracker forgets it
/// (its series leave `/metrics`; its counters are kept should it come back).
pub const WORKFLOW_GRACE_LISTINGS: u32 = 5;

/// The kinds of `kapso_api_anomalies_total`: what Kapso answered that the exporter had to
/// work around.
pub const ANOMALIES: [&str; 8] = [
    // A workflow listed more than once by one `GET /workflows`.
    "duplicate_workflow",
    // `GET /workflows` answered no workflow while some were known.
    "empty_workflow_list",
    // A known workflow was missing from a listing (kept for the grace period).
    "workflow_missing",
    // An execution listed more than once by the lists of one poll.
    "duplicate_execution",
    // A new execution whose `started_at` is missing, absurd, or outside the window asked for.
    "implausible_timestamp",
    // An execution entered a status the exporter does not know.
    "unknown_status",
    // An execution left the live lists and was deleted before its outcome was known.
    "outcome_lost",
    // A finished execution was listed live again.
    "reappeared",
];

/// A live execution as remembered between polls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveExec {
    pub workflow_id: Arc<str>,
    /// The status it was last seen in (`Unknown` for a status the exporter does not know).
    pub status: ExecutionStatus,
    pub conversation_id: Option<Arc<str>>,
    /// `started_at`, when believable.
    pub started_at: Option<Micros>,
    pub last_event_at: Option<Micros>,
    /// When the last counted entry into `handoff` happened (the event's `occurred_at`, or the
    /// `last_event_at` of the row that showed it), so that a webhook and a poll telling of the
    /// same entry count it once.
    pub handoff_mark: Option<Micros>,
    /// The step it was last seen at (`None` for rows without `current_step`); shared by the
    /// executions at the same step (8 bytes each, not 32: there are 200,000 at scale L).
    #[serde(default)]
    pub step: Option<Arc<StepKey>>,
    /// A webhook told of its failure, which is counted; the poll that reads the failed row
    /// counts only the failure's step.
    #[serde(default)]
    pub failure_counted: bool,
}

/// What the tracker knows of one execution id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Exec {
    /// In a live list at the last poll.
    Live(LiveExec),
    /// Left the live lists; its outcome is not known yet.
    Pending(LiveExec),
    /// Finished (and counted if it was tracked), or known not to concern the counters; kept,
    /// with its start, only while a window listing may return it again.
    Seen(Option<Micros>),
    /// Told of by a webhook before any poll listed it (see [`Tracker::apply_event`]).
    Early(EarlyExec),
}

/// An execution a webhook told of before a poll listed it: the poll that lists it counts its
/// start (by the window rule) but not what the events already counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyExec {
    /// Its failure was counted from a `workflow.execution.failed` event.
    pub failed: bool,
    /// When its last counted entry into `handoff` happened.
    pub handoff_mark: Option<Micros>,
    /// The last event's `occurred_at`; forgotten [`EARLY_TTL`] later if no poll listed it.
    pub occurred_at: Micros,
}

/// `execution_count` and `last_executed_at` of a workflow's previous listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    pub execution_count: Option<u64>,
    pub last_executed_at: Option<Micros>,
}

impl Signals {
    fn of(wf: &Workflow) -> Self {
        Self {
            execution_count: wf.execution_count,
            last_executed_at: wf.last_executed_at.map(micros),
        }
    }
}

/// The memory of one workflow (project mode).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkflowTrack {
    pub(super) meta: Option<WorkflowMeta>,
    /// Every id the workflow must remember.
    pub(super) execs: HashMap<String, Exec>,
    /// Where the next window listing begins; `None` until the workflow's first commit.
    pub(super) window_from: Option<Micros>,
    pub(super) signals: Signals,
    /// Consecutive listings the workflow was missing from.
    pub(super) absent: u32,
    /// Whether its last poll committed.
    pub(super) up: bool,
    pub(super) last_success: Option<Micros>,
}

impl WorkflowTrack {
    /// How many executions `execution_count` says started since the previous listing.
    pub(super) fn growth(&self, wf: &Workflow) -> Option<u64> {
        Some(
            wf.execution_count?
                .saturating_sub(self.signals.execution_count?),
        )
    }

    /// Executions live at the last poll.
    pub(super) fn live_count(&self) -> u64 {
        self.execs
            .values()
            .filter(|e| matches!(e, Exec::Live(_)))
            .count() as u64
    }

    /// Why the listing's counts call for a window listing, if they do: without
    /// `execution_count` a start cannot be ruled out; otherwise any change of it or of
    /// `last_executed_at` (which is null for a workflow that never ran) may be a start.
    pub(super) fn count_signal(&self, wf: &Workflow) -> Option<WindowReason> {
        let now = Signals::of(wf);
        if now.execution_count.is_none() || self.signals.execution_count.is_none() {
            return Some(WindowReason::CountUnknown);
        }
        (now != self.signals).then_some(WindowReason::CountChanged)
    }

    /// Pending executions whose outcome is unknown (a webhook told of some failures).
    fn pending_count(&self) -> u64 {
        self.execs
            .values()
            .filter(|e| matches!(e, Exec::Pending(p) if !p.failure_counted))
            .count() as u64
    }
}

/// The memory of one watched conversation (conversation mode).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ConversationTrack {
    execs: HashMap<String, Exec>,
    /// Ids not known with a start from here on are new; `None` until the first commit.
    window_from: Option<Micros>,
    up: bool,
}

/// Everything one poll read of one workflow, for [`Tracker::commit_project`].
#[derive(Clone, Debug)]
pub struct WorkflowFetch {
    pub workflow: Workflow,
    /// Rows of the live-status lists, in the order read.
    pub live: Vec<Execution>,
    pub plan: Plan,
    /// Rows of the window listing, when the plan had one.
    pub window: Vec<Execution>,
    /// Rows of the status listings and of the reads by id.
    pub resolved: Vec<Execution>,
    /// Ids whose read by id answered 404.
    pub gone: Vec<String>,
}

/// Everything one poll read of one conversation, for [`Tracker::commit_conversations`].
#[derive(Clone, Debug, Default)]
pub struct ConversationFetch {
    pub rows: Vec<Execution>,
    /// Rows of the reads by id of pending executions.
    pub resolved: Vec<Execution>,
    pub gone: Vec<String>,
}

/// A failed fetch: the error's kind label and message.
pub type FetchError = (&'static str, String);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counters {
    started: BTreeMap<Arc<str>, u64>,
    #[serde(with = "saved::pairs")]
    finished: BTreeMap<(Arc<str>, ExecutionStatus), u64>,
    handoffs: BTreeMap<Arc<str>, u64>,
    #[serde(default, with = "saved::pairs")]
    step_failures: BTreeMap<(Arc<str>, StepKey), u64>,
}

impl Counters {
    /// Pre-creates every counter series of a workflow at 0.
    fn zero_fill(&mut self, wf_id: &Arc<str>) {
        for s in ExecutionStatus::TERMINAL {
            self.finished.entry((wf_id.clone(), s)).or_default();
        }
        self.started.entry(wf_id.clone()).or_default();
        self.handoffs.entry(wf_id.clone()).or_default();
    }
}

/// The status each id of one scope (a workflow or a conversation) shows at this poll: the
/// answer read last wins, since it is the most recent.
struct Observed<'a> {
    rows: HashMap<&'a str, &'a Execution>,
    order: Vec<&'a str>,
    duplicates: u64,
}

impl<'a> Observed<'a> {
    fn new() -> Self {
        Self {
            rows: HashMap::new(),
            order: Vec::new(),
            duplicates: 0,
        }
    }

    /// Rows of one listing; a duplicate within it keeps the row with the newer event.
    fn listing(&mut self, rows: &'a [Execution]) {
        let mut here: HashSet<&str> = HashSet::new();
        for row in rows {
            let id = row.id.as_str();
            if !here.insert(id) {
                self.duplicates += 1;
                let older = self
                    .rows
                    .get(id)
                    .is_some_and(|r| r.last_event_at > row.last_event_at);
                if older {
                    continue;
                }
            }
            if self.rows.insert(id, row).is_none() {
                self.order.push(id);
            }
        }
    }
}

/// How one observed row changes the counters and what is remembered of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Effect {
    started: bool,
    finished: Option<ExecutionStatus>,
    /// A failure whose step is counted (also when a webhook counted the failure itself).
    step_failure: bool,
    handoff: bool,
    unknown_status: bool,
    reappeared: bool,
}

/// The effect of seeing `status` for an id remembered as `prev`; `countable` when the id is
/// new and inside a counted window.
///
/// A handoff a webhook already counted (`handoff_mark` after the last event seen before) is
/// the entry this row shows, or one before it: not counted again. An execution whose failure
/// a webhook counted is not counted finished again.
fn effect(prev: Option<&Exec>, status: ExecutionStatus, countable: bool) -> Effect {
    let (tracked, last, handoff_counted, failed_counted) = match prev {
        None => (countable, None, false, false),
        Some(Exec::Live(e) | Exec::Pending(e)) => {
            let after_last_seen = match (e.handoff_mark, e.last_event_at) {
                (Some(m), Some(p)) => m > p,
                (Some(_), None) => true,
                (None, _) => false,
            };
            (true, Some(e.status), after_last_seen, e.failure_counted)
        }
        Some(Exec::Early(e)) => (
            countable || e.failed,
            None,
            e.handoff_mark.is_some(),
            e.failed,
        ),
        Some(Exec::Seen(_)) => {
            return Effect {
                reappeared: status.is_live(),
                ..Effect::default()
            };
        }
    };
    let is_new = matches!(prev, None | Some(Exec::Early(_)));
    Effect {
        started: is_new && countable,
        finished: (tracked && status.is_terminal() && !failed_counted).then_some(status),
        step_failure: tracked && status == ExecutionStatus::Failed,
        handoff: tracked
            && status == ExecutionStatus::Handoff
            && last != Some(status)
            && !handoff_counted,
        unknown_status: status == ExecutionStatus::Unknown && last != Some(status),
        reappeared: false,
    }
}

/// What becomes of the remembered ids no answer of this poll showed: a live one is pending, one
/// Kapso answered 404 for is dropped (counted in the returned number, never as a finish), and
/// a finished one without a start is kept only if `keep_seen_without_start`.
fn unseen_to_pending(
    execs: &mut HashMap<String, Exec>,
    observed: &Observed<'_>,
    gone: &[String],
    keep_seen_without_start: bool,
    now: Micros,
) -> u64 {
    let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
    let mut lost = 0;
    execs.retain(|id, exec| {
        if observed.rows.contains_key(id.as_str()) {
            return true;
        }
        match exec {
            Exec::Live(_) | Exec::Pending(_) if gone.contains(id.as_str()) => {
                lost += 1;
                false
            }
            Exec::Live(e) => {
                *exec = Exec::Pending(e.clone());
                true
            }
            Exec::Pending(_) => true,
            Exec::Seen(s) => keep_seen_without_start || s.is_some(),
            Exec::Early(e) => e.occurred_at.saturating_add(EARLY_TTL) > now,
        }
    });
    lost
}

/// The memory of one project's poller. It is saved and restored whole (`--storage.path`):
/// everything a later poll needs to count exactly is in it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tracker {
    /// Local time of the first committed poll; `None` until then (nothing is counted then).
    baseline: Option<Micros>,
    workflows: BTreeMap<Arc<str>, WorkflowTrack>,
    /// When a workflow missing from the listings was forgotten.
    forgotten: HashMap<Arc<str>, Micros>,
    conversations: BTreeMap<Arc<str>, ConversationTrack>,
    counters: Counters,
    #[serde(with = "saved::anomalies")]
    anomalies: BTreeMap<&'static str, u64>,
    #[serde(with = "saved::workflow_errors")]
    workflow_errors: BTreeMap<(Arc<str>, &'static str), u64>,
    #[serde(skip)]
    interned: HashSet<Arc<str>>,
    #[serde(skip)]
    interned_steps: HashSet<Arc<StepKey>>,
    /// Executions webhooks told of in workflows no listing showed yet (project mode); merged
    /// into the workflow at its first commit.
    early_workflows: HashMap<Arc<str>, HashMap<String, Exec>>,
    /// Finished executions, for late webhook events; `None` while webhooks are off.
    recent: Option<events::RecentFinishes>,
    /// Moves on whenever a counter does, so that of two copies the newer one wins.
    generation: u64,
    /// Per workflow, the steps seen and when last (a live execution at them, or a failure).
    #[serde(default, with = "saved::steps_seen")]
    steps_seen: BTreeMap<Arc<str>, BTreeMap<StepKey, Micros>>,
    /// `--metrics.max-steps-per-workflow`; 0 for the default.
    #[serde(skip)]
    max_steps: usize,
}

/// How long a step no execution sits at keeps its zero-valued series.
pub const STEP_MEMORY: Micros = 3_600_000_000;

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `--metrics.max-steps-per-workflow` (at least 1).
    pub fn set_max_steps(&mut self, n: usize) {
        self.max_steps = n;
    }

    fn step_cap(&self) -> usize {
        if self.max_steps == 0 {
            crate::config::DEFAULT_MAX_STEPS_PER_WORKFLOW
        } else {
            self.max_steps
        }
    }

    /// Whether the first poll has been committed.
    pub fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Forgets interned ids nothing holds any more (conversations and executions come and go;
    /// without this the set would grow for as long as the exporter runs).
    fn release_unused(&mut self) {
        self.interned_steps.retain(|s| Arc::strong_count(s) > 1);
        self.interned.retain(|s| Arc::strong_count(s) > 1);
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    fn anomaly(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.anomalies.entry(kind).or_default() += n;
        }
    }

    /// The workflows of one `GET /workflows` answer, each once (the first listing of an id
    /// wins; the repeats are counted as anomalies).
    pub fn dedupe_listing(&mut self, listing: Vec<Workflow>) -> Vec<Workflow> {
        let mut seen = HashSet::new();
        let before = listing.len();
        let unique: Vec<Workflow> = listing
            .into_iter()
            .filter(|w| seen.insert(w.id.clone()))
            .collect();
        self.anomaly("duplicate_workflow", (before - unique.len()) as u64);
        unique
    }

    /// What the planner needs of the project to plan `wf_id` at `now`.
    fn context(&self, wf_id: &str, now: OffsetDateTime) -> Context {
        Context {
            baseline: self.baseline,
            now: micros(now),
            forgotten_at: self.forgotten.get(wf_id).copied(),
        }
    }

    /// The remembered state of a workflow, for the planner.
    pub fn workflow(&self, wf_id: &str) -> Option<&WorkflowTrack> {
        self.workflows.get(wf_id)
    }

    /// The plan of `wf` given its live rows.
    pub fn plan(&self, wf: &Workflow, live: &[Execution], now: OffsetDateTime) -> Plan {
        plan::plan(self.workflow(&wf.id), self.context(&wf.id, now), wf, live)
    }

    /// Marks every workflow stale (its poll did not commit); whether any was up before.
    pub fn mark_workflows_stale(&mut self) -> bool {
        let mut changed = false;
        for track in self.workflows.values_mut() {
            changed |= std::mem::replace(&mut track.up, false);
        }
        changed
    }

    /// Commits one project-mode poll: `listed` is the (deduplicated) workflow list, `fetches`
    /// what was read of each workflow polled, or why it failed.
    pub fn commit_project(
        &mut self,
        listed: &[Workflow],
        fetches: Vec<(String, Result<WorkflowFetch, FetchError>)>,
        now: OffsetDateTime,
    ) {
        let now_us = micros(now);
        let listed_ids: HashSet<&str> = listed.iter().map(|w| w.id.as_str()).collect();
        if listed.is_empty() && !self.workflows.is_empty() {
            self.anomaly("empty_workflow_list", 1);
        }
        // Workflows missing from this listing keep their state for the grace period.
        let mut missing = 0;
        let mut forget = Vec::new();
        for (id, track) in &mut self.workflows {
            if listed_ids.contains(id.as_ref()) {
                track.absent = 0;
                continue;
            }
            missing += 1;
            track.absent += 1;
            track.up = false;
            if track.absent > WORKFLOW_GRACE_LISTINGS {
                forget.push(id.clone());
            }
        }
        self.anomaly("workflow_missing", missing);
        for id in forget {
            self.workflows.remove(&id);
            self.forgotten.insert(id, now_us);
        }
        // Listed workflows the poll did not get to (it stopped at an error of the whole key)
        // keep their state, marked stale.
        let fetched: HashSet<&str> = fetches.iter().map(|(id, _)| id.as_str()).collect();
        for (id, track) in &mut self.workflows {
            if listed_ids.contains(id.as_ref()) && !fetched.contains(id.as_ref()) {
                track.up = false;
            }
        }
        for (wf_id, fetch) in fetches {
            match fetch {
                Ok(f) => self.commit_workflow(f, now_us),
                Err((kind, _)) => {
                    let id = self.intern(&wf_id);
                    if let Some(track) = self.workflows.get_mut(&id) {
                        track.up = false;
                    }
                    *self.workflow_errors.entry((id, kind)).or_default() += 1;
                }
            }
        }
        self.note_live_steps(now_us);
        self.expire_events(now_us);
        self.release_unused();
        self.baseline.get_or_insert(now_us);
        self.generation += 1;
    }

    fn commit_workflow(&mut self, f: WorkflowFetch, now: Micros) {
        let wf_id = self.intern(&f.workflow.id);
        self.forgotten.remove(&wf_id);
        let mut track = self.workflows.remove(&wf_id).unwrap_or_default();
        if let Some(early) = self.early_workflows.remove(&wf_id) {
            for (id, exec) in early {
                track.execs.entry(id).or_insert(exec);
            }
        }
        let mut observed = Observed::new();
        observed.listing(&f.live);
        let live_duplicates = observed.duplicates;
        let window_ids: HashSet<&str> = f.window.iter().map(|r| r.id.as_str()).collect();
        observed.listing(&f.window);
        let window_duplicates = observed.duplicates - live_duplicates;
        observed.duplicates = 0;
        for row in &f.resolved {
            if observed.rows.insert(row.id.as_str(), row).is_none() {
                observed.order.push(row.id.as_str());
            }
        }
        self.anomaly("duplicate_execution", live_duplicates + window_duplicates);

        let window = f.plan.window.as_ref();
        let prev_from = track.window_from;
        let mut newest: Option<Micros> = None;
        let mut implausible = 0;
        for id in &observed.order {
            let row = observed.rows[id];
            let in_window = window_ids.contains(id);
            let mut start = plausible(row.started_at, now);
            // A window row that started before the window it was listed in has a start that
            // cannot be right.
            if let (true, Some(w), Some(s)) = (in_window, window, start) {
                if s < w.created_after.saturating_sub(PRECISION_SLACK) {
                    start = None;
                }
            }
            let prev = track.execs.get(*id);
            if prev.is_none() && start.is_none() {
                implausible += 1;
            }
            if in_window {
                newest = newest.max(start);
            }
            // Without a window listing, an unknown live row is counted only when the planner
            // found it is exactly what execution_count says started (it began in the window).
            let after_window = |s: Option<Micros>| {
                s.is_some_and(|s| {
                    prev_from.is_some_and(|from| s >= from.saturating_add(PRECISION_SLACK))
                })
            };
            let countable = match window.map(|w| w.count) {
                None => after_window(start),
                Some(CountRule::Nothing) => false,
                Some(CountRule::All) => in_window,
                Some(CountRule::StartedAfter(t)) => in_window && start.is_some_and(|s| s > t),
                // A live row the window listing skipped (a page boundary of coarse cursors)
                // started inside the window all the same.
                Some(CountRule::Unknown) => in_window || after_window(start),
            };
            let fx = effect(prev, row.status, countable);
            let step = self.step_of(row, prev);
            self.count(&wf_id, &fx, step.as_deref(), now);
            let next = self.remembered(&wf_id, prev, row, start, &fx, step, now);
            track.execs.insert((*id).to_owned(), next);
        }
        self.anomaly("implausible_timestamp", implausible);
        let lost = unseen_to_pending(&mut track.execs, &observed, &f.gone, true, now);
        self.anomaly("outcome_lost", lost);
        if let Some(w) = window {
            let from = newest
                .map_or(w.created_after, |n| n.saturating_sub(MARGIN))
                .max(w.created_after);
            track.window_from = Some(prev_from.map_or(from, |p| p.max(from)));
        }
        // Finished executions are remembered only while a window listing may return them.
        if let Some(from) = track.window_from {
            let floor = from.saturating_sub(PRECISION_SLACK);
            let window_ran = window.is_some();
            track.execs.retain(|id, exec| match exec {
                Exec::Seen(Some(s)) => *s >= floor,
                Exec::Seen(None) => !window_ran || window_ids.contains(id.as_str()),
                _ => true,
            });
        }
        track.signals = Signals::of(&f.workflow);
        track.meta = Some(WorkflowMeta {
            name: f
                .workflow
                .name
                .clone()
                .unwrap_or_else(|| f.workflow.id.clone()),
            status: f
                .workflow
                .status
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
        });
        track.up = true;
        track.last_success = Some(now);
        track.absent = 0;
        self.counters.zero_fill(&wf_id);
        self.workflows.insert(wf_id, track);
    }

    /// The step `row` shows, else the one its execution was last seen at.
    fn step_of(&mut self, row: &Execution, prev: Option<&Exec>) -> Option<Arc<StepKey>> {
        match &row.current_step {
            Some(s) => {
                let key = StepKey {
                    id: self.intern(&s.identifier),
                    step_type: self.intern(&s.step_type),
                };
                if let Some(shared) = self.interned_steps.get(&key) {
                    return Some(shared.clone());
                }
                let shared = Arc::new(key);
                self.interned_steps.insert(shared.clone());
                Some(shared)
            }
            None => match prev {
                Some(Exec::Live(e) | Exec::Pending(e)) => e.step.clone(),
                _ => None,
            },
        }
    }

    /// The counter a failure at `step` of `wf_id` goes to: its own while the workflow has
    /// fewer than the cap, else `other`. A step that has a counter keeps it (a counter
    /// never moves to another series).
    fn step_counter(&mut self, wf_id: &Arc<str>, step: StepKey) -> &mut u64 {
        let key = (wf_id.clone(), step);
        if !self.counters.step_failures.contains_key(&key) {
            let other = StepKey::other();
            let own = self
                .counters
                .step_failures
                .range((wf_id.clone(), StepKey::default())..)
                .take_while(|((w, _), _)| w == wf_id)
                .filter(|((_, s), _)| *s != other)
                .count();
            if own >= self.step_cap() {
                return self
                    .counters
                    .step_failures
                    .entry((wf_id.clone(), other))
                    .or_default();
            }
        }
        self.counters.step_failures.entry(key).or_default()
    }

    /// Remembers that `step` of `wf_id` was seen at `now`; returns its failure counter
    /// (created at 0).
    fn note_step(&mut self, wf_id: &Arc<str>, step: StepKey, now: Micros) -> &mut u64 {
        self.steps_seen
            .entry(wf_id.clone())
            .or_default()
            .insert(step.clone(), now);
        self.step_counter(wf_id, step)
    }

    /// Notes the step of every live execution; forgets steps not seen for [`STEP_MEMORY`]
    /// and those of forgotten workflows.
    fn note_live_steps(&mut self, now: Micros) {
        let mut at: Vec<(Arc<str>, StepKey)> = Vec::new();
        {
            let mut distinct: HashSet<(&Arc<str>, Option<&StepKey>)> = HashSet::new();
            for e in self.live_execs() {
                if distinct.insert((&e.workflow_id, e.step.as_deref())) {
                    let step = e.step.as_deref().cloned().unwrap_or_default();
                    at.push((e.workflow_id.clone(), step));
                }
            }
        }
        for (wf, step) in at {
            self.note_step(&wf, step, now);
        }
        let workflows = &self.workflows;
        self.steps_seen.retain(|wf, steps| {
            steps.retain(|_, t| t.saturating_add(STEP_MEMORY) > now);
            workflows.contains_key(wf) && !steps.is_empty()
        });
    }

    fn count(&mut self, wf_id: &Arc<str>, fx: &Effect, step: Option<&StepKey>, now: Micros) {
        self.generation += 1;
        if fx.step_failure {
            *self.note_step(wf_id, step.cloned().unwrap_or_default(), now) += 1;
        }
        if fx.started {
            *self.counters.started.entry(wf_id.clone()).or_default() += 1;
        }
        if let Some(s) = fx.finished {
            *self
                .counters
                .finished
                .entry((wf_id.clone(), s))
                .or_default() += 1;
        }
        if fx.handoff {
            *self.counters.handoffs.entry(wf_id.clone()).or_default() += 1;
        }
        if fx.unknown_status {
            self.anomaly("unknown_status", 1);
        }
        if fx.reappeared {
            self.anomaly("reappeared", 1);
        }
    }

    /// What to remember of an id after seeing `row`.
    #[allow(clippy::too_many_arguments)]
    fn remembered(
        &mut self,
        wf_id: &Arc<str>,
        prev: Option<&Exec>,
        row: &Execution,
        start: Option<Micros>,
        fx: &Effect,
        step: Option<Arc<StepKey>>,
        now: Micros,
    ) -> Exec {
        let handoff_mark = if fx.handoff {
            Some(row.last_event_at.or(row.started_at).map_or(now, micros))
        } else {
            match prev {
                Some(Exec::Live(e) | Exec::Pending(e)) => e.handoff_mark,
                Some(Exec::Early(e)) => e.handoff_mark,
                _ => None,
            }
        };
        if let Some(Exec::Seen(s)) = prev {
            // Finished is final: a row that says otherwise is counted as an anomaly only.
            return Exec::Seen(*s);
        }
        let failed_by_event = matches!(prev, Some(Exec::Early(e)) if e.failed);
        if row.status.is_terminal() || failed_by_event {
            if self.recent.is_some() {
                self.remember_finish(&row.id, handoff_mark, now);
            }
            return Exec::Seen(start);
        }
        let exec = LiveExec {
            workflow_id: wf_id.clone(),
            status: row.status,
            conversation_id: row
                .whatsapp_conversation_id
                .as_deref()
                .map(|c| self.intern(c)),
            started_at: start,
            last_event_at: row.last_event_at.or(row.started_at).map(micros),
            handoff_mark,
            step,
            failure_counted: matches!(prev, Some(Exec::Live(e) | Exec::Pending(e)) if e.failure_counted),
        };
        if row.status.is_live() {
            Exec::Live(exec)
        } else {
            Exec::Pending(exec)
        }
    }

    /// Pending executions of a conversation that its listing no longer shows: the poller
    /// reads them by id ([`PENDING_BY_ID_MAX`] a poll).
    pub fn conversation_followups(&self, conversation: &str, rows: &[Execution]) -> Vec<String> {
        let Some(track) = self.conversations.get(conversation) else {
            return Vec::new();
        };
        let listed: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let mut ids: Vec<String> = track
            .execs
            .iter()
            .filter(|(id, e)| matches!(e, Exec::Pending(_)) && !listed.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_unstable();
        ids.truncate(PENDING_BY_ID_MAX);
        ids
    }

    /// Commits one conversation-mode poll: what was read of each watched conversation, or why
    /// it failed. Conversations no longer watched are forgotten.
    pub fn commit_conversations(
        &mut self,
        watched: &[String],
        fetches: Vec<(String, Result<ConversationFetch, FetchError>)>,
        now: OffsetDateTime,
    ) {
        let now_us = micros(now);
        let watched: HashSet<&str> = watched.iter().map(String::as_str).collect();
        self.conversations
            .retain(|id, _| watched.contains(id.as_ref()));
        let fetched: HashSet<&str> = fetches.iter().map(|(c, _)| c.as_str()).collect();
        for (id, track) in &mut self.conversations {
            if !fetched.contains(id.as_ref()) {
                track.up = false;
            }
        }
        for (conversation, fetch) in fetches {
            match fetch {
                Ok(f) => self.commit_conversation(&conversation, f, now_us),
                Err(_) => {
                    if let Some(t) = self.conversations.get_mut(conversation.as_str()) {
                        t.up = false;
                    }
                }
            }
        }
        // Every workflow a row named is in `self.workflows`; zero-fill once, not per conversation.
        for wf_id in self.workflows.keys() {
            self.counters.zero_fill(wf_id);
        }
        self.note_live_steps(now_us);
        self.expire_events(now_us);
        self.release_unused();
        self.baseline.get_or_insert(now_us);
        self.generation += 1;
    }

    fn commit_conversation(&mut self, conversation: &str, f: ConversationFetch, now: Micros) {
        let conv_id = self.intern(conversation);
        let mut track = self.conversations.remove(&conv_id).unwrap_or_default();
        let mut observed = Observed::new();
        observed.listing(&f.rows);
        self.anomaly("duplicate_execution", observed.duplicates);
        for row in &f.resolved {
            if observed.rows.insert(row.id.as_str(), row).is_none() {
                observed.order.push(row.id.as_str());
            }
        }
        // The listing holds every execution of the conversation: an id not known whose start
        // is at or after `from` is new. The first commit at the exporter's start counts none;
        // a conversation first watched later counts what started after the first poll.
        let rule = match (track.window_from, self.baseline) {
            (Some(from), _) => Some(from.saturating_sub(PRECISION_SLACK)),
            (None, Some(baseline)) => Some(baseline.saturating_add(PRECISION_SLACK)),
            (None, None) => None,
        };
        let mut newest: Option<Micros> = None;
        let mut implausible = 0;
        for id in &observed.order {
            let row = observed.rows[id];
            let start = plausible(row.started_at, now);
            newest = newest.max(start);
            let prev = track.execs.get(*id);
            if prev.is_none() && start.is_none() {
                implausible += 1;
            }
            let countable = rule.is_some_and(|from| start.is_some_and(|s| s >= from));
            let wf = row.workflow.as_deref();
            let known_wf = match prev {
                Some(Exec::Live(e) | Exec::Pending(e)) => Some(e.workflow_id.clone()),
                _ => None,
            };
            let wf_id = match (wf.and_then(|w| w.id.as_deref()), known_wf) {
                (Some(id), _) => self.intern(id),
                (None, Some(id)) => id,
                (None, None) => self.intern(UNKNOWN_WORKFLOW),
            };
            let entry = self.workflows.entry(wf_id.clone()).or_default();
            if wf.is_some_and(|w| w.name.is_some()) || entry.meta.is_none() {
                entry.meta = Some(WorkflowMeta {
                    name: wf
                        .and_then(|w| w.name.clone())
                        .unwrap_or_else(|| wf_id.to_string()),
                    status: wf
                        .and_then(|w| w.status.clone())
                        .unwrap_or_else(|| "unknown".to_owned()),
                });
            }
            let fx = effect(prev, row.status, countable);
            let step = self.step_of(row, prev);
            self.count(&wf_id, &fx, step.as_deref(), now);
            let mut next = self.remembered(&wf_id, prev, row, start, &fx, step, now);
            if let Exec::Live(e) | Exec::Pending(e) = &mut next {
                e.conversation_id = Some(conv_id.clone());
            }
            track.execs.insert((*id).to_owned(), next);
        }
        self.anomaly("implausible_timestamp", implausible);
        // A finished id with a start stays until the window passes it (a page skipped by
        // coarse cursors may show it again); without one it is never counted anyway.
        let lost = unseen_to_pending(&mut track.execs, &observed, &f.gone, false, now);
        self.anomaly("outcome_lost", lost);
        let from = newest
            .map(|n| n.saturating_sub(MARGIN))
            .or(track.window_from)
            .unwrap_or_else(|| self.baseline.unwrap_or(now).min(now).saturating_sub(MARGIN));
        track.window_from = Some(track.window_from.map_or(from, |p| p.max(from)));
        if let Some(from) = track.window_from {
            let floor = from.saturating_sub(PRECISION_SLACK);
            track.execs.retain(|_, exec| match exec {
                Exec::Seen(Some(s)) => *s >= floor,
                _ => true,
            });
        }
        track.up = true;
        self.conversations.insert(conv_id, track);
    }

    /// Every live execution, in either mode.
    fn live_execs(&self) -> impl Iterator<Item = &LiveExec> {
        fn live(e: &Exec) -> Option<&LiveExec> {
            match e {
                Exec::Live(x) => Some(x),
                _ => None,
            }
        }
        self.workflows
            .values()
            .flat_map(|t| t.execs.values().filter_map(live))
            .chain(
                self.conversations
                    .values()
                    .flat_map(|t| t.execs.values().filter_map(live)),
            )
    }

    /// Watched conversations whose last listing failed.
    fn conversations_down(&self) -> usize {
        self.conversations.values().filter(|c| !c.up).count()
    }

    /// The counters as `/metrics` shows them. Counters of forgotten workflows are kept, but
    /// their series leave with the workflow; those of a workflow only webhooks told of show
    /// at once.
    pub fn counter_snapshot(&self) -> CounterSnapshot {
        let known = |id: &Arc<str>| {
            self.workflows.contains_key(id) || self.early_workflows.contains_key(id)
        };
        CounterSnapshot {
            generation: self.generation,
            started: self
                .counters
                .started
                .iter()
                .filter(|(id, _)| known(id))
                .map(|(id, n)| (id.clone(), *n))
                .collect(),
            finished: self
                .counters
                .finished
                .iter()
                .filter(|((id, _), _)| known(id))
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
            handoffs: self
                .counters
                .handoffs
                .iter()
                .filter(|(id, _)| known(id))
                .map(|(id, n)| (id.clone(), *n))
                .collect(),
            step_failures: self
                .counters
                .step_failures
                .iter()
                .filter(|((id, _), _)| known(id))
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
        }
    }

    /// Live executions by (workflow, step): every step seen within [`STEP_MEMORY`] (zero
    /// when none is there now); past the cap, the least populated steps fold into `other`.
    fn step_series(&self) -> Vec<crate::state::StepSeries> {
        use crate::state::StepSeries;
        let mut rows: BTreeMap<(&Arc<str>, StepKey), StepSeries> = BTreeMap::new();
        for (wf, steps) in &self.steps_seen {
            for step in steps.keys() {
                rows.entry((wf, step.clone()))
                    .or_insert_with(|| StepSeries::empty(wf.clone(), step.clone()));
            }
        }
        for e in self.live_execs() {
            let step = e.step.as_deref().cloned().unwrap_or_default();
            let row = rows
                .entry((&e.workflow_id, step.clone()))
                .or_insert_with(|| StepSeries::empty(e.workflow_id.clone(), step));
            row.add(e.status, 1, e.last_event_at);
        }
        let cap = self.step_cap();
        let mut out: Vec<StepSeries> = Vec::with_capacity(rows.len());
        let mut rows = rows.into_values().peekable();
        while let Some(first) = rows.next() {
            let mut group = vec![first];
            while let Some(next) = rows.next_if(|r| r.workflow_id == group[0].workflow_id) {
                group.push(next);
            }
            if group.len() > cap {
                // Most populated first; among equals, the first step by name keeps its own.
                group.sort_by(|a, b| b.total().cmp(&a.total()).then_with(|| a.step.cmp(&b.step)));
                let mut other = StepSeries::empty(group[0].workflow_id.clone(), StepKey::other());
                for r in group.drain(cap..) {
                    other.merge(&r);
                }
                group.push(other);
                group.sort_by(|a, b| a.step.cmp(&b.step));
                group.dedup_by(|b, a| {
                    let same = a.step == b.step;
                    if same {
                        a.merge(b);
                    }
                    same
                });
            }
            out.extend(group);
        }
        out
    }

    /// The metrics' view of what the tracker knows.
    pub fn snapshot(&self, max_conversations: usize) -> Snapshot {
        let mut snap = Snapshot::default();
        for (id, track) in &self.workflows {
            let meta = track.meta.clone().unwrap_or_else(|| WorkflowMeta {
                name: id.to_string(),
                status: "unknown".to_owned(),
            });
            snap.workflows.insert(id.clone(), meta);
            for s in ExecutionStatus::LIVE {
                snap.live.insert((id.clone(), s), LiveBucket::default());
            }
        }
        // One entry per live execution with a conversation, sorted by (conversation,
        // workflow, status), then folded into one series per key: a flat vector is a fraction
        // of a hash map's size at scale L (200,000 executions).
        /// (conversation, workflow, status, last event) of one execution.
        type ExecKey<'a> = (&'a Arc<str>, &'a Arc<str>, ExecutionStatus, Option<Micros>);
        let mut per_exec: Vec<ExecKey<'_>> = Vec::new();
        for e in self.live_execs() {
            let bucket = snap
                .live
                .entry((e.workflow_id.clone(), e.status))
                .or_default();
            bucket.count += 1;
            if let Some(t) = e.last_event_at {
                bucket.last_events.push(t);
            }
            if let Some(c) = &e.conversation_id {
                per_exec.push((c, &e.workflow_id, e.status, e.last_event_at));
            }
        }
        for bucket in snap.live.values_mut() {
            bucket.last_events.sort_unstable();
        }
        per_exec.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut series: Vec<ConversationSeries> = Vec::new();
        for (c, wf, status, last) in per_exec {
            match series.last_mut() {
                Some(s)
                    if s.conversation_id == *c && s.workflow_id == *wf && s.status == status =>
                {
                    s.count += 1;
                    s.oldest_last_event = match (s.oldest_last_event, last) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                _ => series.push(ConversationSeries {
                    conversation_id: c.clone(),
                    workflow_id: wf.clone(),
                    status,
                    count: 1,
                    oldest_last_event: last,
                }),
            }
        }
        // Rank conversations by their oldest waiting/handoff event (most stalled first), then
        // those with only running executions; keep the first `max_conversations`. A
        // conversation's series are adjacent.
        let mut ranked: Vec<(Arc<str>, (bool, Micros))> = Vec::new();
        for s in &series {
            let stallable = ExecutionStatus::STALLABLE.contains(&s.status);
            let key = (!stallable, s.oldest_last_event.unwrap_or(i64::MAX));
            match ranked.last_mut() {
                Some((c, r)) if *c == s.conversation_id => *r = (*r).min(key),
                _ => ranked.push((s.conversation_id.clone(), key)),
            }
        }
        snap.conversations_total = ranked.len();
        if ranked.len() > max_conversations {
            ranked.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
            let kept: HashSet<Arc<str>> = ranked
                .into_iter()
                .take(max_conversations)
                .map(|(c, _)| c)
                .collect();
            series.retain(|s| kept.contains(&s.conversation_id));
        }
        series.shrink_to_fit();
        snap.conversations = series;
        snap.steps = self.step_series();
        snap.counters = Arc::new(self.counter_snapshot());
        for (id, track) in &self.workflows {
            // Conversation mode keeps workflows for their names only: no health of their own.
            if track.last_success.is_some() {
                snap.workflow_health.insert(
                    id.clone(),
                    WorkflowHealth {
                        up: track.up,
                        last_success: track.last_success,
                    },
                );
            }
            snap.outcome_unknown
                .insert(id.clone(), track.pending_count());
        }
        for track in self.conversations.values() {
            for e in track.execs.values() {
                if let Exec::Pending(p) = e {
                    *snap
                        .outcome_unknown
                        .entry(p.workflow_id.clone())
                        .or_default() += 1;
                }
            }
        }
        snap.anomalies = ANOMALIES
            .iter()
            .map(|k| (*k, self.anomalies.get(k).copied().unwrap_or(0)))
            .collect();
        snap.workflow_errors = self.workflow_errors.clone();
        snap.conversations_down = self.conversations_down();
        snap
    }
}

mod events;
mod saved;
#[cfg(test)]
mod tests;

pub use events::{Applied, EARLY_TTL, Event, EventKind};
