//! Counts that survive a restart (`--storage.path`): an exporter restarted from its saved
//! state counts exactly like one that never stopped, downtime included; the binary killed
//! with SIGKILL continues its counters; unusable files start fresh and are kept aside.
#![allow(clippy::unwrap_used)]

use crate::counting_support;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    KEY, Samples, TempDir, config, get, parse, scrape, series, test_retry, test_start,
};
use kapso_exporter::app::{self, Exporter};
use kapso_exporter::clock::Clock;
use kapso_exporter::kapso::ApiKey;
use kapso_exporter::poller::tracker::Tracker;
use kapso_exporter::simulator::{RunningSimulator, Simulator, SimulatorConfig, Variance};
use kapso_exporter::storage::{SavedRef, Store};

const BIN: &str = env!("CARGO_BIN_EXE_kapso-exporter");

fn small_world(clock: &Clock, seed: u64) -> Simulator {
    Simulator::new(
        SimulatorConfig {
            api_key: KEY.to_owned(),
            workflows: 4,
            conversations: 30,
            live_executions: 60,
            terminal_executions: 50,
            seed,
            rate_limit_per_minute: None,
            latency: Duration::ZERO,
            variance: Variance::default(),
        },
        clock.clone(),
    )
}

/// Every counter series of the execution families, by labels.
fn counters(s: &Samples) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in [
        "kapso_workflow_executions_started_total",
        "kapso_workflow_executions_finished_total",
        "kapso_workflow_execution_handoffs_total",
    ] {
        for (labels, v) in series(s, name) {
            out.insert(format!("{name}{labels:?}"), v);
        }
    }
    out
}

fn exporter(server: &RunningSimulator, clock: &Clock, storage: Option<&Path>) -> Exporter {
    let url = server.base_url.to_string();
    let mut args = vec![
        "--kapso.base-url",
        url.as_str(),
        "--kapso.rate-limit",
        "100000",
    ];
    let dir = storage.map(|p| p.display().to_string());
    if let Some(d) = &dir {
        args.extend(["--storage.path", d.as_str()]);
    }
    app::build(&config(&args), clock.clone(), test_retry()).unwrap()
}

async fn poll_and_save(e: &mut Exporter) {
    for p in &mut e.pollers {
        p.poll_once().await.unwrap();
        p.save().await;
    }
}

async fn shown(e: &Exporter) -> Samples {
    parse(&scrape(&e.router, None).await.1)
}

#[tokio::test]
async fn an_exporter_restarted_at_every_poll_counts_exactly_like_one_that_never_stopped() {
    let clock = Clock::manual(test_start());
    let sim = small_world(&clock, 7);
    let server = sim.spawn().await.unwrap();
    let dir = TempDir::new("restart-model");
    let mut steady = exporter(&server, &clock, None);
    let mut restarted = exporter(&server, &clock, Some(&dir.0));
    poll_and_save(&mut steady).await;
    poll_and_save(&mut restarted).await;
    let mut previous = counters(&shown(&restarted).await);
    for round in 0..12 {
        // Activity, then a poll of the steady exporter every round; the other one is down for
        // rounds 4 to 6 and restarted from its file before each of its polls.
        for _ in 0..6 {
            clock.advance(Duration::from_secs(10));
            sim.tick(Duration::from_secs(10));
        }
        poll_and_save(&mut steady).await;
        if (4..=6).contains(&round) {
            continue;
        }
        drop(restarted);
        restarted = exporter(&server, &clock, Some(&dir.0));
        let s = shown(&restarted).await;
        assert_eq!(
            get(&s, "kapso_storage_restored", &[("project", "default")]),
            Some(1.0),
            "round {round}: restored"
        );
        // Before its first poll it serves the saved counters: no reset.
        assert_eq!(counters(&s), previous, "round {round}: the saved counters");
        poll_and_save(&mut restarted).await;
        let now = counters(&shown(&restarted).await);
        let reference = counters(&shown(&steady).await);
        assert_eq!(now.len(), reference.len(), "round {round}: the same series");
        for (k, want) in &reference {
            let got = now.get(k).copied().unwrap_or(-1.0);
            // A handoff entered and left while the exporter was down is not seen by anyone
            // (polls only see a status; no webhooks here): at most what the steady one saw.
            // Starts and finishes during the downtime are counted exactly.
            if k.contains("handoffs") && round > 4 {
                assert!(got <= *want, "round {round}: {k}: {got} > {want}");
            } else {
                assert_eq!(got, *want, "round {round}: {k}");
            }
        }
        assert!(
            previous
                .iter()
                .all(|(k, v)| now.get(k).is_some_and(|n| n >= v)),
            "round {round}: no counter went back"
        );
        previous = now;
    }
    let moved = previous.values().filter(|v| **v > 0.0).count();
    assert!(moved > 5, "the world moved: {previous:?}");
}

/// A state file the exporter cannot use: it starts at 0, says so, and keeps the file aside.
async fn starts_fresh_with(prepare: impl FnOnce(&Path)) {
    let clock = Clock::manual(test_start());
    let sim = small_world(&clock, 3);
    let server = sim.spawn().await.unwrap();
    let dir = TempDir::new("restart-bad");
    prepare(&dir.0);
    let mut e = exporter(&server, &clock, Some(&dir.0));
    let s = shown(&e).await;
    assert_eq!(
        get(&s, "kapso_storage_restored", &[("project", "default")]),
        Some(0.0)
    );
    assert!(
        counters(&s).is_empty(),
        "nothing restored: {:?}",
        counters(&s)
    );
    let aside = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".bad-")
        })
        .count();
    assert_eq!(aside, 1, "the unusable file is kept aside");
    poll_and_save(&mut e).await;
    let s = shown(&e).await;
    assert_eq!(
        get(
            &s,
            "kapso_storage_writes_total",
            &[("project", "default"), ("result", "success")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_corrupt_state_file_starts_fresh() {
    starts_fresh_with(|dir| {
        std::fs::write(dir.join("default.state.json"), b"{\"format\":\"kapso-exp").unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_state_of_another_project_starts_fresh() {
    starts_fresh_with(|dir| {
        let store = Store::new(dir, "default", &ApiKey::new("sk-another-project"));
        let tracker = Tracker::new();
        let bytes = store.encode(
            &SavedRef {
                tracker: &tracker,
                deliveries: None,
            },
            test_start(),
        );
        store.write(&bytes).unwrap();
    })
    .await;
}

// ----- the binary, killed -------------------------------------------------------------------

struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(base_url: &str, storage: &Path) -> Process {
        Self::start_every(base_url, storage, "1s")
    }

    fn start_every(base_url: &str, storage: &Path, interval: &str) -> Process {
        let mut child = Command::new(BIN)
            .args([
                "--kapso.base-url",
                base_url,
                "--web.listen-address",
                "127.0.0.1:0",
            ])
            .args(["--poll.interval", interval, "--kapso.timeout", "500ms"])
            .arg("--storage.path")
            .arg(storage)
            .env("KAPSO_API_KEY", KEY)
            .env_remove("KAPSO_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Process { child, lines }
    }

    fn address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|l| {
                l.contains("serving metrics")
                    .then(|| {
                        l.split_whitespace()
                            .find_map(|f| f.strip_prefix("address="))
                    })
                    .flatten()
                    .map(str::to_owned)
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Scrapes until `done`, at most 20 s.
async fn until(addr: &str, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            let s = parse(&r.text().await.unwrap_or_default());
            if done(&s) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{what}: never reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("project", "default")];
    all.extend_from_slice(labels);
    get(s, name, &all).unwrap_or(-1.0)
}

fn totals(s: &Samples) -> (f64, f64) {
    let sum = |name: &str| series(s, name).map(|(_, v)| v).sum::<f64>();
    (
        sum("kapso_workflow_executions_started_total"),
        sum("kapso_workflow_executions_finished_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_killed_between_polls_continues_its_counters_and_counts_the_downtime() {
    let clock = Clock::system();
    let sim = small_world(&clock, 11);
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let dir = TempDir::new("restart-kill");
    sim.mark();
    let first = Process::start(&url, &dir.0);
    let addr = first.address();
    let written = |s: &Samples| value(s, "kapso_storage_writes_total", &[("result", "success")]);
    let base = until(&addr, "the first write", |s| written(s) >= 1.0).await;
    assert_eq!(value(&base, "kapso_storage_restored", &[]), 0.0);
    // Activity the first process sees, then a write after it.
    sim.tick(Duration::from_secs(120));
    let polls = |s: &Samples| value(s, "kapso_polls_total", &[("result", "success")]);
    let seen = until(&addr, "a poll after the activity", |s| {
        polls(s) >= polls(&base) + 2.0 && written(s) >= written(&base) + 2.0
    })
    .await;
    let before = totals(&seen);
    assert!(before.0 > 0.0 && before.1 > 0.0, "it counted: {before:?}");
    // SIGKILL: no shutdown, no last write.
    drop(first);
    // Activity while it is down.
    sim.tick(Duration::from_secs(120));
    let second = Process::start(&url, &dir.0);
    let addr = second.address();
    let restored = until(&addr, "restored", |s| {
        value(s, "kapso_storage_restored", &[]) >= 0.0
    })
    .await;
    assert_eq!(value(&restored, "kapso_storage_restored", &[]), 1.0);
    let at_start = totals(&restored);
    assert!(
        at_start.0 >= before.0 && at_start.1 >= before.1,
        "no reset: {at_start:?} after {before:?}"
    );
    let after = until(&addr, "the first poll after the restart", |s| {
        polls(s) >= 1.0
    })
    .await;
    let truth = sim.ground_truth();
    let want: (u64, u64) = truth.workflows.iter().fold((0, 0), |(s, f), w| {
        let c = counting_support::truth_counts(&truth, &w.id);
        (s + c.started, f + c.ended + c.failed)
    });
    assert_eq!(
        totals(&after),
        (want.0 as f64, want.1 as f64),
        "started and finished equal the truth, downtime included"
    );
    drop(second);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_state_once_more() {
    let clock = Clock::system();
    let sim = small_world(&clock, 12);
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let dir = TempDir::new("restart-term");
    let mut p = Process::start_every(&url, &dir.0, "1h");
    let addr = p.address();
    let written = |s: &Samples| value(s, "kapso_storage_writes_total", &[("result", "success")]);
    until(&addr, "the first poll's write", |s| written(s) >= 1.0).await;
    let file = dir.0.join("default.state.json");
    let saved_at = |text: &str| -> i64 {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["saved_at"].as_i64().unwrap()
    };
    let first = saved_at(&std::fs::read_to_string(&file).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    let status = Command::new("kill")
        .args(["-s", "TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        p.child.wait().unwrap().success(),
        "{:?}",
        p.lines.lock().unwrap()
    );
    let last = saved_at(&std::fs::read_to_string(&file).unwrap());
    assert!(last > first, "saved again at shutdown: {first} then {last}");
    drop(server);
}

#[tokio::test]
async fn a_failing_write_is_counted_and_polling_goes_on() {
    let clock = Clock::manual(test_start());
    let sim = small_world(&clock, 5);
    let server = sim.spawn().await.unwrap();
    let dir = TempDir::new("restart-fail");
    let storage = dir.0.join("state");
    std::fs::create_dir_all(&storage).unwrap();
    let mut e = exporter(&server, &clock, Some(&storage));
    poll_and_save(&mut e).await;
    // The directory disappears and a file takes its name: every write fails from here.
    std::fs::remove_dir_all(&storage).unwrap();
    std::fs::write(&storage, b"not a directory").unwrap();
    for _ in 0..2 {
        clock.advance(Duration::from_secs(60));
        sim.tick(Duration::from_secs(60));
        poll_and_save(&mut e).await;
    }
    let s = shown(&e).await;
    let writes = |result| {
        get(
            &s,
            "kapso_storage_writes_total",
            &[("project", "default"), ("result", result)],
        )
    };
    assert_eq!(writes("success"), Some(1.0));
    assert_eq!(writes("error"), Some(2.0));
    assert_eq!(get(&s, "kapso_up", &[("project", "default")]), Some(1.0));
    assert_eq!(
        get(
            &s,
            "kapso_polls_total",
            &[("project", "default"), ("result", "success")]
        ),
        Some(3.0)
    );
}
