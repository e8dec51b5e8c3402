//! Regression check on the API budget (the fast, deterministic part of `benches/scale.rs`):
//! while the simulated world evolves (executions start, hand off, end and fail between polls),
//! requests per poll stay between the lower bound for the same information and the README's
//! rule (at most 3 more requests per workflow with activity), a quiet poll costs exactly the
//! live lists, the counts equal the ground truth, and conversation mode costs one request per
//! conversation.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{
    Harness, KEY, activity_between, ceiling, finished_between, get, lower_bound, parse, test_start,
};
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{ExecStatus, GroundTruth, Simulator, SimulatorConfig};

fn world(clock: &Clock) -> Simulator {
    let sim = Simulator::new(
        SimulatorConfig {
            api_key: KEY.to_owned(),
            workflows: 6,
            conversations: 60,
            live_executions: 900,
            terminal_executions: 300,
            seed: 11,
            rate_limit_per_minute: None,
            latency: Duration::ZERO,
            variance: Default::default(),
        },
        clock.clone(),
    );
    sim.set_finish_rate(60.0);
    sim
}

async fn requests_per_poll(h: &Harness) -> u64 {
    let s = parse(&h.scrape().await);
    get(&s, "kapso_api_requests_per_poll", &[("project", "default")]).unwrap() as u64
}

/// Live counts and the started and finished counters equal the ground truth; hand-offs can
/// only be missed (one entered and left between two polls is invisible to any poller).
async fn assert_counts(h: &Harness, truth: &GroundTruth) {
    let samples = parse(&h.scrape().await);
    for w in &truth.workflows {
        let wl = [
            ("project", "default"),
            ("workflow_id", w.id.as_str()),
            ("workflow", w.name.as_str()),
        ];
        for s in [
            ExecStatus::Running,
            ExecStatus::Waiting,
            ExecStatus::Handoff,
        ] {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            assert_eq!(
                get(&samples, "kapso_workflow_executions", &l),
                Some(truth.live_count(&w.id, s) as f64),
                "{} {s}",
                w.name
            );
        }
        for s in [ExecStatus::Ended, ExecStatus::Failed] {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth.finished.get(&(w.id.clone(), s)).copied().unwrap_or(0);
            assert_eq!(
                get(&samples, "kapso_workflow_executions_finished_total", &l),
                Some(want as f64),
                "{} {s}",
                w.name
            );
        }
        assert_eq!(
            get(&samples, "kapso_workflow_executions_started_total", &wl),
            Some(truth.started[&w.id] as f64),
            "started of {}",
            w.name
        );
        let handoffs = get(&samples, "kapso_workflow_execution_handoffs_total", &wl).unwrap();
        assert!(handoffs <= truth.handoffs[&w.id] as f64, "{}", w.name);
    }
}

#[tokio::test]
async fn project_mode_requests_stay_near_the_lower_bound() {
    let clock = Clock::manual(test_start());
    let sim = world(&clock);
    sim.mark();
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    let mut truth = h.sim.ground_truth();
    let mut finished = BTreeMap::new();
    let mut active = BTreeMap::new();
    for poll in 0..8 {
        let before = h.sim.stats().total;
        h.poll().await;
        let requests = h.sim.stats().total - before;
        assert_eq!(requests_per_poll(&h).await, requests);
        let bound = lower_bound(&truth, &finished);
        // At 60 finishes a minute over a few workflows no listing needs a second page.
        let most = ceiling(&truth, &active, poll == 0, 0);
        eprintln!("poll {poll}: {requests} requests, lower bound {bound}, rule {most}");
        assert!(
            bound <= requests && requests <= most,
            "poll {poll}: {requests} requests, lower bound {bound}, rule {most}"
        );
        if poll == 0 {
            // The first poll lists what exists, one created_after listing per workflow.
            assert_eq!(requests, most);
        }
        assert_counts(&h, &truth).await;
        clock.advance(Duration::from_secs(60));
        h.sim.tick(Duration::from_secs(60));
        let next = h.sim.ground_truth();
        finished = finished_between(&truth, &next);
        active = activity_between(&truth, &next);
        truth = next;
    }
    // The world did evolve: executions finished in several workflows.
    assert!(truth.finished.values().sum::<u64>() > 100);
    // And when it stops, a poll costs exactly the live lists.
    h.poll().await;
    clock.advance(Duration::from_secs(60));
    let before = h.sim.stats().total;
    h.poll().await;
    let quiet = ceiling(&h.sim.ground_truth(), &BTreeMap::new(), false, 0);
    assert_eq!(h.sim.stats().total - before, quiet);
    assert_counts(&h, &h.sim.ground_truth()).await;
}

#[tokio::test]
async fn conversation_mode_costs_one_request_per_conversation() {
    let clock = Clock::manual(test_start());
    let sim = world(&clock);
    let mut project = Harness::new(sim.clone(), clock.clone(), &[]).await;
    project.poll().await;
    let project_requests = requests_per_poll(&project).await;
    let mut conv = Harness::new(
        sim,
        clock.clone(),
        &["--kapso.discover-conversations", "30d"],
    )
    .await;
    let before = conv.sim.stats();
    conv.poll().await;
    let after = conv.sim.stats();
    let conversations = 60;
    // One page of 60 discovered conversations, then one page of executions each.
    assert_eq!(
        after.count("/whatsapp/conversations") - before.count("/whatsapp/conversations"),
        1
    );
    let listed = after.count("/whatsapp/conversations/{conversation_id}/flow_executions")
        - before.count("/whatsapp/conversations/{conversation_id}/flow_executions");
    assert_eq!(listed, conversations);
    assert_eq!(requests_per_poll(&conv).await, 1 + conversations);
    assert!(project_requests < 1 + conversations);
}
