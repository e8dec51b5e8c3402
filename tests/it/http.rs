//! The HTTP endpoints, readiness, and last-good-state behaviour when Kapso fails.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::time::Duration;

use crate::support::{Harness, KEY, get, parse, test_start};
use axum::body::Body;
use axum::http::{Method, Request};
use kapso_exporter::clock::Clock;
use kapso_exporter::metrics;
use kapso_exporter::simulator::{ExecStatus, Faults, Simulator};
use tower::ServiceExt;

async fn call(router: &axum::Router, method: Method, path: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn harness() -> (Harness, String) {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let conv = sim.add_conversation();
    sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    (Harness::new(sim, clock, &[]).await, wf)
}

#[tokio::test]
async fn endpoints_answer_as_documented() {
    let (mut h, _) = harness().await;
    let r = &h.exporter.router;
    assert_eq!(call(r, Method::GET, "/-/healthy").await.0, 200);
    let (code, body) = call(r, Method::GET, "/-/ready").await;
    assert_eq!(code, 503);
    assert!(body.contains("default"), "{body}");
    // Before the first poll, /metrics serves the exporter's own health.
    let s = parse(&h.scrape().await);
    assert_eq!(get(&s, "kapso_up", &[("project", "default")]), Some(0.0));
    assert_eq!(
        get(&s, "kapso_project_ready", &[("project", "default")]),
        Some(0.0)
    );

    h.poll().await;
    let r = &h.exporter.router;
    assert_eq!(
        call(r, Method::GET, "/-/ready").await,
        (200, "Ready\n".to_owned())
    );
    let (code, page) = call(r, Method::GET, "/").await;
    assert_eq!(code, 200);
    assert!(
        page.contains("Kapso Exporter")
            && page.contains("href=\"/metrics\"")
            && page.contains("data-project=\"default\" data-state=\"up\""),
        "{page}"
    );
    assert_eq!(call(r, Method::HEAD, "/metrics").await.0, 200);
    assert_eq!(call(r, Method::POST, "/metrics").await.0, 405);
    assert_eq!(call(r, Method::DELETE, "/-/ready").await.0, 405);
    assert_eq!(call(r, Method::GET, "/nope").await.0, 404);
    for path in ["/", "/metrics", "/-/ready"] {
        assert!(
            !call(r, Method::GET, path).await.1.contains(KEY),
            "key leaked on {path}"
        );
    }
}

#[tokio::test]
async fn failed_polls_keep_the_last_good_state_and_show_its_age() {
    let (mut h, wf) = harness().await;
    h.poll().await;
    let first = parse(&h.scrape().await);
    let success_at = get(
        &first,
        "kapso_last_poll_success_timestamp_seconds",
        &[("project", "default")],
    )
    .unwrap();
    assert_eq!(success_at, test_start().unix_timestamp() as f64);

    // The key is revoked: 401, no retry, state kept, kapso_up 0, error counted by kind.
    h.sim.set_api_key("rotated");
    h.clock.advance(Duration::from_secs(60));
    let err = h.exporter.pollers[0].poll_once().await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!format!("{err} {err:?}").contains(KEY));
    let s = parse(&h.scrape().await);
    let p = [("project", "default")];
    assert_eq!(get(&s, "kapso_up", &p), Some(0.0));
    assert_eq!(
        get(&s, "kapso_last_poll_success_timestamp_seconds", &p),
        Some(success_at)
    );
    assert_eq!(
        get(
            &s,
            "kapso_poll_errors_total",
            &[("project", "default"), ("kind", "unauthorized")]
        ),
        Some(1.0)
    );
    let live = [
        ("project", "default"),
        ("workflow_id", wf.as_str()),
        ("workflow", "Support"),
        ("status", "waiting"),
    ];
    assert_eq!(get(&s, "kapso_workflow_executions", &live), Some(1.0));
    assert_eq!(
        get(
            &s,
            "kapso_api_requests_total",
            &[
                ("project", "default"),
                ("endpoint", "/workflows"),
                ("code", "401")
            ]
        ),
        Some(1.0)
    );

    // Malformed bodies: a decode error, counted, state kept.
    h.sim.set_api_key(KEY);
    h.sim.set_faults(Faults {
        malformed_rate: 1.0,
        ..Faults::default()
    });
    assert!(h.exporter.pollers[0].poll_once().await.is_err());
    let s = parse(&h.scrape().await);
    assert_eq!(
        get(
            &s,
            "kapso_poll_errors_total",
            &[("project", "default"), ("kind", "decode")]
        ),
        Some(1.0)
    );
    assert_eq!(get(&s, "kapso_workflow_executions", &live), Some(1.0));

    // Fault cleared: the next poll recovers.
    h.sim.set_faults(Faults::default());
    h.poll().await;
    let s = parse(&h.scrape().await);
    assert_eq!(get(&s, "kapso_up", &p), Some(1.0));
    assert_eq!(
        get(&s, "kapso_last_poll_success_timestamp_seconds", &p),
        Some(success_at + 60.0)
    );
    assert_eq!(
        get(
            &s,
            "kapso_polls_total",
            &[("project", "default"), ("result", "error")]
        ),
        Some(2.0)
    );
}

/// GET /metrics with `Accept-Encoding: gzip`, checked to be answered with gzip: the headers,
/// the body as sent, and the body decoded as one gzip member.
async fn scrape_gzip(
    router: &axum::Router,
    accept: Option<&str>,
) -> (axum::http::HeaderMap, axum::body::Bytes, String) {
    let mut req = Request::get("/metrics").header("accept-encoding", "gzip");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let headers = resp.headers().clone();
    let packed = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text)
        .unwrap();
    (headers, packed, text)
}

/// A large exposition is sent in chunks as it is rendered: the body is exactly the text one
/// render gives, in both formats.
#[tokio::test]
async fn a_large_exposition_streams_the_same_text() {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    for _ in 0..3000 {
        let conv = sim.add_conversation();
        sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
    }
    let mut h = Harness::new(
        sim,
        clock.clone(),
        &["--metrics.max-conversations", "10000"],
    )
    .await;
    h.poll().await;
    let thresholds = support::config(&[]).stall_thresholds;
    let registry = metrics::registry(h.exporter.projects.clone(), clock, &thresholds);
    for (accept, openmetrics) in [
        (None, false),
        (Some("application/openmetrics-text; version=1.0.0"), true),
    ] {
        let (_, body) = support::scrape(&h.exporter.router, accept).await;
        let mut want = String::new();
        metrics::render_into(&registry, openmetrics, &mut want).unwrap();
        // Several chunks of 256 KiB.
        assert!(want.len() > 3 * 256 * 1024, "only {} bytes", want.len());
        assert_eq!(body.len(), want.len());
        assert!(body == want, "the streamed body differs from one render");
        assert_eq!(body.ends_with("# EOF\n"), openmetrics);

        // With Accept-Encoding: gzip (Prometheus sends it), the same text, compressed.
        let (headers, packed, text) = scrape_gzip(&h.exporter.router, accept).await;
        assert_eq!(headers["vary"], "Accept-Encoding");
        assert!(text == want, "the gzip body decodes to the same text");
        assert!(
            packed.len() * 8 <= want.len(),
            "{} compressed bytes of {}",
            packed.len(),
            want.len()
        );
    }
    // A q of 0 (or no gzip at all) gets the plain text.
    for (encoding, gzip) in [
        ("gzip;q=0", false),
        ("identity", false),
        ("br", false),
        ("gzip; q=0.0, identity", false),
        ("gzip", true),
        ("deflate, gzip;q=0.5", true),
        ("*", true),
        ("GZIP", true),
    ] {
        let resp = h
            .exporter
            .router
            .clone()
            .oneshot(
                Request::get("/metrics")
                    .header("accept-encoding", encoding)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let got = resp
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap());
        assert_eq!(got, gzip.then_some("gzip"), "{encoding}");
    }
}

/// An exposition smaller than one chunk is answered in one piece, gzip included (header,
/// deflate and trailer together), and decodes to the same text.
#[tokio::test]
async fn a_small_exposition_is_gzip_in_one_piece() {
    let (mut h, _) = harness().await;
    h.poll().await;
    let want = h.scrape().await;
    assert!(want.len() < 256 * 1024, "{} bytes", want.len());
    let (_, _, text) = scrape_gzip(&h.exporter.router, None).await;
    assert_eq!(text, want);
}

/// `--metrics.max-conversations` keeps the most stalled conversations: oldest waiting or
/// handoff event first, then those with only running executions; `kapso_conversations_live`
/// counts them all.
#[tokio::test]
async fn the_conversation_cap_keeps_the_most_stalled() {
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    let wf = sim.add_workflow("Support", "active");
    let running_oldest = sim.add_conversation();
    sim.start_execution(&wf, Some(&running_oldest), ExecStatus::Running);
    clock.advance(Duration::from_secs(60));
    let waiting_old = sim.add_conversation();
    sim.start_execution(&wf, Some(&waiting_old), ExecStatus::Waiting);
    sim.start_execution(&wf, Some(&waiting_old), ExecStatus::Running);
    clock.advance(Duration::from_secs(60));
    let handoff = sim.add_conversation();
    sim.start_execution(&wf, Some(&handoff), ExecStatus::Handoff);
    clock.advance(Duration::from_secs(60));
    let waiting_new = sim.add_conversation();
    sim.start_execution(&wf, Some(&waiting_new), ExecStatus::Waiting);
    clock.advance(Duration::from_secs(60));
    let mut h = Harness::new(sim, clock, &["--metrics.max-conversations", "2"]).await;
    h.poll().await;
    let s = parse(&h.scrape().await);
    let shown = |c: &str| {
        support::series(&s, "kapso_conversation_workflow_executions")
            .filter(|(labels, _)| labels.get("conversation_id").map(String::as_str) == Some(c))
            .count()
    };
    // Both series (running and waiting) of the oldest waiting conversation.
    assert_eq!(shown(&waiting_old), 2);
    assert_eq!(shown(&handoff), 1);
    assert_eq!(shown(&waiting_new), 0);
    assert_eq!(shown(&running_oldest), 0);
    assert_eq!(
        get(&s, "kapso_conversations_live", &[("project", "default")]),
        Some(4.0)
    );
}

/// `:PORT` listens on IPv6 and IPv4 (a dual-stack socket), as Go exporters do.
#[tokio::test]
async fn a_port_alone_listens_on_ipv4_and_ipv6() {
    let sim = Simulator::empty(KEY, Clock::system());
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let config = support::config(&["--kapso.base-url", &url, "--web.listen-address", ":0"]);
    let running = kapso_exporter::app::start(config, Clock::system())
        .await
        .unwrap();
    let port = running.addr.port();
    let v4 = reqwest::get(format!("http://127.0.0.1:{port}/-/healthy")).await;
    assert_eq!(v4.unwrap().status(), 200);
    // A host without IPv6 skips this half (visibly; under CI=true it fails).
    if support::require(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "IPv6 loopback",
    ) {
        let v6 = reqwest::get(format!("http://[::1]:{port}/-/healthy")).await;
        assert_eq!(v6.unwrap().status(), 200);
    }
    running.shutdown().await;
    drop(server);
}

/// Debian's headless browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless chromium on `url` with `args` (its own profile, no sandbox: CI runs as root);
/// returns its stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = support::TempDir::new("kx-chromium");
    let out = std::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.0.display()),
        ])
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// The landing page as a real browser renders it: one card per project in each of its three
/// states, the version and the links; and a phone-wide (390 px) screenshot.
#[tokio::test(flavor = "multi_thread")]
async fn the_landing_page_renders_in_a_headless_browser() {
    if !support::require(
        support::has_command(CHROMIUM, &["--version"]),
        "chromium (Debian's headless browser, /usr/bin/chromium)",
    ) {
        return;
    }
    let clock = Clock::manual(test_start());
    let sim = Simulator::empty(KEY, clock.clone());
    for name in ["Support", "Sales"] {
        let wf = sim.add_workflow(name, "active");
        let conv = sim.add_conversation();
        sim.start_execution(&wf, Some(&conv), ExecStatus::Waiting);
        sim.start_execution(&wf, None, ExecStatus::Running);
    }
    let server = sim.spawn().await.unwrap();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = support::TempDir::new("kx-landing");
    let file = dir.write(
        "config.yml",
        &format!(
            "projects:\n  - name: support\n    api_key_env: KAPSO_API_KEY\n    base_url: {}\n    rate_limit: 600\n  - name: sales\n    api_key_env: KAPSO_API_KEY\n    base_url: http://127.0.0.1:{refused}/platform/v1\n  - name: marketing\n    api_key_env: KAPSO_API_KEY\n    base_url: http://127.0.0.1:{refused}/platform/v1\n",
            server.base_url
        ),
    );
    let config = support::config(&["--config.file", file.to_str().unwrap()]);
    let mut exporter =
        kapso_exporter::app::build(&config, clock.clone(), support::test_retry()).unwrap();
    exporter.pollers[0].poll_once().await.unwrap();
    exporter.pollers[1].poll_once().await.unwrap_err();
    clock.advance(Duration::from_secs(75));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let serving = tokio::spawn(axum::serve(listener, exporter.router.clone()).into_future());

    let (dom, png) = tokio::task::spawn_blocking(move || {
        let dom = chromium(&url, &["--dump-dom"]);
        let shots = support::TempDir::new("kx-landing-shot");
        let path = shots.0.join("landing-390.png");
        chromium(
            &url,
            &[
                "--window-size=390,1600",
                &format!("--screenshot={}", path.display()),
            ],
        );
        (dom, std::fs::read(&path).unwrap())
    })
    .await
    .unwrap();
    serving.abort();

    for wanted in [
        "<title>Kapso Exporter</title>",
        "name=\"viewport\"",
        &format!("<span id=\"version\">{}", env!("CARGO_PKG_VERSION")),
        "<a href=\"/metrics\">Metrics</a>",
        "<a href=\"/-/healthy\">Health</a>",
        "<a href=\"/-/ready\">Readiness</a>",
        "data-project=\"support\" data-state=\"up\"",
        "data-project=\"sales\" data-state=\"down\"",
        "data-project=\"marketing\" data-state=\"waiting\"",
        "<dt>Mode</dt><dd>project</dd>",
        "<time datetime=\"2026-11-24T12:00:00Z\">2026-11-24T12:00:00Z</time> (1m 15s ago)",
        "<dt>Workflows</dt><dd>2</dd>",
        "<dt>Live executions</dt><dd>4</dd>",
        " of 600 allowed, took ",
        "down, no state yet",
        "waiting for the first poll",
        "dashboards/kapso-workflows.json",
    ] {
        assert!(dom.contains(wanted), "{wanted:?} not rendered:\n{dom}");
    }
    // The refused project's error names the cause, once, with no placeholder.
    assert!(dom.to_lowercase().contains("connection refused"), "{dom}");
    assert!(!dom.contains("&lt;url&gt;") && !dom.contains(KEY), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    let (width, height) = png_size(&png);
    assert_eq!((width, height), (390, 1600));
}

/// A log writer into a shared buffer, for the current thread's subscriber.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// The lines logged so far that contain `part`.
    fn count(&self, part: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(part)).count()
    }
}

/// A workflow that keeps failing on its own is warned about once while it lasts (at debug
/// after that), and again when it breaks anew; the first poll is one info line.
#[tokio::test(flavor = "current_thread")]
async fn a_lasting_error_of_one_workflow_is_warned_once() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (mut h, _) = harness().await;
    let bad = h.sim.add_workflow("Broken", "active");
    h.sim.fail_workflow_executions(&bad, Some(404));
    for _ in 0..3 {
        h.poll().await;
    }
    let warned = "keeping the last good state of one part of the project";
    assert_eq!(logs.count(" WARN "), 1);
    assert_eq!(logs.count(warned), 3, "1 warning and 2 debug lines");
    assert_eq!(logs.count("still keeping the last good state"), 2);
    assert_eq!(logs.count("first poll completed"), 1);
    h.sim.fail_workflow_executions(&bad, None);
    h.poll().await;
    assert_eq!(logs.count(" WARN "), 1);
    h.sim.fail_workflow_executions(&bad, Some(404));
    h.poll().await;
    assert_eq!(logs.count(" WARN "), 2, "broken anew");
    assert_eq!(
        logs.count("polling recovered"),
        0,
        "no poll failed as a whole"
    );
}
