//! The background loop of each project: schedule, budget, and turning API rows into a
//! snapshot.
//!
//! One poll, project mode (the default):
//! 1. `GET /workflows` (1 request): the workflows, their `execution_count` and
//!    `last_executed_at`;
//! 2. per workflow and live status (`running`, `waiting`, `handoff`), `GET
//!    /workflows/{id}/executions?status=...&limit=100`, every page;
//! 3. per workflow that lost live executions or whose `execution_count` grew by more than the
//!    new executions seen live (some started and finished between two polls): their outcome,
//!    by one `GET /workflow_executions/{id}` when one execution left, and one
//!    `status=failed&created_after=<oldest start, or the watermark>` listing for the rest (the
//!    ones not failed ended). Without a usable `execution_count`, a `created_after=<watermark>`
//!    listing shows what started.
//!
//! Conversation mode lists `GET /whatsapp/conversations/{id}/flow_executions` (every page, all
//! statuses) per watched conversation, after discovering active conversations when asked.
//!
//! Requests of one poll run concurrently; the client's limiter keeps them within the budget.

pub mod tracker;

use std::collections::HashMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Mode, ProjectConfig};
use crate::kapso::{ApiError, Client, Execution, ExecutionFilter, ExecutionStatus, Workflow};
use crate::state::{self, SharedProject};
use tracker::{RecentQuery, Tracker, WorkflowObservation};

/// Requests (or workflows) in flight at once within one poll.
pub const CONCURRENCY: usize = 8;
/// The pages one execution list may take: 100,000 rows, far more than one workflow holds in
/// one status.
const LIST_PAGES: usize = 1_000;

/// The poller of one project.
pub struct Poller {
    name: String,
    mode: Mode,
    interval: Duration,
    client: Client,
    clock: Clock,
    state: SharedProject,
    tracker: Tracker,
    max_conversations: usize,
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
            tracker: Tracker::new(),
            max_conversations,
        }
    }

    /// Polls every interval until `cancel` fires. The first poll starts at once.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.poll_once() => {}
            }
        }
    }

    /// One complete poll: on success the project's snapshot is replaced, on failure the last
    /// good one stays and the failure is recorded.
    pub async fn poll_once(&mut self) -> Result<(), ApiError> {
        let started = tokio::time::Instant::now();
        let requests_before = self.client.stats().total();
        let result = match self.mode.clone() {
            Mode::Project => self.poll_project().await,
            Mode::Conversations { ids, discover } => self.poll_conversations(&ids, discover).await,
        };
        let took = started.elapsed();
        let requests = self.client.stats().total() - requests_before;
        let mut st = state::write(&self.state);
        match &result {
            Ok(()) => {
                let snapshot = self.tracker.snapshot(self.max_conversations);
                st.record_success(snapshot, self.clock.now(), took, requests);
                tracing::debug!(project = %self.name, took = ?took, requests, "poll completed");
            }
            Err(e) => {
                st.record_failure(e.kind(), e.to_string(), took, requests);
                if matches!(e, ApiError::Unauthorized { .. }) {
                    tracing::error!(project = %self.name, error = %e, "Kapso rejected the API key; polling stops until the next interval");
                } else {
                    tracing::warn!(project = %self.name, error = %e, "poll failed; serving the last good state");
                }
            }
        }
        result
    }

    async fn poll_project(&mut self) -> Result<(), ApiError> {
        let now = self.clock.now();
        let workflows = self.client.list_workflows().await?;
        let tracker = &self.tracker;
        let client = &self.client;
        let observations: Vec<WorkflowObservation> = futures::stream::iter(workflows)
            .map(|wf| observe_workflow(client, tracker, wf))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        self.tracker.commit_project(observations, now);
        Ok(())
    }

    async fn poll_conversations(
        &mut self,
        ids: &[String],
        discover: Option<Duration>,
    ) -> Result<(), ApiError> {
        let now = self.clock.now();
        let mut watched: Vec<String> = ids.to_vec();
        if let Some(within) = discover {
            let since = now - within;
            let mut seen: std::collections::HashSet<String> = watched.iter().cloned().collect();
            for c in self.client.list_conversations(since).await? {
                if seen.insert(c.id.clone()) {
                    watched.push(c.id);
                }
            }
        }
        let client = &self.client;
        let observations: Vec<(String, Vec<Execution>)> = futures::stream::iter(watched)
            .map(|id| async move {
                let rows = client.list_conversation_executions(&id, LIST_PAGES).await?;
                Ok::<_, ApiError>((id, rows))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        self.tracker.commit_conversations(observations, now);
        Ok(())
    }
}

/// Reads what one workflow needs for the tracker to commit it.
async fn observe_workflow(
    client: &Client,
    tracker: &Tracker,
    workflow: Workflow,
) -> Result<WorkflowObservation, ApiError> {
    let live_lists = futures::future::try_join_all(ExecutionStatus::LIVE.map(|status| {
        client.list_workflow_executions(
            &workflow.id,
            ExecutionFilter {
                status: Some(status),
                created_after: None,
            },
            LIST_PAGES,
        )
    }))
    .await?;
    // The poll holds every live row until it commits (200,000 at scale L): keep only what the
    // tracker reads. The embedded workflow summary is the workflow listed here.
    let live: Vec<Execution> = live_lists
        .into_iter()
        .flatten()
        .map(|mut row| {
            row.workflow = None;
            row
        })
        .collect();
    let query = tracker.recent_query(&workflow, &live);
    if let RecentQuery::Failed { after, unseen } = query {
        if let Some(obs) = observe_unseen(client, tracker, &workflow, &live, after, unseen).await? {
            return Ok(obs);
        }
    }
    let recent = match query {
        RecentQuery::Skip => Vec::new(),
        RecentQuery::All => {
            client
                .list_workflow_executions(&workflow.id, ExecutionFilter::default(), LIST_PAGES)
                .await?
        }
        RecentQuery::From(after) | RecentQuery::Failed { after, .. } => {
            let filter = ExecutionFilter {
                status: None,
                created_after: Some(after),
            };
            client
                .list_workflow_executions(&workflow.id, filter, LIST_PAGES)
                .await?
        }
    };
    let vanished = tracker.vanished(&workflow.id, &live, &recent);
    let mut outcomes = HashMap::new();
    if let [(id, _)] = vanished.as_slice() {
        if let Some(status) = outcome_of(client, id).await? {
            outcomes.insert(id.clone(), status);
        }
    } else if !vanished.is_empty() {
        let oldest: Option<OffsetDateTime> = vanished.iter().filter_map(|(_, s)| *s).min();
        let wanted: std::collections::HashSet<&str> =
            vanished.iter().map(|(id, _)| id.as_str()).collect();
        for row in list_failed(client, &workflow.id, oldest).await? {
            if wanted.contains(row.id.as_str()) {
                outcomes.insert(row.id, ExecutionStatus::Failed);
            }
        }
    }
    Ok(WorkflowObservation {
        workflow,
        live,
        recent,
        outcomes,
        unseen_ended: 0,
    })
}

/// Executions started and finished since the last poll, known by `execution_count` only: one
/// `status=failed` listing from the older of the watermark and the oldest vanished execution
/// shows which failed, both new and vanished; the others ended. A single vanished execution
/// is still read by id. `None` when the listing contradicts the count (the caller then lists
/// everything that started, as without the count).
async fn observe_unseen(
    client: &Client,
    tracker: &Tracker,
    workflow: &Workflow,
    live: &[Execution],
    after: OffsetDateTime,
    unseen: u64,
) -> Result<Option<WorkflowObservation>, ApiError> {
    let vanished = tracker.vanished(&workflow.id, live, &[]);
    let mut outcomes = HashMap::new();
    let mut from = after;
    if let [(id, _)] = vanished.as_slice() {
        if let Some(status) = outcome_of(client, id).await? {
            outcomes.insert(id.clone(), status);
        }
    } else if let Some(oldest) = vanished.iter().filter_map(|(_, s)| *s).min() {
        from = from.min(oldest);
    } else if !vanished.is_empty() {
        // A vanished execution without a start time: only a full listing is sure to show it.
        return Ok(None);
    }
    let failed = list_failed(client, &workflow.id, Some(from)).await?;
    let new_failed = tracker.unseen_failed(workflow, after, &failed);
    let Some(unseen_ended) = unseen.checked_sub(new_failed) else {
        return Ok(None);
    };
    Ok(Some(WorkflowObservation {
        workflow: workflow.clone(),
        live: live.to_vec(),
        recent: failed,
        outcomes,
        unseen_ended,
    }))
}

/// The status of one execution by id; `None` when it is gone (deleted: counted as ended).
async fn outcome_of(client: &Client, id: &str) -> Result<Option<ExecutionStatus>, ApiError> {
    match client.get_execution(id).await {
        Ok(row) => Ok(Some(row.status)),
        Err(ApiError::Client { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `status=failed&created_after=...`, every page.
async fn list_failed(
    client: &Client,
    workflow_id: &str,
    after: Option<OffsetDateTime>,
) -> Result<Vec<Execution>, ApiError> {
    let filter = ExecutionFilter {
        status: Some(ExecutionStatus::Failed),
        created_after: after,
    };
    client
        .list_workflow_executions(workflow_id, filter, LIST_PAGES)
        .await
}

/// Shares one poller handle name for logs.
pub fn describe(p: &ProjectConfig) -> String {
    match &p.mode {
        Mode::Project => format!("project {} (every workflow)", p.name),
        Mode::Conversations { ids, discover } => format!(
            "project {} ({} conversations{})",
            p.name,
            ids.len(),
            discover.map_or(String::new(), |d| format!(
                " + active within {}",
                humantime::format_duration(d)
            ))
        ),
    }
}
