//! Webhook events merged into the tracker: a failure or an entry into handoff counted the
//! moment Kapso pushes it, and never again when a poll later sees the same thing.
//!
//! Each event is keyed by its execution id, like everything the tracker counts:
//! - `workflow.execution.failed` counts a failure for an execution whose failure was not
//!   counted yet: a live or pending one is marked (`failure_counted`), so that the poll that
//!   reads its failed row counts the failure's step but not the failure; one no poll listed
//!   yet is remembered as [`Exec::Early`], so that the poll that lists it counts its start and
//!   the failure's step, but not the failure;
//! - `workflow.execution.handoff` counts an entry into handoff unless the entry it tells of
//!   was already counted: its `occurred_at` is at most one precision step after the last
//!   counted entry of that execution (`handoff_mark`, set by events and by polls alike). A poll
//!   that sees the execution in handoff does not count it again when the mark is later than
//!   the last event the poll saw before, so an entry is counted once whichever comes first.
//! - Executions that finished are remembered for [`RECENT_FINISHES_FOR`] (Kapso retries a
//!   delivery for about 2.5 minutes), so that a late event finds what a poll already counted.
//!
//! An event is never counted for an execution the exporter cannot place after its first poll:
//! one that happened before it, or in a conversation it does not watch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{EarlyExec, Exec, Tracker};
use crate::clock::Micros;
use crate::kapso::ExecutionStatus;
use crate::poller::plan::PRECISION_SLACK;

const MINUTE: Micros = 60_000_000;

/// How long an execution an event told of waits for a poll to list it before it is forgotten
/// (its counted failure or handoff stays counted).
pub const EARLY_TTL: Micros = 60 * MINUTE;

/// How long a finished execution is remembered for late events: Kapso's last retry comes
/// about 140 s after the first attempt; ten minutes leave room for late deliveries.
pub const RECENT_FINISHES_FOR: Micros = 10 * MINUTE;

/// The most finished executions remembered for late events (about 100 bytes each); past it
/// the oldest are forgotten first. 10,000 finishes a minute (scale L) fill it in 10 minutes.
pub const RECENT_FINISHES_MAX: usize = 100_000;

/// The two events Kapso pushes for workflow executions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Failed,
    Handoff,
}

/// One webhook delivery, as the receiver parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub workflow_id: String,
    pub execution_id: String,
    pub conversation_id: Option<String>,
    /// Unix microseconds, Kapso's clock.
    pub occurred_at: Micros,
}

/// What an event did to the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Counted now.
    Counted,
    /// What it tells was already counted (by an earlier event or by a poll).
    AlreadyCounted,
    /// Not counted, for this reason (a label value).
    NotCounted(&'static str),
}

/// Finished executions, for late events: when each finished and its last counted handoff.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RecentFinishes {
    by_id: HashMap<String, (Micros, Option<Micros>)>,
    order: VecDeque<(Micros, String)>,
}

impl RecentFinishes {
    fn insert(&mut self, id: &str, mark: Option<Micros>, now: Micros) {
        match self.by_id.get_mut(id) {
            // Already remembered: keep its place in the expiry order, take the newer mark.
            Some((_, m)) => *m = (*m).max(mark),
            None => {
                self.by_id.insert(id.to_owned(), (now, mark));
                self.order.push_back((now, id.to_owned()));
            }
        }
        while self.order.len() > RECENT_FINISHES_MAX {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front() {
            if self.by_id.get(&id).is_some_and(|(t, _)| *t == at) {
                self.by_id.remove(&id);
            }
        }
    }

    fn expire(&mut self, now: Micros) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| at.saturating_add(RECENT_FINISHES_FOR) <= now)
        {
            self.pop_oldest();
        }
    }
}

/// Whether an entry into handoff at `t` is new: not the one counted at `mark` (at most one
/// precision step later). A new entry moves the mark on.
fn new_entry(mark: &mut Option<Micros>, t: Micros) -> bool {
    if mark.is_some_and(|m| t <= m.saturating_add(PRECISION_SLACK)) {
        return false;
    }
    *mark = Some(mark.map_or(t, |m| m.max(t)));
    true
}

/// What an event did to an execution the tracker remembers.
#[derive(Default)]
struct Decision {
    /// A failure to count.
    failed: bool,
    /// An entry into handoff to count.
    handoff: bool,
    /// The execution finished now: remember it for late events, with this handoff mark.
    finished: Option<Option<Micros>>,
    /// The workflow it is counted under, when the tracker knows it.
    workflow: Option<Arc<str>>,
}

/// The effect of `ev` on an execution remembered as `exec` (`finished` holds the executions
/// that finished recently).
fn decide(
    exec: &mut Exec,
    ev: &Event,
    id: &str,
    finished: Option<&mut RecentFinishes>,
) -> Decision {
    let t = ev.occurred_at;
    match exec {
        Exec::Live(e) | Exec::Pending(e) => {
            let workflow = Some(e.workflow_id.clone());
            match ev.kind {
                EventKind::Failed if e.failure_counted => Decision::default(),
                // Still tracked: the poll that reads the failed row counts the failure's step
                // (events do not tell it), and not the failure again.
                EventKind::Failed => {
                    e.failure_counted = true;
                    Decision {
                        failed: true,
                        finished: Some(e.handoff_mark),
                        workflow,
                        ..Decision::default()
                    }
                }
                EventKind::Handoff => Decision {
                    handoff: new_entry(&mut e.handoff_mark, t),
                    workflow,
                    ..Decision::default()
                },
            }
        }
        Exec::Early(e) => {
            e.occurred_at = e.occurred_at.max(t);
            match ev.kind {
                EventKind::Failed if e.failed => Decision::default(),
                EventKind::Failed => {
                    e.failed = true;
                    Decision {
                        failed: true,
                        ..Decision::default()
                    }
                }
                EventKind::Handoff => Decision {
                    handoff: new_entry(&mut e.handoff_mark, t),
                    ..Decision::default()
                },
            }
        }
        Exec::Seen(_) => finished.map_or_else(Decision::default, |r| late(r, ev, id)),
    }
}

/// An event for an execution that finished: a failure is already counted; an entry into
/// handoff is counted if it is later than the last one counted (it began and ended between
/// two polls). Executions finished without a record (before events were on) count nothing.
fn late(finished: &mut RecentFinishes, ev: &Event, id: &str) -> Decision {
    let Some((_, mark)) = finished.by_id.get_mut(id) else {
        return Decision::default();
    };
    Decision {
        handoff: ev.kind == EventKind::Handoff && new_entry(mark, ev.occurred_at),
        ..Decision::default()
    }
}

impl Tracker {
    /// Counts what `ev` tells that no poll or earlier event counted; `conversation_mode` says
    /// where the project's executions are remembered. `now` is local time.
    pub fn apply_event(&mut self, ev: &Event, conversation_mode: bool, now: Micros) -> Applied {
        let Some(baseline) = self.baseline else {
            return Applied::NotCounted("before_first_poll");
        };
        let wf_id = self.intern(&ev.workflow_id);
        let Tracker {
            workflows,
            conversations,
            early_workflows,
            recent,
            ..
        } = self;
        let execs = if conversation_mode {
            match ev
                .conversation_id
                .as_deref()
                .and_then(|c| conversations.get_mut(c))
            {
                Some(c) => &mut c.execs,
                None => return Applied::NotCounted("conversation_not_watched"),
            }
        } else if let Some(track) = workflows.get_mut(&wf_id) {
            &mut track.execs
        } else {
            early_workflows.entry(wf_id.clone()).or_default()
        };
        let id = ev.execution_id.as_str();
        let decision = match execs.get_mut(id) {
            Some(exec) => decide(exec, ev, id, recent.as_mut()),
            None => match recent.as_mut() {
                Some(r) if r.by_id.contains_key(id) => late(r, ev, id),
                // Before the first poll the poll's own listings account for it.
                _ if ev.occurred_at < baseline => return Applied::NotCounted("before_first_poll"),
                _ => {
                    let failed = ev.kind == EventKind::Failed;
                    execs.insert(
                        id.to_owned(),
                        Exec::Early(EarlyExec {
                            failed,
                            handoff_mark: (!failed).then_some(ev.occurred_at),
                            occurred_at: ev.occurred_at,
                        }),
                    );
                    Decision {
                        failed,
                        handoff: !failed,
                        ..Decision::default()
                    }
                }
            },
        };
        if let Some(mark) = decision.finished {
            self.remember_finish(id, mark, now);
        }
        let wf = decision.workflow.clone().unwrap_or(wf_id);
        self.counters.zero_fill(&wf);
        if decision.failed {
            *self
                .counters
                .finished
                .entry((wf.clone(), ExecutionStatus::Failed))
                .or_default() += 1;
        }
        if decision.handoff {
            *self.counters.handoffs.entry(wf).or_default() += 1;
        }
        if decision.failed || decision.handoff {
            self.generation += 1;
            Applied::Counted
        } else {
            Applied::AlreadyCounted
        }
    }

    /// Turns on what events need: finished executions are remembered for late events.
    pub fn enable_events(&mut self) {
        self.recent.get_or_insert_with(RecentFinishes::default);
    }

    pub(super) fn remember_finish(&mut self, id: &str, mark: Option<Micros>, now: Micros) {
        if let Some(r) = &mut self.recent {
            r.insert(id, mark, now);
        }
    }

    /// Forgets what events no longer need: early executions past [`EARLY_TTL`] and finishes
    /// past [`RECENT_FINISHES_FOR`].
    pub(super) fn expire_events(&mut self, now: Micros) {
        if let Some(r) = &mut self.recent {
            r.expire(now);
        }
        self.early_workflows.retain(|_, execs| {
            execs.retain(|_, e| match e {
                Exec::Early(x) => x.occurred_at.saturating_add(EARLY_TTL) > now,
                _ => true,
            });
            !execs.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_executions_are_forgotten_in_order_and_stay_bounded() {
        let mut r = RecentFinishes::default();
        r.insert("a", None, 0);
        r.insert("b", Some(5), MINUTE);
        // Finishing again keeps "a" where it was, with the newer mark.
        r.insert("a", Some(7), 2 * MINUTE);
        assert_eq!(r.by_id["a"], (0, Some(7)));
        r.expire(RECENT_FINISHES_FOR);
        assert!(!r.by_id.contains_key("a") && r.by_id.contains_key("b"));
        r.expire(RECENT_FINISHES_FOR + MINUTE);
        assert!(r.by_id.is_empty() && r.order.is_empty());
        for i in 0..RECENT_FINISHES_MAX + 10 {
            r.insert(&i.to_string(), None, 0);
        }
        assert_eq!(r.by_id.len(), RECENT_FINISHES_MAX);
        assert_eq!(r.order.len(), RECENT_FINISHES_MAX);
        assert!(!r.by_id.contains_key("0"), "the oldest went first");
    }
}
