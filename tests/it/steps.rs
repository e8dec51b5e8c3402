//! The step series (`kapso_workflow_step_*`) against the simulator's ground truth: where live
//! executions sit, how long they have waited there and where they failed, in project and
//! conversation mode, and the `--metrics.max-steps-per-workflow` fold.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{Harness, KEY, Samples, parse, series, step_truth, test_start};
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{ExecStatus, GroundTruth, Simulator, SimulatorConfig};
use time::OffsetDateTime;

const STEP_EXECUTIONS: &str = "kapso_workflow_step_executions";
const STEP_STALLED: &str = "kapso_workflow_step_stalled_seconds";
const STEP_FAILURES: &str = "kapso_workflow_step_failures_total";

fn status_of(labels: &BTreeMap<String, String>) -> ExecStatus {
    ExecStatus::parse(&labels["status"]).unwrap()
}

/// Every step series equals the truth, and every step the truth has live executions or
/// failures at has its series. `failures_since_mark`: the simulator was marked at the
/// exporter's first poll, so its failures since then are what the counters must show.
fn assert_steps_match(samples: &Samples, truth: &GroundTruth, now: OffsetDateTime) {
    let mut live_seen = 0;
    for (labels, value) in series(samples, STEP_EXECUTIONS) {
        let key = (step_truth(labels), status_of(labels));
        let want = truth.steps.get(&key).copied().unwrap_or(0);
        assert_eq!(value, want as f64, "{STEP_EXECUTIONS} {labels:?}");
        live_seen += want;
    }
    assert_eq!(
        live_seen,
        truth.steps.values().sum::<u64>(),
        "a step with live executions has no series"
    );
    let mut stalls = 0;
    for (labels, value) in series(samples, STEP_STALLED) {
        let status = status_of(labels);
        assert!(support::STALLABLE.contains(&status), "{labels:?}");
        let want = truth
            .step_oldest_last_event
            .get(&(step_truth(labels), status))
            .map_or(0.0, |t| (now - *t).as_seconds_f64().max(0.0));
        assert!(
            (value - want).abs() < 1e-3,
            "{STEP_STALLED} {labels:?}: {value} vs {want}"
        );
        stalls += 1;
    }
    assert!(stalls > 0, "no stall series");
    let mut failures = BTreeMap::new();
    for (labels, value) in series(samples, STEP_FAILURES) {
        failures.insert(step_truth(labels), value as u64);
    }
    for (step, n) in &truth.step_failures {
        assert_eq!(
            failures.get(step).copied(),
            Some(*n),
            "{STEP_FAILURES} {step:?}"
        );
    }
    for (step, n) in &failures {
        assert_eq!(
            *n,
            truth.step_failures.get(step).copied().unwrap_or(0),
            "{STEP_FAILURES} {step:?}"
        );
    }
}

fn world() -> SimulatorConfig {
    SimulatorConfig {
        api_key: KEY.to_owned(),
        workflows: 5,
        conversations: 40,
        live_executions: 300,
        terminal_executions: 200,
        seed: 11,
        rate_limit_per_minute: None,
        latency: Duration::ZERO,
        ..SimulatorConfig::demo()
    }
}

/// A random world evolving for 20 minutes: after every poll each step series equals the
/// truth, failures by step included, and the step series add up to the workflow series.
#[tokio::test]
async fn project_mode_step_series_match_ground_truth_across_polls() {
    let clock = Clock::manual(test_start());
    let sim = Simulator::new(world(), clock.clone());
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    h.poll().await;
    h.sim.mark();
    let mut failed_somewhere = 0;
    for _ in 0..20 {
        clock.advance(Duration::from_secs(60));
        h.sim.tick(Duration::from_secs(60));
        h.poll().await;
        let samples = parse(&h.scrape().await);
        let truth = h.sim.ground_truth();
        assert_steps_match(&samples, &truth, clock.now());
        failed_somewhere = truth.step_failures.len();
        // Steps partition each workflow's live executions.
        let mut by_workflow: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (l, v) in series(&samples, STEP_EXECUTIONS) {
            *by_workflow
                .entry((l["workflow_id"].clone(), l["status"].clone()))
                .or_default() += v;
        }
        for (l, v) in series(&samples, "kapso_workflow_executions") {
            let key = (l["workflow_id"].clone(), l["status"].clone());
            assert_eq!(by_workflow.get(&key).copied().unwrap_or(0.0), v, "{key:?}");
        }
    }
    assert!(
        failed_somewhere >= 3,
        "the world failed at too few steps to prove anything"
    );
}

/// With a cap of 2 steps per workflow, each workflow has at most 3 step series per status
/// (2 of its own and `other`), they still add up to the workflow's live executions, and the
/// failure counters stay at most 3 per workflow.
#[tokio::test]
async fn the_cap_folds_steps_into_other_without_losing_executions() {
    let clock = Clock::manual(test_start());
    let sim = Simulator::new(world(), clock.clone());
    let mut h = Harness::new(
        sim,
        clock.clone(),
        &["--metrics.max-steps-per-workflow", "2"],
    )
    .await;
    h.poll().await;
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        h.sim.tick(Duration::from_secs(60));
        h.poll().await;
    }
    let samples = parse(&h.scrape().await);
    let truth = h.sim.ground_truth();
    let mut steps: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (l, v) in series(&samples, STEP_EXECUTIONS) {
        let key = (l["workflow_id"].clone(), l["status"].clone());
        steps
            .entry(key.clone())
            .or_default()
            .push(l["step"].clone());
        *sums.entry(key).or_default() += v;
    }
    let mut folded = false;
    for ((wf, status), names) in &steps {
        assert!(names.len() <= 3, "{wf} {status}: {names:?}");
        folded |= names.iter().any(|n| n == "other");
        let want = truth.live_count(wf, ExecStatus::parse(status).unwrap());
        assert_eq!(
            sums[&(wf.clone(), status.clone())],
            want as f64,
            "{wf} {status}"
        );
    }
    assert!(
        folded,
        "no workflow had more than 2 steps: the test proves nothing"
    );
    let mut failure_series: BTreeMap<String, usize> = BTreeMap::new();
    for (l, _) in series(&samples, STEP_FAILURES) {
        *failure_series.entry(l["workflow_id"].clone()).or_default() += 1;
    }
    assert!(
        failure_series.values().all(|n| *n <= 3),
        "{failure_series:?}"
    );
}

/// Conversation mode: scripted executions in watched conversations move between steps and
/// fail at one; the series are those of project mode.
#[tokio::test]
async fn conversation_mode_gives_the_same_step_series() {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let steps = sim.workflow_steps(&wf);
    let (wait, work) = (
        steps
            .iter()
            .find(|s| s.1 == "FlowWaitStep")
            .unwrap()
            .0
            .clone(),
        steps
            .iter()
            .find(|s| s.1 == "FlowAgentStep")
            .unwrap()
            .0
            .clone(),
    );
    let convs: Vec<String> = (0..3).map(|_| sim.add_conversation()).collect();
    let ids: Vec<String> = convs
        .iter()
        .map(|c| sim.start_execution(&wf, Some(c), ExecStatus::Waiting))
        .collect();
    let mut args = Vec::new();
    for c in &convs {
        args.extend(["--kapso.conversation-id", c.as_str()]);
    }
    let mut h = Harness::new(sim, clock.clone(), &args).await;
    h.poll().await;
    h.sim.mark();
    clock.advance(Duration::from_secs(30));
    h.sim.set_status(&ids[0], ExecStatus::Running);
    h.sim.set_step(&ids[0], &work);
    h.sim.set_status(&ids[1], ExecStatus::Failed);
    clock.advance(Duration::from_secs(30));
    h.poll().await;
    let samples = parse(&h.scrape().await);
    let truth = h.sim.ground_truth();
    assert_steps_match(&samples, &truth, clock.now());
    let at = |step: &str, status: &str| {
        series(&samples, STEP_EXECUTIONS)
            .find(|(l, _)| l["step"] == step && l["status"] == status)
            .map(|(_, v)| v)
    };
    assert_eq!(at(&work, "running"), Some(1.0));
    assert_eq!(at(&wait, "waiting"), Some(1.0));
    assert_eq!(truth.step_failures.values().sum::<u64>(), 1);
}
