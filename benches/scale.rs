//! Scale benchmark: the real exporter binary against the in-process simulator at three scales.
//!
//! Run: `cargo bench --bench scale -- --write-docs` (options after `--`, see `--help`). It
//! writes a report with every number it measured, the arithmetic for the runs it skipped, and
//! the goals table: to `target/bench/benchmarks.md` unless `--write-docs` (the committed
//! `docs/benchmarks.md`) or `--out PATH` says otherwise, so a quick or partial run never
//! overwrites the committed results. Progress goes to stderr, one line per phase and poll. The simulator adds 50 ms to every response and enforces the same
//! per-minute limit the exporter is given; the exporter runs as a subprocess so that its
//! resident memory (`VmHWM`) and CPU time (`utime + stime`) are its own.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{
    EVENT_FAILED, EVENT_HANDOFF, ExecStatus, GroundTruth, Simulator, SimulatorConfig, WebhookStats,
};
use support::{
    KEY, STALLABLE, Samples, THRESHOLDS, activity_between, ceiling, finished_between, get,
    lower_bound, parse, series,
};
use time::OffsetDateTime;

const LATENCY: Duration = Duration::from_millis(50);
/// Tolerance for gauges computed from the wall clock at scrape time (two processes, two
/// reads of the system clock).
const CLOCK_SLACK: f64 = 3.0;

#[derive(Clone, Copy, Debug)]
struct Scale {
    name: &'static str,
    workflows: usize,
    conversations: usize,
    live: usize,
    /// Executions finishing per minute while the accuracy polls run.
    finish_per_minute: f64,
}

const SCALES: [Scale; 3] = [
    Scale {
        name: "S",
        workflows: 5,
        conversations: 100,
        live: 200,
        finish_per_minute: 60.0,
    },
    Scale {
        name: "M",
        workflows: 50,
        conversations: 10_000,
        live: 20_000,
        finish_per_minute: 1_000.0,
    },
    Scale {
        name: "L",
        workflows: 200,
        conversations: 100_000,
        live: 200_000,
        finish_per_minute: 10_000.0,
    },
];

struct Options {
    scales: Vec<Scale>,
    limits: Vec<u32>,
    /// Rate-limited runs whose arithmetic says they take longer are computed, not run.
    max_run: Duration,
    accuracy_polls: usize,
    soak_polls: usize,
    /// The most back-to-back polls after the first in a rate-limit run.
    steady_polls_max: u64,
    wrk_seconds: u64,
    conversation_mode_max: usize,
    out: String,
    /// The arguments after `--`, for the report's first line.
    args: String,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            scales: SCALES.to_vec(),
            limits: vec![100, 500, 1000],
            max_run: Duration::from_secs(7 * 60),
            accuracy_polls: 4,
            soak_polls: 1000,
            steady_polls_max: 4,
            wrk_seconds: 10,
            conversation_mode_max: 10_000,
            out: default_out(),
            args: String::new(),
        };
        // `cargo bench` passes --bench to every bench binary.
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        o.args = args.join(" ");
        let mut i = 0;
        let value = |i: &mut usize| -> String {
            *i += 1;
            args.get(*i).cloned().unwrap_or_else(|| usage(1))
        };
        while i < args.len() {
            match args[i].as_str() {
                "--scale" => {
                    let v = value(&mut i);
                    o.scales = v
                        .split(',')
                        .map(|n| {
                            *SCALES
                                .iter()
                                .find(|s| s.name.eq_ignore_ascii_case(n))
                                .unwrap_or_else(|| usage(1))
                        })
                        .collect();
                }
                "--limits" => {
                    o.limits = value(&mut i)
                        .split(',')
                        .filter(|n| *n != "none")
                        .map(|n| n.parse().unwrap_or_else(|_| usage(1)))
                        .collect();
                }
                "--max-run-minutes" => {
                    let m: f64 = value(&mut i).parse().unwrap_or_else(|_| usage(1));
                    o.max_run = Duration::from_secs_f64(m * 60.0);
                }
                "--soak-polls" => o.soak_polls = value(&mut i).parse().unwrap_or_else(|_| usage(1)),
                "--no-soak" => o.soak_polls = 0,
                "--out" => o.out = value(&mut i),
                "--write-docs" => o.out = DOCS_OUT.to_owned(),
                "--quick" => {
                    o.scales = vec![SCALES[0]];
                    o.limits = vec![100];
                    o.soak_polls = 50;
                    o.steady_polls_max = 1;
                    o.wrk_seconds = 2;
                    o.accuracy_polls = 2;
                }
                "--help" | "-h" => usage(0),
                _ => usage(1),
            }
            i += 1;
        }
        o
    }
}

/// The committed report.
const DOCS_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");

/// Where a report goes unless asked: under the target directory, never `docs/`.
fn default_out() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    format!("{target}/bench/benchmarks.md")
}

fn usage(code: i32) -> ! {
    eprintln!(
        "usage: cargo bench --bench scale -- [--scale S,M,L] [--limits 100,500,1000|none] \
         [--max-run-minutes 7] [--soak-polls 1000 | --no-soak] [--quick] \
         [--write-docs | --out PATH]\n\
         The report goes to target/bench/benchmarks.md unless --write-docs (docs/benchmarks.md) \
         or --out PATH."
    );
    std::process::exit(code)
}

// ----- the exporter subprocess ------------------------------------------------------------

/// The exporter binary, killed on drop.
struct Exporter {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Exporter {
    fn start(sim_url: &str, args: &[&str]) -> Exporter {
        Exporter::start_env(sim_url, args, &[])
    }

    fn start_env(sim_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Exporter {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kapso-exporter"));
        if !sim_url.is_empty() {
            cmd.args(["--kapso.base-url", sim_url]);
        }
        let child = cmd
            .args(["--web.listen-address", &listen])
            .args(["--log.level", "warn"])
            .args(args)
            .env("KAPSO_API_KEY", KEY)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Exporter {
            child,
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The landing page (cheap, unlike /metrics).
    async fn page(&mut self) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the exporter exited: {status}");
        }
        self.http
            .get(format!("{}/", self.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Completed polls (ok, failed) of the only project.
    async fn polls(&mut self) -> Option<(u64, u64)> {
        let body = self.page().await?;
        let ok = number_before(&body, " ok, ")?;
        let failed = number_before(&body, " failed<")?;
        Some((ok, failed))
    }

    /// Waits until `n` polls completed; panics on a failed poll or after `deadline`.
    async fn wait_polls(&mut self, n: u64, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            if let Some((ok, failed)) = self.polls().await {
                assert_eq!(failed, 0, "a poll failed (see the exporter's log above)");
                if ok >= n {
                    return;
                }
            }
            assert!(Instant::now() < until, "no poll {n} within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One scrape asking for gzip, as Prometheus does: the body as sent and whether the
    /// server compressed it. (reqwest here has no gzip feature: the bytes are the wire's.)
    async fn scrape_gzip(&self) -> (Vec<u8>, bool) {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .unwrap();
        let gzip = response
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v == "gzip");
        (response.bytes().await.unwrap().to_vec(), gzip)
    }

    async fn scrape(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn number_before(text: &str, marker: &str) -> Option<u64> {
    let end = text.find(marker)?;
    let start = text[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    text[start..end].parse().ok()
}

/// `VmHWM` and `VmRSS` in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ----- the simulator ----------------------------------------------------------------------

fn sim_config(scale: &Scale, limit: u32, latency: Duration) -> SimulatorConfig {
    SimulatorConfig {
        api_key: KEY.to_owned(),
        workflows: scale.workflows,
        conversations: scale.conversations,
        live_executions: scale.live,
        terminal_executions: scale.live * 2,
        seed: 7,
        rate_limit_per_minute: Some(limit),
        latency,
        variance: Default::default(),
    }
}

/// Compares every series of the metric contract with the ground truth; returns
/// (series compared, mismatches as text).
fn compare(samples: &Samples, truth: &GroundTruth, now: OffsetDateTime) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut bad = Vec::new();
    let mut check = |ok: bool, what: String| {
        checked += 1;
        if !ok {
            bad.push(what);
        }
    };
    let p = ("project", "default");
    let age = |t: &OffsetDateTime| (now - *t).as_seconds_f64();
    for w in &truth.workflows {
        let info = [
            p,
            ("workflow_id", w.id.as_str()),
            ("workflow", w.name.as_str()),
            ("workflow_status", w.status.as_str()),
        ];
        check(
            get(samples, "kapso_workflow_info", &info) == Some(1.0),
            format!("info of {}", w.name),
        );
        let wl = [
            p,
            ("workflow_id", w.id.as_str()),
            ("workflow", w.name.as_str()),
        ];
        for s in ExecStatus::LIVE {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth.live_count(&w.id, s) as f64;
            let got = get(samples, "kapso_workflow_executions", &l);
            check(
                got == Some(want),
                format!("{} {s} live {got:?} != {want}", w.name),
            );
        }
        for s in STALLABLE {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth
                .oldest_last_event
                .get(&(w.id.clone(), s))
                .map_or(0.0, age);
            let got = get(samples, "kapso_workflow_execution_stalled_seconds", &l);
            check(
                got.is_some_and(|g| (g - want).abs() <= CLOCK_SLACK),
                format!("{} {s} stalled seconds {got:?} != {want}", w.name),
            );
            let events: Vec<f64> = truth
                .live_last_events
                .get(&(w.id.clone(), s))
                .map(|v| v.iter().map(age).collect())
                .unwrap_or_default();
            for thr in THRESHOLDS {
                let thr_f = thr as f64;
                let low = events.iter().filter(|a| **a > thr_f + CLOCK_SLACK).count() as f64;
                let high = events.iter().filter(|a| **a > thr_f - CLOCK_SLACK).count() as f64;
                let over = thr.to_string();
                let mut l = l.clone();
                l.push(("over", over.as_str()));
                let got = get(samples, "kapso_workflow_executions_stalled", &l);
                check(
                    got.is_some_and(|g| low <= g && g <= high),
                    format!("{} {s} over {thr}: {got:?} not in [{low}, {high}]", w.name),
                );
            }
        }
        let started = truth.started.get(&w.id).copied().unwrap_or(0) as f64;
        let got = get(samples, "kapso_workflow_executions_started_total", &wl);
        check(
            got == Some(started),
            format!("{} started {got:?} != {started}", w.name),
        );
        let handoffs = truth.handoffs.get(&w.id).copied().unwrap_or(0) as f64;
        let got = get(samples, "kapso_workflow_execution_handoffs_total", &wl);
        check(
            got == Some(handoffs),
            format!("{} handoffs {got:?} != {handoffs}", w.name),
        );
        for s in [ExecStatus::Ended, ExecStatus::Failed] {
            let mut l = wl.to_vec();
            l.push(("status", s.as_str()));
            let want = truth.finished.get(&(w.id.clone(), s)).copied().unwrap_or(0) as f64;
            let got = get(samples, "kapso_workflow_executions_finished_total", &l);
            check(
                got == Some(want),
                format!("{} {s} finished {got:?} != {want}", w.name),
            );
        }
    }
    let names: BTreeMap<&str, &str> = truth
        .workflows
        .iter()
        .map(|w| (w.id.as_str(), w.name.as_str()))
        .collect();
    let shown = series(samples, "kapso_conversation_workflow_executions").count();
    check(
        shown == truth.per_conversation.len(),
        format!(
            "{shown} conversation series != {}",
            truth.per_conversation.len()
        ),
    );
    for ((c, wf, s), n) in &truth.per_conversation {
        let l = [
            p,
            ("conversation_id", c.as_str()),
            ("workflow_id", wf.as_str()),
            ("workflow", names.get(wf.as_str()).copied().unwrap_or("")),
            ("status", s.as_str()),
        ];
        let got = get(samples, "kapso_conversation_workflow_executions", &l);
        check(
            got == Some(*n as f64),
            format!("conversation {c} {s} {got:?} != {n}"),
        );
        if STALLABLE.contains(s) {
            let want = age(&truth.conversation_oldest_last_event[&(c.clone(), wf.clone(), *s)]);
            let got = get(samples, "kapso_conversation_execution_stalled_seconds", &l);
            check(
                got.is_some_and(|g| (g - want).abs() <= CLOCK_SLACK),
                format!("conversation {c} stalled {got:?} != {want}"),
            );
        }
    }
    (checked, bad)
}

// ----- runs -------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PollRow {
    requests: u64,
    bound: u64,
    /// The most the README's rule allows (without pages past the first 100 rows).
    rule: u64,
    wall: f64,
    cpu: f64,
    finished: u64,
}

#[derive(Debug, Default)]
struct AccuracyRun {
    build_seconds: f64,
    first_poll: PollRow,
    polls: Vec<PollRow>,
    series_checked: usize,
    /// The first few mismatches of each poll, as text.
    mismatches: Vec<String>,
    /// Every mismatch, all polls.
    mismatch_count: usize,
    /// Mismatches of `kapso_workflow_execution_handoffs_total`, all polls.
    handoff_mismatches: usize,
    /// Webhook statistics of the simulator at the end of the polls.
    webhooks: WebhookStats,
    /// `kapso_webhook_requests_total` of the project by result, at the end of the polls.
    receiver: BTreeMap<String, u64>,
    /// Longest wait after a poll until every queued event was delivered and counted.
    webhook_settle_max: f64,
    /// After each poll: (state file bytes, write duration seconds).
    storage: Vec<(u64, f64)>,
    /// `kapso_storage_writes_total` (success, error) at the end of the polls.
    storage_writes: (u64, u64),
    /// /metrics scrapes that ran while a state write was under way: their latencies.
    scrapes_during_write: Vec<f64>,
    poll_interval: &'static str,
    max_in_window: u64,
    rate_limited: u64,
    hwm_kib: u64,
    /// Peak before the /metrics latency runs (polls and one scrape per poll).
    hwm_polls_kib: u64,
    rss_kib: u64,
    metrics_bytes: usize,
    metrics_series: usize,
    wrk: Option<(f64, f64, f64)>,
    loop_latency: (f64, f64),
    python: Option<(f64, f64)>,
    /// `/metrics` with `Accept-Encoding: gzip`; `None` if the server did not compress.
    gzip: Option<GzipRun>,
}

/// `/metrics` asked for with `Accept-Encoding: gzip`.
#[derive(Debug, Default)]
struct GzipRun {
    /// Compressed bytes of the last scrape, and the plain text they decompress to.
    bytes: usize,
    plain_bytes: usize,
    /// Loop p50 and p99 in seconds: request sent to the last compressed byte received.
    loop_latency: (f64, f64),
    /// `wrk -H 'Accept-Encoding: gzip'`, if wrk is installed.
    wrk: Option<(f64, f64, f64)>,
}

const UNLIMITED: u32 = 100_000;

/// Polls with the world evolving between polls (never during one), checks every series
/// against the ground truth after each poll, then measures `/metrics`.
async fn accuracy_run(scale: &Scale, o: &Options) -> AccuracyRun {
    let mut run = AccuracyRun::default();
    let built = Instant::now();
    let sim = Simulator::new(sim_config(scale, UNLIMITED, LATENCY), Clock::system());
    sim.set_finish_rate(scale.finish_per_minute);
    sim.mark();
    run.build_seconds = built.elapsed().as_secs_f64();
    let server = sim.spawn().await.unwrap();
    // The interval leaves room for the comparison between polls; polls never overlap ticks.
    let interval = match scale.name {
        "S" => "5s",
        "M" => "20s",
        _ => "60s",
    };
    run.poll_interval = interval;
    let mut truth = sim.ground_truth();
    let url = server.base_url.to_string();
    let limit = UNLIMITED.to_string();
    let hook_listen = format!("127.0.0.1:{}", free_port());
    let storage = std::env::temp_dir().join(format!(
        "kapso-bench-storage-{}-{}",
        std::process::id(),
        scale.name
    ));
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage).unwrap();
    let mut exporter = Exporter::start_env(
        &url,
        &[
            "--kapso.rate-limit",
            &limit,
            "--poll.interval",
            interval,
            "--kapso.timeout",
            "4s",
            "--metrics.max-conversations",
            "1000000",
            "--webhook.listen-address",
            &hook_listen,
            "--storage.path",
            storage.to_str().unwrap(),
        ],
        &[("KAPSO_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    );
    // Only transitions from now on send events; the world first evolves after poll 1.
    sim.register_webhook(
        &format!("http://{hook_listen}/webhooks/kapso"),
        WEBHOOK_SECRET,
        &[EVENT_FAILED, EVENT_HANDOFF],
    );
    let delivery = sim.run_webhook_delivery(Duration::from_millis(200));
    let pid = exporter.pid();
    let mut last_tick = Instant::now();
    let mut stats_before = sim.stats().total;
    let mut cpu_before = cpu_seconds(pid);
    let mut finished = BTreeMap::new();
    let mut active = BTreeMap::new();
    for poll in 1..=o.accuracy_polls as u64 {
        let started = Instant::now();
        exporter.wait_polls(poll, Duration::from_secs(900)).await;
        let requests = sim.stats().total - stats_before;
        let cpu = cpu_seconds(pid) - cpu_before;
        // Every event queued so far delivered (the world only changes between polls, so
        // nothing is queued meanwhile), counted by the receiver, and this poll's state written.
        let settle = Instant::now();
        let settled_sim = settle_webhooks(&sim, Duration::from_secs(60)).await;
        let (text, samples, now) = loop {
            let t = Instant::now();
            let text = exporter.scrape().await;
            let took = t.elapsed().as_secs_f64();
            let samples = parse(&text);
            let now = OffsetDateTime::now_utc();
            let writes = storage_writes(&samples);
            if writes.0 + writes.1 < poll {
                run.scrapes_during_write.push(took);
            }
            let stats = sim.webhook_stats();
            let received: u64 = receiver_results(&samples).values().sum();
            if writes.0 + writes.1 >= poll && received == stats.attempts {
                break (text, samples, now);
            }
            if settle.elapsed() > Duration::from_secs(90) {
                run.mismatch_count += 1;
                run.mismatches.push(format!(
                    "poll {poll}: not settled after 90 s: receiver answered {received} of {} \
                     attempts, {} state writes",
                    stats.attempts,
                    writes.0 + writes.1
                ));
                break (text, samples, now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !settled_sim {
            run.mismatch_count += 1;
            run.mismatches.push(format!(
                "poll {poll}: webhook deliveries not settled: {}",
                webhook_summary(&sim.webhook_stats())
            ));
        }
        run.webhook_settle_max = run.webhook_settle_max.max(settle.elapsed().as_secs_f64());
        let p = [("project", "default")];
        run.storage.push((
            get(&samples, "kapso_storage_last_write_bytes", &p).unwrap_or(f64::NAN) as u64,
            get(&samples, "kapso_storage_last_write_duration_seconds", &p).unwrap_or(f64::NAN),
        ));
        run.storage_writes = storage_writes(&samples);
        run.receiver = receiver_results(&samples);
        let reported = get(
            &samples,
            "kapso_api_requests_per_poll",
            &[("project", "default")],
        )
        .unwrap_or(-1.0) as u64;
        if reported != requests {
            eprintln!("  note: exporter counted {reported} requests, simulator {requests}");
        }
        let requests = reported;
        let wall = get(
            &samples,
            "kapso_poll_duration_seconds",
            &[("project", "default")],
        )
        .unwrap_or(f64::NAN);
        let (checked, bad) = compare(&samples, &truth, now);
        run.series_checked += checked;
        run.mismatch_count += bad.len();
        let handoff_bad: Vec<&String> = bad.iter().filter(|m| m.contains(" handoffs ")).collect();
        run.handoff_mismatches += handoff_bad.len();
        if !handoff_bad.is_empty() {
            explain_handoffs(&sim, &truth, &handoff_bad, poll);
        }
        run.mismatches
            .extend(bad.iter().take(5).map(|m| format!("poll {poll}: {m}")));
        let row = PollRow {
            requests,
            bound: lower_bound(&truth, &finished),
            rule: ceiling(&truth, &active, poll == 1, 0),
            wall,
            cpu,
            finished: finished.values().sum(),
        };
        eprintln!(
            "  {} poll {poll}: {} requests (lower bound {}, rule {}), {:.2} s wall, {:.3} s CPU, \
             {} finished since the last poll; {checked} series checked, {} mismatches \
             (waited {:.1} s)",
            scale.name,
            row.requests,
            row.bound,
            row.rule,
            row.wall,
            row.cpu,
            row.finished,
            bad.len(),
            started.elapsed().as_secs_f64()
        );
        if poll == 1 {
            run.first_poll = row;
        } else {
            run.polls.push(row);
        }
        if poll == o.accuracy_polls as u64 {
            run.metrics_bytes = text.len();
            run.metrics_series = samples.len();
            break;
        }
        // Evolve the world before the next poll starts.
        sim.tick(last_tick.elapsed());
        last_tick = Instant::now();
        let next = sim.ground_truth();
        finished = finished_between(&truth, &next);
        active = activity_between(&truth, &next);
        truth = next;
        stats_before = sim.stats().total;
        cpu_before = cpu_seconds(pid);
    }
    delivery.abort();
    run.webhooks = sim.webhook_stats();
    let receiver = run
        .receiver
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (last_bytes, last_seconds) = run.storage.last().copied().unwrap_or((0, f64::NAN));
    eprintln!(
        "  {} webhooks: {}; receiver: {}; state writes {} ok / {} failed, last {} in {:.1} ms",
        scale.name,
        webhook_summary(&run.webhooks),
        if receiver.is_empty() { "-" } else { &receiver },
        run.storage_writes.0,
        run.storage_writes.1,
        bytes(last_bytes as f64),
        last_seconds * 1000.0
    );
    let stats = sim.stats();
    run.max_in_window = stats.max_in_window;
    run.rate_limited = stats.rate_limited;
    run.hwm_polls_kib = memory(pid).0;
    // /metrics with every series on.
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let body = exporter.scrape().await;
        times.push(t.elapsed().as_secs_f64());
        assert!(body.len() > 100);
    }
    run.loop_latency = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    run.gzip = gzip_run(&exporter, o.wrk_seconds).await;
    run.wrk = wrk(&format!("{}/metrics", exporter.base), o.wrk_seconds, false);
    run.python = python_render(&exporter.scrape().await);
    let (hwm, rss) = memory(pid);
    run.hwm_kib = hwm;
    eprintln!(
        "  {} /metrics: {} series, {} plain, p50 {:.1} ms, p99 {:.1} ms; {}",
        scale.name,
        run.metrics_series,
        bytes(run.metrics_bytes as f64),
        run.loop_latency.0 * 1000.0,
        run.loop_latency.1 * 1000.0,
        run.gzip
            .as_ref()
            .map_or("gzip: not served".to_owned(), |g| format!(
                "gzip {} ({:.1}x smaller), p50 {:.1} ms, p99 {:.1} ms",
                bytes(g.bytes as f64),
                g.plain_bytes as f64 / g.bytes as f64,
                g.loop_latency.0 * 1000.0,
                g.loop_latency.1 * 1000.0
            ))
    );
    eprintln!(
        "  {} peak RSS: {:.1} MiB after the polls, {:.1} MiB after the /metrics runs, RSS now {:.1} MiB",
        scale.name,
        run.hwm_polls_kib as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    run.rss_kib = rss;
    drop(exporter);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&storage);
    run
}

/// 20 scrapes with `Accept-Encoding: gzip`; the last one is decompressed to check it is the
/// exposition. `None` when the server answered uncompressed.
async fn gzip_run(exporter: &Exporter, wrk_seconds: u64) -> Option<GzipRun> {
    let mut times = Vec::new();
    let mut last = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (body, gzip) = exporter.scrape_gzip().await;
        times.push(t.elapsed().as_secs_f64());
        if !gzip {
            eprintln!("  /metrics: the server ignored Accept-Encoding: gzip");
            return None;
        }
        last = body;
    }
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&last[..]), &mut plain)
        .unwrap();
    assert!(
        plain.contains("kapso_up"),
        "the gzip body is not the exposition"
    );
    Some(GzipRun {
        bytes: last.len(),
        plain_bytes: plain.len(),
        loop_latency: (percentile(&mut times, 0.5), percentile(&mut times, 0.99)),
        wrk: wrk(&format!("{}/metrics", exporter.base), wrk_seconds, true),
    })
}

const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// The simulator's webhook counts in one line.
fn webhook_summary(h: &WebhookStats) -> String {
    format!(
        "{} events queued, {} attempts, {} delivered, {} failed attempts, {} dropped, {} pending",
        h.queued, h.attempts, h.delivered, h.failed_attempts, h.dropped, h.pending
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the simulator has no attempt queued or in flight: every event queued so far
/// was answered (delivered, or dropped after its retries). `false` after `deadline`.
async fn settle_webhooks(sim: &Simulator, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    loop {
        let s = sim.webhook_stats();
        if s.pending == 0 && s.delivered + s.dropped >= s.queued + s.duplicates {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kapso_storage_writes_total` of the project: (success, error).
fn storage_writes(samples: &Samples) -> (u64, u64) {
    let n = |result: &str| {
        get(
            samples,
            "kapso_storage_writes_total",
            &[("project", "default"), ("result", result)],
        )
        .unwrap_or(0.0) as u64
    };
    (n("success"), n("error"))
}

/// `kapso_webhook_requests_total` of the project, by result.
fn receiver_results(samples: &Samples) -> BTreeMap<String, u64> {
    series(samples, "kapso_webhook_requests_total")
        .filter(|(l, _)| l.get("project").is_some_and(|p| p == "default"))
        .map(|(l, v)| (l.get("result").cloned().unwrap_or_default(), v as u64))
        .collect()
}

/// For handoff mismatches: the handoff events the simulator delivered per workflow, next to
/// the ground truth's count, printed to stderr (execution ids of the workflow's events).
fn explain_handoffs(sim: &Simulator, truth: &GroundTruth, bad: &[&String], poll: u64) {
    let deliveries = sim.webhook_deliveries();
    for w in &truth.workflows {
        if !bad
            .iter()
            .any(|m| m.starts_with(&format!("{} handoffs ", w.name)))
        {
            continue;
        }
        let events: Vec<_> = deliveries
            .iter()
            .filter(|d| d.event == EVENT_HANDOFF && d.workflow_id == w.id)
            .collect();
        eprintln!(
            "  poll {poll}: {} ({}): truth {} handoffs, {} handoff events delivered:",
            w.name,
            w.id,
            truth.handoffs.get(&w.id).copied().unwrap_or(0),
            events.len()
        );
        for d in events {
            eprintln!(
                "    {} at {} (attempt {}, duplicate {})",
                d.execution_id, d.occurred_at, d.attempt, d.duplicate
            );
        }
    }
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// `wrk --latency` (with `Accept-Encoding: gzip` if `gzip`): (p50 ms, p99 ms, requests/s), if
/// wrk is installed.
fn wrk(url: &str, seconds: u64, gzip: bool) -> Option<(f64, f64, f64)> {
    let mut cmd = Command::new("wrk");
    if gzip {
        cmd.args(["-H", "Accept-Encoding: gzip"]);
    }
    let out = cmd
        .args(["-t1", "-c1", "--latency", "--timeout", "30s"])
        .arg(format!("-d{seconds}s"))
        .arg(url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        let v = line.split_whitespace().nth(1)?;
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => return None,
        })
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    Some((ms("50%")?, ms("99%")?, rps))
}

/// The same series rendered by Python's prometheus_client: (p50 ms, p99 ms).
fn python_render(body: &str) -> Option<(f64, f64)> {
    let script = format!("{}/benches/render_python.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(body.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>());
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

#[derive(Debug)]
struct LimitRun {
    limit: u32,
    requests: u64,
    first_wall: f64,
    steady_wall: f64,
    steady_polls: usize,
    max_in_window: u64,
    rate_limited: u64,
}

/// Two back-to-back polls of a quiet world under `limit`: the first starts with an empty
/// window, the second with the first one's requests still in it (the steady state).
async fn limit_run(scale: &Scale, limit: u32, steady_polls: u64) -> LimitRun {
    let sim = Simulator::new(sim_config(scale, limit, LATENCY), Clock::system());
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let limit_s = limit.to_string();
    let mut exporter = Exporter::start(
        &url,
        &[
            "--kapso.rate-limit",
            &limit_s,
            "--poll.interval",
            "11s",
            "--kapso.timeout",
            "10s",
            "--metrics.max-conversations",
            "1000000",
        ],
    );
    let deadline = Duration::from_secs(3600);
    let p = [("project", "default")];
    exporter.wait_polls(1, deadline).await;
    let first = parse(&exporter.scrape().await);
    let mut walls = Vec::new();
    let mut requests = 0;
    for n in 2..=1 + steady_polls.max(1) {
        exporter.wait_polls(n, deadline).await;
        let later = parse(&exporter.scrape().await);
        walls.push(get(&later, "kapso_poll_duration_seconds", &p).unwrap_or(f64::NAN));
        requests = get(&later, "kapso_api_requests_per_poll", &p).unwrap_or(-1.0) as u64;
    }
    let stats = sim.stats();
    let run = LimitRun {
        limit,
        requests,
        first_wall: get(&first, "kapso_poll_duration_seconds", &p).unwrap_or(f64::NAN),
        steady_wall: walls.iter().sum::<f64>() / walls.len() as f64,
        steady_polls: walls.len(),
        max_in_window: stats.max_in_window,
        rate_limited: stats.rate_limited,
    };
    eprintln!(
        "  {} at {}/min: {} requests a poll, first poll {:.1} s, later polls {:.1} s on average \
         (of {}), most in a 60 s window {}, {} answered 429",
        scale.name,
        run.limit,
        run.requests,
        run.first_wall,
        run.steady_wall,
        run.steady_polls,
        run.max_in_window,
        run.rate_limited
    );
    drop(exporter);
    server.shutdown().await;
    run
}

/// One conversation-mode poll of every conversation (discovered): its request count.
async fn conversation_run(scale: &Scale) -> u64 {
    let sim = Simulator::new(sim_config(scale, UNLIMITED, LATENCY), Clock::system());
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let limit = UNLIMITED.to_string();
    let mut exporter = Exporter::start(
        &url,
        &[
            "--kapso.rate-limit",
            &limit,
            "--poll.interval",
            "1h",
            "--kapso.discover-conversations",
            "30d",
            "--metrics.max-conversations",
            "1000000",
        ],
    );
    exporter.wait_polls(1, Duration::from_secs(1800)).await;
    let samples = parse(&exporter.scrape().await);
    drop(exporter);
    server.shutdown().await;
    get(
        &samples,
        "kapso_api_requests_per_poll",
        &[("project", "default")],
    )
    .unwrap_or(-1.0) as u64
}

/// Polls completed per project, from the landing page's card of `name` ("N ok, M failed").
fn project_polls(page: &str, name: &str) -> Option<u64> {
    let card = page.split(&format!("data-project=\"{name}\"")).nth(1)?;
    let card = card.split("</section>").next()?;
    number_before(card, " ok, ")
}

struct Projects {
    slow_first_poll: f64,
    fast_polls_meanwhile: u64,
    fast_interval: f64,
}

/// Two projects in one exporter: one behind a 3 s API latency, one behind 50 ms. The fast one
/// keeps polling every second while the slow one's first poll is in flight.
async fn projects_run() -> Projects {
    let scale = SCALES[0];
    let slow = Simulator::new(
        sim_config(&scale, UNLIMITED, Duration::from_secs(3)),
        Clock::system(),
    );
    let fast = Simulator::new(sim_config(&scale, UNLIMITED, LATENCY), Clock::system());
    let (slow_server, fast_server) = (slow.spawn().await.unwrap(), fast.spawn().await.unwrap());
    let dir = std::env::temp_dir().join(format!("kapso-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("projects.yaml");
    std::fs::write(
        &file,
        format!(
            "projects:\n  - name: slow\n    base_url: {}\n    api_key_env: KAPSO_API_KEY\n    rate_limit: {UNLIMITED}\n    timeout: 10s\n    poll_interval: 60s\n  - name: fast\n    base_url: {}\n    api_key_env: KAPSO_API_KEY\n    rate_limit: {UNLIMITED}\n    timeout: 900ms\n    poll_interval: 1s\n",
            slow_server.base_url, fast_server.base_url
        ),
    )
    .unwrap();
    let mut exporter = Exporter::start("", &["--config.file", file.to_str().unwrap()]);
    let started = Instant::now();
    let until = started + Duration::from_secs(120);
    let out = loop {
        assert!(
            Instant::now() < until,
            "the slow project never completed a poll"
        );
        let page = exporter.page().await.unwrap_or_default();
        if project_polls(&page, "slow").unwrap_or(0) >= 1 {
            break Projects {
                slow_first_poll: started.elapsed().as_secs_f64(),
                fast_polls_meanwhile: project_polls(&page, "fast").unwrap_or(0),
                fast_interval: 1.0,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(exporter);
    let _ = std::fs::remove_dir_all(&dir);
    slow_server.shutdown().await;
    fast_server.shutdown().await;
    eprintln!(
        "  slow project's first poll {:.1} s, fast project's polls meanwhile {}",
        out.slow_first_poll, out.fast_polls_meanwhile
    );
    out
}

struct Soak {
    polls: u64,
    rss_kib: Vec<(u64, u64)>,
    hwm_kib: u64,
    cpu_per_poll: f64,
    max_in_window: u64,
    rate_limited: u64,
}

/// Scale S with the world evolving on its own, polled back to back.
async fn soak(polls: u64) -> Soak {
    let scale = SCALES[0];
    let sim = Simulator::new(
        sim_config(&scale, UNLIMITED, Duration::from_millis(5)),
        Clock::system(),
    );
    let ticker = sim.run_ticker(Duration::from_millis(200));
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let limit = UNLIMITED.to_string();
    let mut exporter = Exporter::start(
        &url,
        &[
            "--kapso.rate-limit",
            &limit,
            "--poll.interval",
            "100ms",
            "--kapso.timeout",
            "90ms",
        ],
    );
    let pid = exporter.pid();
    let mut rss = Vec::new();
    let step = (polls / 10).max(1);
    let mut n = step;
    while n <= polls {
        exporter.wait_polls(n, Duration::from_secs(600)).await;
        rss.push((n, memory(pid).1));
        n += step;
    }
    let cpu = cpu_seconds(pid);
    let stats = sim.stats();
    let out = Soak {
        polls,
        rss_kib: rss,
        hwm_kib: memory(pid).0,
        cpu_per_poll: cpu / polls as f64,
        max_in_window: stats.max_in_window,
        rate_limited: stats.rate_limited,
    };
    ticker.abort();
    drop(exporter);
    server.shutdown().await;
    out
}

// ----- the report -------------------------------------------------------------------------

struct ScaleReport {
    scale: Scale,
    acc: AccuracyRun,
    limits: Vec<LimitRun>,
    skipped: Vec<(u32, f64)>,
    conversation_requests: Option<u64>,
}

/// Expected duration of the first and of each later back-to-back poll of `r` requests under `limit` per minute
/// (sliding 60 s window): the first poll sends `limit` at once, then `limit` per window.
fn limited_poll_estimate(r: u64, limit: u32) -> (f64, f64) {
    let l = u64::from(limit);
    let first = (r.saturating_sub(1) / l) as f64 * 60.0;
    // The second poll waits for the first poll's requests to leave the window.
    let second = (r as f64 / l as f64) * 60.0;
    (first, second)
}

#[tokio::main]
async fn main() {
    let o = Options::parse();
    let begun = Instant::now();
    eprintln!(
        "scales {}, limits {}; the report goes to {}",
        o.scales
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(","),
        if o.limits.is_empty() {
            "none".to_owned()
        } else {
            o.limits
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        o.out
    );
    let mut reports = Vec::new();
    for scale in &o.scales {
        let phase = Instant::now();
        eprintln!(
            "scale {}: accuracy run ({} workflows, {} live executions, {} polls)",
            scale.name, scale.workflows, scale.live, o.accuracy_polls
        );
        let acc = accuracy_run(scale, &o).await;
        eprintln!(
            "scale {}: accuracy run done in {:.0} s, {} mismatches",
            scale.name,
            phase.elapsed().as_secs_f64(),
            acc.mismatch_count
        );
        let quiet_requests = acc.first_poll.requests;
        let mut limits = Vec::new();
        let mut skipped = Vec::new();
        for &limit in &o.limits {
            let (a, b) = limited_poll_estimate(quiet_requests, limit);
            let max = o.max_run.as_secs_f64();
            if a + b > max {
                eprintln!(
                    "scale {}: {limit}/min skipped (about {:.0} s)",
                    scale.name,
                    a + b
                );
                skipped.push((limit, a + b));
                continue;
            }
            // As many back-to-back polls after the first as fit, 1 to 4 (1 with --quick).
            let steady = (((max - a) / b.max(11.0)).floor() as u64).clamp(1, o.steady_polls_max);
            eprintln!(
                "scale {}: {limit}/min, {} polls (about {:.0} s)",
                scale.name,
                1 + steady,
                a + steady as f64 * b
            );
            limits.push(limit_run(scale, limit, steady).await);
        }
        let conversation_requests = if scale.conversations <= o.conversation_mode_max {
            let phase = Instant::now();
            eprintln!(
                "scale {}: conversation mode ({} conversations)",
                scale.name, scale.conversations
            );
            let requests = conversation_run(scale).await;
            eprintln!(
                "scale {}: conversation mode done in {:.0} s, {requests} requests a poll",
                scale.name,
                phase.elapsed().as_secs_f64()
            );
            Some(requests)
        } else {
            None
        };
        reports.push(ScaleReport {
            scale: *scale,
            acc,
            limits,
            skipped,
            conversation_requests,
        });
        // Written after every scale, so a later failure keeps what was measured.
        write_doc(&o.out, report(&o, &reports, None, begun.elapsed()));
    }
    let soak = if o.soak_polls > 0 {
        let phase = Instant::now();
        eprintln!("soak: {} polls at S", o.soak_polls);
        let s = soak(o.soak_polls as u64).await;
        eprintln!(
            "soak: done in {:.0} s, RSS {:.1} -> {:.1} MiB, {:.4} s CPU per poll",
            phase.elapsed().as_secs_f64(),
            s.rss_kib.first().map_or(0, |x| x.1) as f64 / 1024.0,
            s.rss_kib.last().map_or(0, |x| x.1) as f64 / 1024.0,
            s.cpu_per_poll
        );
        Some(s)
    } else {
        None
    };
    eprintln!("two projects, one slow (3 s latency), one fast");
    let projects = projects_run().await;
    let mut doc = report(&o, &reports, soak.as_ref(), begun.elapsed());
    let fast_ok = projects.fast_polls_meanwhile + 1
        >= (projects.slow_first_poll / projects.fast_interval) as u64;
    let _ = writeln!(
        doc,
        "| polls of several projects don't block each other | see below: {} fast polls during one slow poll of {:.1} s | {} |\n",
        projects.fast_polls_meanwhile,
        projects.slow_first_poll,
        met(fast_ok)
    );
    let _ = writeln!(
        doc,
        "## Several projects\n\nOne exporter, two projects (`--config.file`): `slow` behind a \
         3 s API latency, `fast` behind 50 ms with `poll_interval: 1s`. The slow project's \
         first poll took {:.1} s; meanwhile the fast project completed {} polls (one per \
         {:.0} s interval would be {:.0}): each project polls on its own task.",
        projects.slow_first_poll,
        projects.fast_polls_meanwhile,
        projects.fast_interval,
        (projects.slow_first_poll / projects.fast_interval).floor()
    );
    write_doc(&o.out, doc);
    eprintln!("wrote {} in {:.0} s", o.out, begun.elapsed().as_secs_f64());
}

/// Hand-written notes below this line of docs/benchmarks.md survive a new run.
const NOTES_MARKER: &str = "<!-- Notes below are written by hand and kept by the benchmark. -->";

/// Writes the generated report, keeping the hand-written notes of the previous file.
fn write_doc(path: &str, generated: String) {
    let notes = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_owned()))
        .unwrap_or_else(|| format!("{NOTES_MARKER}\n"));
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, format!("{generated}\n{notes}")).unwrap();
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release (bench profile)"
    };
    let date = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), exporter built {profile}, run {date}")
}

fn report(o: &Options, reports: &[ScaleReport], soak: Option<&Soak>, took: Duration) -> String {
    let mut d = String::new();
    let w = &mut d;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `cargo bench --bench scale{}` (benches/scale.rs) in {:.0} min on {}. \
         Every number below was measured in that run unless the text says *computed*.\n",
        if o.args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", o.args)
        },
        took.as_secs_f64() / 60.0,
        machine()
    );
    let _ = writeln!(
        w,
        "Setup: the simulator runs in the benchmark process on the system clock, adds {} ms to \
         every response and enforces the per-minute limit the exporter is given (it answers 429 \
         above it and records the most requests it accepted in any 60 s window). The exporter \
         is the release binary, a subprocess, so memory and CPU are its own (`VmHWM`, \
         `utime + stime` from `/proc`). In the accuracy runs (requests per poll, correctness, \
         /metrics, memory) webhooks and state storage are on: the simulator pushes its \
         failures and handoffs to the exporter's webhook listener, and the exporter writes \
         its counting state to `--storage.path` after every poll (see Correctness and State \
         storage); the rate-limit, conversation-mode, soak and several-projects runs poll \
         only. Scales:\n",
        LATENCY.as_millis()
    );
    let _ = writeln!(
        w,
        "| scale | workflows | conversations | live executions | finished per minute |\n|---|---|---|---|---|"
    );
    for r in reports {
        let s = r.scale;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            s.name, s.workflows, s.conversations, s.live, s.finish_per_minute
        );
    }
    let _ = writeln!(w, "\n## Requests per poll\n");
    let _ = writeln!(
        w,
        "Lower bound: 1 request for the workflow list (it has no paging), plus `max(1, ceil(n/100))` \
         per workflow and live status, plus one request per workflow with executions that \
         finished since the previous poll (their outcome is not knowable otherwise). The \
         README's rule allows at most 3 more requests than the live lists per workflow where \
         executions started or finished (a `created_after` window, and outcomes read by id or \
         by a `status=failed` and a `status=ended` listing, as Kapso reports them), plus pages \
         past the first 100 rows; the rule column leaves those pages out. Poll 1 is the \
         baseline: one `created_after` listing per workflow learns what exists. Between later \
         polls the world evolves for the poll interval. Conversation mode is one \
         discovered-conversations poll (`--kapso.discover-conversations 30d`).\n"
    );
    let _ = writeln!(
        w,
        "| scale | poll | finished since last poll | requests | lower bound | over bound | README rule | poll wall time | conversation mode | conversation / project |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let conv = r.conversation_requests;
        let rows = std::iter::once(&r.acc.first_poll).chain(&r.acc.polls);
        for (i, p) in rows.enumerate() {
            let conv_cell = match conv {
                Some(c) => c.to_string(),
                None => format!(
                    "≥ {} (computed: one per conversation)",
                    r.scale.conversations
                ),
            };
            let c = conv.unwrap_or(r.scale.conversations as u64);
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {:+.1} % | {} | {:.2} s | {} | {:.0}x |",
                r.scale.name,
                i + 1,
                p.finished,
                p.requests,
                p.bound,
                (p.requests as f64 / p.bound as f64 - 1.0) * 100.0,
                p.rule,
                p.wall,
                conv_cell,
                c as f64 / p.requests as f64
            );
        }
    }
    let _ = writeln!(
        w,
        "\nPoll wall time here is with an unlimited budget: latency-bound, \
         8 workflows at once, their 3 live-status lists in parallel, pages of one list in \
         sequence."
    );
    let _ = writeln!(w, "\n## Correctness and rate limit\n");
    let _ = writeln!(
        w,
        "After every poll, every series of the metric contract was compared with \
         `Simulator::ground_truth()` (counts and counters exactly; gauges computed from the \
         wall clock at scrape time within {CLOCK_SLACK} s, since exporter and benchmark read \
         the clock separately). Webhooks are on in these runs: the exporter listens on a second \
         port (`--webhook.listen-address`, secret in `KAPSO_WEBHOOK_SECRET`), the simulator \
         registered that URL for `{EVENT_FAILED}` and `{EVENT_HANDOFF}` and delivers every \
         200 ms (`Simulator::run_webhook_delivery`), so the events of an interval race with \
         the next poll as they would against Kapso. Before each comparison the benchmark waits \
         until the simulator has no attempt queued or in flight and the receiver's \
         `kapso_webhook_requests_total` equals the simulator's attempts (the world only \
         changes between polls, so nothing is queued meanwhile); the comparison is then \
         deterministic. Handoffs that start and end between two polls are seen by the \
         webhooks only.\n"
    );
    let _ = writeln!(
        w,
        "| scale | polls | series compared | mismatches | of them hand-offs | max requests in a 60 s window (simulator) | 429 answers |\n|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scale.name,
            1 + r.acc.polls.len(),
            r.acc.series_checked,
            r.acc.mismatch_count,
            r.acc.handoff_mismatches,
            r.acc.max_in_window,
            r.acc.rate_limited
        );
        for m in &r.acc.mismatches {
            let _ = writeln!(w, "|  | mismatch: {m} | | | | | |");
        }
    }
    let _ = writeln!(
        w,
        "\nWebhook deliveries during the accuracy runs (simulator's counts; receiver: the \
         exporter's `kapso_webhook_requests_total` by result; settle: the longest wait after a \
         poll until every event was delivered and counted):\n"
    );
    let _ = writeln!(
        w,
        "| scale | events queued | failed events | handoff events | delivered | failed attempts | dropped | receiver | settle (max) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let h = &r.acc.webhooks;
        let ev = |name: &str| h.by_event.get(name).map_or(0, |c| c.queued);
        let receiver = r
            .acc
            .receiver
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s |",
            r.scale.name,
            h.queued,
            ev(EVENT_FAILED),
            ev(EVENT_HANDOFF),
            h.delivered,
            h.failed_attempts,
            h.dropped,
            if receiver.is_empty() {
                "-".to_owned()
            } else {
                receiver
            },
            r.acc.webhook_settle_max
        );
    }
    let _ = writeln!(w, "\n## State storage\n");
    let _ = writeln!(
        w,
        "The accuracy runs also ran with `--storage.path` (a fresh temporary directory): after \
         every successful poll the exporter writes its counting state (tracker and webhook \
         dedupe window). Size and duration are the exporter's \
         `kapso_storage_last_write_bytes` and `kapso_storage_last_write_duration_seconds` \
         (encoding and fsync), read after each poll once that poll's write was counted in \
         `kapso_storage_writes_total`.\n"
    );
    let _ = writeln!(
        w,
        "| scale | poll interval | writes (ok / error) | state file, last | p50 | max | write duration, last | p50 | max | scrapes during a write |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let a = &r.acc;
        let mut sizes: Vec<f64> = a.storage.iter().map(|x| x.0 as f64).collect();
        let mut durs: Vec<f64> = a.storage.iter().map(|x| x.1).collect();
        let last = a.storage.last().copied().unwrap_or((0, f64::NAN));
        let size_max = sizes.iter().copied().fold(f64::NAN, f64::max);
        let dur_max = durs.iter().copied().fold(f64::NAN, f64::max);
        let mut during = a.scrapes_during_write.clone();
        let during = if during.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{}, p50 {:.1} ms, max {:.1} ms",
                during.len(),
                percentile(&mut during, 0.5) * 1000.0,
                during.iter().copied().fold(f64::NAN, f64::max) * 1000.0
            )
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} / {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            r.scale.name,
            a.poll_interval,
            a.storage_writes.0,
            a.storage_writes.1,
            bytes(last.0 as f64),
            bytes(percentile(&mut sizes, 0.5)),
            bytes(size_max),
            last.1 * 1000.0,
            percentile(&mut durs, 0.5) * 1000.0,
            dur_max * 1000.0,
            during
        );
    }
    let _ = writeln!(
        w,
        "\nThe write does not hold up the poll it saves: it starts after the poll has \
         completed and published its snapshot (the state is encoded on the poll's task under \
         the tracker's lock, then written and fsynced on a blocking thread). The next poll \
         starts after the write, which matters only if a write took longer than the rest of \
         the interval (compare the durations with the poll interval). /metrics serves the \
         published snapshot and does not take the tracker's lock, so scrapes are not held up \
         either (the last column: scrapes the benchmark made while a write was still \
         uncounted, to compare with the /metrics latency below); a webhook delivery arriving \
         during the encoding waits for the lock."
    );
    let _ = writeln!(w, "\n## Poll wall time under the rate limit\n");
    let _ = writeln!(
        w,
        "Quiet world, back-to-back polls (`--poll.interval 11s`, so a poll longer than 11 s is \
         followed at once by the next): the first starts with an empty 60 s window and can \
         spend a whole window's budget at once; the later ones (1 to 4, as many as fit in \
         `--max-run-minutes`; the average is shown) start while the previous polls' requests \
         still fill the window: the steady state of a budget-bound exporter. The bound is \
         `requests / limit` minutes. The exporter and the simulator use the same limit.\n"
    );
    let _ = writeln!(
        w,
        "| scale | limit / min | requests | bound | first poll | later polls | later / bound | max in 60 s window | 429 |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        for l in &r.limits {
            let bound = l.requests as f64 / f64::from(l.limit) * 60.0;
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.1} s | {:.1} s | {:.1} s ({} polls) | {:.2} | {} | {} |",
                r.scale.name,
                l.limit,
                l.requests,
                bound,
                l.first_wall,
                l.steady_wall,
                l.steady_polls,
                l.steady_wall / bound,
                l.max_in_window,
                l.rate_limited
            );
        }
        for (limit, est) in &r.skipped {
            let req = r.acc.first_poll.requests;
            let (a, b) = limited_poll_estimate(req, *limit);
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.1} s | *computed* {:.0} s | *computed* {:.0} s | - | - | - |",
                r.scale.name,
                limit,
                req,
                req as f64 / f64::from(*limit) * 60.0,
                a,
                b
            );
            let _ = est;
        }
    }
    let _ = writeln!(
        w,
        "\n*Computed* rows were not run (longer than `--max-run-minutes {:.0}`): with a sliding \
         60 s window the first poll sends `limit` requests at once and then `limit` per minute, \
         so it takes `floor((requests - 1) / limit)` minutes plus latency; a steady poll takes \
         `requests / limit` minutes.\n",
        o.max_run.as_secs_f64() / 60.0
    );
    let _ = writeln!(w, "## /metrics, memory, CPU\n");
    let _ = writeln!(
        w,
        "Every series on (`--metrics.max-conversations 1000000`), after the last accuracy poll. \
         Latency by `wrk -t1 -c1 --latency -d{}s` (one connection, sequential scrapes) and by a \
         20-scrape loop in the benchmark. Python: the same exposition parsed into metric \
         families, served by a custom collector and rendered with \
         `prometheus_client.generate_latest` (benches/render_python.py), rendering only, no HTTP.\n",
        o.wrk_seconds
    );
    let _ = writeln!(
        w,
        "| scale | series | size | wrk p50 | wrk p99 | loop p50 | loop p99 | Python render p50 | Python / exporter | peak RSS | CPU per poll | world build |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let a = &r.acc;
        let (wp50, wp99) = a
            .wrk
            .map_or(("-".to_owned(), "-".to_owned()), |(p50, p99, _)| {
                (format!("{p50:.1} ms"), format!("{p99:.1} ms"))
            });
        let exporter_p50 = a.wrk.map_or(a.loop_latency.0 * 1000.0, |x| x.0);
        let (py, ratio) = a
            .python
            .map_or(("-".to_owned(), "-".to_owned()), |(p50, _)| {
                (
                    format!("{p50:.1} ms"),
                    format!("{:.1}x", p50 / exporter_p50),
                )
            });
        let cpu: Vec<f64> = a.polls.iter().map(|p| p.cpu).collect();
        let cpu = if cpu.is_empty() {
            a.first_poll.cpu
        } else {
            cpu.iter().sum::<f64>() / cpu.len() as f64
        };
        let _ = writeln!(
            w,
            "| {} | {} | {:.1} MiB | {} | {} | {:.1} ms | {:.1} ms | {} | {} | {:.1} MiB | {:.3} s | {:.1} s |",
            r.scale.name,
            a.metrics_series,
            a.metrics_bytes as f64 / 1048576.0,
            wp50,
            wp99,
            a.loop_latency.0 * 1000.0,
            a.loop_latency.1 * 1000.0,
            py,
            ratio,
            a.hwm_kib as f64 / 1024.0,
            cpu,
            a.build_seconds
        );
    }
    let _ = writeln!(
        w,
        "\nCompressed: the same scrape with `Accept-Encoding: gzip`, as Prometheus sends it by \
         default (the exporter compresses each 256 KiB chunk at gzip level 2 on its gzip \
         threads while the next renders; zstd is not offered). Latency from the request to the last compressed byte, by a 20-scrape loop in \
         the benchmark and, where installed, `wrk -H 'Accept-Encoding: gzip'`; the last body \
         was decompressed and checked to be the exposition.\n"
    );
    let _ = writeln!(
        w,
        "| scale | plain | gzip | plain / gzip | loop p50 plain | loop p50 gzip | loop p99 gzip | wrk p50 gzip |\n|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let a = &r.acc;
        match &a.gzip {
            None => {
                let _ = writeln!(
                    w,
                    "| {} | {} | not served | - | {:.1} ms | - | - | - |",
                    r.scale.name,
                    bytes(a.metrics_bytes as f64),
                    a.loop_latency.0 * 1000.0
                );
            }
            Some(g) => {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.1}x | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                    r.scale.name,
                    bytes(g.plain_bytes as f64),
                    bytes(g.bytes as f64),
                    g.plain_bytes as f64 / g.bytes as f64,
                    a.loop_latency.0 * 1000.0,
                    g.loop_latency.0 * 1000.0,
                    g.loop_latency.1 * 1000.0,
                    g.wrk.map_or("-".to_owned(), |x| format!("{:.1} ms", x.0))
                );
            }
        }
    }
    let _ = writeln!(
        w,
        "\nCPU per poll is the exporter's CPU time from the end of one poll's checks to the end \
         of the next poll, averaged over the polls after the first (the first poll: {}).\n",
        reports
            .iter()
            .map(|r| format!("{} {:.3} s", r.scale.name, r.acc.first_poll.cpu))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(s) = soak {
        let _ = writeln!(w, "## Soak\n");
        let _ = writeln!(
            w,
            "{} consecutive polls at scale S (5 ms latency, `--poll.interval 100ms`, the world \
             evolving on its own ticker). Resident memory after every tenth of the polls:\n",
            s.polls
        );
        let _ = writeln!(w, "| after poll | RSS |\n|---|---|");
        for (n, kib) in &s.rss_kib {
            let _ = writeln!(w, "| {n} | {:.1} MiB |", *kib as f64 / 1024.0);
        }
        let first = s.rss_kib.first().map_or(0, |x| x.1) as f64;
        let last = s.rss_kib.last().map_or(0, |x| x.1) as f64;
        let _ = writeln!(
            w,
            "\nGrowth from the first to the last sample: {:+.1} MiB; peak {:.1} MiB; CPU {:.4} s \
             per poll; simulator: at most {} requests in a 60 s window, {} 429 answers.\n",
            (last - first) / 1024.0,
            s.hwm_kib as f64 / 1024.0,
            s.cpu_per_poll,
            s.max_in_window,
            s.rate_limited
        );
    }
    goals(w, reports, soak);
    d
}

fn bytes(b: f64) -> String {
    if b.is_nan() {
        "-".to_owned()
    } else if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// The goals of the efficiency issue, each with the measured value.
fn goals(w: &mut String, reports: &[ScaleReport], soak: Option<&Soak>) {
    let _ = writeln!(w, "## Goals\n\n| goal | measured | |\n|---|---|---|");
    for r in reports {
        let worst = std::iter::once(&r.acc.first_poll)
            .chain(&r.acc.polls)
            .map(|p| p.requests as f64 / p.bound as f64 - 1.0)
            .fold(f64::MIN, f64::max);
        let over_rule = std::iter::once(&r.acc.first_poll)
            .chain(&r.acc.polls)
            .filter(|p| p.requests > p.rule)
            .count();
        let _ = writeln!(
            w,
            "| {}: requests per poll within the README's rule (3 more per active workflow, pages past 100 rows aside) | {} polls over it; worst poll {:+.1} % over the lower bound | {} |",
            r.scale.name,
            over_rule,
            worst * 100.0,
            met(over_rule == 0)
        );
    }
    for r in reports.iter().filter(|r| r.scale.name == "M") {
        if let Some(c) = r.conversation_requests {
            let polls: Vec<u64> = r.acc.polls.iter().map(|p| p.requests).collect();
            let avg = polls.iter().sum::<u64>() as f64 / polls.len().max(1) as f64;
            let bound = r.acc.polls.iter().map(|p| p.bound).min().unwrap_or(1);
            let _ = writeln!(
                w,
                "| M: ≥ 100x fewer requests than conversation mode | {c} / {avg:.0} = {:.0}x; even the lower bound ({bound}) allows only {:.0}x | {} |",
                c as f64 / avg,
                c as f64 / bound as f64,
                met(c as f64 / avg >= 100.0)
            );
        }
    }
    let mut worst_window = Vec::new();
    let mut limited = 0;
    for r in reports {
        limited += r.acc.rate_limited;
        for l in &r.limits {
            worst_window.push(format!(
                "{} at {}/min: {}",
                r.scale.name, l.limit, l.max_in_window
            ));
            limited += l.rate_limited;
            if l.max_in_window > u64::from(l.limit) {
                limited += 1;
            }
        }
    }
    let _ = writeln!(
        w,
        "| never above the limit in any 60 s window (simulator) | most in a window: {}; 429 answers: {limited} | {} |",
        worst_window.join(", "),
        met(limited == 0)
    );
    for r in reports.iter().filter(|r| r.scale.name == "M") {
        for l in &r.limits {
            let bound = l.requests as f64 / f64::from(l.limit) * 60.0;
            let _ = writeln!(
                w,
                "| M at {}/min: steady poll within 15 % of requests/limit ({bound:.1} s) | {:.1} s | {} |",
                l.limit,
                l.steady_wall,
                met(l.steady_wall <= bound * 1.15)
            );
        }
    }
    for (name, p50_goal, rss_goal) in [("M", 25.0, 64.0), ("L", 250.0, 256.0)] {
        for r in reports.iter().filter(|r| r.scale.name == name) {
            let p50 = r.acc.wrk.map_or(r.acc.loop_latency.0 * 1000.0, |x| x.0);
            let rss = r.acc.hwm_kib as f64 / 1024.0;
            let _ = writeln!(
                w,
                "| {name}: /metrics p50 < {p50_goal} ms | {p50:.1} ms | {} |",
                met(p50 < p50_goal)
            );
            let _ = writeln!(
                w,
                "| {name}: peak RSS < {rss_goal} MiB | {rss:.1} MiB | {} |",
                met(rss < rss_goal)
            );
        }
    }
    for r in reports.iter().filter(|r| r.scale.name == "M") {
        let g = r.acc.gzip.as_ref();
        let p50 = g.map(|g| g.wrk.map_or(g.loop_latency.0 * 1000.0, |x| x.0));
        let _ = writeln!(
            w,
            "| M: /metrics with gzip p50 < 25 ms, compression included | {} | {} |",
            p50.map_or("not served".to_owned(), |p| format!("{p:.1} ms")),
            met(p50.is_some_and(|p| p < 25.0))
        );
        let ratio = g.map(|g| g.bytes as f64 / g.plain_bytes as f64);
        let _ = writeln!(
            w,
            "| M: gzip body at most 1/8 of the plain text | {} | {} |",
            g.map_or("not served".to_owned(), |g| format!(
                "{} of {} ({:.1}x smaller)",
                bytes(g.bytes as f64),
                bytes(g.plain_bytes as f64),
                g.plain_bytes as f64 / g.bytes as f64
            )),
            met(ratio.is_some_and(|r| r <= 1.0 / 8.0))
        );
    }
    if let Some(s) = soak {
        let tenth = s.rss_kib.first().map_or(0, |x| x.1) as f64 / 1024.0;
        let half = s.rss_kib.get(s.rss_kib.len() / 2).map_or(0, |x| x.1) as f64 / 1024.0;
        let last = s.rss_kib.last().map_or(0, |x| x.1) as f64 / 1024.0;
        let _ = writeln!(
            w,
            "| S: no memory growth over {} polls | RSS {tenth:.1} MiB after {} polls, {half:.1} MiB halfway, {last:.1} MiB at the end | {} |",
            s.polls,
            s.rss_kib.first().map_or(0, |x| x.0),
            met(last - half < 1.0)
        );
    }
    for r in reports {
        let p = r.acc.polls.last().unwrap_or(&r.acc.first_poll);
        let sequential = p.requests as f64 * LATENCY.as_secs_f64();
        let _ = writeln!(
            w,
            "| {}: requests of one poll concurrent | {} requests x {} ms = {sequential:.1} s in sequence, {:.2} s measured ({:.0}x) | {} |",
            r.scale.name,
            p.requests,
            LATENCY.as_millis(),
            p.wall,
            sequential / p.wall,
            met(sequential / p.wall > 4.0)
        );
    }
}
