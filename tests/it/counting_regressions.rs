//! One deterministic end-to-end test per counting example of the issue that led to counting by
//! execution id: the exporter in process against the simulator with the matching API
//! variance, one manual clock, and the exact numbers the issue says came out wrong.
//!
//! | test | the example | it counted |
//! |---|---|---|
//! | `whole_second_last_executed_at_five_polls`, `millisecond_last_executed_at_five_polls` | `last_executed_at` coarser than rows and cursors, 7 starts, 6 ends, 3 failures over five polls | 9 and 8 |
//! | `*_born_between_polls` | 2 ended, 1 failed, 1 waiting born between two polls | +6 and +4 |
//! | `same_second_either_side_of_a_poll_*` | one running, one failed, started in the same second either side of a poll | running one ended |
//! | `paused_and_back_then_ended_counts_five` | 5 executions to `paused` and back, then ended | 8 |
//! | `a_workflow_listed_twice_counts_once` | a workflow twice in `GET /workflows` | doubled |
//! | `one_empty_workflow_list_keeps_the_series` | one empty `GET /workflows` | series gone, ended went back |
//! | `a_lagging_count_does_not_turn_a_failure_into_an_ending` | `execution_count` lagging by 1 or 2 s | a failure as an ending |
//! | `a_shrinking_count_loses_no_ending` | `execution_count` drops as old executions are deleted | an ending lost |
//! | `a_start_in_the_year_9999_does_not_stop_counting` | one `started_at` in 9999 | later starts lost |
//! | `a_workflow_answering_404_*`, `..._422_*`, `..._undecodable_*` | one workflow's executions fail | its state lost or the poll failed |
//!
//! The client-side examples of the issue (Retry-After overflow, Retry-After 3 with Remaining 0,
//! empty pages with fresh cursors) are covered with the client.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::counting_support::{
    Counts, anomalies, counts, differences, last_success, live, live3, ms, outcome_unknown,
    poll_errors, truth_counts, truth_live3, up, workflow_series,
};
use crate::support::{Harness, KEY, Samples, config, parse, test_retry, test_start};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kapso_exporter::app;
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{
    ExecStatus, Precision, Precisions, Simulator, StartOverride, Variance,
};

use ExecStatus::{Ended, Failed, Handoff, Running, Waiting};

/// A manual clock at `test_start()` (a whole second) and an empty simulator on it.
fn world(variance: Variance) -> (Clock, Simulator) {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    sim.set_variance(variance);
    (clock, sim)
}

/// Only `last_executed_at` of workflows in `p`; rows and cursors keep microseconds.
fn coarse_last_executed(p: Precision) -> Variance {
    Variance {
        precision: Precisions {
            workflow_last_executed_at: p,
            ..Precisions::default()
        },
        ..Variance::default()
    }
}

/// Every timestamp field and the cursors in `p`.
fn all_in(p: Precision) -> Variance {
    Variance {
        precision: Precisions::all(p),
        ..Variance::default()
    }
}

async fn samples(h: &Harness) -> Samples {
    parse(&h.scrape().await)
}

/// The exporter's counters of `wf` (0 for none yet).
async fn shown(h: &Harness, wf: &str) -> Counts {
    counts(&samples(h).await, wf).unwrap_or_default()
}

/// The exporter's counters and live gauges of each workflow equal the ground truth.
async fn assert_truth(h: &Harness, wfs: &[&str], when: &str) {
    let s = samples(h).await;
    let truth = h.sim.ground_truth();
    for wf in wfs {
        let got = counts(&s, wf).unwrap_or_default();
        let want = truth_counts(&truth, wf);
        assert_eq!(
            got.sef(),
            want.sef(),
            "{when}: (started, ended, failed) of {wf}"
        );
        assert_eq!(
            live3(&s, wf),
            Some(truth_live3(&truth, wf)),
            "{when}: live gauges (running, waiting, handoff) of {wf}"
        );
    }
}

/// History: `n` executions in `status` started at the current instant, then the clock moves
/// on an hour and `frac` milliseconds, so they are old when the exporter starts.
fn history(sim: &Simulator, clock: &Clock, wf: &str, n: usize, status: ExecStatus) -> Vec<String> {
    let ids = (0..n)
        .map(|_| sim.start_execution(wf, None, status))
        .collect();
    clock.advance(Duration::from_secs(3600));
    ids
}

/// The baseline: ground truth counts from here, and the exporter's first poll.
async fn baseline(h: &mut Harness) {
    h.sim.mark();
    h.poll().await;
}

// ----- coarse cursors -----------------------------------------------------------------------

/// Only the cursors' timestamps in `p`; the server still compares them with full-precision
/// keys, so following such a cursor skips the rest of the page's last second.
fn coarse_cursor(p: Precision) -> Variance {
    Variance {
        precision: Precisions {
            cursor: p,
            ..Precisions::default()
        },
        ..Variance::default()
    }
}

/// `n` executions in `status` started in the current second (the standing clock bumps each
/// by 1 µs) followed by `m` in the next second.
fn two_seconds(sim: &Simulator, clock: &Clock, wf: &str, n: usize, m: usize, status: ExecStatus) {
    for _ in 0..n {
        sim.start_execution(wf, None, status);
    }
    clock.advance(Duration::from_secs(1));
    for _ in 0..m {
        sim.start_execution(wf, None, status);
    }
}

/// Lists longer than a page, with their page boundaries inside one second: the live list
/// at the first poll and a window listing at the second both lose no row.
async fn pages_inside_one_second(variance: Variance, per_second: usize) {
    let (clock, sim) = world(variance);
    let wf = sim.add_workflow("Support", "active");
    two_seconds(&sim, &clock, &wf, per_second, per_second, Waiting);
    let old = sim.start_execution(&wf, None, Running);
    clock.advance(Duration::from_secs(3600) + ms(250));
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    assert_truth(&h, &[&wf], "the first poll").await;
    let sim = h.sim.clone();

    clock.advance(Duration::from_secs(30));
    two_seconds(&sim, &clock, &wf, per_second, per_second, Ended);
    sim.set_status(&old, Failed);
    clock.advance(Duration::from_secs(30));
    h.poll().await;
    assert_truth(&h, &[&wf], "the second poll").await;
    assert_eq!(
        shown(&h, &wf).await.sef(),
        (2 * per_second as u64, 2 * per_second as u64, 1)
    );
}

#[tokio::test]
async fn whole_second_cursors_skip_no_row_at_a_page_boundary() {
    pages_inside_one_second(coarse_cursor(Precision::Seconds), 150).await;
}

#[tokio::test]
async fn millisecond_cursors_skip_no_row_at_a_page_boundary() {
    pages_inside_one_second(coarse_cursor(Precision::Millis), 150).await;
}

/// Rows as coarse as the cursors: slices of whole seconds list every row where a second
/// holds fewer rows than a page.
#[tokio::test]
async fn everything_in_seconds_skips_no_row_at_a_page_boundary() {
    pages_inside_one_second(all_in(Precision::Seconds), 70).await;
}

// ----- coarse last_executed_at -------------------------------------------------------------

/// Five polls a fraction of a second apart, with starts in the same second as the previous
/// poll and the previous `last_executed_at`: 7 starts, 6 ends (4 new, 2 old), 3 failures.
async fn five_polls(p: Precision) {
    let (clock, sim) = world(coarse_last_executed(p));
    let wf = sim.add_workflow("Support", "active");
    let old = history(&sim, &clock, &wf, 4, Waiting);
    clock.advance(ms(400));
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    let start = |status| sim.start_execution(&wf, None, status);
    let wfs = [wf.as_str()];

    clock.advance(ms(200));
    let a = start(Running);
    clock.advance(ms(200));
    let b = start(Running);
    sim.set_status(&b, Ended);
    clock.advance(ms(300));
    sim.set_status(&old[0], Ended);
    let c = start(Running);
    sim.set_status(&c, Failed);
    clock.advance(ms(200));
    h.poll().await;
    assert_truth(&h, &wfs, "poll 1").await;
    assert_eq!(shown(&h, &wf).await.sef(), (3, 2, 1), "poll 1");

    clock.advance(ms(100));
    let d = start(Waiting);
    clock.advance(ms(300));
    sim.set_status(&a, Ended);
    clock.advance(ms(200));
    h.poll().await;
    assert_truth(&h, &wfs, "poll 2").await;

    clock.advance(ms(400));
    let e = start(Running);
    sim.set_status(&e, Failed);
    sim.set_status(&old[1], Ended);
    clock.advance(ms(300));
    h.poll().await;
    assert_truth(&h, &wfs, "poll 3").await;

    clock.advance(ms(200));
    start(Running);
    clock.advance(ms(500));
    sim.set_status(&old[2], Failed);
    clock.advance(ms(200));
    h.poll().await;
    assert_truth(&h, &wfs, "poll 4").await;

    clock.advance(ms(100));
    let g = start(Running);
    sim.set_status(&g, Ended);
    sim.set_status(&d, Ended);
    clock.advance(ms(200));
    h.poll().await;
    assert_truth(&h, &wfs, "poll 5").await;
    assert_eq!(shown(&h, &wf).await.sef(), (7, 6, 3), "after five polls");

    // Quiet polls whose windows overlap the last ones: nothing counts twice.
    for step in [ms(300), ms(1000), ms(5000), ms(60_000)] {
        clock.advance(step);
        h.poll().await;
        assert_eq!(shown(&h, &wf).await.sef(), (7, 6, 3), "quiet poll");
    }
    let s = samples(&h).await;
    assert_eq!(live3(&s, &wf), Some([1, 1, 0]), "f running, old[3] waiting");
}

#[tokio::test]
async fn whole_second_last_executed_at_five_polls() {
    five_polls(Precision::Seconds).await;
}

#[tokio::test]
async fn millisecond_last_executed_at_five_polls() {
    five_polls(Precision::Millis).await;
}

/// Born between two polls a second apart, in the second of each: 2 ended, 1 failed, 1 waiting.
async fn born_between_polls(p: Precision) {
    let (clock, sim) = world(coarse_last_executed(p));
    let wf = sim.add_workflow("Support", "active");
    history(&sim, &clock, &wf, 1, Waiting);
    clock.advance(ms(500));
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let before = shown(&h, &wf).await;
    let sim = h.sim.clone();
    let mut born = Vec::new();
    for step in [200, 200, 200, 100] {
        clock.advance(ms(step));
        born.push(sim.start_execution(&wf, None, Running));
    }
    sim.set_status(&born[0], Ended);
    sim.set_status(&born[1], Ended);
    sim.set_status(&born[2], Failed);
    sim.set_status(&born[3], Waiting);
    clock.advance(ms(400));
    h.poll().await;
    let after = shown(&h, &wf).await;
    assert_eq!(
        (
            after.started - before.started,
            after.ended - before.ended,
            after.failed - before.failed
        ),
        (4, 2, 1),
        "one poll: +started, +ended, +failed"
    );
    assert_eq!(live(&samples(&h).await, &wf, Waiting), Some(2));
    for step in [ms(300), ms(1000), ms(5000), ms(60_000)] {
        clock.advance(step);
        h.poll().await;
        assert_eq!(
            shown(&h, &wf).await,
            after,
            "a later poll moved the counters"
        );
    }
    assert_truth(&h, &[&wf], "the end").await;
}

#[tokio::test]
async fn whole_second_last_executed_at_born_between_polls() {
    born_between_polls(Precision::Seconds).await;
}

#[tokio::test]
async fn millisecond_last_executed_at_born_between_polls() {
    born_between_polls(Precision::Millis).await;
}

/// `early` starts 0.3 s before a poll, `late` 0.3 s after it in the same second and fails.
async fn either_side(variance: Variance) {
    let (clock, sim) = world(variance);
    let wf = sim.add_workflow("Support", "active");
    clock.advance(Duration::from_secs(3600) + ms(100));
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    clock.advance(Duration::from_secs(60));
    let early = sim.start_execution(&wf, None, Running);
    clock.advance(ms(300));
    h.poll().await;
    assert_eq!(
        shown(&h, &wf).await.sef(),
        (1, 0, 0),
        "after the poll between"
    );
    clock.advance(ms(300));
    let late = sim.start_execution(&wf, None, Running);
    sim.set_status(&late, Failed);
    clock.advance(ms(100));
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(
        counts(&s, &wf).unwrap().sef(),
        (2, 0, 1),
        "the running one is not ended, the failed one is failed"
    );
    assert_eq!(live(&s, &wf, Running), Some(1));
    for step in [ms(500), ms(2000), ms(60_000)] {
        clock.advance(step);
        h.poll().await;
        assert_eq!(shown(&h, &wf).await.sef(), (2, 0, 1), "a later poll");
    }
    sim.set_status(&early, Ended);
    clock.advance(ms(10));
    h.poll().await;
    assert_eq!(shown(&h, &wf).await.sef(), (2, 1, 1), "early ended at last");
}

#[tokio::test]
async fn same_second_either_side_of_a_poll_whole_second_last_executed_at() {
    either_side(coarse_last_executed(Precision::Seconds)).await;
}

#[tokio::test]
async fn same_second_either_side_of_a_poll_everything_in_seconds() {
    either_side(all_in(Precision::Seconds)).await;
}

#[tokio::test]
async fn same_second_either_side_of_a_poll_everything_in_milliseconds() {
    either_side(all_in(Precision::Millis)).await;
}

// ----- unknown statuses --------------------------------------------------------------------

#[tokio::test]
async fn paused_and_back_then_ended_counts_five() {
    let (clock, sim) = world(Variance::default());
    let wf = sim.add_workflow("Support", "active");
    let xs = history(&sim, &clock, &wf, 5, Waiting);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    let step = |h: &Harness| {
        h.clock.advance(Duration::from_secs(60));
    };
    for x in &xs {
        sim.set_unknown_status(x, "paused");
    }
    step(&h);
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(
        outcome_unknown(&s, &wf),
        Some(5),
        "left the live lists, outcome unknown"
    );
    assert_eq!(live(&s, &wf, Waiting), Some(0));
    assert_eq!(
        counts(&s, &wf).unwrap().sef(),
        (0, 0, 0),
        "paused is no finish"
    );
    // Read by id: still paused.
    step(&h);
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(outcome_unknown(&s, &wf), Some(5));
    assert_eq!(anomalies(&s, "unknown_status"), 5.0);
    for x in &xs {
        sim.set_status(x, Waiting);
    }
    step(&h);
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(outcome_unknown(&s, &wf), Some(0), "back in the live lists");
    assert_eq!(live(&s, &wf, Waiting), Some(5));
    assert_eq!(
        counts(&s, &wf).unwrap().sef(),
        (0, 0, 0),
        "coming back is no start"
    );
    for x in &xs {
        sim.set_status(x, Ended);
    }
    step(&h);
    h.poll().await;
    assert_eq!(shown(&h, &wf).await.sef(), (0, 5, 0), "5 endings count 5");
    for _ in 0..3 {
        step(&h);
        h.poll().await;
        assert_eq!(shown(&h, &wf).await.sef(), (0, 5, 0), "a later poll");
    }
    assert_truth(&h, &[&wf], "the end").await;
}

// ----- a workflow listed twice -------------------------------------------------------------

#[tokio::test]
async fn a_workflow_listed_twice_counts_once() {
    let (clock, sim) = world(Variance {
        duplicate_workflows: true,
        ..Variance::default()
    });
    let older = sim.add_workflow("Sales", "active");
    clock.advance(Duration::from_secs(1));
    // The newest workflow is the one listed twice.
    let twice = sim.add_workflow("Support", "active");
    let old_twice = history(&sim, &clock, &twice, 2, Waiting);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    let wfs = [older.as_str(), twice.as_str()];
    for round in 0..3 {
        clock.advance(Duration::from_secs(20));
        let a = sim.start_execution(&twice, None, Running);
        let b = sim.start_execution(&twice, None, Waiting);
        sim.set_status(&a, Ended);
        let c = sim.start_execution(&older, None, Running);
        sim.set_status(&c, Failed);
        if let Some(old) = old_twice.get(round) {
            sim.set_status(old, Ended);
        }
        clock.advance(Duration::from_secs(20));
        sim.set_status(&b, Handoff);
        h.poll().await;
        assert_truth(&h, &wfs, &format!("round {round}")).await;
    }
    let s = samples(&h).await;
    assert_eq!(
        counts(&s, &twice).unwrap().sef(),
        (6, 5, 0),
        "the workflow listed twice"
    );
    assert_eq!(
        counts(&s, &older).unwrap().sef(),
        (3, 0, 3),
        "the other workflow"
    );
    assert_eq!(counts(&s, &twice).unwrap().handoffs, 3);
    assert!(anomalies(&s, "duplicate_workflow") >= 4.0);
}

// ----- an empty workflow list --------------------------------------------------------------

#[tokio::test]
async fn one_empty_workflow_list_keeps_the_series() {
    let (clock, sim) = world(Variance::default());
    let wf = sim.add_workflow("Support", "active");
    let xs = history(&sim, &clock, &wf, 3, Waiting);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    clock.advance(Duration::from_secs(30));
    for _ in 0..2 {
        let e = sim.start_execution(&wf, None, Running);
        sim.set_status(&e, Ended);
    }
    clock.advance(Duration::from_secs(30));
    h.poll().await;
    assert_eq!(shown(&h, &wf).await.sef(), (2, 2, 0));
    let before = samples(&h).await;

    sim.empty_workflow_lists(1);
    clock.advance(Duration::from_secs(60));
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(anomalies(&s, "empty_workflow_list"), 1.0);
    assert_eq!(up(&s, &wf), Some(0.0), "stale after the empty answer");
    let diff = differences(
        &workflow_series(&before, &wf, &["kapso_workflow_up"]),
        &workflow_series(&s, &wf, &["kapso_workflow_up"]),
    );
    assert!(
        diff.is_empty(),
        "the series stay with their last values: {diff:#?}"
    );

    clock.advance(Duration::from_secs(5));
    for x in &xs {
        sim.set_status(x, Ended);
    }
    clock.advance(Duration::from_secs(55));
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(up(&s, &wf), Some(1.0));
    assert_eq!(
        counts(&s, &wf).unwrap().sef(),
        (2, 5, 0),
        "3 endings right after counted"
    );
    assert_eq!(live(&s, &wf, Waiting), Some(0));
    assert_truth(&h, &[&wf], "the end").await;
}

// ----- counts that lag or shrink, and an absurd start ----------------------------------------

async fn lagging(lag: Duration) {
    let (clock, sim) = world(Variance {
        execution_count_lag: lag,
        last_executed_at_lag: lag,
        ..Variance::default()
    });
    let wf = sim.add_workflow("Support", "active");
    let x = history(&sim, &clock, &wf, 1, Waiting).remove(0);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    // Within the lag before the poll: a start that fails; the old one ends.
    clock.advance(Duration::from_secs(59) + ms(500));
    let f = sim.start_execution(&wf, None, Running);
    clock.advance(ms(200));
    sim.set_status(&f, Failed);
    sim.set_status(&x, Ended);
    clock.advance(ms(300));
    h.poll().await;
    let first = shown(&h, &wf).await;
    assert_eq!(first.ended, 1, "only x ended (lag {lag:?})");
    assert!(first.failed <= 1 && first.started <= 1, "{first:?}");
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        h.poll().await;
        assert_eq!(
            shown(&h, &wf).await.sef(),
            (1, 1, 1),
            "a failure is no ending (lag {lag:?})"
        );
    }
    assert_truth(&h, &[&wf], "the end").await;
}

#[tokio::test]
async fn a_lagging_count_does_not_turn_a_failure_into_an_ending() {
    lagging(Duration::from_secs(1)).await;
    lagging(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_shrinking_count_loses_no_ending() {
    let (clock, sim) = world(Variance {
        shrinking_count: true,
        ..Variance::default()
    });
    let wf = sim.add_workflow("Support", "active");
    let done: Vec<String> = (0..2)
        .map(|_| {
            let e = sim.start_execution(&wf, None, Running);
            sim.set_status(&e, Ended);
            e
        })
        .collect();
    let x = history(&sim, &clock, &wf, 1, Waiting).remove(0);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    // An old execution deleted while a live one ends: execution_count drops by one.
    clock.advance(Duration::from_secs(30));
    sim.delete_execution(&done[0]);
    sim.set_status(&x, Ended);
    clock.advance(Duration::from_secs(30));
    h.poll().await;
    assert_eq!(
        shown(&h, &wf).await.sef(),
        (0, 1, 0),
        "the ending is counted"
    );
    // One starts and ends while another old one is deleted: execution_count does not move.
    clock.advance(Duration::from_secs(30));
    let y = sim.start_execution(&wf, None, Running);
    sim.set_status(&y, Ended);
    sim.delete_execution(&done[1]);
    clock.advance(Duration::from_secs(30));
    h.poll().await;
    assert_eq!(
        shown(&h, &wf).await.sef(),
        (1, 2, 0),
        "the start and ending are counted"
    );
    let t = h.sim.ground_truth();
    assert_eq!(t.workflows[0].existing_executions, 2);
    clock.advance(Duration::from_secs(60));
    h.poll().await;
    assert_truth(&h, &[&wf], "the end").await;
}

#[tokio::test]
async fn a_start_in_the_year_9999_does_not_stop_counting() {
    let (clock, sim) = world(Variance::default());
    let wf = sim.add_workflow("Support", "active");
    clock.advance(Duration::from_secs(3600));
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    clock.advance(Duration::from_secs(1));
    let odd = sim.start_execution(&wf, None, Running);
    sim.set_start_override(&odd, StartOverride::Year(9999));
    clock.advance(Duration::from_secs(59));
    h.poll().await;
    assert_eq!(
        shown(&h, &wf).await.sef(),
        (1, 0, 0),
        "the odd one is new all the same"
    );
    for i in 1..=3 {
        clock.advance(Duration::from_secs(20));
        let e = sim.start_execution(&wf, None, Running);
        sim.set_status(&e, Ended);
        clock.advance(Duration::from_secs(40));
        h.poll().await;
        assert_eq!(
            shown(&h, &wf).await.sef(),
            (1 + i, i, 0),
            "start {i} after the odd one"
        );
    }
    sim.set_status(&odd, Failed);
    clock.advance(Duration::from_secs(60));
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(counts(&s, &wf).unwrap().sef(), (4, 3, 1));
    assert!(anomalies(&s, "implausible_timestamp") >= 1.0);
    assert_truth(&h, &[&wf], "the end").await;
}

// ----- one workflow failing ------------------------------------------------------------------

/// How the bad workflow's executions fail.
#[derive(Clone, Copy, Debug)]
enum Breakage {
    /// `fail_workflow_executions` with this HTTP status.
    Status(u16),
    /// A 200 whose body is cut short (`{"data": [`), from a layer in front of the simulator.
    Undecodable,
}

impl Breakage {
    /// The `kind` of `kapso_workflow_poll_errors_total` it shows as.
    fn kind(self) -> &'static str {
        match self {
            Breakage::Status(_) => "client_error",
            Breakage::Undecodable => "decode",
        }
    }

    /// Breaks (`on`) or repairs the executions lists of workflow `bad`.
    fn apply(self, sim: &Simulator, corrupted: &Corrupted, bad: &str, on: bool) {
        match self {
            Breakage::Status(status) => sim.fail_workflow_executions(bad, on.then_some(status)),
            Breakage::Undecodable => *corrupted.lock().unwrap() = on.then(|| bad.to_owned()),
        }
    }
}

/// The id of the workflow whose executions lists answer an undecodable body.
type Corrupted = Arc<Mutex<Option<String>>>;

async fn corrupt(State(bad): State<Corrupted>, req: Request, next: Next) -> Response {
    let hit = bad.lock().unwrap().as_ref().is_some_and(|id| {
        req.uri()
            .path()
            .ends_with(&format!("/workflows/{id}/executions"))
    });
    let response = next.run(req).await;
    if hit && response.status() == StatusCode::OK {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            "{\"data\": [",
        )
            .into_response();
    }
    response
}

/// A harness whose exporter reaches the simulator through [`corrupt`].
async fn harness_with_corruption(sim: Simulator, clock: Clock) -> (Harness, Corrupted) {
    let bad: Corrupted = Arc::default();
    let router = sim
        .router()
        .layer(axum::middleware::from_fn_with_state(bad.clone(), corrupt));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let url = format!("http://{addr}/platform/v1");
    let exporter = app::build(
        &config(&["--kapso.base-url", &url, "--kapso.rate-limit", "100000"]),
        clock.clone(),
        test_retry(),
    )
    .unwrap();
    let server = sim.spawn().await.unwrap();
    let h = Harness {
        sim,
        server,
        clock,
        exporter,
    };
    (h, bad)
}

async fn one_workflow_failing(breakage: Breakage) {
    let (clock, sim) = world(Variance::default());
    let bad = sim.add_workflow("Broken", "active");
    let good = sim.add_workflow("Support", "active");
    let bad_old = history(&sim, &clock, &bad, 3, Waiting);
    let good_old = history(&sim, &clock, &good, 3, Waiting);
    let (mut h, corrupted) = harness_with_corruption(sim, clock.clone()).await;
    baseline(&mut h).await;
    let sim = h.sim.clone();
    let both = [bad.as_str(), good.as_str()];
    // One good poll with activity in both.
    clock.advance(Duration::from_secs(30));
    for wf in both {
        let e = sim.start_execution(wf, None, Running);
        sim.set_status(&e, Ended);
    }
    clock.advance(Duration::from_secs(30));
    h.poll().await;
    assert_truth(&h, &both, "the good poll").await;
    let before = samples(&h).await;
    let good_time = last_success(&before, &bad).unwrap();

    let kind = breakage.kind();
    breakage.apply(&sim, &corrupted, &bad, true);
    // Two polls while it is broken, with activity in both workflows.
    for round in 1..=2u32 {
        clock.advance(Duration::from_secs(30));
        sim.set_status(&bad_old[round as usize - 1], Ended);
        sim.set_status(&good_old[round as usize - 1], Failed);
        for wf in both {
            let e = sim.start_execution(wf, None, Running);
            sim.set_status(&e, Failed);
            sim.start_execution(wf, None, Handoff);
        }
        clock.advance(Duration::from_secs(30));
        h.poll().await;
        let s = samples(&h).await;
        assert_eq!(
            up(&s, &bad),
            Some(0.0),
            "{breakage:?}: the broken one is stale"
        );
        assert_eq!(
            up(&s, &good),
            Some(1.0),
            "{breakage:?}: the other one updates"
        );
        assert_eq!(
            poll_errors(&s, &bad, kind),
            f64::from(round),
            "{breakage:?}: kapso_workflow_poll_errors_total{{kind={kind}}}"
        );
        assert_eq!(poll_errors(&s, &good, kind), 0.0);
        let health = ["kapso_workflow_up", "kapso_workflow_poll_errors_total"];
        let diff = differences(
            &workflow_series(&before, &bad, &health),
            &workflow_series(&s, &bad, &health),
        );
        assert!(
            diff.is_empty(),
            "{breakage:?}: the broken workflow keeps its last good state: {diff:#?}"
        );
        assert_eq!(last_success(&s, &bad), Some(good_time));
        let truth = h.sim.ground_truth();
        assert_eq!(
            counts(&s, &good).unwrap().sef(),
            truth_counts(&truth, &good).sef(),
            "{breakage:?}: the other workflow counts"
        );
        assert_eq!(live3(&s, &good), Some(truth_live3(&truth, &good)));
        assert_eq!(
            s.iter()
                .find(|((n, _), _)| n == "kapso_up")
                .map(|(_, v)| *v),
            Some(1.0),
            "{breakage:?}: the project is up"
        );
    }
    breakage.apply(&sim, &corrupted, &bad, false);
    clock.advance(Duration::from_secs(60));
    h.poll().await;
    let s = samples(&h).await;
    assert_eq!(up(&s, &bad), Some(1.0), "{breakage:?}: recovered");
    assert_eq!(poll_errors(&s, &bad, kind), 2.0);
    // What happened during the outage is counted exactly.
    assert_truth(&h, &both, "after the recovery").await;
    assert_eq!(counts(&s, &bad).unwrap().sef(), (5, 3, 2), "{breakage:?}");
    assert_eq!(counts(&s, &bad).unwrap().handoffs, 2, "{breakage:?}");
}

#[tokio::test]
async fn a_workflow_answering_404_keeps_its_last_good_state() {
    one_workflow_failing(Breakage::Status(404)).await;
}

#[tokio::test]
async fn a_workflow_answering_422_keeps_its_last_good_state() {
    one_workflow_failing(Breakage::Status(422)).await;
}

#[tokio::test]
async fn a_workflow_with_an_undecodable_page_keeps_its_last_good_state() {
    one_workflow_failing(Breakage::Undecodable).await;
}
