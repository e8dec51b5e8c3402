//! What the poller remembers between polls, and how observations become counts.
//!
//! Pure logic, no I/O: the poller gathers an observation with the Kapso client, asks the
//! tracker which extra queries it needs, then commits the whole observation at once. A poll
//! that fails commits nothing, so the next successful poll accounts for both intervals.
//!
//! Terminal outcomes are counted exactly, without re-reading history:
//! - an execution that was live at the previous poll and is no longer in a live list finished;
//!   its outcome comes from `GET /workflow_executions/{id}` (one vanished execution) or one
//!   `status=failed&created_after=<its start>` listing (several);
//! - executions that started since the previous poll are counted from the growth of the
//!   workflow's `execution_count`: the new ones seen in the live lists, plus those that already
//!   finished, whose outcome comes from the same `status=failed` listing (not failed: ended).
//!   Only without a comparable `execution_count` are they listed by `created_after=<watermark>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::kapso::{Execution, ExecutionStatus, Workflow};
use crate::state::{ConversationSeries, LiveBucket, Snapshot, WorkflowMeta};

/// Unix microseconds.
pub type Micros = i64;

pub fn micros(t: OffsetDateTime) -> Micros {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

pub fn from_micros(m: Micros) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The workflow id used for rows that carry none.
pub const UNKNOWN_WORKFLOW: &str = "unknown";

/// A live execution as remembered between polls.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveExec {
    pub workflow_id: Arc<str>,
    pub status: ExecutionStatus,
    pub conversation_id: Option<Arc<str>>,
    pub started_at: Option<Micros>,
    pub last_event_at: Option<Micros>,
}

/// How a workflow's "started since the last poll" listing is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecentQuery {
    /// The live lists already show every execution that started.
    Skip,
    /// List executions with `created_after` this instant (inclusive; older rows are ignored).
    From(OffsetDateTime),
    /// List every execution of the workflow.
    All,
    /// `unseen` executions started since `after` (exclusive) and already left the live
    /// statuses before this poll saw them. Only their outcome is missing: the failed ones are
    /// in a `status=failed&created_after=` listing (which can also classify the executions
    /// that vanished from the live lists); the rest ended.
    Failed { after: OffsetDateTime, unseen: u64 },
}

/// What one poll saw of one workflow (project mode).
#[derive(Clone, Debug)]
pub struct WorkflowObservation {
    pub workflow: Workflow,
    /// Rows of the live-status lists.
    pub live: Vec<Execution>,
    /// Rows of the `created_after` listing, when it ran.
    pub recent: Vec<Execution>,
    /// Outcome of executions that left the live lists, by id; missing ids ended.
    pub outcomes: HashMap<String, ExecutionStatus>,
    /// Executions that started and ended since the last poll, known only by
    /// `execution_count` (see [`RecentQuery::Failed`]).
    pub unseen_ended: u64,
}

#[derive(Clone, Debug, Default)]
struct WorkflowTrack {
    meta: Option<WorkflowMeta>,
    execution_count: Option<u64>,
    /// Started-at boundary: executions that started after it are new at the next poll.
    watermark: Option<Micros>,
    /// Whether `watermark` is the workflow list's `last_executed_at` (so `execution_count`
    /// counts exactly the executions up to it).
    watermark_from_list: bool,
    /// Executions already counted that started after `watermark`.
    ahead: HashSet<String>,
    /// Live executions by id (project mode).
    live: HashMap<String, LiveExec>,
}

#[derive(Clone, Debug, Default)]
struct ConversationTrack {
    watermark: Option<Micros>,
    live: HashMap<String, LiveExec>,
}

#[derive(Clone, Debug, Default)]
struct Counters {
    started: BTreeMap<Arc<str>, u64>,
    finished: BTreeMap<(Arc<str>, ExecutionStatus), u64>,
    handoffs: BTreeMap<Arc<str>, u64>,
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

    /// Counts what one row shows: `is_new` if it started since the last poll, `prev` its live
    /// status at the last poll (if it was live then).
    fn count(
        &mut self,
        wf_id: &Arc<str>,
        is_new: bool,
        prev: Option<ExecutionStatus>,
        now: ExecutionStatus,
    ) {
        if is_new {
            *self.started.entry(wf_id.clone()).or_default() += 1;
        }
        if !is_new && prev.is_none() {
            return;
        }
        if now.is_terminal() {
            *self.finished.entry((wf_id.clone(), now)).or_default() += 1;
        }
        if now == ExecutionStatus::Handoff && prev != Some(ExecutionStatus::Handoff) {
            *self.handoffs.entry(wf_id.clone()).or_default() += 1;
        }
    }
}

/// The memory of one project's poller.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    /// Local time of the first completed poll; `None` until then (nothing is counted then).
    baseline: Option<Micros>,
    workflows: BTreeMap<Arc<str>, WorkflowTrack>,
    conversations: BTreeMap<Arc<str>, ConversationTrack>,
    counters: Counters,
    interned: HashSet<Arc<str>>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the first poll has been committed.
    pub fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Forgets interned ids nothing holds any more (conversations and executions come and go;
    /// without this the set would grow for as long as the exporter runs).
    fn release_unused(&mut self) {
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

    /// The workflows the poller lists executions for.
    pub fn known_workflow_ids(&self) -> Vec<Arc<str>> {
        self.workflows.keys().cloned().collect()
    }

    /// Whether the workflow's executions are counted at this poll, and from which watermark.
    fn counting_from(&self, wf: &Workflow) -> Option<Option<Micros>> {
        let baseline = self.baseline?;
        match self.workflows.get(wf.id.as_str()) {
            Some(track) => Some(track.watermark),
            // A workflow created after the first poll: all of its executions are new.
            None => match wf.created_at.map(micros) {
                Some(created) if created > baseline => Some(Some(created - 1)),
                _ => None,
            },
        }
    }

    /// Which "started since the last poll" listing the workflow needs, given its live rows.
    pub fn recent_query(&self, wf: &Workflow, live: &[Execution]) -> RecentQuery {
        let Some(watermark) = self.counting_from(wf) else {
            return RecentQuery::Skip;
        };
        if let Some(seen) = self.seen_new(wf, watermark, live) {
            let grown = match (self.workflows.get(wf.id.as_str()), wf.execution_count) {
                (Some(track), Some(count)) => {
                    track.execution_count.and_then(|p| count.checked_sub(p))
                }
                (None, Some(count)) => Some(count),
                _ => None,
            };
            match (grown, watermark) {
                (Some(g), _) if g == seen.len() as u64 => return RecentQuery::Skip,
                (Some(g), Some(w)) if g > seen.len() as u64 => {
                    return RecentQuery::Failed {
                        after: from_micros(w),
                        unseen: g - seen.len() as u64,
                    };
                }
                _ => {}
            }
        }
        let Some(watermark) = watermark else {
            return RecentQuery::All;
        };
        RecentQuery::From(from_micros(watermark))
    }

    /// When `execution_count` can be compared with the previous poll's: the executions it
    /// counts since then that are already known (counted ahead, or in the live rows).
    fn seen_new<'a>(
        &'a self,
        wf: &Workflow,
        watermark: Option<Micros>,
        live: &'a [Execution],
    ) -> Option<HashSet<&'a str>> {
        let track = self.workflows.get(wf.id.as_str());
        // The counts are comparable when the watermark is the list's last_executed_at, or
        // when the workflow had no execution at all.
        let comparable = watermark.is_none() || track.is_none_or(|t| t.watermark_from_list);
        if !comparable || wf.execution_count.is_none() {
            return None;
        }
        let now = wf.last_executed_at.map(micros);
        let mut seen: HashSet<&str> = track
            .map(|t| t.ahead.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for row in live {
            if self.in_count_window(row, watermark, now) {
                seen.insert(row.id.as_str());
            }
        }
        Some(seen)
    }

    /// Whether a row started after the watermark and by the workflow list's last_executed_at.
    fn in_count_window(
        &self,
        row: &Execution,
        watermark: Option<Micros>,
        now: Option<Micros>,
    ) -> bool {
        row.started_at
            .map(micros)
            .is_some_and(|s| watermark.is_none_or(|w| s > w) && now.is_none_or(|n| s <= n))
    }

    /// Of the rows of a `status=failed` listing, how many are among the `unseen` executions of
    /// [`RecentQuery::Failed`]: started in the count window and not known yet.
    pub fn unseen_failed(&self, wf: &Workflow, after: OffsetDateTime, failed: &[Execution]) -> u64 {
        let track = self.workflows.get(wf.id.as_str());
        let now = wf.last_executed_at.map(micros);
        failed
            .iter()
            .filter(|r| r.status == ExecutionStatus::Failed)
            .filter(|r| self.in_count_window(r, Some(micros(after)), now))
            .filter(|r| {
                track.is_none_or(|t| !t.ahead.contains(&r.id) && !t.live.contains_key(&r.id))
            })
            .map(|r| r.id.as_str())
            .collect::<HashSet<_>>()
            .len() as u64
    }

    /// Executions that were live at the last poll and appear in neither listing now: they
    /// finished (or moved to a status the exporter does not know).
    pub fn vanished(
        &self,
        wf_id: &str,
        live: &[Execution],
        recent: &[Execution],
    ) -> Vec<(String, Option<OffsetDateTime>)> {
        let Some(track) = self.workflows.get(wf_id) else {
            return Vec::new();
        };
        let seen: HashSet<&str> = live.iter().chain(recent).map(|r| r.id.as_str()).collect();
        let mut gone: Vec<_> = track
            .live
            .iter()
            .filter(|(id, _)| !seen.contains(id.as_str()))
            .map(|(id, e)| (id.clone(), e.started_at.map(from_micros)))
            .collect();
        gone.sort();
        gone
    }

    /// Commits a complete project-mode poll: every workflow of the project, observed.
    pub fn commit_project(&mut self, observations: Vec<WorkflowObservation>, now: OffsetDateTime) {
        let counting_baseline = self.baseline.is_some();
        let listed: HashSet<String> = observations.iter().map(|o| o.workflow.id.clone()).collect();
        // Deleted workflows leave with their series.
        let gone: Vec<Arc<str>> = self
            .workflows
            .keys()
            .filter(|id| !listed.contains(id.as_ref()))
            .cloned()
            .collect();
        for id in gone {
            self.workflows.remove(&id);
            self.counters.started.remove(&id);
            self.counters.handoffs.remove(&id);
            for s in ExecutionStatus::TERMINAL {
                self.counters.finished.remove(&(id.clone(), s));
            }
        }
        for obs in observations {
            let counting = if counting_baseline {
                self.counting_from(&obs.workflow)
            } else {
                None
            };
            self.commit_workflow(obs, counting);
        }
        self.release_unused();
        self.baseline.get_or_insert(micros(now));
    }

    fn commit_workflow(&mut self, obs: WorkflowObservation, counting: Option<Option<Micros>>) {
        let wf_id = self.intern(&obs.workflow.id);
        let meta = WorkflowMeta {
            name: obs
                .workflow
                .name
                .clone()
                .unwrap_or_else(|| obs.workflow.id.clone()),
            status: obs
                .workflow
                .status
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
        };
        let mut track = self.workflows.remove(&wf_id).unwrap_or_default();
        let prev_live = std::mem::take(&mut track.live);
        let watermark = counting.flatten();
        let mut max_started = track.watermark;
        let mut live: HashMap<String, LiveExec> = HashMap::new();
        let mut seen = HashSet::new();
        for row in obs.live.iter().chain(&obs.recent) {
            let started = row.started_at.map(micros);
            max_started = max_started.max(started);
            if row.status.is_live() {
                let exec = self.live_exec(&wf_id, row);
                match live.get(&row.id) {
                    Some(old) if old.last_event_at >= exec.last_event_at => {}
                    _ => {
                        live.insert(row.id.clone(), exec);
                    }
                }
            }
            if !seen.insert(row.id.as_str()) {
                continue;
            }
            let Some(_) = counting else { continue };
            let prev = prev_live.get(&row.id);
            let known = prev.is_some() || track.ahead.contains(&row.id);
            let is_new = !known && started.is_some_and(|s| watermark.is_none_or(|w| s > w));
            self.counters
                .count(&wf_id, is_new, prev.map(|p| p.status), row.status);
        }
        if counting.is_some() && obs.unseen_ended > 0 {
            *self.counters.started.entry(wf_id.clone()).or_default() += obs.unseen_ended;
            *self
                .counters
                .finished
                .entry((wf_id.clone(), ExecutionStatus::Ended))
                .or_default() += obs.unseen_ended;
        }
        if counting.is_some() {
            for (id, exec) in &prev_live {
                if seen.contains(id.as_str()) {
                    continue;
                }
                let outcome = obs
                    .outcomes
                    .get(id)
                    .copied()
                    .unwrap_or(ExecutionStatus::Ended);
                if outcome.is_terminal() {
                    *self
                        .counters
                        .finished
                        .entry((wf_id.clone(), outcome))
                        .or_default() += 1;
                } else if outcome.is_live() {
                    // It left the lists while they were read; it is still live.
                    let mut exec = exec.clone();
                    if outcome == ExecutionStatus::Handoff
                        && exec.status != ExecutionStatus::Handoff
                    {
                        *self.counters.handoffs.entry(wf_id.clone()).or_default() += 1;
                    }
                    exec.status = outcome;
                    live.insert(id.clone(), exec);
                }
            }
        }
        // Advance the watermark to the list's last_executed_at when it has one, else to the
        // newest start seen; remember counted executions beyond it.
        let list_mark = obs.workflow.last_executed_at.map(micros);
        let new_mark = list_mark.or(max_started).max(track.watermark);
        track.watermark_from_list = list_mark.is_some() && obs.workflow.execution_count.is_some();
        track.ahead = obs
            .live
            .iter()
            .chain(&obs.recent)
            .filter(|r| {
                r.started_at
                    .map(micros)
                    .is_some_and(|s| new_mark.is_some_and(|m| s > m))
            })
            .map(|r| r.id.clone())
            .collect();
        track.watermark = new_mark;
        track.execution_count = obs.workflow.execution_count;
        track.meta = Some(meta);
        track.live = live;
        self.counters.zero_fill(&wf_id);
        self.workflows.insert(wf_id, track);
    }

    fn live_exec(&mut self, wf_id: &Arc<str>, row: &Execution) -> LiveExec {
        LiveExec {
            workflow_id: wf_id.clone(),
            status: row.status,
            conversation_id: row
                .whatsapp_conversation_id
                .as_deref()
                .map(|c| self.intern(c)),
            started_at: row.started_at.map(micros),
            last_event_at: row.last_event_at.or(row.started_at).map(micros),
        }
    }

    /// Commits a complete conversation-mode poll: every executions row of each watched
    /// conversation, all statuses.
    pub fn commit_conversations(
        &mut self,
        observations: Vec<(String, Vec<Execution>)>,
        now: OffsetDateTime,
    ) {
        let listed: HashSet<&str> = observations.iter().map(|(c, _)| c.as_str()).collect();
        self.conversations
            .retain(|id, _| listed.contains(id.as_ref()));
        for (conversation, rows) in observations {
            self.commit_conversation(&conversation, rows);
        }
        // Every workflow a row named is in `self.workflows`; zero-fill once, not per conversation.
        for wf_id in self.workflows.keys() {
            self.counters.zero_fill(wf_id);
        }
        self.release_unused();
        self.baseline.get_or_insert(micros(now));
    }

    fn commit_conversation(&mut self, conversation: &str, rows: Vec<Execution>) {
        let conv_id = self.intern(conversation);
        let baseline = self.baseline;
        let mut track = self
            .conversations
            .remove(&conv_id)
            .unwrap_or_else(|| ConversationTrack {
                // A conversation added after the first poll counts what started since then.
                watermark: baseline,
                live: HashMap::new(),
            });
        let counting = baseline.is_some();
        let prev_live = std::mem::take(&mut track.live);
        let mut max_started = track.watermark;
        let mut seen = HashSet::new();
        for row in &rows {
            if !seen.insert(row.id.as_str()) {
                continue;
            }
            let wf = row.workflow.clone().unwrap_or_default();
            let wf_id = self.intern(wf.id.as_deref().unwrap_or(UNKNOWN_WORKFLOW));
            let entry = self.workflows.entry(wf_id.clone()).or_default();
            if wf.name.is_some() || entry.meta.is_none() {
                entry.meta = Some(WorkflowMeta {
                    name: wf.name.clone().unwrap_or_else(|| wf_id.to_string()),
                    status: wf.status.clone().unwrap_or_else(|| "unknown".to_owned()),
                });
            }
            let started = row.started_at.map(micros);
            max_started = max_started.max(started);
            if row.status.is_live() {
                let mut exec = self.live_exec(&wf_id, row);
                exec.conversation_id = Some(conv_id.clone());
                track.live.insert(row.id.clone(), exec);
            }
            if !counting {
                continue;
            }
            let prev = prev_live.get(&row.id);
            let is_new =
                prev.is_none() && started.is_some_and(|s| track.watermark.is_none_or(|w| s > w));
            self.counters
                .count(&wf_id, is_new, prev.map(|p| p.status), row.status);
        }
        track.watermark = max_started;
        self.conversations.insert(conv_id, track);
    }

    /// Every live execution, in either mode.
    fn live_execs(&self) -> impl Iterator<Item = &LiveExec> {
        self.workflows
            .values()
            .flat_map(|t| t.live.values())
            .chain(self.conversations.values().flat_map(|t| t.live.values()))
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
        snap.started = self.counters.started.clone();
        snap.finished = self.counters.finished.clone();
        snap.handoffs = self.counters.handoffs.clone();
        snap
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(id: &str, workflow: &str, conversation: &str) -> Execution {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "status": "waiting",
            "started_at": "2026-11-24T10:00:00Z",
            "last_event_at": "2026-11-24T10:00:00Z",
            "workflow": {"id": workflow, "name": "Support"},
            "whatsapp_conversation_id": conversation,
        }))
        .unwrap()
    }

    #[test]
    fn ids_that_left_are_not_kept() {
        let now = OffsetDateTime::now_utc();
        let mut t = Tracker::new();
        t.commit_conversations(
            vec![
                ("c-1".to_owned(), vec![row("e-1", "wf-1", "c-1")]),
                ("c-2".to_owned(), vec![row("e-2", "wf-1", "c-2")]),
            ],
            now,
        );
        assert!(t.interned.contains("c-1") && t.interned.contains("c-2"));
        t.commit_conversations(
            vec![("c-2".to_owned(), vec![row("e-2", "wf-1", "c-2")])],
            now,
        );
        assert!(!t.interned.contains("c-1"), "{:?}", t.interned);
        assert!(t.interned.contains("c-2") && t.interned.contains("wf-1"));
    }
}
