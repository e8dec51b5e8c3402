//! The fault matrix (docs/reliability.md): for each fault the simulator can inject, a good
//! poll, the fault, a poll under it, then the fault cleared and one poll to recover. Everything
//! runs step by step on one manual clock.
//!
//! Under a fault that fails the poll, `/metrics` must keep the last good values exactly,
//! `kapso_up` is 0, the data age (`now - kapso_last_poll_success_timestamp_seconds`) grows with
//! the clock, the failure is counted under its kind, and the first poll after the fault clears
//! serves the ground truth again, counters included. Under a fault the exporter tolerates
//! (schema drift, short bursts, a slow but timely body), the poll succeeds with the truth.
//! Throughout, the simulator checks the budget (`max_in_window`) and that no request arrived
//! during a `Retry-After` pause.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{KEY, Samples, config, get, parse, series, test_start};
use kapso_exporter::app::{self, Exporter};
use kapso_exporter::clock::Clock;
use kapso_exporter::kapso::client::MAX_BODY_BYTES;
use kapso_exporter::kapso::{ApiError, RetryPolicy};
use kapso_exporter::simulator::{
    Drift, ExecStatus, Faults, GroundTruth, RunningSimulator, Simulator, SimulatorConfig,
};

/// The exporter's budget, equal to the simulator's limit: a request beyond it would be a 429.
const BUDGET: u32 = 600;
/// Attempts per request (the production default).
const ATTEMPTS: u32 = 3;
/// The client timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(500);
const STEP: Duration = Duration::from_secs(60);
const PROJECT: (&str, &str) = ("project", "default");
/// Metrics that carry the exporter's data (as opposed to its own health).
const DATA: [&str; 8] = [
    "kapso_workflow_executions",
    "kapso_workflow_info",
    "kapso_conversation_workflow_executions",
    "kapso_workflow_executions_started_total",
    "kapso_workflow_executions_finished_total",
    "kapso_workflow_execution_handoffs_total",
    "kapso_conversations_live",
    "kapso_last_poll_success_timestamp_seconds",
];

/// What is done to the API.
#[derive(Clone, Debug)]
enum Fault {
    /// Injected through [`Simulator::set_faults`].
    Inject(Faults),
    /// The key is replaced on the simulator (revoked), then restored.
    RevokeKey,
    /// The simulator is shut down (connection refused), then started again on its address.
    Unreachable,
}

/// What the exporter must do under the fault.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The poll fails with this error kind; the last good state stays.
    Fails(&'static str),
    /// The poll succeeds and shows the ground truth (ids as the API now writes them).
    Tolerates,
    /// The poll succeeds; rows in a status the exporter does not know are not live.
    NothingLive,
    /// Some workflows fail with this kind on their own: they keep their last good state
    /// (`kapso_workflow_up 0`), the others update, and the poll succeeds.
    Isolated(&'static str),
}

struct Case {
    fault: Fault,
    expect: Expect,
}

fn inject(faults: Faults) -> Fault {
    Fault::Inject(faults)
}

fn drift(d: Drift) -> Fault {
    inject(Faults {
        drift: d,
        ..Faults::default()
    })
}

/// The matrix; docs/reliability.md lists the same names.
fn matrix() -> Vec<(&'static str, Case)> {
    use Expect::*;
    let case = |fault, expect| Case { fault, expect };
    vec![
        (
            "server_error_burst",
            case(
                inject(Faults {
                    fail_next: ATTEMPTS,
                    ..Faults::default()
                }),
                Fails("server_error"),
            ),
        ),
        (
            "server_error_burst_within_retries",
            case(
                inject(Faults {
                    fail_next: ATTEMPTS - 1,
                    ..Faults::default()
                }),
                Tolerates,
            ),
        ),
        (
            "server_errors_sustained",
            case(
                inject(Faults {
                    server_error_rate: 1.0,
                    ..Faults::default()
                }),
                Fails("server_error"),
            ),
        ),
        (
            "timeout",
            case(
                inject(Faults {
                    latency: TIMEOUT * 4,
                    ..Faults::default()
                }),
                Fails("timeout"),
            ),
        ),
        (
            "slow_body",
            case(
                inject(Faults {
                    body_stall: TIMEOUT * 4,
                    ..Faults::default()
                }),
                Fails("timeout"),
            ),
        ),
        (
            "slow_body_within_timeout",
            case(
                inject(Faults {
                    body_stall: TIMEOUT / 10,
                    ..Faults::default()
                }),
                Tolerates,
            ),
        ),
        (
            "truncated_body",
            case(
                inject(Faults {
                    truncated_rate: 1.0,
                    ..Faults::default()
                }),
                Fails("transport"),
            ),
        ),
        (
            "malformed_json",
            case(
                inject(Faults {
                    malformed_rate: 1.0,
                    ..Faults::default()
                }),
                Fails("decode"),
            ),
        ),
        (
            "drift_extra_fields",
            case(
                drift(Drift {
                    extra_fields: true,
                    ..Drift::default()
                }),
                Tolerates,
            ),
        ),
        (
            "drift_null_fields",
            case(
                drift(Drift {
                    null_fields: true,
                    ..Drift::default()
                }),
                Tolerates,
            ),
        ),
        (
            "drift_missing_fields",
            case(
                drift(Drift {
                    missing_fields: true,
                    ..Drift::default()
                }),
                Tolerates,
            ),
        ),
        (
            "drift_non_uuid_ids",
            case(
                drift(Drift {
                    non_uuid_ids: true,
                    ..Drift::default()
                }),
                Tolerates,
            ),
        ),
        (
            "drift_missing_ids",
            case(
                drift(Drift {
                    missing_ids: true,
                    ..Drift::default()
                }),
                Fails("decode"),
            ),
        ),
        (
            "drift_unknown_status",
            case(
                inject(Faults {
                    unknown_status_rate: 1.0,
                    ..Faults::default()
                }),
                NothingLive,
            ),
        ),
        (
            "looping_cursor",
            case(
                inject(Faults {
                    looping_cursor: true,
                    ..Faults::default()
                }),
                Isolated("paging"),
            ),
        ),
        (
            "rate_limit_storm",
            case(
                inject(Faults {
                    throttle_secs: Some(1),
                    ..Faults::default()
                }),
                Fails("rate_limited"),
            ),
        ),
        ("key_revoked", case(Fault::RevokeKey, Fails("unauthorized"))),
        (
            "api_unreachable",
            case(Fault::Unreachable, Fails("transport")),
        ),
        (
            "huge_page",
            case(
                inject(Faults {
                    padding_bytes: HUGE,
                    ..Faults::default()
                }),
                Fails("decode"),
            ),
        ),
    ]
}

/// The huge page: 1 GiB of padding, 16 times the body cap.
const HUGE: u64 = 1 << 30;

struct Rig {
    sim: Simulator,
    server: Option<RunningSimulator>,
    clock: Clock,
    exporter: Exporter,
}

impl Rig {
    /// `timeout`: `--kapso.timeout`.
    async fn new(timeout: &str) -> Rig {
        let clock = Clock::manual(test_start());
        let sim = Simulator::new(
            SimulatorConfig {
                api_key: KEY.to_owned(),
                workflows: 4,
                conversations: 8,
                live_executions: 40,
                terminal_executions: 30,
                seed: 11,
                rate_limit_per_minute: Some(BUDGET),
                latency: Duration::ZERO,
                variance: Default::default(),
            },
            clock.clone(),
        );
        let server = sim.spawn().await.unwrap();
        let url = server.base_url.to_string();
        let budget = BUDGET.to_string();
        let config = config(&[
            "--kapso.base-url",
            &url,
            "--kapso.rate-limit",
            &budget,
            "--kapso.timeout",
            timeout,
        ]);
        let retry = RetryPolicy {
            attempts: ATTEMPTS,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(5),
        };
        let exporter = app::build(&config, clock.clone(), retry).unwrap();
        Rig {
            sim,
            server: Some(server),
            clock,
            exporter,
        }
    }

    async fn poll(&mut self) -> Result<(), ApiError> {
        self.exporter.pollers[0].poll_once().await
    }

    async fn scrape(&self) -> Samples {
        parse(&support::scrape(&self.exporter.router, None).await.1)
    }

    /// The world moves on by one step, on the shared clock.
    fn step(&self) {
        self.clock.advance(STEP);
        self.sim.tick(STEP);
    }

    fn now_secs(&self) -> f64 {
        self.clock.now().unix_timestamp() as f64
    }

    async fn apply(&mut self, fault: &Fault) {
        match fault {
            Fault::Inject(f) => self.sim.set_faults(f.clone()),
            Fault::RevokeKey => self.sim.set_api_key("sk-rotated-elsewhere"),
            Fault::Unreachable => {
                if let Some(server) = self.server.take() {
                    server.shutdown().await;
                }
            }
        }
    }

    async fn clear(&mut self, fault: &Fault, addr: std::net::SocketAddr) {
        match fault {
            Fault::Inject(_) => self.sim.set_faults(Faults::default()),
            Fault::RevokeKey => self.sim.set_api_key(KEY),
            Fault::Unreachable => self.server = Some(self.sim.spawn_at(addr).await.unwrap()),
        }
    }
}

/// The samples of the data metrics only.
fn data(samples: &Samples) -> Samples {
    samples
        .iter()
        .filter(|((name, _), _)| DATA.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn one(samples: &Samples, name: &str) -> Option<f64> {
    get(samples, name, &[PROJECT])
}

fn errors(samples: &Samples, kind: &str) -> f64 {
    get(
        samples,
        "kapso_poll_errors_total",
        &[PROJECT, ("kind", kind)],
    )
    .unwrap()
}

/// Live gauges by (workflow id, status), whatever the other labels say.
fn live_by_id(samples: &Samples) -> BTreeMap<(String, String), f64> {
    series(samples, "kapso_workflow_executions")
        .map(|(l, v)| ((l["workflow_id"].clone(), l["status"].clone()), v))
        .collect()
}

/// The live gauges of the workflows whose last poll committed (`kapso_workflow_up 1`).
fn fresh_live(samples: &Samples) -> BTreeMap<(String, String), f64> {
    let stale: Vec<String> = series(samples, "kapso_workflow_up")
        .filter(|(_, v)| *v == 0.0)
        .map(|(l, _)| l["workflow_id"].clone())
        .collect();
    live_by_id(samples)
        .into_iter()
        .filter(|((id, _), _)| !stale.contains(id))
        .collect()
}

/// The ground truth's live counts, ids written by `id`.
fn truth_live(truth: &GroundTruth, id: impl Fn(&str) -> String) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for w in &truth.workflows {
        for s in ExecStatus::LIVE {
            out.insert(
                (id(&w.id), s.as_str().to_owned()),
                truth.live_count(&w.id, s) as f64,
            );
        }
    }
    out
}

fn canonical(id: &str) -> String {
    id.to_owned()
}

fn dashless(id: &str) -> String {
    id.replace('-', "")
}

/// Counter values by (metric, workflow id, status label or "").
fn counters(samples: &Samples) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for name in [
        "kapso_workflow_executions_started_total",
        "kapso_workflow_executions_finished_total",
        "kapso_workflow_execution_handoffs_total",
    ] {
        for (l, v) in series(samples, name) {
            let status = l.get("status").cloned().unwrap_or_default();
            out.insert((name.to_owned(), l["workflow_id"].clone(), status), v);
        }
    }
    out
}

/// The ground truth's counts since the last mark, keyed like [`counters`].
fn truth_counts(truth: &GroundTruth) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for (wf, n) in &truth.started {
        let key = (
            "kapso_workflow_executions_started_total".to_owned(),
            wf.clone(),
            String::new(),
        );
        out.insert(key, *n as f64);
    }
    for ((wf, s), n) in &truth.finished {
        let key = (
            "kapso_workflow_executions_finished_total".to_owned(),
            wf.clone(),
            s.as_str().to_owned(),
        );
        out.insert(key, *n as f64);
    }
    for (wf, n) in &truth.handoffs {
        let key = (
            "kapso_workflow_execution_handoffs_total".to_owned(),
            wf.clone(),
            String::new(),
        );
        out.insert(key, *n as f64);
    }
    out
}

fn delta(
    after: &BTreeMap<(String, String, String), f64>,
    before: &BTreeMap<(String, String, String), f64>,
) -> BTreeMap<(String, String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// The peak resident set of this process in KiB (Linux), for the memory bound.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn run(name: &str) {
    let (_, case) = matrix()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    // Reading 64 MiB up to the body cap takes longer than the other cases' short timeout on a
    // loaded machine; the huge page must fail as too large, not as slow.
    let timeout = if name == "huge_page" { "30s" } else { "500ms" };
    let mut rig = Rig::new(timeout).await;
    let addr = rig.server.as_ref().unwrap().addr;

    // 1. A good poll: the baseline, equal to the ground truth.
    rig.poll().await.unwrap();
    rig.step();
    rig.poll().await.unwrap();
    rig.sim.mark();
    let good = rig.scrape().await;
    let good_at = rig.now_secs();
    assert_eq!(one(&good, "kapso_up"), Some(1.0));
    assert_eq!(
        live_by_id(&good),
        truth_live(&rig.sim.ground_truth(), canonical)
    );
    let good_counters = counters(&good);

    // 2. The world moves on and the fault strikes.
    rig.step();
    rig.apply(&case.fault).await;
    let rss_before = peak_rss_kib();
    let started = tokio::time::Instant::now();
    let result = rig.poll().await;
    let took = started.elapsed();
    let during = rig.scrape().await;
    match case.expect {
        Expect::Fails(kind) => {
            let err = result.expect_err("the poll must fail under the fault");
            assert_eq!(err.kind(), kind, "{name}: {err}");
            assert!(!format!("{err} {err:?}").contains(KEY));
            // The last good state, exactly; its age is the time since the good poll.
            assert_eq!(data(&during), data(&good), "{name}: data changed");
            assert_eq!(one(&during, "kapso_up"), Some(0.0));
            assert_eq!(
                one(&during, "kapso_last_poll_success_timestamp_seconds"),
                Some(good_at)
            );
            assert_eq!(rig.now_secs() - good_at, STEP.as_secs_f64());
            assert_eq!(errors(&during, kind), 1.0, "{name}");
            for other in ApiError::KINDS.iter().filter(|k| **k != kind) {
                assert_eq!(errors(&during, other), 0.0, "{name}: kind {other}");
            }
            assert_eq!(
                get(
                    &during,
                    "kapso_polls_total",
                    &[PROJECT, ("result", "error")]
                ),
                Some(1.0)
            );
            // A second step under the fault: still the same data, one more step older.
            rig.step();
            // (A burst is over after one poll; slow faults are not worth a second one.)
            let again = !matches!(
                name,
                "server_error_burst" | "timeout" | "slow_body" | "huge_page" | "rate_limit_storm"
            );
            if again {
                assert!(rig.poll().await.is_err());
                let again = rig.scrape().await;
                assert_eq!(data(&again), data(&good), "{name}: data changed");
                assert_eq!(errors(&again, kind), 2.0);
                assert_eq!(rig.now_secs() - good_at, 2.0 * STEP.as_secs_f64());
            }
        }
        Expect::Tolerates => {
            result.unwrap_or_else(|e| panic!("{name}: the poll must succeed: {e}"));
            let truth = rig.sim.ground_truth();
            let ids = if name == "drift_non_uuid_ids" {
                dashless
            } else {
                canonical
            };
            if name == "drift_non_uuid_ids" {
                // The workflows under their old spelling are missing from the listing: their
                // series stay, marked stale, for the grace period.
                assert!(fresh_live(&during).len() < live_by_id(&during).len());
            }
            assert_eq!(fresh_live(&during), truth_live(&truth, ids), "{name}");
            assert_eq!(one(&during, "kapso_up"), Some(1.0));
            assert_eq!(
                one(&during, "kapso_last_poll_success_timestamp_seconds"),
                Some(rig.now_secs())
            );
            for kind in ApiError::KINDS {
                assert_eq!(errors(&during, kind), 0.0, "{name}: kind {kind}");
            }
            if !name.starts_with("drift_") {
                // Nothing was lost: the counters saw exactly what happened.
                assert_eq!(
                    delta(&counters(&during), &good_counters),
                    truth_counts(&truth),
                    "{name}"
                );
            }
        }
        Expect::Isolated(kind) => {
            result.unwrap_or_else(|e| panic!("{name}: the poll must succeed: {e}"));
            assert_eq!(one(&during, "kapso_up"), Some(1.0));
            let failed: f64 = series(&during, "kapso_workflow_poll_errors_total")
                .filter(|(l, _)| l["kind"] == kind)
                .map(|(_, v)| v)
                .sum();
            assert!(failed >= 1.0, "{name}: no workflow failed with {kind}");
            // A stale workflow shows exactly its last good values; the others the truth.
            let good_live = live_by_id(&good);
            let now_live = live_by_id(&during);
            let fresh = fresh_live(&during);
            let truth = truth_live(&rig.sim.ground_truth(), canonical);
            assert!(fresh.len() < now_live.len(), "{name}: nothing stale");
            for (key, v) in &now_live {
                let want = if fresh.contains_key(key) {
                    &truth
                } else {
                    &good_live
                };
                assert_eq!(Some(v), want.get(key), "{name}: {key:?}");
            }
        }
        Expect::NothingLive => {
            result.unwrap_or_else(|e| panic!("{name}: the poll must succeed: {e}"));
            assert_eq!(one(&during, "kapso_up"), Some(1.0));
            assert!(live_by_id(&during).values().all(|v| *v == 0.0), "{name}");
            // Rows the exporter cannot place are not counted as finished: at most the
            // executions that really finished since the good poll are.
            let finished = |s: &Samples| -> f64 {
                series(s, "kapso_workflow_executions_finished_total")
                    .map(|(_, v)| v)
                    .sum()
            };
            let truth_finished: u64 = rig.sim.ground_truth().finished.values().sum();
            assert!(
                finished(&during) - finished(&good) <= truth_finished as f64,
                "{name}: {} finishes counted, {truth_finished} happened",
                finished(&during) - finished(&good)
            );
        }
    }
    // The budget holds and no request arrived while a Retry-After was running.
    let stats = rig.sim.stats();
    assert!(stats.max_in_window <= u64::from(BUDGET), "{stats:?}");
    assert_eq!(stats.during_pause, 0, "{name}");
    check_specifics(name, &rig, took, rss_before).await;

    // 3. The fault clears: one poll recovers the ground truth.
    rig.clear(&case.fault, addr).await;
    rig.step();
    rig.poll()
        .await
        .unwrap_or_else(|e| panic!("{name}: no recovery in one poll: {e}"));
    let after = rig.scrape().await;
    let truth = rig.sim.ground_truth();
    assert_eq!(fresh_live(&after), truth_live(&truth, canonical), "{name}");
    assert_eq!(one(&after, "kapso_up"), Some(1.0));
    assert_eq!(
        one(&after, "kapso_last_poll_success_timestamp_seconds"),
        Some(rig.now_secs())
    );
    if matches!(case.expect, Expect::Fails(_)) || name.starts_with("server_error") {
        // A failed poll commits nothing, so the recovery poll counts the outage exactly.
        assert_eq!(
            delta(&counters(&after), &good_counters),
            truth_counts(&truth),
            "{name}"
        );
    }
    let stats = rig.sim.stats();
    assert!(stats.max_in_window <= u64::from(BUDGET), "{stats:?}");
    assert_eq!(stats.during_pause, 0, "{name}");
}

/// What only some faults can show.
async fn check_specifics(name: &str, rig: &Rig, took: Duration, rss_before: Option<u64>) {
    let stats = rig.sim.stats();
    match name {
        "rate_limit_storm" => {
            // Every attempt got a 429 and each waited out the 1 s Retry-After.
            assert_eq!(stats.rate_limited, u64::from(ATTEMPTS));
            assert!(
                took >= Duration::from_secs(u64::from(ATTEMPTS - 1)),
                "{took:?}"
            );
        }
        "timeout" | "slow_body" => {
            // Each attempt is cut at the timeout, not at the 2 s the API would take.
            assert!(took < TIMEOUT * 4 * ATTEMPTS, "{took:?}");
        }
        "key_revoked" => {
            // A 401 is not retried: one request per failed poll.
            let failed = get(
                &rig.scrape().await,
                "kapso_polls_total",
                &[PROJECT, ("result", "error")],
            );
            assert_eq!(Some(stats.count_status(401) as f64), failed);
        }
        "huge_page" => {
            // The client stopped reading at the cap: the server streamed little more than the
            // cap (socket buffers) of the 1 GiB it offered, and memory stayed bounded.
            let cap = MAX_BODY_BYTES as u64;
            assert!(stats.padding_bytes_sent >= cap / 2, "{stats:?}");
            assert!(stats.padding_bytes_sent < cap + (32 << 20), "{stats:?}");
            if let (Some(before), Some(after)) = (rss_before, peak_rss_kib()) {
                let grown_mib = after.saturating_sub(before) / 1024;
                assert!(grown_mib < 512, "peak RSS grew by {grown_mib} MiB");
            }
        }
        _ => {}
    }
}

macro_rules! matrix_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                run(stringify!($name)).await;
            }
        )*

        /// Every case of the matrix has a test, and docs/reliability.md lists it.
        #[test]
        fn the_matrix_is_tested_and_documented() {
            let tested = [$(stringify!($name)),*];
            let doc = std::fs::read_to_string(
                concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reliability.md"),
            )
            .unwrap();
            for (name, _) in matrix() {
                assert!(tested.contains(&name), "no test for {name}");
                assert!(doc.contains(&format!("`{name}`")), "docs/reliability.md lacks {name}");
            }
            assert_eq!(tested.len(), matrix().len());
        }
    };
}

matrix_tests!(
    server_error_burst,
    server_error_burst_within_retries,
    server_errors_sustained,
    timeout,
    slow_body,
    slow_body_within_timeout,
    truncated_body,
    malformed_json,
    drift_extra_fields,
    drift_null_fields,
    drift_missing_fields,
    drift_non_uuid_ids,
    drift_missing_ids,
    drift_unknown_status,
    looping_cursor,
    rate_limit_storm,
    key_revoked,
    api_unreachable,
    huge_page,
);
