//! The planner: from what the tracker remembers of one workflow and this poll's live rows, the
//! extra requests the poll needs for that workflow, each with its reason. Pure: no I/O, and
//! "now" comes in as an argument.
//!
//! The rules (the README's "Polling" section states them for users):
//! - **Window listing** `GET /workflows/{id}/executions?created_after=<window>` (all statuses,
//!   every page): what started since the previous poll, with its current status. It runs on a
//!   workflow's first poll (to learn which executions already exist, or, for a workflow created
//!   since, to count them) and whenever a start may have happened: `execution_count` or
//!   `last_executed_at` differ from the previous listing, either is missing, or a live list
//!   shows an id the tracker does not know. The window starts [`MARGIN`] before the newest
//!   start it saw, so timestamps of coarser precision or a row committed late cannot fall
//!   between two windows; ids remove the overlap.
//! - **Outcomes** of executions that left the live lists: the window listing shows those that
//!   started inside it. Of the others, at most [`BY_ID_MAX`] are read one by one with
//!   `GET /workflow_executions/{id}`; more are looked up in two listings,
//!   `status=failed&created_after=<oldest start>` and `status=ended&created_after=...`, which
//!   stop as soon as every one is found. An execution found in neither (a status the exporter
//!   does not know, or a move between live lists while they were read) stays *pending*: it is
//!   not counted as finished, and later polls read it by id ([`PENDING_BY_ID_MAX`] a poll)
//!   until its outcome is known.
//! - **Ceilings**: every list gets a page ceiling from what the previous poll knew
//!   ([`pages_for`]); a list that needs more fails as `paging` instead of spending the budget.

use std::collections::{BTreeSet, HashSet};

use crate::clock::{Micros, SECOND};
use crate::kapso::{Execution, Workflow};

use super::tracker::{Exec, WorkflowTrack};

/// How far before the newest start seen the next window begins: covers second-precision
/// timestamps (up to 1 s early) and rows that become visible a little after their start.
pub const MARGIN: Micros = 5 * SECOND;
/// How much earlier than the instant it stands for a displayed timestamp can be: a value
/// truncated to whole seconds is up to 1 s early.
pub const PRECISION_SLACK: Micros = SECOND;
/// Up to this many executions that left the live lists are read by id; more are looked up by
/// the two status listings.
pub const BY_ID_MAX: usize = 2;
/// Pending executions read by id per workflow and poll (the rest wait for the next poll).
pub const PENDING_BY_ID_MAX: usize = 10;
/// Rows assumed when `execution_count` cannot say how many executions started.
pub const UNKNOWN_GROWTH: u64 = 10_000;
/// Rows of a workflow assumed when it has no `execution_count`.
pub const UNKNOWN_TOTAL: u64 = 100_000;
/// Rows per page (Kapso's maximum `limit`).
pub const PAGE_ROWS: u64 = 100;

/// The page ceiling of a list expected to hold `rows` rows: twice the pages they need, plus 3.
pub fn pages_for(rows: u64) -> usize {
    let pages = rows.div_ceil(PAGE_ROWS).max(1);
    usize::try_from(pages.saturating_mul(2).saturating_add(3)).unwrap_or(usize::MAX)
}

/// Which rows of a window listing count as started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountRule {
    /// None: the workflow's first poll at the exporter's start learns what exists.
    Nothing,
    /// Every row: the workflow was created after the exporter's first poll.
    All,
    /// Rows whose start is after this instant (a workflow first seen after the first poll,
    /// with no creation time to prove it is new).
    StartedAfter(Micros),
    /// Every id the tracker does not know: the window begins where the previous one ended.
    Unknown,
}

/// Why a window listing runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowReason {
    /// The workflow's first poll.
    FirstPoll,
    /// `execution_count` or `last_executed_at` differ from the previous listing.
    CountChanged,
    /// `execution_count` or `last_executed_at` is missing, so a quiet workflow cannot be told.
    CountUnknown,
    /// A live list shows ids the tracker does not know.
    NewLiveExecutions,
}

/// `GET /workflows/{id}/executions?created_after=...`, all statuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub created_after: Micros,
    pub count: CountRule,
    pub max_pages: usize,
    pub reason: WindowReason,
}

/// `status=failed` and `status=ended` listings from `created_after`, wanted for `wanted`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusLists {
    pub created_after: Micros,
    pub wanted: BTreeSet<String>,
    pub max_pages: usize,
}

/// The extra requests of one workflow at one poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub window: Option<Window>,
    pub status_lists: Option<StatusLists>,
    /// `GET /workflow_executions/{id}`, for executions that left the live lists.
    pub by_id: Vec<String>,
}

#[cfg(test)]
impl Plan {
    /// Requests the plan makes at least (one per listing and id).
    pub fn min_requests(&self) -> usize {
        usize::from(self.window.is_some())
            + 2 * usize::from(self.status_lists.is_some())
            + self.by_id.len()
    }
}

/// What the planner knows of the project at this poll.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// Local time of the exporter's first committed poll; `None` during it.
    pub baseline: Option<Micros>,
    /// Local time of this poll.
    pub now: Micros,
    /// When the tracker forgot this workflow after it was missing from the listings, if it did.
    pub forgotten_at: Option<Micros>,
}

/// The page ceiling of each live-status list of `wf`.
pub fn live_max_pages(prev: Option<&WorkflowTrack>, wf: &Workflow) -> usize {
    let growth = prev.map_or(wf.execution_count, |t| t.growth(wf));
    let live = prev.map_or(0, WorkflowTrack::live_count);
    pages_for(live.saturating_add(growth.unwrap_or(UNKNOWN_GROWTH)))
}

/// The extra requests `wf` needs, given the previous state and this poll's live rows.
pub fn plan(prev: Option<&WorkflowTrack>, ctx: Context, wf: &Workflow, live: &[Execution]) -> Plan {
    let Some(track) = prev.filter(|t| t.window_from.is_some()) else {
        return Plan {
            window: Some(first_window(ctx, wf)),
            ..Plan::default()
        };
    };
    let window_from = track.window_from.unwrap_or(ctx.now);
    let live_ids: HashSet<&str> = live.iter().map(|r| r.id.as_str()).collect();
    let unknown: Vec<&Execution> = live
        .iter()
        .filter(|r| !track.execs.contains_key(&r.id))
        .collect();
    let reason = if unknown.is_empty() {
        track.count_signal(wf)
    } else if explains_growth(track, wf, &unknown, ctx.now) {
        None
    } else {
        Some(WindowReason::NewLiveExecutions)
    };
    let window = reason.map(|reason| Window {
        created_after: window_from,
        count: CountRule::Unknown,
        max_pages: pages_for(
            track
                .growth(wf)
                .unwrap_or(UNKNOWN_GROWTH)
                .saturating_add(track.execs.len() as u64),
        ),
        reason,
    });
    // An execution that started inside the window shows its status there.
    let covered = |start: Option<Micros>| {
        window.is_some() && start.is_some_and(|s| s >= window_from.saturating_add(PRECISION_SLACK))
    };
    let mut fresh: Vec<(&str, Option<Micros>)> = Vec::new();
    let mut pending: Vec<&str> = Vec::new();
    for (id, exec) in &track.execs {
        if live_ids.contains(id.as_str()) {
            continue;
        }
        match exec {
            Exec::Live(e) if !covered(e.started_at) => fresh.push((id, e.started_at)),
            // Already missing from one poll's answers: only a read by id is sure to find it.
            Exec::Pending(_) => pending.push(id),
            _ => {}
        }
    }
    fresh.sort_unstable();
    pending.sort_unstable();
    let mut by_id: Vec<String> = Vec::new();
    let mut status_lists = None;
    if fresh.len() <= BY_ID_MAX {
        by_id.extend(fresh.iter().map(|(id, _)| (*id).to_owned()));
    } else {
        // Without a start an execution cannot be placed in a created_after listing.
        by_id.extend(
            fresh
                .iter()
                .filter(|(_, s)| s.is_none())
                .map(|(id, _)| (*id).to_owned()),
        );
        let oldest = fresh.iter().filter_map(|(_, s)| *s).min();
        if let Some(oldest) = oldest {
            status_lists = Some(StatusLists {
                created_after: oldest.saturating_sub(MARGIN),
                wanted: fresh
                    .iter()
                    .filter(|(_, s)| s.is_some())
                    .map(|(id, _)| (*id).to_owned())
                    .collect(),
                max_pages: pages_for(wf.execution_count.unwrap_or(UNKNOWN_TOTAL)),
            });
        }
    }
    by_id.extend(
        pending
            .iter()
            .take(PENDING_BY_ID_MAX)
            .map(|id| (*id).to_owned()),
    );
    Plan {
        window,
        status_lists,
        by_id,
    }
}

/// Whether the unknown live rows are exactly what `execution_count` says started: each started
/// inside the window (so it is new, not an old execution back from a status the exporter does
/// not know), and their number is the count's growth. Then nothing else started, and the
/// window listing is not needed; the tracker counts them from the live rows. A count that lags
/// or shrinks at the same time can hide an execution that started and finished; it is counted
/// at the next poll whose counts move, since the window does not advance without a listing.
fn explains_growth(
    track: &WorkflowTrack,
    wf: &Workflow,
    unknown: &[&Execution],
    now: Micros,
) -> bool {
    let (Some(growth), Some(from)) = (track.growth(wf), track.window_from) else {
        return false;
    };
    if track.count_signal(wf) == Some(WindowReason::CountUnknown) {
        return false;
    }
    let ids: HashSet<&str> = unknown.iter().map(|r| r.id.as_str()).collect();
    growth == ids.len() as u64
        && unknown.iter().all(|r| {
            crate::clock::plausible(r.started_at, now)
                .is_some_and(|s| s >= from.saturating_add(PRECISION_SLACK))
        })
}

/// The window of a workflow's first poll.
fn first_window(ctx: Context, wf: &Workflow) -> Window {
    let max_pages = pages_for(wf.execution_count.unwrap_or(UNKNOWN_GROWTH));
    let Some(baseline) = ctx.baseline else {
        // The exporter's first poll: learn the executions of the newest moments (anchored on
        // Kapso's own clock when it says when the workflow last ran), count none.
        let anchor = crate::clock::plausible(wf.last_executed_at, ctx.now)
            .map_or(ctx.now, |t| t.min(ctx.now));
        return Window {
            created_after: anchor.saturating_sub(MARGIN),
            count: CountRule::Nothing,
            max_pages,
            reason: WindowReason::FirstPoll,
        };
    };
    let created = crate::clock::plausible(wf.created_at, ctx.now);
    match created {
        // Created after the exporter started: every execution is new.
        Some(c) if c > baseline && ctx.forgotten_at.is_none() => Window {
            created_after: c.saturating_sub(MARGIN),
            count: CountRule::All,
            max_pages,
            reason: WindowReason::FirstPoll,
        },
        // Known to have existed earlier (or no creation time): count what started after the
        // exporter's first poll, or after the tracker forgot the workflow.
        _ => {
            let from = ctx.forgotten_at.unwrap_or(baseline).max(baseline);
            Window {
                created_after: from.saturating_sub(MARGIN),
                count: CountRule::StartedAfter(from.saturating_add(PRECISION_SLACK)),
                max_pages,
                reason: WindowReason::FirstPoll,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::kapso::ExecutionStatus;
    use crate::poller::tracker::{LiveExec, Signals};
    use std::sync::Arc;

    const NOW: Micros = 1_795_521_600 * SECOND;

    fn wf(count: Option<u64>, last: Option<Micros>) -> Workflow {
        Workflow {
            id: "wf".to_owned(),
            name: Some("Support".to_owned()),
            status: Some("active".to_owned()),
            execution_count: count,
            last_executed_at: last.map(crate::clock::from_micros),
            created_at: None,
        }
    }

    fn live_row(id: &str, status: ExecutionStatus, start: Micros) -> Execution {
        Execution {
            id: id.to_owned(),
            status,
            whatsapp_conversation_id: None,
            started_at: Some(crate::clock::from_micros(start)),
            last_event_at: Some(crate::clock::from_micros(start)),
            workflow: None,
            current_step: None,
        }
    }

    fn exec(status: ExecutionStatus, start: Micros) -> LiveExec {
        LiveExec {
            workflow_id: Arc::from("wf"),
            status,
            conversation_id: None,
            started_at: Some(start),
            last_event_at: Some(start),
            handoff_mark: None,
            step: None,
            failure_counted: false,
        }
    }

    fn track(count: Option<u64>, last: Option<Micros>, live: &[(&str, Micros)]) -> WorkflowTrack {
        let mut t = WorkflowTrack {
            window_from: Some(NOW - 60 * SECOND),
            signals: Signals {
                execution_count: count,
                last_executed_at: last,
            },
            ..WorkflowTrack::default()
        };
        for (id, start) in live {
            t.execs.insert(
                (*id).to_owned(),
                Exec::Live(exec(ExecutionStatus::Waiting, *start)),
            );
        }
        t
    }

    fn ctx() -> Context {
        Context {
            baseline: Some(NOW - 600 * SECOND),
            now: NOW,
            forgotten_at: None,
        }
    }

    #[test]
    fn a_quiet_workflow_needs_nothing() {
        let last = NOW - 3600 * SECOND;
        let t = track(Some(7), Some(last), &[("a", last)]);
        let rows = [live_row("a", ExecutionStatus::Waiting, last)];
        let p = plan(Some(&t), ctx(), &wf(Some(7), Some(last)), &rows);
        assert_eq!(p, Plan::default());
        assert_eq!(p.min_requests(), 0);
    }

    #[test]
    fn a_changed_or_missing_count_lists_the_window() {
        let last = NOW - 3600 * SECOND;
        let t = track(Some(7), Some(last), &[]);
        for (w, reason) in [
            (wf(Some(8), Some(last)), WindowReason::CountChanged),
            (wf(Some(6), Some(last)), WindowReason::CountChanged),
            (wf(Some(7), Some(last + 1)), WindowReason::CountChanged),
            (wf(None, Some(last)), WindowReason::CountUnknown),
            (wf(Some(7), None), WindowReason::CountChanged),
        ] {
            let p = plan(Some(&t), ctx(), &w, &[]);
            let window = p.window.expect("a window");
            assert_eq!(window.reason, reason, "{w:?}");
            assert_eq!(window.created_after, NOW - 60 * SECOND);
            assert_eq!(window.count, CountRule::Unknown);
        }
    }

    #[test]
    fn unknown_live_ids_list_the_window_unless_they_are_the_whole_growth() {
        let last = NOW - 3600 * SECOND;
        let t = track(Some(7), Some(last), &[]);
        let rows = [live_row("new", ExecutionStatus::Running, NOW - SECOND)];
        // The count did not move: something else is going on.
        let p = plan(Some(&t), ctx(), &wf(Some(7), Some(last)), &rows);
        assert_eq!(p.window.unwrap().reason, WindowReason::NewLiveExecutions);
        // Two started, one is live: the other finished unseen.
        let p = plan(Some(&t), ctx(), &wf(Some(9), Some(NOW - SECOND)), &rows);
        assert_eq!(p.window.unwrap().reason, WindowReason::NewLiveExecutions);
        // One started and it is live: nothing to list.
        let p = plan(Some(&t), ctx(), &wf(Some(8), Some(NOW - SECOND)), &rows);
        assert_eq!(p, Plan::default());
        // An old execution back from an unknown status is not a start.
        let old = [live_row(
            "old",
            ExecutionStatus::Waiting,
            NOW - 7200 * SECOND,
        )];
        let p = plan(Some(&t), ctx(), &wf(Some(8), Some(NOW - SECOND)), &old);
        assert_eq!(p.window.unwrap().reason, WindowReason::NewLiveExecutions);
        // Without a count nothing can be inferred.
        let p = plan(Some(&t), ctx(), &wf(None, Some(NOW - SECOND)), &rows);
        assert!(p.window.is_some());
    }

    #[test]
    fn few_vanished_are_read_by_id_many_by_status_lists() {
        let old = NOW - 7200 * SECOND;
        let last = NOW - 3600 * SECOND;
        let t = track(
            Some(7),
            Some(last),
            &[("a", old), ("b", old + SECOND), ("c", old + 2 * SECOND)],
        );
        let w = wf(Some(7), Some(last));
        let one_left = [
            live_row("a", ExecutionStatus::Waiting, old),
            live_row("b", ExecutionStatus::Waiting, old + SECOND),
        ];
        let p = plan(Some(&t), ctx(), &w, &one_left);
        assert_eq!(p.by_id, vec!["c".to_owned()]);
        assert!(p.window.is_none() && p.status_lists.is_none());

        let p = plan(Some(&t), ctx(), &w, &[]);
        assert!(p.by_id.is_empty());
        let lists = p.status_lists.clone().unwrap();
        assert_eq!(lists.created_after, old - MARGIN);
        assert_eq!(lists.wanted.len(), 3);
        assert_eq!(p.min_requests(), 2);
    }

    #[test]
    fn vanished_inside_the_window_need_no_extra_request() {
        let last = NOW - 3600 * SECOND;
        let recent = NOW - 30 * SECOND;
        let t = track(
            Some(7),
            Some(last),
            &[("a", recent), ("b", recent), ("c", recent)],
        );
        let p = plan(Some(&t), ctx(), &wf(Some(8), Some(NOW - SECOND)), &[]);
        assert!(p.window.is_some());
        assert!(p.by_id.is_empty() && p.status_lists.is_none(), "{p:?}");
    }

    #[test]
    fn pending_executions_are_read_by_id_a_bounded_number_per_poll() {
        let last = NOW - 3600 * SECOND;
        let mut t = track(Some(7), Some(last), &[]);
        for i in 0..(PENDING_BY_ID_MAX + 5) {
            t.execs.insert(
                format!("p{i:02}"),
                Exec::Pending(exec(ExecutionStatus::Unknown, last)),
            );
        }
        let p = plan(Some(&t), ctx(), &wf(Some(7), Some(last)), &[]);
        assert_eq!(p.by_id.len(), PENDING_BY_ID_MAX);
        assert!(p.window.is_none());
    }

    #[test]
    fn first_windows() {
        let last = NOW - 3600 * SECOND;
        // The exporter's first poll: anchored on last_executed_at, nothing counted.
        let mut c = ctx();
        c.baseline = None;
        let w = plan(None, c, &wf(Some(7), Some(last)), &[]).window.unwrap();
        assert_eq!(
            (w.created_after, w.count),
            (last - MARGIN, CountRule::Nothing)
        );
        // A year-9999 last_executed_at is not believed.
        let far = crate::clock::micros(time::OffsetDateTime::new_utc(
            time::Date::from_calendar_date(9999, time::Month::January, 1).unwrap(),
            time::Time::MIDNIGHT,
        ));
        let w = plan(None, c, &wf(Some(7), Some(far)), &[]).window.unwrap();
        assert_eq!(w.created_after, NOW - MARGIN);
        // Created after the baseline: everything counts.
        let mut created = wf(Some(3), None);
        created.created_at = Some(crate::clock::from_micros(NOW - 10 * SECOND));
        let w = plan(None, ctx(), &created, &[]).window.unwrap();
        assert_eq!(w.count, CountRule::All);
        // No creation time: what started after the baseline.
        let w = plan(None, ctx(), &wf(Some(3), None), &[]).window.unwrap();
        let baseline = NOW - 600 * SECOND;
        assert_eq!(
            (w.created_after, w.count),
            (
                baseline - MARGIN,
                CountRule::StartedAfter(baseline + PRECISION_SLACK)
            )
        );
    }

    #[test]
    fn ceilings_follow_the_counts() {
        assert_eq!(pages_for(0), 5);
        assert_eq!(pages_for(100), 5);
        assert_eq!(pages_for(101), 7);
        assert!(pages_for(u64::MAX) > 1_000_000);
        let last = NOW - 3600 * SECOND;
        let t = track(Some(7), Some(last), &[("a", last)]);
        // 1 live + 1,000 started since: 11 pages needed at most.
        assert_eq!(live_max_pages(Some(&t), &wf(Some(1007), Some(NOW))), 25);
        assert_eq!(
            live_max_pages(None, &wf(None, None)),
            pages_for(UNKNOWN_GROWTH)
        );
    }
}
