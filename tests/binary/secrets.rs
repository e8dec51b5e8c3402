//! The API key never leaks: the real binary runs at trace level (its own logs and those of
//! hyper, reqwest and rustls) against the simulator through a success, a revoked key (401),
//! malformed bodies and a 429 storm, with the key from the environment or from a file. The key
//! must appear in no log line, no `/metrics` body and no landing page, and `Debug` of the
//! configuration must not show it.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{get, parse};
use clap::Parser;
use kapso_exporter::clock::Clock;
use kapso_exporter::config::{Cli, Config};
use kapso_exporter::simulator::{Faults, Simulator, SimulatorConfig};

const BIN: &str = env!("CARGO_BIN_EXE_kapso-exporter");
/// Distinctive, so a match cannot be a coincidence.
const SECRET: &str = "sk-live-Z9q8X7w6V5u4T3s2R1";
/// The random part after `sk-live-`.
const RANDOM: &str = "Z9q8X7w6V5u4T3s2R1";

/// Kills the exporter however the test ends.
struct Exporter {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    fn start(base_url: &str, key_file: Option<&PathBuf>) -> Exporter {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--kapso.base-url",
            base_url,
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "trace",
            "--poll.interval",
            "1s",
            "--kapso.timeout",
            "500ms",
        ])
        .env_remove("KAPSO_BASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        match key_file {
            Some(path) => {
                cmd.arg("--kapso.api-key-file")
                    .arg(path)
                    .env_remove("KAPSO_API_KEY");
            }
            None => {
                cmd.env("KAPSO_API_KEY", SECRET);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let readers = vec![
            read_lines(child.stderr.take().unwrap(), output.clone()),
            read_lines(child.stdout.take().unwrap(), output.clone()),
        ];
        Exporter {
            child,
            output,
            readers,
        }
    }

    /// The address from the `serving metrics` log line.
    fn address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.output.lock().unwrap().iter().find_map(|l| {
                l.contains("serving metrics").then(|| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix("address="))
                        .map(str::to_owned)
                })?
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no address logged: {:?}",
                self.output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process and returns every line it wrote.
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        self.output.lock().unwrap().clone()
    }
}

fn read_lines(
    stream: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            into.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    })
}

/// Whether `text` shows the key or any 8 consecutive characters of its random part (a
/// truncated or split key is a leak too).
fn leaks(text: &str) -> bool {
    text.contains(SECRET)
        || RANDOM
            .as_bytes()
            .windows(8)
            .any(|w| text.contains(std::str::from_utf8(w).unwrap_or(RANDOM)))
}

struct Pages {
    seen: Vec<(String, String)>,
}

impl Pages {
    async fn fetch(&mut self, http: &reqwest::Client, addr: &str, what: &str) -> String {
        let metrics = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let landing = http
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        self.seen
            .push((format!("{what}: /metrics"), metrics.clone()));
        self.seen.push((format!("{what}: /"), landing));
        metrics
    }

    /// Fetches until `done` holds for the metrics, within a deadline.
    async fn until(
        &mut self,
        http: &reqwest::Client,
        addr: &str,
        what: &str,
        done: impl Fn(&support::Samples) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.fetch(http, addr, what).await;
            if done(&parse(&metrics)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never reached:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn value(s: &support::Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("project", "default")];
    all.extend_from_slice(labels);
    get(s, name, &all).unwrap_or(-1.0)
}

/// Success, 401, malformed bodies, a 429 storm and recovery, with the key from `key_file` or
/// the environment.
async fn scenario(key_file: Option<&PathBuf>) {
    let sim = Simulator::new(
        SimulatorConfig {
            api_key: SECRET.to_owned(),
            workflows: 2,
            conversations: 3,
            live_executions: 6,
            terminal_executions: 4,
            seed: 3,
            rate_limit_per_minute: Some(1000),
            latency: Duration::ZERO,
            variance: Default::default(),
        },
        Clock::system(),
    );
    let server = sim.spawn().await.unwrap();
    let exporter = Exporter::start(server.base_url.as_str(), key_file);
    let addr = exporter.address();
    let http = reqwest::Client::new();
    let mut pages = Pages { seen: Vec::new() };

    pages
        .until(&http, &addr, "success", |s| {
            value(s, "kapso_up", &[]) == 1.0
        })
        .await;
    sim.set_api_key("sk-rotated-key");
    pages
        .until(&http, &addr, "401", |s| {
            value(s, "kapso_poll_errors_total", &[("kind", "unauthorized")]) >= 1.0
        })
        .await;
    sim.set_api_key(SECRET);
    sim.set_faults(Faults {
        malformed_rate: 1.0,
        ..Faults::default()
    });
    pages
        .until(&http, &addr, "malformed", |s| {
            value(s, "kapso_poll_errors_total", &[("kind", "decode")]) >= 1.0
        })
        .await;
    sim.set_faults(Faults {
        throttle_secs: Some(1),
        ..Faults::default()
    });
    pages
        .until(&http, &addr, "429", |s| {
            value(
                s,
                "kapso_api_requests_total",
                &[("endpoint", "/workflows"), ("code", "429")],
            ) >= 1.0
        })
        .await;
    sim.set_faults(Faults::default());
    let errors_before = parse(&pages.fetch(&http, &addr, "recovery").await);
    let polls = value(
        &errors_before,
        "kapso_polls_total",
        &[("result", "success")],
    );
    pages
        .until(&http, &addr, "recovery", |s| {
            value(s, "kapso_up", &[]) == 1.0
                && value(s, "kapso_polls_total", &[("result", "success")]) > polls
        })
        .await;

    let lines = exporter.finish();
    server.shutdown().await;

    // The test is only meaningful if trace logging was on and the failures were logged.
    assert!(
        lines.iter().any(|l| l.contains("level=trace")),
        "no trace line logged"
    );
    assert!(
        lines.iter().any(|l| l.contains("401")),
        "the 401 was not logged"
    );
    for line in &lines {
        assert!(!leaks(line), "the key in a log line: {line}");
    }
    for (what, body) in &pages.seen {
        assert!(!leaks(body), "the key in {what}: {body}");
    }
    // The landing page did show the errors it should.
    assert!(
        pages
            .seen
            .iter()
            .any(|(w, b)| w.starts_with("401: /") && b.contains("401")),
        "the landing page never showed the 401"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_from_the_environment_never_leaks_at_trace_level() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_from_a_file_never_leaks_at_trace_level() {
    let dir = std::env::temp_dir().join(format!("kapso-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api-key");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    scenario(Some(&path)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn debug_of_the_configuration_hides_the_key() {
    let cli = Cli::try_parse_from(["kapso-exporter", "--kapso.conversation-id", "c-1"]).unwrap();
    let env = |name: &str| (name == "KAPSO_API_KEY").then(|| SECRET.to_owned());
    let config = Config::load(&cli, &env).unwrap();
    assert_eq!(config.projects[0].api_key().unwrap().expose(), SECRET);
    for text in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{cli:?}"),
    ] {
        assert!(!leaks(&text), "{text}");
    }
}
