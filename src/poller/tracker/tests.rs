//! Unit tests of the tracker and planner against a small fake of the Kapso API, and a
//! model-based property test of the counters.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::clock::{SECOND, from_micros};

/// 2026-11-24T12:00:00Z
const T0: Micros = 1_795_521_600 * SECOND;

/// One execution of the fake API: its true start, and what the API shows of it.
#[derive(Clone, Debug)]
struct Row {
    id: String,
    status: ExecutionStatus,
    start: Micros,
    shown_start: Option<Micros>,
    step: Option<crate::kapso::models::StepRef>,
}

/// A workflow of the fake API, answering the way Kapso's documents allow: filters on the
/// true start, rows newest first, timestamps truncated to `precision`.
#[derive(Clone, Debug)]
struct FakeWf {
    id: String,
    rows: Vec<Row>,
    deleted_since_count: u64,
    count_lag: Micros,
    precision: Micros,
    missing_count: bool,
    /// Every live list shows its newest row twice (the same row on two pages).
    dup_rows: bool,
}

impl FakeWf {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            rows: Vec::new(),
            deleted_since_count: 0,
            count_lag: 0,
            precision: 1,
            missing_count: false,
            dup_rows: false,
        }
    }

    fn start(&mut self, id: &str, status: ExecutionStatus, at: Micros) {
        self.rows.push(Row {
            id: id.to_owned(),
            status,
            start: at,
            shown_start: Some(at),
            step: None,
        });
    }

    /// Moves an execution to `step` (`None`: rows without `current_step`).
    fn at_step(&mut self, id: &str, step: Option<&str>) {
        self.rows.iter_mut().find(|r| r.id == id).unwrap().step =
            step.map(|s| crate::kapso::models::StepRef {
                identifier: s.to_owned(),
                step_type: format!("Type{s}"),
            });
    }

    fn set(&mut self, id: &str, status: ExecutionStatus) {
        self.rows.iter_mut().find(|r| r.id == id).unwrap().status = status;
    }

    fn delete(&mut self, id: &str) {
        self.rows.retain(|r| r.id != id);
    }

    fn shown(&self, t: Micros) -> Micros {
        t - t.rem_euclid(self.precision)
    }

    fn listing(&self, now: Micros) -> Workflow {
        let counted: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.start <= now - self.count_lag)
            .collect();
        Workflow {
            id: self.id.clone(),
            name: Some(format!("name of {}", self.id)),
            status: Some("active".to_owned()),
            execution_count: (!self.missing_count)
                .then(|| counted.len() as u64 + self.deleted_since_count),
            last_executed_at: counted
                .iter()
                .map(|r| r.start)
                .max()
                .map(|t| from_micros(self.shown(t))),
            created_at: None,
        }
    }

    fn rows(&self, keep: impl Fn(&Row) -> bool) -> Vec<Execution> {
        let mut rows: Vec<&Row> = self.rows.iter().filter(|r| keep(r)).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.start));
        rows.into_iter()
            .map(|r| Execution {
                id: r.id.clone(),
                status: r.status,
                whatsapp_conversation_id: None,
                started_at: r.shown_start.map(|t| from_micros(self.shown(t))),
                last_event_at: r.shown_start.map(|t| from_micros(self.shown(t))),
                workflow: None,
                current_step: r.step.clone().map(Box::new),
            })
            .collect()
    }

    fn fetch(&self, t: &Tracker, now: Micros) -> WorkflowFetch {
        let workflow = self.listing(now);
        let mut live = Vec::new();
        for s in ExecutionStatus::LIVE {
            let rows = self.rows(|r| r.status == s);
            if self.dup_rows {
                live.extend(rows.first().cloned());
            }
            live.extend(rows);
        }
        let plan = t.plan(&workflow, &live, from_micros(now));
        let window = plan
            .window
            .as_ref()
            .map_or_else(Vec::new, |w| self.rows(|r| r.start >= w.created_after));
        let mut resolved = Vec::new();
        if let Some(l) = &plan.status_lists {
            resolved.extend(self.rows(|r| {
                r.status.is_terminal() && r.start >= l.created_after && l.wanted.contains(&r.id)
            }));
        }
        let mut gone = Vec::new();
        for id in &plan.by_id {
            let row = self.rows(|r| &r.id == id);
            if row.is_empty() {
                gone.push(id.clone());
            }
            resolved.extend(row);
        }
        WorkflowFetch {
            workflow,
            live,
            plan,
            window,
            resolved,
            gone,
        }
    }
}

/// One project-mode poll of `wfs` at `now` (a workflow listed twice is in `wfs` twice).
fn poll(t: &mut Tracker, wfs: &[&FakeWf], now: Micros) {
    let listed = t.dedupe_listing(wfs.iter().map(|w| w.listing(now)).collect());
    let fetches = listed
        .iter()
        .map(|w| {
            let fake = wfs.iter().find(|f| f.id == w.id).unwrap();
            (w.id.clone(), Ok(fake.fetch(t, now)))
        })
        .collect();
    t.commit_project(&listed, fetches, from_micros(now));
}

/// (started, ended, failed, handoffs) of a workflow.
fn counts(t: &Tracker, wf: &str) -> (u64, u64, u64, u64) {
    let s = t.snapshot(100);
    (
        s.counters.started.get(wf).copied().unwrap_or(0),
        s.counters
            .finished
            .get(&(Arc::from(wf), ExecutionStatus::Ended))
            .copied()
            .unwrap_or(0),
        s.counters
            .finished
            .get(&(Arc::from(wf), ExecutionStatus::Failed))
            .copied()
            .unwrap_or(0),
        s.counters.handoffs.get(wf).copied().unwrap_or(0),
    )
}

fn live_count(t: &Tracker, wf: &str, status: ExecutionStatus) -> u64 {
    t.snapshot(100)
        .live
        .get(&(Arc::from(wf), status))
        .map_or(0, |b| b.count)
}

use ExecutionStatus::{Ended, Failed, Handoff, Running, Waiting};

#[test]
fn whole_second_timestamps_count_each_execution_once() {
    // last_executed_at, started_at and last_event_at in whole seconds.
    let mut w = FakeWf::new("wf");
    w.precision = SECOND;
    w.start("old", Waiting, T0 - 3600 * SECOND + 300_000);
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0 + 500_000);
    // Born between polls: 2 ended, 1 failed, 1 waiting, all in the same second as the
    // previous poll or the next.
    w.start("a", Running, T0 + 700_000);
    w.start("b", Running, T0 + 900_000);
    w.start("c", Running, T0 + SECOND + 100_000);
    w.start("d", Waiting, T0 + SECOND + 200_000);
    w.set("a", Ended);
    w.set("b", Ended);
    w.set("c", Failed);
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (4, 2, 1, 0));
    // Five more polls, the windows overlapping by the margin: nothing counts twice.
    for i in 2..7 {
        w.start(&format!("e{i}"), Running, T0 + i * 60 * SECOND - 400_000);
        poll(&mut t, &[&w], T0 + i * 60 * SECOND);
    }
    assert_eq!(counts(&t, "wf"), (9, 2, 1, 0));
    assert_eq!(live_count(&t, "wf", Running), 5);
    assert_eq!(live_count(&t, "wf", Waiting), 2);
}

#[test]
fn same_second_either_side_of_a_poll() {
    let mut w = FakeWf::new("wf");
    w.precision = SECOND;
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    w.start("early", Running, T0 + 60 * SECOND + 200_000);
    poll(&mut t, &[&w], T0 + 60 * SECOND + 500_000);
    w.start("late", Running, T0 + 60 * SECOND + 800_000);
    w.set("late", Failed);
    poll(&mut t, &[&w], T0 + 61 * SECOND);
    // The running one is not ended, the failed one is failed, each started once.
    assert_eq!(counts(&t, "wf"), (2, 0, 1, 0));
    assert_eq!(live_count(&t, "wf", Running), 1);
}

#[test]
fn an_unknown_status_entered_and_left_is_not_a_finish() {
    let mut w = FakeWf::new("wf");
    for i in 0..5 {
        w.start(&format!("x{i}"), Waiting, T0 - 600 * SECOND + i);
    }
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    for i in 0..5 {
        w.set(&format!("x{i}"), ExecutionStatus::Unknown);
    }
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (0, 0, 0, 0));
    assert_eq!(t.snapshot(100).outcome_unknown[&Arc::from("wf")], 5);
    // Read by id, they show the status the exporter does not know.
    poll(&mut t, &[&w], T0 + 90 * SECOND);
    assert_eq!(t.anomalies["unknown_status"], 5);
    assert_eq!(t.snapshot(100).outcome_unknown[&Arc::from("wf")], 5);
    for i in 0..5 {
        w.set(&format!("x{i}"), Waiting);
    }
    poll(&mut t, &[&w], T0 + 120 * SECOND);
    assert_eq!(t.snapshot(100).outcome_unknown[&Arc::from("wf")], 0);
    for i in 0..5 {
        w.set(&format!("x{i}"), Ended);
    }
    poll(&mut t, &[&w], T0 + 180 * SECOND);
    assert_eq!(counts(&t, "wf"), (0, 5, 0, 0));
    poll(&mut t, &[&w], T0 + 240 * SECOND);
    assert_eq!(counts(&t, "wf"), (0, 5, 0, 0));
    assert_eq!(t.anomalies["unknown_status"], 5);
}

#[test]
fn a_workflow_listed_twice_counts_once() {
    let mut w = FakeWf::new("wf");
    let mut t = Tracker::new();
    poll(&mut t, &[&w, &w], T0);
    w.start("a", Running, T0 + SECOND);
    w.start("b", Running, T0 + 2 * SECOND);
    w.set("b", Ended);
    poll(&mut t, &[&w, &w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (2, 1, 0, 0));
    assert_eq!(t.anomalies["duplicate_workflow"], 2);
}

#[test]
fn an_empty_listing_keeps_series_and_loses_no_finish() {
    let mut w = FakeWf::new("wf");
    for i in 0..3 {
        w.start(&format!("x{i}"), Waiting, T0 - 600 * SECOND + i);
    }
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    w.start("a", Running, T0 + SECOND);
    w.set("a", Ended);
    w.start("b", Running, T0 + 2 * SECOND);
    w.set("b", Ended);
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (2, 2, 0, 0));
    // One empty answer: the series stay, counters do not move back.
    poll(&mut t, &[], T0 + 120 * SECOND);
    let s = t.snapshot(100);
    assert_eq!(counts(&t, "wf"), (2, 2, 0, 0));
    assert!(!s.workflow_health[&Arc::from("wf")].up);
    assert_eq!(live_count(&t, "wf", Waiting), 3);
    // Three endings right after are counted when the workflow is back.
    for i in 0..3 {
        w.set(&format!("x{i}"), Ended);
    }
    poll(&mut t, &[&w], T0 + 180 * SECOND);
    assert_eq!(counts(&t, "wf"), (2, 5, 0, 0));
    assert!(t.snapshot(100).workflow_health[&Arc::from("wf")].up);
    assert_eq!(t.anomalies["empty_workflow_list"], 1);
}

#[test]
fn a_workflow_missing_past_the_grace_period_leaves_and_comes_back_without_reset() {
    let mut w = FakeWf::new("wf");
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    w.start("a", Running, T0 + SECOND);
    w.set("a", Failed);
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    let mut now = T0 + 60 * SECOND;
    for _ in 0..=WORKFLOW_GRACE_LISTINGS {
        now += 60 * SECOND;
        poll(&mut t, &[], now);
    }
    assert!(!t.snapshot(100).workflows.contains_key("wf"));
    now += 60 * SECOND;
    w.start("b", Running, now - SECOND);
    poll(&mut t, &[&w], now);
    // The counter continues from 1; the execution that started while it was forgotten
    // (and after it was) is counted.
    assert_eq!(counts(&t, "wf"), (2, 0, 1, 0));
}

#[test]
fn a_lagging_count_never_turns_a_failure_into_an_ending() {
    let mut w = FakeWf::new("wf");
    w.count_lag = 2 * SECOND;
    w.start("x", Waiting, T0 - 600 * SECOND);
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    // Started and failed within the lag before the poll: the count does not show it yet.
    w.start("f", Running, T0 + 59 * SECOND);
    w.set("f", Failed);
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (0, 0, 0, 0));
    poll(&mut t, &[&w], T0 + 120 * SECOND);
    assert_eq!(counts(&t, "wf"), (1, 0, 1, 0));
}

#[test]
fn a_shrinking_count_loses_no_ending() {
    let mut w = FakeWf::new("wf");
    w.start("done", Ended, T0 - 7200 * SECOND);
    w.start("x", Waiting, T0 - 600 * SECOND);
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    // Kapso deletes an old execution while a live one ends: the count drops by one.
    w.delete("done");
    w.set("x", Ended);
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (0, 1, 0, 0));
}

#[test]
fn a_start_in_the_year_9999_does_not_stop_counting() {
    let mut w = FakeWf::new("wf");
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    w.start("odd", Running, T0 + SECOND);
    w.rows[0].shown_start = Some(crate::clock::micros(
        time::macros::datetime!(9999-01-01 0:00 UTC),
    ));
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    for i in 0..3 {
        w.start(&format!("n{i}"), Running, T0 + 61 * SECOND + i);
        w.set(&format!("n{i}"), Ended);
        poll(&mut t, &[&w], T0 + (i + 2) * 60 * SECOND);
    }
    assert_eq!(counts(&t, "wf"), (4, 3, 0, 0));
    assert!(t.anomalies["implausible_timestamp"] >= 1);
}

#[test]
fn a_deleted_live_execution_is_not_an_ending() {
    let mut w = FakeWf::new("wf");
    w.start("x", Handoff, T0 - 600 * SECOND);
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    w.delete("x");
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    // Missing from every answer: pending, then read by id, which answers 404.
    assert_eq!(t.snapshot(100).outcome_unknown[&Arc::from("wf")], 1);
    poll(&mut t, &[&w], T0 + 120 * SECOND);
    assert_eq!(t.snapshot(100).outcome_unknown[&Arc::from("wf")], 0);
    assert_eq!(counts(&t, "wf"), (0, 0, 0, 0));
    assert_eq!(t.anomalies["outcome_lost"], 1);
    assert_eq!(live_count(&t, "wf", Handoff), 0);
}

#[test]
fn handoff_entries_count_once_each() {
    let mut w = FakeWf::new("wf");
    w.start("x", Waiting, T0 - 600 * SECOND);
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    w.set("x", Handoff);
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    poll(&mut t, &[&w], T0 + 120 * SECOND);
    w.set("x", Waiting);
    poll(&mut t, &[&w], T0 + 180 * SECOND);
    w.set("x", Handoff);
    poll(&mut t, &[&w], T0 + 240 * SECOND);
    // Started and handed off between two polls.
    w.start("y", Handoff, T0 + 241 * SECOND);
    poll(&mut t, &[&w], T0 + 300 * SECOND);
    assert_eq!(counts(&t, "wf"), (1, 0, 0, 3));
}

#[test]
fn a_failing_workflow_keeps_its_state_while_the_others_update() {
    let mut a = FakeWf::new("a");
    let mut b = FakeWf::new("b");
    a.start("a1", Waiting, T0 - 60 * SECOND);
    b.start("b1", Waiting, T0 - 60 * SECOND);
    let mut t = Tracker::new();
    poll(&mut t, &[&a, &b], T0);
    a.set("a1", Ended);
    b.set("b1", Ended);
    let now = T0 + 60 * SECOND;
    let listed = vec![a.listing(now), b.listing(now)];
    let fetches = vec![
        ("a".to_owned(), Err(("client_error", "HTTP 404".to_owned()))),
        ("b".to_owned(), Ok(b.fetch(&t, now))),
    ];
    t.commit_project(&listed, fetches, from_micros(now));
    let s = t.snapshot(100);
    assert_eq!(live_count(&t, "a", Waiting), 1);
    assert!(!s.workflow_health[&Arc::from("a")].up);
    assert_eq!(s.workflow_errors[&(Arc::from("a"), "client_error")], 1);
    assert_eq!(counts(&t, "b"), (0, 1, 0, 0));
    assert!(s.workflow_health[&Arc::from("b")].up);
    // The next good poll of a counts its ending.
    poll(&mut t, &[&a, &b], now + 60 * SECOND);
    assert_eq!(counts(&t, "a"), (0, 1, 0, 0));
}

#[test]
fn without_execution_count_every_poll_lists_the_window_and_stays_exact() {
    let mut w = FakeWf::new("wf");
    w.missing_count = true;
    w.precision = 1000;
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    for i in 1..6 {
        w.start(
            &format!("s{i}"),
            Running,
            T0 + i * 60 * SECOND - 30 * SECOND,
        );
        w.start(
            &format!("f{i}"),
            Running,
            T0 + i * 60 * SECOND - 20 * SECOND,
        );
        w.set(&format!("f{i}"), Failed);
        if i > 1 {
            w.set(&format!("s{}", i - 1), Ended);
        }
        poll(&mut t, &[&w], T0 + i * 60 * SECOND);
    }
    assert_eq!(counts(&t, "wf"), (10, 4, 5, 0));
}

fn conv_row(id: &str, status: ExecutionStatus, start: Micros) -> Execution {
    Execution {
        id: id.to_owned(),
        status,
        whatsapp_conversation_id: Some("c-1".to_owned()),
        started_at: Some(from_micros(start)),
        last_event_at: Some(from_micros(start)),
        workflow: Some(Box::new(crate::kapso::models::WorkflowMinimal {
            id: Some("wf-1".to_owned()),
            name: Some("Support".to_owned()),
            status: Some("active".to_owned()),
        })),
        current_step: None,
    }
}

fn conv_poll(t: &mut Tracker, rows: Vec<Execution>, now: Micros) {
    let fetch = ConversationFetch {
        rows,
        resolved: Vec::new(),
        gone: Vec::new(),
    };
    t.commit_conversations(
        &["c-1".to_owned()],
        vec![("c-1".to_owned(), Ok(fetch))],
        from_micros(now),
    );
}

#[test]
fn conversation_mode_counts_by_id() {
    let mut t = Tracker::new();
    conv_poll(&mut t, vec![conv_row("old", Ended, T0 - 600 * SECOND)], T0);
    let rows = vec![
        conv_row("new", Failed, T0 + 10 * SECOND),
        // The same row twice (two pages): once.
        conv_row("new", Failed, T0 + 10 * SECOND),
        conv_row("run", Running, T0 + 20 * SECOND),
        conv_row("old", Ended, T0 - 600 * SECOND),
    ];
    conv_poll(&mut t, rows.clone(), T0 + 60 * SECOND);
    conv_poll(&mut t, rows, T0 + 120 * SECOND);
    assert_eq!(counts(&t, "wf-1"), (2, 0, 1, 0));
    // The running one drops out of one listing (a skipped page): pending, not ended.
    conv_poll(&mut t, vec![], T0 + 180 * SECOND);
    assert_eq!(counts(&t, "wf-1"), (2, 0, 1, 0));
    assert_eq!(t.conversation_followups("c-1", &[]), vec!["run".to_owned()]);
    conv_poll(
        &mut t,
        vec![conv_row("run", Ended, T0 + 20 * SECOND)],
        T0 + 240 * SECOND,
    );
    assert_eq!(counts(&t, "wf-1"), (2, 1, 1, 0));
}

#[test]
fn ids_that_left_are_not_kept() {
    let mut t = Tracker::new();
    conv_poll(&mut t, vec![conv_row("e-1", Waiting, T0)], T0);
    assert!(t.interned.contains("c-1") && t.interned.contains("wf-1"));
    t.commit_conversations(&[], vec![], from_micros(T0 + SECOND));
    assert!(!t.interned.contains("c-1"), "{:?}", t.interned);
}

/// (step, type) -> (running, waiting, handoff, oldest waiting) of one workflow's step series.
fn steps(t: &Tracker, wf: &str) -> BTreeMap<(String, String), ([u64; 3], Option<Micros>)> {
    t.snapshot(100)
        .steps
        .iter()
        .filter(|s| &*s.workflow_id == wf)
        .map(|s| {
            (
                (s.step.id.to_string(), s.step.step_type.to_string()),
                (s.count, s.oldest_last_event[1]),
            )
        })
        .collect()
}

/// Failures per step of one workflow, by step identifier.
fn step_failures(t: &Tracker, wf: &str) -> BTreeMap<String, u64> {
    t.counter_snapshot()
        .step_failures
        .iter()
        .filter(|((w, _), _)| &**w == wf)
        .map(|((_, s), n)| (s.id.to_string(), *n))
        .collect()
}

fn key(step: &str) -> (String, String) {
    if step.is_empty() || step == StepKey::OTHER {
        return (step.to_owned(), String::new());
    }
    (step.to_owned(), format!("Type{step}"))
}

#[test]
fn steps_show_where_executions_sit_and_where_they_fail() {
    let mut w = FakeWf::new("wf");
    for (id, status, step) in [
        ("a", Waiting, Some("ask")),
        ("b", Waiting, Some("ask")),
        ("c", Running, Some("reply")),
        ("d", Handoff, Some("human")),
        ("e", Running, None),
    ] {
        w.start(id, status, T0 - 600 * SECOND);
        w.at_step(id, step);
    }
    let mut t = Tracker::new();
    poll(&mut t, &[&w], T0);
    let expected = BTreeMap::from([
        (key(""), ([1, 0, 0], None)),
        (key("ask"), ([0, 2, 0], Some(T0 - 600 * SECOND))),
        (key("human"), ([0, 0, 1], None)),
        (key("reply"), ([1, 0, 0], None)),
    ]);
    assert_eq!(steps(&t, "wf"), expected);
    // Every step seen has a failure counter, at 0.
    assert_eq!(
        step_failures(&t, "wf"),
        BTreeMap::from([
            ("".into(), 0),
            ("ask".into(), 0),
            ("human".into(), 0),
            ("reply".into(), 0)
        ])
    );

    // c moves on and fails at `charge`; a fails where it waited; d leaves handoff for reply.
    w.at_step("c", Some("charge"));
    w.set("c", Failed);
    w.set("a", Failed);
    w.set("d", Running);
    w.at_step("d", Some("reply"));
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(counts(&t, "wf"), (0, 0, 2, 0));
    let failures = step_failures(&t, "wf");
    assert_eq!(failures["charge"], 1);
    assert_eq!(failures["ask"], 1);
    assert_eq!(failures["reply"], 0);
    let now = steps(&t, "wf");
    assert_eq!(now[&key("ask")].0, [0, 1, 0]);
    assert_eq!(now[&key("reply")].0, [1, 0, 0]);
    // Steps nobody sits at any more stay, at zero, for an hour.
    assert_eq!(now[&key("human")].0, [0, 0, 0]);
    assert_eq!(now[&key("charge")].0, [0, 0, 0]);
    poll(&mut t, &[&w], T0 + 60 * SECOND + STEP_MEMORY);
    let later = steps(&t, "wf");
    assert!(!later.contains_key(&key("human")), "{later:?}");
    assert!(!later.contains_key(&key("charge")), "{later:?}");
    // Counters stay when their step's gauges leave.
    assert_eq!(step_failures(&t, "wf")["charge"], 1);
}

#[test]
fn past_the_cap_the_least_populated_steps_fold_into_other() {
    let mut w = FakeWf::new("wf");
    // s0 has 4 executions, s1 3, s2 2, s3 1.
    let mut n = 0;
    for (step, count) in [("s0", 4), ("s1", 3), ("s2", 2), ("s3", 1)] {
        for _ in 0..count {
            let id = format!("e{n}");
            n += 1;
            w.start(&id, Waiting, T0 - 60 * SECOND - n * SECOND);
            w.at_step(&id, Some(step));
        }
    }
    let mut t = Tracker::new();
    t.set_max_steps(2);
    poll(&mut t, &[&w], T0);
    let got = steps(&t, "wf");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[&key("s0")].0, [0, 4, 0]);
    assert_eq!(got[&key("s1")].0, [0, 3, 0]);
    // s2 and s3 share `other`: their counts add up, the oldest event is the older one.
    assert_eq!(got[&key("other")].0, [0, 3, 0]);
    assert_eq!(got[&key("other")].1, Some(T0 - 60 * SECOND - 10 * SECOND));
    let total: u64 = got.values().map(|(c, _)| c.iter().sum::<u64>()).sum();
    assert_eq!(total, 10, "folding loses no execution");

    // Failure counters: the first two steps seen keep theirs; the rest count under other,
    // and a step that has its own counter keeps it when the gauges rank it lower.
    let before = step_failures(&t, "wf");
    assert_eq!(before.len(), 3, "{before:?}");
    for id in ["e9", "e0"] {
        w.set(id, Failed);
    }
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    let after = step_failures(&t, "wf");
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert_eq!(after.values().sum::<u64>(), 2);
    assert_eq!(counts(&t, "wf").2, 2);
}

#[test]
fn a_failure_a_webhook_told_is_counted_once_and_its_step_from_the_failed_row() {
    let mut w = FakeWf::new("wf");
    w.start("x", Running, T0 - 60 * SECOND);
    w.at_step("x", Some("reply"));
    let mut t = Tracker::new();
    t.enable_events();
    poll(&mut t, &[&w], T0);
    w.at_step("x", Some("charge"));
    w.set("x", Failed);
    let ev = Event {
        kind: EventKind::Failed,
        workflow_id: "wf".into(),
        execution_id: "x".into(),
        conversation_id: None,
        occurred_at: T0 + 10 * SECOND,
    };
    assert_eq!(
        t.apply_event(&ev, false, T0 + 10 * SECOND),
        Applied::Counted
    );
    assert_eq!(counts(&t, "wf").2, 1);
    assert_eq!(
        step_failures(&t, "wf")["reply"],
        0,
        "the event names no step"
    );
    assert_eq!(
        t.apply_event(&ev, false, T0 + 11 * SECOND),
        Applied::AlreadyCounted
    );
    poll(&mut t, &[&w], T0 + 60 * SECOND);
    assert_eq!(
        counts(&t, "wf").2,
        1,
        "the poll does not count the failure again"
    );
    assert_eq!(step_failures(&t, "wf")["charge"], 1);
    assert_eq!(t.snapshot(100).outcome_unknown[&Arc::from("wf")], 0);
    // A retry after the poll finds the execution finished.
    assert_eq!(
        t.apply_event(&ev, false, T0 + 70 * SECOND),
        Applied::AlreadyCounted
    );
    poll(&mut t, &[&w], T0 + 120 * SECOND);
    assert_eq!(counts(&t, "wf").2, 1);
    assert_eq!(step_failures(&t, "wf")["charge"], 1);
}

/// The model-based property test: random worlds, random transitions between polls, random
/// API variances and poll times, against the ground truth the model keeps.
mod model {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Which variances a run has.
    #[derive(Clone, Copy, Debug)]
    struct Variances {
        precision: Micros,
        count_lag: Micros,
        missing_count: bool,
        dup_listing: bool,
        dup_rows: bool,
        flaky_listing: bool,
        unknown_status: bool,
        bad_rows: bool,
        delete_terminal: bool,
        delete_live: bool,
        shrinking_count: bool,
    }

    impl Variances {
        fn from_bits(bits: u16) -> Self {
            let on = |i: u16| bits & (1 << i) != 0;
            Self {
                precision: [1, 1000, SECOND, SECOND][usize::from(bits & 3)],
                count_lag: if on(2) { 2 * SECOND } else { 0 },
                missing_count: on(3),
                dup_listing: on(4),
                dup_rows: on(5),
                flaky_listing: on(6),
                unknown_status: on(7),
                bad_rows: on(8),
                delete_terminal: on(9),
                delete_live: on(10),
                shrinking_count: on(11),
            }
        }

        /// Whether the API gives enough for the counters to be exact once the world rests:
        /// a count that shrinks can hide a start behind a deletion.
        fn exact(&self) -> bool {
            !self.shrinking_count
        }
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Truth {
        started: u64,
        ended: u64,
        failed: u64,
        handoffs: u64,
    }

    struct World {
        v: Variances,
        rng: StdRng,
        wfs: Vec<FakeWf>,
        truth: Vec<Truth>,
        now: Micros,
        next_id: u64,
        /// Listings each workflow is still hidden from.
        hidden: Vec<u32>,
        empty_next: bool,
        baseline: Option<Micros>,
        /// Executions that changed status more than once since the last poll, or went
        /// through a status the exporter does not know: a poller cannot see every handoff.
        handoffs_exact: bool,
        changed: std::collections::HashSet<String>,
        /// Executions that existed at the last poll (only those may be deleted while live, or
        /// a start would be invisible to any poller).
        seen: std::collections::HashSet<String>,
        seen_terminal: std::collections::HashSet<String>,
    }

    impl World {
        fn new(seed: u64, v: Variances) -> Self {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = rng.random_range(1..=3);
            let mut w = World {
                v,
                rng,
                wfs: (0..n)
                    .map(|i| {
                        let mut f = FakeWf::new(&format!("wf-{i}"));
                        f.precision = v.precision;
                        f.count_lag = v.count_lag;
                        f.missing_count = v.missing_count;
                        f.dup_rows = v.dup_rows;
                        f
                    })
                    .collect(),
                truth: vec![Truth::default(); n],
                now: T0,
                next_id: 0,
                hidden: vec![0; n],
                empty_next: false,
                baseline: None,
                handoffs_exact: true,
                changed: Default::default(),
                seen: Default::default(),
                seen_terminal: Default::default(),
            };
            // History before the exporter starts.
            for _ in 0..w.rng.random_range(0..12) {
                w.now += w.rng.random_range(0..20 * SECOND);
                w.transition(false);
            }
            w
        }

        fn counting(&self) -> bool {
            self.baseline.is_some()
        }

        fn start(&mut self, wf: usize, status: ExecutionStatus) {
            self.next_id += 1;
            let id = format!("x{:05}", self.next_id);
            self.wfs[wf].start(&id, status, self.now);
            if self.v.bad_rows && self.rng.random_bool(0.15) {
                let shown = if self.rng.random_bool(0.5) {
                    None
                } else {
                    Some(crate::clock::micros(
                        time::macros::datetime!(9999-12-31 0:00 UTC),
                    ))
                };
                self.wfs[wf].rows.last_mut().unwrap().shown_start = shown;
            }
            self.changed.insert(id);
            if self.counting() {
                self.truth[wf].started += 1;
                if status == Handoff {
                    self.truth[wf].handoffs += 1;
                }
            }
        }

        /// One random change at `now`; `paused` allows a status the exporter does not know.
        fn transition(&mut self, paused: bool) {
            let wf = self.rng.random_range(0..self.wfs.len());
            let candidates: Vec<(String, ExecutionStatus)> = self.wfs[wf]
                .rows
                .iter()
                .filter(|r| !r.status.is_terminal())
                .map(|r| (r.id.clone(), r.status))
                .collect();
            let roll = self.rng.random_range(0..100);
            if candidates.is_empty() || roll < 30 {
                let status =
                    [Running, Waiting, Handoff, Ended, Failed][self.rng.random_range(0..5)];
                if status.is_terminal() {
                    // Started and finished between two polls.
                    self.start(wf, Running);
                    let id = format!("x{:05}", self.next_id);
                    self.finish(wf, &id, Running, status);
                } else {
                    self.start(wf, status);
                }
                return;
            }
            let (id, from) = candidates[self.rng.random_range(0..candidates.len())].clone();
            if !self.changed.insert(id.clone()) {
                self.handoffs_exact = false;
            }
            match roll {
                30..=44 => self.finish(wf, &id, from, Ended),
                45..=54 => self.finish(wf, &id, from, Failed),
                55..=64 if paused && self.v.unknown_status => {
                    self.handoffs_exact = false;
                    self.wfs[wf].set(&id, ExecutionStatus::Unknown);
                }
                65..=69 if self.v.delete_live && self.seen.contains(&id) => {
                    self.wfs[wf].delete(&id);
                    if self.v.shrinking_count {
                        self.wfs[wf].deleted_since_count = 0;
                    } else {
                        self.wfs[wf].deleted_since_count += 1;
                    }
                }
                _ => {
                    let to = [Running, Waiting, Handoff][self.rng.random_range(0..3)];
                    if to == Handoff && from != Handoff && self.counting() {
                        self.truth[wf].handoffs += 1;
                    }
                    self.wfs[wf].set(&id, to);
                }
            }
        }

        fn finish(&mut self, wf: usize, id: &str, _from: ExecutionStatus, to: ExecutionStatus) {
            self.wfs[wf].set(id, to);
            if self.counting() {
                match to {
                    Ended => self.truth[wf].ended += 1,
                    _ => self.truth[wf].failed += 1,
                }
            }
        }

        /// Deletes a finished execution a poll already saw finished (Kapso's retention; an
        /// execution finished and deleted between two polls has an outcome nobody can read).
        fn delete_terminal(&mut self) {
            let wf = self.rng.random_range(0..self.wfs.len());
            let old = self.wfs[wf]
                .rows
                .iter()
                .find(|r| r.status.is_terminal() && self.seen_terminal.contains(&r.id))
                .map(|r| r.id.clone());
            if let Some(id) = old {
                self.wfs[wf].delete(&id);
                if !self.v.shrinking_count {
                    self.wfs[wf].deleted_since_count += 1;
                }
            }
        }

        /// The changes between two polls, spread over `span`.
        fn evolve(&mut self, span: Micros, changes: usize) {
            let end = self.now + span;
            for _ in 0..changes {
                self.now =
                    (self.now + self.rng.random_range(0..=span / changes.max(1) as i64)).min(end);
                self.transition(true);
                if self.v.delete_terminal && self.rng.random_bool(0.2) {
                    self.delete_terminal();
                }
            }
            self.now = end;
        }

        fn poll(&mut self, t: &mut Tracker) {
            let mut listed: Vec<&FakeWf> = Vec::new();
            if !std::mem::take(&mut self.empty_next) {
                for (i, w) in self.wfs.iter().enumerate() {
                    if self.hidden[i] > 0 {
                        self.hidden[i] -= 1;
                        continue;
                    }
                    listed.push(w);
                    if self.v.dup_listing && i == 0 {
                        listed.push(w);
                    }
                }
            }
            poll(t, &listed, self.now);
            // Only what this poll could read counts as seen (not hidden workflows).
            let rows = || listed.iter().flat_map(|w| w.rows.iter());
            let counted_by = self.now - self.v.count_lag - SECOND;
            let seen: Vec<String> = rows()
                .filter(|r| r.status.is_live() || r.start <= counted_by)
                .map(|r| r.id.clone())
                .collect();
            // Seen finished by a poll whose counts showed it (a lagging count hides it a moment).
            let terminal: Vec<String> = rows()
                .filter(|r| r.status.is_terminal() && r.start <= counted_by)
                .map(|r| r.id.clone())
                .collect();
            let listed_ids: std::collections::HashSet<String> =
                listed.iter().map(|w| w.id.clone()).collect();
            self.baseline.get_or_insert(self.now);
            let unlisted = |id: &String, wfs: &[FakeWf]| {
                wfs.iter()
                    .any(|w| !listed_ids.contains(&w.id) && w.rows.iter().any(|r| &r.id == id))
            };
            let wfs = std::mem::take(&mut self.wfs);
            // A change is seen by the first poll that lists its workflow.
            self.changed.retain(|id| unlisted(id, &wfs));
            self.seen.retain(|id| unlisted(id, &wfs));
            self.seen.extend(seen);
            self.seen_terminal.retain(|id| unlisted(id, &wfs));
            self.seen_terminal.extend(terminal);
            self.wfs = wfs;
            // Missing from a listing or two, never longer than the grace period, and only
            // once it was listed again.
            let all_listed = self.wfs.iter().all(|w| listed_ids.contains(&w.id));
            if self.v.flaky_listing && all_listed && self.rng.random_bool(0.3) {
                if self.rng.random_bool(0.3) {
                    self.empty_next = true;
                } else {
                    let i = self.rng.random_range(0..self.wfs.len());
                    self.hidden[i] = self.rng.random_range(1..=2);
                }
            }
        }
    }

    /// Counters of every workflow, as the tracker shows them.
    fn shown(t: &Tracker, w: &World) -> Vec<Truth> {
        w.wfs
            .iter()
            .map(|f| {
                let (started, ended, failed, handoffs) = counts(t, &f.id);
                Truth {
                    started,
                    ended,
                    failed,
                    handoffs,
                }
            })
            .collect()
    }

    fn never_too_high(
        got: &[Truth],
        truth: &[Truth],
        before: &[Truth],
    ) -> Result<(), TestCaseError> {
        for (i, (g, t)) in got.iter().zip(truth).enumerate() {
            prop_assert!(
                g.started <= t.started
                    && g.ended <= t.ended
                    && g.failed <= t.failed
                    && g.handoffs <= t.handoffs,
                "workflow {i}: counted {g:?}, truth {t:?}"
            );
            if let Some(b) = before.get(i) {
                prop_assert!(
                    g.started >= b.started
                        && g.ended >= b.ended
                        && g.failed >= b.failed
                        && g.handoffs >= b.handoffs,
                    "workflow {i} went backwards: {b:?} -> {g:?}"
                );
            }
        }
        Ok(())
    }

    fn run(seed: u64, bits: u16, polls: usize) -> Result<(), TestCaseError> {
        let v = Variances::from_bits(bits);
        let mut w = World::new(seed, v);
        let mut t = Tracker::new();
        w.poll(&mut t);
        let mut before = shown(&t, &w);
        for _ in 0..polls {
            let span = w.rng.random_range(1..=90) * SECOND + w.rng.random_range(0..SECOND);
            let changes = w.rng.random_range(0..10);
            w.evolve(span, changes);
            w.poll(&mut t);
            let got = shown(&t, &w);
            never_too_high(&got, &w.truth, &before)?;
            before = got;
        }
        // The world rests: past the count lag and the grace period of hidden workflows, every
        // workflow listed, pending executions read by id.
        w.hidden.iter_mut().for_each(|h| *h = 0);
        w.empty_next = false;
        for _ in 0..4 {
            w.now += 60 * SECOND;
            w.poll(&mut t);
            w.hidden.iter_mut().for_each(|h| *h = 0);
            w.empty_next = false;
        }
        let got = shown(&t, &w);
        never_too_high(&got, &w.truth, &before)?;
        if v.exact() {
            for (i, (g, truth)) in got.iter().zip(&w.truth).enumerate() {
                prop_assert_eq!(
                    (g.started, g.ended, g.failed),
                    (truth.started, truth.ended, truth.failed),
                    "workflow {} with {:?}",
                    i,
                    v
                );
                if w.handoffs_exact {
                    prop_assert_eq!(g.handoffs, truth.handoffs, "handoffs of workflow {}", i);
                }
            }
            // And the gauges equal the world.
            for f in &w.wfs {
                for s in ExecutionStatus::LIVE {
                    let want = f.rows.iter().filter(|r| r.status == s).count() as u64;
                    prop_assert_eq!(live_count(&t, &f.id, s), want, "{} {:?}", f.id, s);
                }
            }
        }
        Ok(())
    }

    /// `PROPTEST_CASES` sets the number of cases (default 256); the seed is fixed, so a
    /// failure repeats.
    #[test]
    fn counters_are_never_too_high_and_exact_where_the_api_allows() {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256);
        let mut runner = TestRunner::new(Config {
            cases,
            rng_seed: RngSeed::Fixed(0x004b_4150_534f),
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(
                &(any::<u64>(), any::<u16>(), 1usize..12),
                |(seed, bits, polls)| run(seed, bits, polls),
            )
            .unwrap();
    }

    /// Every variance alone, and all of them at once, on a fixed set of worlds.
    #[test]
    fn each_variance_alone_and_all_together() {
        for bit in 0..12u16 {
            for seed in 0..20 {
                run(seed, 1 << bit, 8).unwrap();
            }
        }
        for seed in 0..40 {
            run(seed, 0x0fff, 10).unwrap();
        }
    }

    #[test]
    fn the_model_sees_what_it_should() {
        // The model is not vacuous: a world evolves, and counts move.
        let mut w = World::new(7, Variances::from_bits(0));
        let mut t = Tracker::new();
        w.poll(&mut t);
        w.evolve(60 * SECOND, 9);
        w.poll(&mut t);
        let total: u64 = w.truth.iter().map(|t| t.started + t.ended + t.failed).sum();
        assert!(total > 0);
        let got = shown(&t, &w);
        for (g, truth) in got.iter().zip(&w.truth) {
            assert_eq!(
                (g.started, g.ended, g.failed),
                (truth.started, truth.ended, truth.failed)
            );
        }
    }
}
