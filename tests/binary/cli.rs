//! The binary: bad configuration is one line and exit code 64 before any port is bound;
//! `--demo` serves every metric within seconds; SIGTERM and SIGINT stop it gracefully.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kapso-exporter");

fn run(args: &[&str], key: Option<&str>) -> std::process::Output {
    let env: Vec<(&str, &str)> = key.map(|k| ("KAPSO_API_KEY", k)).into_iter().collect();
    run_env(args, &env)
}

/// The binary with `args` and only these of the exporter's environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("KAPSO_API_KEY")
        .env_remove("KAPSO_BASE_URL")
        .env_remove("KAPSO_WEBHOOK_SECRET");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// Asserts exit code 64 with one line on stderr and nothing on stdout; returns the line.
fn usage_error(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: not one line: {stderr}");
    assert!(out.stdout.is_empty(), "{what}");
    stderr
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    let dir = std::env::temp_dir().join(format!("kx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_yaml = dir.join("bad.yml");
    std::fs::write(&bad_yaml, "projects:\n  - name: a\n    nope: 1\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let addr = format!("127.0.0.1:{port}");
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["--web.listen-address", &addr], None, "KAPSO_API_KEY"),
        (
            vec!["--poll.interval", "often", "--web.listen-address", &addr],
            Some("k"),
            "--poll.interval",
        ),
        (vec!["--no-such-flag"], Some("k"), "--no-such-flag"),
        (
            vec!["--config.file", bad_yaml.to_str().unwrap()],
            Some("k"),
            "nope",
        ),
        (
            vec!["--config.file", "/nonexistent.yml"],
            Some("k"),
            "/nonexistent.yml",
        ),
        (vec!["--kapso.timeout", "90s"], Some("k"), "--kapso.timeout"),
        (
            vec!["--log.level", "loud"],
            Some("k"),
            "[possible values: error, warn, info, debug, trace]",
        ),
        (vec!["--demoo"], Some("k"), "tip:"),
        (
            vec!["--web.listen-address", "nowhere"],
            Some("k"),
            "'--web.listen-address <ADDRESS>'",
        ),
    ];
    for (args, key, needle) in cases {
        let out = run(&args, key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    // Nothing was bound: the port is still free.
    std::net::TcpListener::bind(&addr).unwrap();
}

#[test]
fn config_check_validates_and_exits() {
    let out = run(
        &[
            "--config.check",
            "--kapso.conversation-id",
            "c-1",
            "--kapso.discover-conversations",
            "7d",
        ],
        Some("sk-secret-value"),
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("project default: Kapso API at https://api.kapso.ai/platform/v1, 1 conversation + conversations active within 7 days, polled every 1m (timeout 10s), budget 80 requests per minute"),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics on [::]:9853/metrics (plain HTTP)"),
        "{stdout}"
    );
    assert!(stdout.contains("log level info, format logfmt"), "{stdout}");
    assert!(!stdout.contains("sk-secret-value"));
}

/// `--config.check` reports every problem, each with its origin, then their count.
#[test]
fn config_check_lists_every_problem_then_their_count() {
    let dir = std::env::temp_dir().join(format!("kx-cli-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(
        &file,
        "poll:\n  interval: soon\nlog:\n  level: loud\nkapso:\n  rate_limit: 0\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let args = [
        "--config.check",
        "--config.file",
        path,
        "--web.max-connections",
        "0",
    ];
    let out = run(&args, Some("k"));
    assert_eq!(out.status.code(), Some(64));
    // The effective settings of what is valid: the series caps, not the project (its
    // interval and budget are bad), the listener (its connection limit) or the log settings.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "series: at most 10000 conversations and 50 steps per workflow; stall thresholds 1m, 5m, 15m, 1h, 4h, 1 day\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "kapso-exporter: {path}:2: poll.interval: \"soon\" is not a duration like 30s or 5m (expected number at 0)"
            ),
            format!(
                "kapso-exporter: {path}:6: kapso.rate_limit: must be at least 1 request per minute"
            ),
            "kapso-exporter: --web.max-connections: must be at least 1".to_owned(),
            format!(
                "kapso-exporter: {path}:4: log.level: \"loud\" is not one of error, warn, info, debug, trace"
            ),
            "kapso-exporter: 4 problems in the configuration".to_owned(),
        ]
    );
    // Without --config.check: the first, and how many more.
    let out = run(&args[1..], Some("k"));
    let line = usage_error(&out, "without --config.check");
    assert!(
        line.ends_with("(and 3 more: see --config.check)\n"),
        "{line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A key as a flag value: a hint, never the value, exit 64.
#[test]
fn the_api_key_flag_is_refused_with_a_hint() {
    for args in [
        &["--kapso.api-key", "sk-live-abc123"][..],
        &["--kapso.api-key=sk-live-abc123"][..],
        &["--demo", "--kapso.api-key"][..],
    ] {
        let line = usage_error(&run(args, None), &format!("{args:?}"));
        assert!(
            line.starts_with("kapso-exporter: --kapso.api-key: "),
            "{line}"
        );
        assert!(
            line.contains("KAPSO_API_KEY") && line.contains("--kapso.api-key-file"),
            "{line}"
        );
        assert!(!line.contains("sk-live-abc123"), "the key echoed: {line}");
    }
}

/// `--demo` talks to its simulator: a base URL from the flag, the environment or the file is
/// an error, not silently ignored.
#[test]
fn a_base_url_with_the_demo_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(format!("kx-cli-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, "kapso:\n  base_url: http://127.0.0.1:1/v1\n").unwrap();
    let path = file.to_str().unwrap();
    let url = "http://127.0.0.1:1/v1";
    for (args, env, origin) in [
        (
            vec!["--demo", "--kapso.base-url", url],
            vec![],
            "--kapso.base-url: ".to_owned(),
        ),
        (
            vec!["--demo"],
            vec![("KAPSO_BASE_URL", url)],
            "environment variable KAPSO_BASE_URL: ".to_owned(),
        ),
        (
            vec!["--demo", "--config.file", path],
            vec![],
            format!("{path}:2: kapso.base_url: "),
        ),
    ] {
        let line = usage_error(&run_env(&args, &env), &format!("{args:?}"));
        assert!(
            line.starts_with(&format!("kapso-exporter: {origin}")),
            "{args:?}: {line}"
        );
        assert!(line.contains("cannot be combined with --demo"), "{line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// README's flag table is the single source of `--help`: the same flags, in the same groups,
/// with the same value names, environment variables and defaults.
#[test]
fn help_and_the_readme_flag_table_agree() {
    let out = run(&["--help"], None);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let from_help = help_flags(&help);
    let (from_readme, env_only) = readme_flags(&readme);
    let names = |v: &[Flag]| v.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&from_help),
        names(&from_readme),
        "flags and their order"
    );
    for (h, r) in from_help.iter().zip(&from_readme) {
        assert_eq!(h, r, "--help and README disagree on {}", h.name);
    }
    for var in env_only {
        assert!(help.contains(&var), "{var} is not mentioned in --help");
    }
}

#[derive(Debug, PartialEq)]
struct Flag {
    group: String,
    name: String,
    value: String,
    env: String,
    default: String,
}

/// The flags of `--help` (without --help and --version), with their heading.
fn help_flags(help: &str) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    let mut group = String::new();
    let mut text = String::new();
    let finish = |flags: &mut Vec<Flag>, text: &mut String| {
        if let Some(last) = flags.last_mut() {
            last.env = bracketed(text, "[env: ");
            last.default = bracketed(text, "[default: ");
        }
        text.clear();
    };
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            group = line.trim_end_matches(':').to_owned();
        } else if let Some(arg) = line.strip_prefix("      --") {
            finish(&mut flags, &mut text);
            let (name, value) = arg.split_once(' ').unwrap_or((arg, ""));
            flags.push(Flag {
                group: group.clone(),
                name: format!("--{name}"),
                value: value.trim_matches(['<', '>']).to_owned(),
                env: String::new(),
                default: String::new(),
            });
        } else {
            text.push_str(line.trim());
            text.push(' ');
        }
    }
    finish(&mut flags, &mut text);
    flags
}

fn bracketed(text: &str, open: &str) -> String {
    text.split_once(open)
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(inside, _)| inside.to_owned())
        .unwrap_or_default()
}

/// The flags of README's configuration table, with the group row above them, and the
/// variables that have no flag.
fn readme_flags(readme: &str) -> (Vec<Flag>, Vec<String>) {
    let table = readme
        .split("| flag | env | default | meaning |")
        .nth(1)
        .expect("the flag table");
    let mut flags = Vec::new();
    let mut env_only = Vec::new();
    let mut group = String::new();
    for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('`', ""))
            .collect();
        if let Some(g) = cells[0].strip_prefix("**") {
            group = g.trim_end_matches("**").to_owned();
        } else if cells[0] == "(none)" {
            env_only.push(cells[1].clone());
        } else {
            let (name, value) = cells[0].split_once(' ').unwrap_or((&cells[0], ""));
            flags.push(Flag {
                group: group.clone(),
                name: name.to_owned(),
                value: value.to_owned(),
                env: cells[1].clone(),
                default: cells[2].clone(),
            });
        }
    }
    (flags, env_only)
}

#[test]
fn version_shows_the_revision() {
    let out = run(&["--version"], None);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("kapso-exporter ") && stdout.contains("revision"),
        "{stdout}"
    );
}

/// The binary on a free port, its stderr read line by line; killed on drop if a test fails
/// first.
struct Demo {
    child: std::process::Child,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Demo {
    /// `--demo` polling every 2 s.
    fn start() -> Demo {
        Demo::spawn(
            &[
                "--demo",
                "--web.listen-address",
                "127.0.0.1:0",
                "--poll.interval",
                "2s",
                "--kapso.timeout",
                "1s",
            ],
            None,
        )
    }

    /// The binary with `args` (and `KAPSO_API_KEY` = `key`), once it serves metrics.
    fn spawn(args: &[&str], key: Option<&str>) -> Demo {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("KAPSO_API_KEY")
            .env_remove("KAPSO_BASE_URL");
        if let Some(k) = key {
            cmd.env("KAPSO_API_KEY", k);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut demo = Demo {
            child,
            addr: String::new(),
            lines,
            seen: Vec::new(),
        };
        let line = demo.wait_for_line("serving metrics", Duration::from_secs(30));
        demo.addr = line
            .split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        demo
    }

    fn wait_for_line(&mut self, wanted: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "no log line with {wanted:?} within {limit:?}; seen:\n{}",
                        self.seen.join("\n")
                    )
                });
            self.seen.push(line.clone());
            if line.contains(wanted) {
                return line;
            }
        }
    }

    /// The lines seen so far that contain every one of `parts`.
    fn seen_with(&self, parts: &[&str]) -> Vec<&String> {
        self.seen
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Sends `signal` and asserts a clean exit within the shutdown grace period plus margin.
    fn stop_with(&mut self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
        let stop_deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status after SIG{signal}: {status}");
                return;
            }
            assert!(
                Instant::now() < stop_deadline,
                "did not stop within 15 s of SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_serves_every_metric_and_stops_on_sigterm() {
    let mut demo = Demo::start();
    let addr = demo.addr.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = [
        "kapso_workflow_executions{",
        "kapso_conversation_workflow_executions{",
        "kapso_workflow_executions_started_total{",
        "kapso_workflow_executions_finished_total{",
        "kapso_workflow_execution_handoffs_total{",
        "kapso_workflow_execution_stalled_seconds{",
        "kapso_workflow_executions_stalled{",
        "kapso_conversation_execution_stalled_seconds{",
        "kapso_workflow_info{",
        "kapso_up{project=\"default\"} 1",
        "kapso_last_poll_success_timestamp_seconds{",
        "kapso_poll_duration_seconds{",
        "kapso_api_requests_total{",
        "kapso_api_rate_limit_remaining{",
        "kapso_exporter_build_info{",
        "kapso_exporter_task_up{task=\"simulator\"} 1",
        "kapso_exporter_task_up{task=\"poller/default\"} 1",
        "kapso_exporter_task_up{task=\"http\"} 1",
    ];
    let mut body = String::new();
    while Instant::now() < deadline {
        if let Ok(resp) = ureq_get(&format!("http://{addr}/metrics")) {
            body = resp;
            let finished: f64 = body
                .lines()
                .filter(|l| l.starts_with("kapso_workflow_executions_finished_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if wanted.iter().all(|w| body.contains(w)) && finished > 0.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for w in wanted {
        assert!(body.contains(w), "missing {w} in:\n{body}");
    }
    assert_eq!(
        ureq_get(&format!("http://{addr}/-/ready")).unwrap(),
        "Ready\n"
    );
    assert_eq!(
        ureq_get(&format!("http://{addr}/-/healthy")).unwrap(),
        "Healthy\n"
    );

    demo.stop_with("TERM");
}

#[test]
fn sigint_stops_gracefully_with_a_client_connection_open() {
    let mut demo = Demo::start();
    // An idle client must not hold the shutdown beyond the grace period.
    let _idle = std::net::TcpStream::connect(&demo.addr).unwrap();
    demo.stop_with("INT");
    demo.wait_for_line("shutting down", Duration::from_secs(1));
}

/// A blocking GET with a plain TCP socket (keeps the test free of an async runtime).
fn ureq_get(url: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap();
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // HTTP/1.0: the server answers without chunked encoding and closes.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_owned(),
        ));
    }
    Ok(body.to_owned())
}

/// A port in use: one error line, exit 69, distinct from a configuration error.
#[test]
fn a_port_in_use_is_one_line_and_exit_69() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--demo", "--web.listen-address", &addr], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(&addr)).collect();
    assert_eq!(errors.len(), 1, "said once: {stderr}");
    assert!(errors[0].contains("failed to listen on"), "{stderr}");
}

/// Polls `demo` has completed (the first at info, the others at debug).
fn wait_for_polls(demo: &mut Demo, polls: usize) {
    demo.wait_for_line("first poll completed", Duration::from_secs(30));
    for _ in 1..polls {
        demo.wait_for_line("msg=\"poll completed\"", Duration::from_secs(30));
    }
}

/// The demo's log at info: a start line naming mode, base URL, interval and budget; the first
/// poll once, with its numbers; a poll over the budget said once, however many follow.
#[test]
fn the_demo_log_tells_the_story_once() {
    // 600 requests per minute polled every second: 10 per poll, fewer than the demo's six
    // workflows need (1 + 3 live lists each), so every poll is over the budget.
    let mut demo = Demo::spawn(
        &[
            "--demo",
            "--web.listen-address",
            "127.0.0.1:0",
            "--poll.interval",
            "1s",
            "--kapso.timeout",
            "500ms",
            "--kapso.rate-limit",
            "600",
            "--log.level",
            "debug",
        ],
        None,
    );
    wait_for_polls(&mut demo, 3);
    let start = demo.seen_with(&["level=info", "polling project default"]);
    assert_eq!(start.len(), 1, "{:#?}", demo.seen);
    for part in [
        "mode=demo",
        "base_url=http://127.0.0.1:",
        "interval=1s",
        "budget_per_minute=600",
        "budget_per_poll=10",
    ] {
        assert!(start[0].contains(part), "{part} not in {}", start[0]);
    }
    let first = demo.seen_with(&["level=info", "first poll completed"]);
    assert_eq!(first.len(), 1, "{:#?}", demo.seen);
    for part in [
        "project=default",
        "workflows=6",
        "live_executions=",
        "requests=",
        "took=",
    ] {
        assert!(first[0].contains(part), "{part} not in {}", first[0]);
    }
    let over = demo.seen_with(&["level=warn", "more requests than the budget allows"]);
    assert_eq!(over.len(), 1, "said once: {:#?}", demo.seen);
    assert!(over[0].contains("budget=10"), "{}", over[0]);
    assert!(demo.seen_with(&["<url>"]).is_empty());
    assert!(demo.seen_with(&["demo-api-key"]).is_empty(), "key leaked");
    demo.stop_with("TERM");
}

/// An API nobody answers: one warning that names the URL and the cause (no `<url>`
/// placeholder), no claim of a last good state there is none of, and the same error at debug
/// from then on.
#[test]
fn an_unreachable_api_is_one_clear_error_line() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}/platform/v1");
    let key = "sk-cli-unreachable-0123456789";
    let mut demo = Demo::spawn(
        &[
            "--kapso.base-url",
            &base,
            "--web.listen-address",
            "127.0.0.1:0",
            "--poll.interval",
            "1s",
            "--kapso.timeout",
            "500ms",
            "--log.level",
            "debug",
        ],
        Some(key),
    );
    demo.wait_for_line("poll failed again", Duration::from_secs(30));
    demo.wait_for_line("poll failed again", Duration::from_secs(30));
    let start = demo.seen_with(&["level=info", "polling project default"]);
    assert_eq!(start.len(), 1, "{:#?}", demo.seen);
    assert!(
        start[0].contains(&format!("base_url={base}")),
        "{}",
        start[0]
    );
    assert!(start[0].contains("mode=project"), "{}", start[0]);
    let failed = demo.seen_with(&["level=warn", "poll failed"]);
    assert_eq!(failed.len(), 1, "said once: {:#?}", demo.seen);
    let line = failed[0];
    assert!(line.contains("no state yet"), "{line}");
    assert!(
        line.contains(&format!("error sending request to {base}/workflows: ")),
        "{line}"
    );
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(demo.seen_with(&["<url>"]).is_empty(), "{:#?}", demo.seen);
    assert!(demo.seen_with(&["last good state"]).is_empty());
    assert!(demo.seen_with(&[key]).is_empty(), "key leaked");
    demo.stop_with("TERM");
}

/// Failing, then answering, then failing and answering again: the first success and the
/// recovery are one info line each, and the second failure serves the last good state.
#[test]
fn a_recovery_is_one_info_line() {
    use kapso_exporter::clock::Clock;
    use kapso_exporter::simulator::{ExecStatus, Faults, Simulator};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = "sk-cli-recovery-0123456789";
    let sim = Simulator::empty(key, Clock::system());
    let wf = sim.add_workflow("Support", "active");
    sim.start_execution(&wf, None, ExecStatus::Running);
    let server = rt.block_on(sim.spawn()).unwrap();
    let failing = || Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    };
    sim.set_faults(failing());
    let base = server.base_url.to_string();
    let mut demo = Demo::spawn(
        &[
            "--kapso.base-url",
            &base,
            "--web.listen-address",
            "127.0.0.1:0",
            "--poll.interval",
            "1s",
            "--kapso.timeout",
            "500ms",
        ],
        Some(key),
    );
    demo.wait_for_line("poll failed; no state yet", Duration::from_secs(30));
    sim.set_faults(Faults::default());
    let first = demo.wait_for_line("first poll completed", Duration::from_secs(30));
    assert!(
        first.contains("workflows=1") && first.contains("live_executions=1"),
        "{first}"
    );
    sim.set_faults(failing());
    demo.wait_for_line(
        "poll failed; serving the last good state",
        Duration::from_secs(30),
    );
    sim.set_faults(Faults::default());
    let recovered = demo.wait_for_line("polling recovered", Duration::from_secs(30));
    for part in [
        "level=info",
        "workflows=1",
        "live_executions=1",
        "requests=",
        "took=",
        "failed_polls=",
    ] {
        assert!(recovered.contains(part), "{part} not in {recovered}");
    }
    assert_eq!(demo.seen_with(&["first poll completed"]).len(), 1);
    assert_eq!(demo.seen_with(&["polling recovered"]).len(), 1);
    demo.stop_with("TERM");
    drop(server);
}

/// Regenerates the README's picture of the landing page: the demo after its first poll, in
/// headless chromium at a phone's width (390 px). Run with
/// `cargo test --test binary cli:: -- --ignored regenerate_the_landing_page_screenshot`.
#[test]
#[ignore = "writes docs/images/kapso-exporter-landing.png; needs /usr/bin/chromium"]
fn regenerate_the_landing_page_screenshot() {
    let mut demo = Demo::spawn(&["--demo", "--web.listen-address", "127.0.0.1:0"], None);
    demo.wait_for_line("first poll completed", Duration::from_secs(60));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/images/kapso-exporter-landing.png");
    let profile = std::env::temp_dir().join(format!("kx-shot-{}", std::process::id()));
    let out = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=2",
            "--window-size=390,860",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", path.display()),
            &format!("http://{}/", demo.addr),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success() && path.exists(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo.stop_with("TERM");
}
