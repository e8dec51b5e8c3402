//! The background loop of each project: schedule, budget, and running each poll as plan,
//! fetch, commit.
//!
//! One poll, project mode (the default):
//! 1. `GET /workflows` (1 request): the workflows, their `execution_count` and
//!    `last_executed_at`. If it fails, the poll fails and nothing changes.
//! 2. Per workflow, concurrently: each live status (`running`, `waiting`, `handoff`),
//!    `GET /workflows/{id}/executions?status=...&limit=100`, every page; then the
//!    [planner](plan) names the extra requests the workflow needs (a window listing of what
//!    started, the outcome of what left the live lists) and the poller runs them.
//! 3. The [tracker](tracker) commits each workflow that was read completely. A workflow whose
//!    requests failed for reasons of its own (404, 422, an undecodable page, paging) keeps its
//!    last good state and shows `kapso_workflow_up 0`; the rest of the project updates. An
//!    error that concerns the whole key or API (401/403, 429, 5xx, timeouts, transport) stops
//!    the poll: what was read so far commits, and the poll counts as failed. So does a poll in
//!    which every workflow failed on its own.
//!
//! Conversation mode lists `GET /whatsapp/conversations/{id}/flow_executions` (every page, all
//! statuses) per watched conversation, after discovering active conversations when asked, and
//! reads pending executions by id; each conversation commits on its own.
//!
//! Requests of one poll run concurrently; the client's limiter keeps them within the budget.

pub mod plan;
pub mod tracker;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, from_micros};
use crate::config::{Mode, ProjectConfig};
use crate::kapso::{ApiError, Client, Execution, ExecutionFilter, ExecutionStatus, Workflow};
use crate::state::{self, SharedProject, StorageStats};
use crate::storage::{Loaded, SavedRef, Store};
use crate::webhook::Dedupe;
use tracker::{ConversationFetch, FetchError, Tracker, WorkflowFetch};

/// A project's tracker, shared by its poller and its webhook receiver. Never held across an
/// await: the poller locks it to plan and to commit, the receiver to apply one event.
pub type SharedTracker = Arc<Mutex<Tracker>>;

/// The tracker, even if a holder panicked (the tracker's own steps do not leave it half-done
/// across a panic of theirs: a panic there ends the poller, which the supervisor reports).
pub fn lock(tracker: &SharedTracker) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests (or workflows) in flight at once within one poll.
pub const CONCURRENCY: usize = 8;

/// What one poll achieved.
#[derive(Debug, Default)]
struct Outcome {
    /// Whether anything was committed to the tracker.
    committed: bool,
    /// The error that failed the poll, if one did.
    error: Option<ApiError>,
    /// Workflows (or conversations) that failed on their own, as log-ready lines.
    scoped_errors: Vec<String>,
}

impl Outcome {
    fn failed(error: ApiError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

/// The poller of one project.
pub struct Poller {
    name: String,
    mode: Mode,
    interval: Duration,
    client: Client,
    clock: Clock,
    state: SharedProject,
    tracker: SharedTracker,
    max_conversations: usize,
    /// `--metrics.max-steps-per-workflow`; 0 for the default.
    max_steps: usize,
    /// Where the tracker is saved (`--storage.path`).
    storage: Option<Store>,
    /// The webhook dedupe window, saved with the tracker.
    deliveries: Option<Arc<Mutex<Dedupe>>>,
    /// Requests one poll may spend (see [`budget_per_poll`]).
    budget: u64,
    /// What the log has told so far, so that it tells each change once.
    told: Told,
}

/// What a poller's log lines have said: the first success, a run of failures, the last error,
/// and whether polls are over the budget.
#[derive(Debug, Default)]
struct Told {
    succeeded: bool,
    failures_in_a_row: u64,
    last_error: Option<String>,
    over_budget: bool,
    /// The errors of parts of the project (one workflow or conversation) at the last poll.
    scoped_errors: BTreeSet<String>,
}

/// The requests one poll may spend: the key's budget per minute over one poll interval.
pub fn budget_per_poll(rate_limit: u32, interval: Duration) -> u64 {
    let per_poll = u128::from(rate_limit) * interval.as_millis() / 60_000;
    u64::try_from(per_poll).unwrap_or(u64::MAX)
}

impl Poller {
    pub fn new(
        project: &ProjectConfig,
        client: Client,
        clock: Clock,
        state: SharedProject,
        max_conversations: usize,
    ) -> Self {
        Self {
            name: project.name.clone(),
            mode: project.mode.clone(),
            interval: project.poll_interval,
            client,
            clock,
            state,
            tracker: Arc::new(Mutex::new(Tracker::new())),
            max_conversations,
            max_steps: 0,
            storage: None,
            deliveries: None,
            budget: budget_per_poll(project.rate_limit, project.poll_interval),
            told: Told::default(),
        }
    }

    /// Caps the steps per workflow with series of their own (`--metrics.max-steps-per-workflow`).
    pub fn with_max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        lock(&self.tracker).set_max_steps(n);
        self
    }

    /// Saves the tracker in `store` after every successful poll and at shutdown, and restores
    /// what `store` holds now (see [`crate::storage`]): counters continue from their saved
    /// values and the saved state is served, with its age, until the first poll.
    pub fn restore_from(&mut self, store: Store, deliveries: Option<Arc<Mutex<Dedupe>>>) {
        store.clean_temporaries();
        let now = self.clock.now();
        let mut stats = StorageStats::default();
        match store.load(now) {
            Loaded::Restored(saved, saved_at) => {
                let mut saved = *saved;
                // Nothing is up to date until a poll says so.
                saved.tracker.mark_workflows_stale();
                saved.tracker.set_max_steps(self.max_steps);
                let snapshot = saved.tracker.snapshot(self.max_conversations);
                *lock(&self.tracker) = saved.tracker;
                if let (Some(d), Some(window)) = (&deliveries, saved.deliveries) {
                    *d.lock().unwrap_or_else(|e| e.into_inner()) = window;
                }
                let age = (now - saved_at).unsigned_abs();
                tracing::info!(project = %self.name, file = %store.path().display(), saved_at = %saved_at, age = %humantime::format_duration(Duration::from_secs(age.as_secs())), "restored the counting state: counters continue");
                stats.restored = true;
                let mut st = state::write(&self.state);
                st.replace_snapshot(snapshot);
                st.last_success = Some(saved_at);
            }
            Loaded::Nothing => {
                tracing::info!(project = %self.name, file = %store.path().display(), "no saved counting state yet: counters start at 0");
            }
            Loaded::Fresh(why) => {
                tracing::warn!(project = %self.name, file = %store.path().display(), reason = %why, "cannot use the saved counting state: counters start at 0");
            }
        }
        state::write(&self.state).storage = Some(stats);
        self.storage = Some(store);
        self.deliveries = deliveries;
    }

    /// Writes the tracker (and the dedupe window) to the store, if there is one. The state is
    /// encoded under the tracker's lock and written on a blocking thread; a failure is logged
    /// and counted, and polling goes on.
    pub async fn save(&self) {
        let Some(store) = self.storage.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let bytes = {
            let tracker = lock(&self.tracker);
            let deliveries = self
                .deliveries
                .as_ref()
                .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()));
            store.encode(
                &SavedRef {
                    tracker: &tracker,
                    deliveries: deliveries.as_deref(),
                },
                now,
            )
        };
        let size = bytes.len() as u64;
        let written = tokio::task::spawn_blocking(move || store.write(&bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let took = started.elapsed();
        let mut st = state::write(&self.state);
        let stats = st.storage.get_or_insert_with(StorageStats::default);
        match written {
            Ok(()) => {
                stats.writes_ok += 1;
                stats.last_write = Some(now);
                stats.last_bytes = size;
                stats.last_duration = Some(took);
            }
            Err(e) => {
                stats.writes_failed += 1;
                tracing::warn!(project = %self.name, error = %e, "cannot save the counting state; polling goes on");
            }
        }
    }

    /// The tracker, for the project's webhook receiver.
    pub fn tracker(&self) -> SharedTracker {
        self.tracker.clone()
    }

    /// Whether the project watches conversations rather than every workflow.
    pub fn conversation_mode(&self) -> bool {
        matches!(self.mode, Mode::Conversations { .. })
    }

    /// Polls every interval until `cancel` fires. The first poll starts at once.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                polled = self.poll_once() => {
                    if polled.is_ok() {
                        self.save().await;
                    }
                }
            }
        }
        // At shutdown, what the last polls and webhooks counted.
        self.save().await;
    }

    /// One complete poll: what was read commits, and the project's snapshot is replaced; on
    /// failure the last good state of what was not read stays and the failure is recorded.
    /// `Err` when the poll as a whole failed (a workflow failing on its own is not that).
    pub async fn poll_once(&mut self) -> Result<(), ApiError> {
        let started = tokio::time::Instant::now();
        let requests_before = self.client.stats().total();
        let outcome = match self.mode.clone() {
            Mode::Project => self.poll_project().await,
            Mode::Conversations { ids, discover } => self.poll_conversations(&ids, discover).await,
        };
        let took = started.elapsed();
        let requests = self.client.stats().total() - requests_before;
        self.tell_scoped(&outcome.scoped_errors);
        let snapshot = outcome
            .committed
            .then(|| lock(&self.tracker).snapshot(self.max_conversations));
        let mut st = state::write(&self.state);
        let result = match (outcome.error, snapshot) {
            (None, snapshot) => {
                let snapshot = snapshot.unwrap_or_else(|| (*st.snapshot).clone());
                st.record_success(snapshot, self.clock.now(), took, requests);
                if let Some(first) = outcome.scoped_errors.first() {
                    st.last_error = Some(format!(
                        "{} part(s) of the project kept their last good state; first: {first}",
                        outcome.scoped_errors.len()
                    ));
                }
                Ok(st.snapshot.clone())
            }
            (Some(e), snapshot) => {
                match snapshot {
                    Some(s) => st.record_partial(s, e.kind(), e.to_string(), took, requests),
                    None => st.record_failure(e.kind(), e.to_string(), took, requests),
                }
                Err((e, st.ready || st.last_success.is_some()))
            }
        };
        drop(st);
        match result {
            Ok(snapshot) => {
                self.tell_success(&snapshot, took, requests);
                // A failed poll's count is partial and includes its retries: not a measure.
                self.tell_budget(requests);
                Ok(())
            }
            Err((e, has_state)) => {
                self.tell_failure(&e, has_state);
                Err(e)
            }
        }
    }

    /// The first success and every recovery at info, one line each; the rest at debug.
    fn tell_success(&mut self, snapshot: &state::Snapshot, took: Duration, requests: u64) {
        let workflows = snapshot.workflows.len();
        let live: u64 = snapshot.live.values().map(|b| b.count).sum();
        let took = humantime::format_duration(Duration::from_millis(
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        ));
        let failed = self.told.failures_in_a_row;
        if !self.told.succeeded {
            tracing::info!(project = %self.name, workflows, live_executions = live, requests, took = %took, "first poll completed");
        } else if failed > 0 {
            tracing::info!(project = %self.name, workflows, live_executions = live, requests, took = %took, failed_polls = failed, "polling recovered");
        } else {
            tracing::debug!(project = %self.name, workflows, live_executions = live, requests, took = %took, "poll completed");
        }
        self.told.succeeded = true;
        self.told.failures_in_a_row = 0;
        self.told.last_error = None;
    }

    /// A failed poll, once per distinct error: the same error again is logged at debug.
    fn tell_failure(&mut self, e: &ApiError, has_state: bool) {
        self.told.failures_in_a_row += 1;
        let serving = if has_state {
            "serving the last good state"
        } else {
            "no state yet"
        };
        let message = e.to_string();
        if self.told.last_error.as_deref() == Some(message.as_str()) {
            tracing::debug!(project = %self.name, error = %message, failed_polls = self.told.failures_in_a_row, "poll failed again; {serving}");
            return;
        }
        if matches!(e, ApiError::Unauthorized { .. }) {
            tracing::error!(project = %self.name, error = %message, "Kapso rejected the API key; {serving}; polling stops until the next interval");
        } else {
            tracing::warn!(project = %self.name, error = %message, "poll failed; {serving}");
        }
        self.told.last_error = Some(message);
    }

    /// The errors of parts of the project, each once while it lasts (again at debug).
    fn tell_scoped(&mut self, lines: &[String]) {
        for line in lines {
            if self.told.scoped_errors.contains(line) {
                tracing::debug!(project = %self.name, error = %line, "still keeping the last good state of one part of the project");
            } else {
                tracing::warn!(project = %self.name, error = %line, "keeping the last good state of one part of the project");
            }
        }
        self.told.scoped_errors = lines.iter().cloned().collect();
    }

    /// Says once that completed polls need more requests than the budget allows per interval,
    /// and once that they are back within it.
    fn tell_budget(&mut self, requests: u64) {
        let over = requests > self.budget;
        if over && !self.told.over_budget {
            tracing::warn!(project = %self.name, requests, budget = self.budget, interval = %humantime::format_duration(self.interval), "a poll needed more requests than the budget allows per interval (rate limit over one interval); later polls wait for the rate limiter: raise --poll.interval or --kapso.rate-limit");
        } else if !over && self.told.over_budget {
            tracing::info!(project = %self.name, requests, budget = self.budget, "polls are back within the budget");
        }
        self.told.over_budget = over;
    }

    async fn poll_project(&mut self) -> Outcome {
        let now = self.clock.now();
        let listing = match self.client.list_workflows().await {
            Ok(l) => l,
            Err(e) => {
                // No workflow was read: none of them is up to date.
                let changed = lock(&self.tracker).mark_workflows_stale();
                return Outcome {
                    committed: changed,
                    ..Outcome::failed(e)
                };
            }
        };
        let workflows = lock(&self.tracker).dedupe_listing(listing);
        let tracker = &self.tracker;
        let client = &self.client;
        let mut outcome = Outcome::default();
        let parts = futures::stream::iter(workflows.clone())
            .map(|wf| fetch_workflow(client, tracker, wf, now))
            .buffer_unordered(CONCURRENCY);
        let fetches = gather(parts, "workflow", &mut outcome).await;
        lock(&self.tracker).commit_project(&workflows, fetches, now);
        outcome.committed = true;
        outcome
    }

    async fn poll_conversations(&mut self, ids: &[String], discover: Option<Duration>) -> Outcome {
        let now = self.clock.now();
        let mut watched: Vec<String> = ids.to_vec();
        if let Some(within) = discover {
            // A huge --kapso.discover-conversations means "all": no arithmetic may panic.
            let since = time::Duration::try_from(within)
                .ok()
                .and_then(|d| now.checked_sub(d))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let conversations = match self.client.list_conversations(since).await {
                Ok(c) => c,
                Err(e) => return Outcome::failed(e),
            };
            let mut seen: std::collections::HashSet<String> = watched.iter().cloned().collect();
            for c in conversations {
                if seen.insert(c.id.clone()) {
                    watched.push(c.id);
                }
            }
        }
        let tracker = &self.tracker;
        let client = &self.client;
        let mut outcome = Outcome::default();
        let parts = futures::stream::iter(watched.clone())
            .map(|id| fetch_conversation(client, tracker, id))
            .buffer_unordered(CONCURRENCY);
        let fetches = gather(parts, "conversation", &mut outcome).await;
        lock(&self.tracker).commit_conversations(&watched, fetches, now);
        outcome.committed = true;
        outcome
    }
}

/// Collects what one poll read of its parts (workflows, or conversations: `what`). A part that
/// fails on its own is recorded and the others go on; an error of the whole key or API stops
/// the poll, and dropping the stream cancels what is still in flight. When every part failed,
/// the poll as a whole failed.
async fn gather<T>(
    parts: impl futures::Stream<Item = (String, Result<T, ApiError>)>,
    what: &str,
    outcome: &mut Outcome,
) -> Vec<(String, Result<T, FetchError>)> {
    let mut parts = std::pin::pin!(parts);
    let mut fetches = Vec::new();
    let mut first_scoped = None;
    while let Some((id, fetched)) = parts.next().await {
        match fetched {
            Ok(f) => fetches.push((id, Ok(f))),
            Err(e) if e.is_key_wide() => {
                outcome.error = Some(e);
                return fetches;
            }
            Err(e) => {
                outcome.scoped_errors.push(format!("{what} {id}: {e}"));
                fetches.push((id, Err((e.kind(), e.to_string()))));
                first_scoped.get_or_insert(e);
            }
        }
    }
    if fetches.iter().all(|(_, f)| f.is_err()) {
        outcome.error = first_scoped;
    }
    fetches
}

/// Reads what one workflow needs for the tracker to commit it: the live lists, then the extra
/// requests of its plan. Returns the workflow's id with the result.
async fn fetch_workflow(
    client: &Client,
    tracker: &SharedTracker,
    workflow: Workflow,
    now: time::OffsetDateTime,
) -> (String, Result<WorkflowFetch, ApiError>) {
    let id = workflow.id.clone();
    (id, read_workflow(client, tracker, workflow, now).await)
}

async fn read_workflow(
    client: &Client,
    tracker: &SharedTracker,
    workflow: Workflow,
    now: time::OffsetDateTime,
) -> Result<WorkflowFetch, ApiError> {
    let max_pages = {
        let t = lock(tracker);
        plan::live_max_pages(t.workflow(&workflow.id), &workflow)
    };
    let live_lists = futures::future::try_join_all(ExecutionStatus::LIVE.map(|status| {
        client.list_workflow_executions(
            &workflow.id,
            ExecutionFilter {
                status: Some(status),
                created_after: None,
            },
            max_pages,
        )
    }))
    .await?;
    // The poll holds every live row until it commits (200,000 at scale L): keep only what the
    // tracker reads. The embedded workflow summary is the workflow listed here.
    let live = strip(live_lists.into_iter().flatten().collect());
    let plan = lock(tracker).plan(&workflow, &live, now);
    let window = match &plan.window {
        Some(w) => {
            let filter = ExecutionFilter {
                status: None,
                created_after: Some(from_micros(w.created_after)),
            };
            strip(
                client
                    .list_workflow_executions(&workflow.id, filter, w.max_pages)
                    .await?,
            )
        }
        None => Vec::new(),
    };
    let mut resolved = Vec::new();
    if let Some(lists) = &plan.status_lists {
        let mut wanted = lists.wanted.clone();
        for status in [ExecutionStatus::Failed, ExecutionStatus::Ended] {
            if wanted.is_empty() {
                break;
            }
            let filter = ExecutionFilter {
                status: Some(status),
                created_after: Some(from_micros(lists.created_after)),
            };
            let found =
                list_wanted(client, &workflow.id, filter, lists.max_pages, &mut wanted).await?;
            resolved.extend(found);
        }
    }
    let (by_id, gone) = read_by_id(client, &plan.by_id).await?;
    resolved.extend(by_id);
    Ok(WorkflowFetch {
        workflow,
        live,
        plan,
        window,
        resolved,
        gone,
    })
}

/// The rows of `wanted` ids in a listing, removed from `wanted` as they are found; paging
/// stops once every one is.
async fn list_wanted(
    client: &Client,
    workflow_id: &str,
    filter: ExecutionFilter,
    max_pages: usize,
    wanted: &mut BTreeSet<String>,
) -> Result<Vec<Execution>, ApiError> {
    let mut found = Vec::new();
    let mut pages = client.execution_pages(workflow_id, filter, max_pages)?;
    while let Some(page) = pages.next_page().await? {
        for mut row in page {
            if wanted.remove(&row.id) {
                row.workflow = None;
                found.push(row);
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
    Ok(found)
}

/// `GET /workflow_executions/{id}` for each id: the rows, and the ids that answered 404.
async fn read_by_id(
    client: &Client,
    ids: &[String],
) -> Result<(Vec<Execution>, Vec<String>), ApiError> {
    let mut rows = Vec::new();
    let mut gone = Vec::new();
    for id in ids {
        match client.get_execution(id).await {
            Ok(mut row) => {
                // The answer is about the id asked for, whatever spelling it uses.
                row.id.clone_from(id);
                rows.push(row);
            }
            Err(ApiError::Client { status: 404, .. }) => gone.push(id.clone()),
            Err(e) => return Err(e),
        }
    }
    Ok((rows, gone))
}

/// Rows without their embedded workflow summary (the workflow is known).
fn strip(rows: Vec<Execution>) -> Vec<Execution> {
    rows.into_iter()
        .map(|mut row| {
            row.workflow = None;
            row
        })
        .collect()
}

/// One watched conversation: its listing, then its pending executions by id. Returns the
/// conversation's id with the result.
async fn fetch_conversation(
    client: &Client,
    tracker: &SharedTracker,
    conversation: String,
) -> (String, Result<ConversationFetch, ApiError>) {
    let result = read_conversation(client, tracker, &conversation).await;
    (conversation, result)
}

async fn read_conversation(
    client: &Client,
    tracker: &SharedTracker,
    conversation: &str,
) -> Result<ConversationFetch, ApiError> {
    let rows = client
        .list_conversation_executions(conversation, plan::pages_for(plan::UNKNOWN_GROWTH))
        .await?;
    let followups = lock(tracker).conversation_followups(conversation, &rows);
    let (resolved, gone) = read_by_id(client, &followups).await?;
    Ok(ConversationFetch {
        rows,
        resolved,
        gone,
    })
}

/// What `p`'s poller reads, as the start line and the landing page name it.
pub fn mode_label(p: &ProjectConfig, demo: bool) -> &'static str {
    match (&p.mode, demo) {
        (_, true) => "demo",
        (Mode::Project, false) => "project",
        (Mode::Conversations { .. }, false) => "conversations",
    }
}

/// Shares one poller handle name for logs.
pub fn describe(p: &ProjectConfig) -> String {
    match &p.mode {
        Mode::Project => format!("project {} (every workflow)", p.name),
        Mode::Conversations { ids, discover } => format!(
            "project {} ({} conversation{}{})",
            p.name,
            ids.len(),
            if ids.len() == 1 { "" } else { "s" },
            discover.map_or(String::new(), |d| format!(
                " + active within {}",
                humantime::format_duration(d)
            ))
        ),
    }
}
