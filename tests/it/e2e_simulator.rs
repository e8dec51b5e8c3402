//! The exporter in-process against the simulator: after each poll every metric equals the
//! simulator's ground truth, in project and conversation mode.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::{
    Harness, KEY, STALLABLE, Samples, THRESHOLDS, get, parse, series, test_start,
};
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{ExecStatus, GroundTruth, Simulator};
use time::OffsetDateTime;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

/// Every metric of the contract equals the simulator's ground truth.
fn assert_matches_truth(samples: &Samples, truth: &GroundTruth, now: OffsetDateTime) {
    assert_matches(samples, truth, now, true);
}

/// `all_workflows`: project mode knows every workflow; conversation mode only those its
/// conversations ran (the others must have nothing live).
fn assert_matches(
    samples: &Samples,
    truth: &GroundTruth,
    now: OffsetDateTime,
    all_workflows: bool,
) {
    let p = ("project", "default");
    assert!(!truth.workflows.is_empty());
    for w in &truth.workflows {
        let known = get(
            samples,
            "kapso_workflow_info",
            &[
                p,
                ("workflow_id", w.id.as_str()),
                ("workflow", w.name.as_str()),
                ("workflow_status", w.status.as_str()),
            ],
        )
        .is_some();
        if !all_workflows && !known {
            assert!(
                ExecStatus::LIVE.iter().all(|s| truth
                    .live
                    .get(&(w.id.clone(), *s))
                    .copied()
                    .unwrap_or(0)
                    == 0),
                "{} has live executions but no series",
                w.name
            );
            continue;
        }
        let wl = [
            p,
            ("workflow_id", w.id.as_str()),
            ("workflow", w.name.as_str()),
        ];
        let info = [
            p,
            ("workflow_id", w.id.as_str()),
            ("workflow", w.name.as_str()),
            ("workflow_status", w.status.as_str()),
        ];
        assert_eq!(
            get(samples, "kapso_workflow_info", &info),
            Some(1.0),
            "info of {}",
            w.name
        );
        for s in ExecStatus::LIVE {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth.live.get(&(w.id.clone(), s)).copied().unwrap_or(0) as f64;
            assert_eq!(
                get(samples, "kapso_workflow_executions", &l),
                Some(want),
                "{} {}",
                w.name,
                s.as_str()
            );
        }
        for s in STALLABLE {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth
                .oldest_last_event
                .get(&(w.id.clone(), s))
                .map_or(0.0, |t| (now - *t).as_seconds_f64());
            let got = get(samples, "kapso_workflow_execution_stalled_seconds", &l).unwrap();
            assert!(
                close(got, want),
                "stalled seconds of {} {}: {got} != {want}",
                w.name,
                s.as_str()
            );
            let events = truth
                .live_last_events
                .get(&(w.id.clone(), s))
                .cloned()
                .unwrap_or_default();
            for thr in THRESHOLDS {
                let want = events
                    .iter()
                    .filter(|t| (now - **t).as_seconds_f64() > thr as f64)
                    .count() as f64;
                let over = thr.to_string();
                let mut l = l.clone();
                l.push(("over", over.as_str()));
                assert_eq!(
                    get(samples, "kapso_workflow_executions_stalled", &l),
                    Some(want),
                    "{} {} over {thr}",
                    w.name,
                    s.as_str()
                );
            }
        }
        let started = truth.started.get(&w.id).copied().unwrap_or(0) as f64;
        assert_eq!(
            get(samples, "kapso_workflow_executions_started_total", &wl),
            Some(started),
            "started of {}",
            w.name
        );
        let handoffs = truth.handoffs.get(&w.id).copied().unwrap_or(0) as f64;
        assert_eq!(
            get(samples, "kapso_workflow_execution_handoffs_total", &wl),
            Some(handoffs),
            "handoffs of {}",
            w.name
        );
        for s in [ExecStatus::Ended, ExecStatus::Failed] {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth.finished.get(&(w.id.clone(), s)).copied().unwrap_or(0) as f64;
            assert_eq!(
                get(samples, "kapso_workflow_executions_finished_total", &l),
                Some(want),
                "{} of {}",
                s.as_str(),
                w.name
            );
        }
    }
    let name_of = |id: &str| {
        truth
            .workflows
            .iter()
            .find(|w| w.id == id)
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(
        series(samples, "kapso_conversation_workflow_executions").count(),
        truth.per_conversation.len()
    );
    for ((c, wf, s), n) in &truth.per_conversation {
        let name = name_of(wf);
        let l = [
            p,
            ("conversation_id", c.as_str()),
            ("workflow_id", wf.as_str()),
            ("workflow", name.as_str()),
            ("status", s.as_str()),
        ];
        assert_eq!(
            get(samples, "kapso_conversation_workflow_executions", &l),
            Some(*n as f64),
            "conversation {c}"
        );
        if STALLABLE.contains(s) {
            let want = (now - truth.conversation_oldest_last_event[&(c.clone(), wf.clone(), *s)])
                .as_seconds_f64();
            let got = get(samples, "kapso_conversation_execution_stalled_seconds", &l).unwrap();
            assert!(close(got, want), "conversation {c} stall {got} != {want}");
        }
    }
    assert_eq!(get(samples, "kapso_up", &[p]), Some(1.0));
}

/// Three workflows, one with more than 100 waiting executions (several pages).
fn populated(clock: &Clock) -> (Simulator, Vec<String>, Vec<String>) {
    let sim = Simulator::empty(KEY, clock.clone());
    let wfs = vec![
        sim.add_workflow("Support \"VIP\"", "active"),
        sim.add_workflow("Sales\\Leads", "active"),
        sim.add_workflow("Onboarding ñ", "draft"),
    ];
    let convs: Vec<String> = (0..20).map(|_| sim.add_conversation()).collect();
    for i in 0..150 {
        sim.start_execution(&wfs[0], Some(&convs[i % 20]), ExecStatus::Waiting);
        if i % 10 == 0 {
            clock.advance(Duration::from_secs(97));
        }
    }
    for i in 0..30 {
        sim.start_execution(&wfs[0], Some(&convs[i % 7]), ExecStatus::Running);
    }
    for conv in &convs[..5] {
        sim.start_execution(&wfs[0], Some(conv), ExecStatus::Handoff);
        clock.advance(Duration::from_secs(400));
    }
    for i in 0..10 {
        sim.start_execution(&wfs[1], Some(&convs[i + 5]), ExecStatus::Running);
    }
    // History before the exporter starts: never counted.
    let old = sim.start_execution(&wfs[1], Some(&convs[3]), ExecStatus::Running);
    sim.set_status(&old, ExecStatus::Ended);
    clock.advance(Duration::from_secs(30));
    (sim, wfs, convs)
}

/// Live executions of a workflow in a status, from the ground truth's point of view.
async fn live_ids(h: &Harness, wf: &str, status: ExecStatus) -> Vec<String> {
    let url = format!(
        "{}/workflows/{wf}/executions?status={}&limit=100",
        h.server.base_url,
        status.as_str()
    );
    let mut ids = Vec::new();
    let client = reqwest::Client::new();
    let mut next: Option<String> = None;
    loop {
        let mut req = client.get(&url).header("X-API-Key", KEY);
        if let Some(n) = &next {
            req = req.query(&[("after", n)]);
        }
        let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        for row in body["data"].as_array().unwrap() {
            ids.push(row["id"].as_str().unwrap().to_owned());
        }
        match body["paging"]["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn project_mode_matches_ground_truth_across_polls() {
    let clock = Clock::manual(test_start());
    let (sim, wfs, convs) = populated(&clock);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    h.sim.mark();

    // Poll 1: the baseline. Gauges exact, counters zero.
    h.poll().await;
    let truth = h.sim.ground_truth();
    assert_matches_truth(&parse(&h.scrape().await), &truth, clock.now());

    // Between polls: some finish, some hand off, some start and finish before the next poll.
    clock.advance(Duration::from_secs(60));
    let waiting = live_ids(&h, &wfs[0], ExecStatus::Waiting).await;
    assert_eq!(waiting.len(), 150);
    for id in &waiting[..12] {
        h.sim.set_status(id, ExecStatus::Ended);
    }
    for id in &waiting[12..15] {
        h.sim.set_status(id, ExecStatus::Failed);
    }
    for id in &live_ids(&h, &wfs[0], ExecStatus::Running).await[..4] {
        h.sim.set_status(id, ExecStatus::Handoff);
    }
    let quick = h
        .sim
        .start_execution(&wfs[1], Some(&convs[1]), ExecStatus::Running);
    h.sim.set_status(&quick, ExecStatus::Ended);
    let doomed = h
        .sim
        .start_execution(&wfs[1], Some(&convs[2]), ExecStatus::Running);
    h.sim.set_status(&doomed, ExecStatus::Failed);
    let handed = h
        .sim
        .start_execution(&wfs[2], Some(&convs[4]), ExecStatus::Handoff);
    h.sim
        .start_execution(&wfs[2], Some(&convs[6]), ExecStatus::Waiting);
    // Exactly one execution leaves the live lists of workflow 1 (outcome read by id).
    let one = live_ids(&h, &wfs[1], ExecStatus::Running).await[0].clone();
    h.sim.set_status(&one, ExecStatus::Failed);
    clock.advance(Duration::from_secs(15));

    h.poll().await;
    let truth = h.sim.ground_truth();
    assert_eq!(truth.finished[&(wfs[0].clone(), ExecStatus::Ended)], 12);
    assert_eq!(truth.started[&wfs[1]], 2);
    let samples = parse(&h.scrape().await);
    assert_matches_truth(&samples, &truth, clock.now());

    // A quiet poll changes no counter, and stalls keep growing at scrape time.
    clock.advance(Duration::from_secs(600));
    h.poll().await;
    assert_matches_truth(
        &parse(&h.scrape().await),
        &h.sim.ground_truth(),
        clock.now(),
    );
    clock.advance(Duration::from_secs(3600));
    assert_matches_truth(
        &parse(&h.scrape().await),
        &h.sim.ground_truth(),
        clock.now(),
    );

    // Hand-off resumed and ended; a new workflow appears with executions.
    h.sim.set_status(&handed, ExecStatus::Waiting);
    h.sim.set_status(&handed, ExecStatus::Ended);
    clock.advance(Duration::from_secs(5));
    let fresh = h.sim.add_workflow("Fresh", "active");
    clock.advance(Duration::from_secs(5));
    let e = h.sim.start_execution(&fresh, None, ExecStatus::Running);
    h.sim.set_status(&e, ExecStatus::Ended);
    h.poll().await;
    // The new workflow is listed at this poll; its executions are counted from its creation.
    h.poll().await;
    assert_matches_truth(
        &parse(&h.scrape().await),
        &h.sim.ground_truth(),
        clock.now(),
    );
}

#[tokio::test]
async fn conversation_mode_matches_ground_truth() {
    let clock = Clock::manual(test_start());
    let (sim, wfs, convs) = populated(&clock);
    let mut args = Vec::new();
    for c in &convs {
        args.push("--kapso.conversation-id");
        args.push(c.as_str());
    }
    let mut h = Harness::new(sim, clock.clone(), &args).await;
    h.sim.mark();
    h.poll().await;
    assert_matches(
        &parse(&h.scrape().await),
        &h.sim.ground_truth(),
        clock.now(),
        false,
    );

    clock.advance(Duration::from_secs(120));
    let waiting = live_ids(&h, &wfs[0], ExecStatus::Waiting).await;
    for id in &waiting[..5] {
        h.sim.set_status(id, ExecStatus::Ended);
    }
    h.sim.set_status(&waiting[5], ExecStatus::Failed);
    h.sim.set_status(&waiting[6], ExecStatus::Handoff);
    let quick = h
        .sim
        .start_execution(&wfs[1], Some(&convs[0]), ExecStatus::Running);
    h.sim.set_status(&quick, ExecStatus::Failed);
    h.sim
        .start_execution(&wfs[2], Some(&convs[9]), ExecStatus::Handoff);
    h.poll().await;
    let truth = h.sim.ground_truth();
    assert_eq!(truth.handoffs[&wfs[0]] + truth.handoffs[&wfs[2]], 2);
    assert_matches(&parse(&h.scrape().await), &truth, clock.now(), false);
}

#[tokio::test]
async fn project_mode_spends_the_expected_requests() {
    let clock = Clock::manual(test_start());
    let (sim, wfs, _) = populated(&clock);
    let mut h = Harness::new(sim, clock.clone(), &[]).await;
    h.poll().await;
    // 1 workflow list + 3 workflows x 3 live statuses, plus one more page of 150 waiting, plus
    // at the first poll one created_after listing per workflow (what exists already).
    assert_eq!(requests(&h).await, 14.0);
    // Quiet: nothing started or finished, so no created_after or outcome queries.
    h.poll().await;
    assert_eq!(requests(&h).await, 11.0);
    // One started and still running: execution_count proves the live lists saw it all.
    h.sim.start_execution(&wfs[1], None, ExecStatus::Running);
    h.poll().await;
    assert_eq!(requests(&h).await, 11.0);
    // One started and ended between polls: one created_after listing for that workflow.
    let e = h.sim.start_execution(&wfs[1], None, ExecStatus::Running);
    h.sim.set_status(&e, ExecStatus::Ended);
    h.poll().await;
    assert_eq!(requests(&h).await, 12.0);
}

async fn requests(h: &Harness) -> f64 {
    let s = parse(&h.scrape().await);
    get(&s, "kapso_api_requests_per_poll", &[("project", "default")]).unwrap()
}

#[tokio::test]
async fn discovered_conversations_match_ground_truth() {
    let clock = Clock::manual(test_start());
    let (sim, wfs, convs) = populated(&clock);
    let mut h = Harness::new(
        sim,
        clock.clone(),
        &["--kapso.discover-conversations", "2h"],
    )
    .await;
    h.sim.mark();
    h.poll().await;
    assert_matches(
        &parse(&h.scrape().await),
        &h.sim.ground_truth(),
        clock.now(),
        false,
    );
    clock.advance(Duration::from_secs(60));
    let quick = h
        .sim
        .start_execution(&wfs[1], Some(&convs[0]), ExecStatus::Running);
    h.sim.set_status(&quick, ExecStatus::Failed);
    h.poll().await;
    let truth = h.sim.ground_truth();
    assert_eq!(truth.finished[&(wfs[1].clone(), ExecStatus::Failed)], 1);
    assert_matches(&parse(&h.scrape().await), &truth, clock.now(), false);
}
