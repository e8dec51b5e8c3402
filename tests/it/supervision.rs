//! Supervision of the running exporter: a poller task that panics turns `/-/healthy` and
//! `/-/ready` to 503, shows as `kapso_exporter_task_up 0` and marks its project down, while the
//! other project and the HTTP server carry on.
//!
//! The panic is a real one, in the poller's own code: a poll interval of zero, which
//! configuration validation refuses, is set on the validated configuration, and
//! `tokio::time::interval` panics on it when the poller task starts.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::time::{Duration, Instant};

use crate::support::{KEY, get, parse};
use kapso_exporter::app;
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::Simulator;

async fn fetch(client: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn a_panicked_poller_turns_health_and_readiness_to_503() {
    let sim = Simulator::empty(KEY, Clock::system());
    sim.add_workflow("Support", "active");
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let mut config = support::config(&[
        "--kapso.base-url",
        &url,
        "--kapso.rate-limit",
        "100000",
        // Only the first poll, which starts at once, runs during the test.
        "--poll.interval",
        "1h",
        "--web.listen-address",
        "127.0.0.1:0",
    ]);
    config.projects[0].name = "good".to_owned();
    let mut broken = config.projects[0].clone();
    broken.name = "broken".to_owned();
    broken.poll_interval = Duration::ZERO;
    config.projects.push(broken);
    let running = app::start(config, Clock::system()).await.unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    // Wait until the good project completed its poll and the broken poller's death is recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let (code, body) = fetch(&client, &format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        let s = parse(&body);
        let dead = get(&s, "kapso_exporter_task_up", &[("task", "poller/broken")]) == Some(0.0);
        let good_up = get(&s, "kapso_up", &[("project", "good")]) == Some(1.0);
        if dead && good_up {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no dead poller/broken and live good project within 10 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let task_up = |task: &str| get(&samples, "kapso_exporter_task_up", &[("task", task)]);
    assert_eq!(task_up("poller/good"), Some(1.0));
    assert_eq!(task_up("http"), Some(1.0));
    assert_eq!(
        support::series(&samples, "kapso_exporter_task_up").count(),
        3,
        "exactly the two pollers and the server are supervised"
    );
    assert_eq!(
        get(&samples, "kapso_up", &[("project", "broken")]),
        Some(0.0)
    );

    let (code, body) = fetch(&client, &format!("{base}/-/healthy")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("Unhealthy: poller/broken panicked: ")
            && body.contains("period")
            && !body.contains("poller/good")
            && !body.contains("http"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");

    let (code, body) = fetch(&client, &format!("{base}/-/ready")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("Not ready: poller/broken panicked: "),
        "{body}"
    );

    // The landing page says why the project is down.
    let (code, page) = fetch(&client, &format!("{base}/")).await;
    assert_eq!(code, 200);
    assert!(
        page.contains("data-project=\"good\" data-state=\"up\"")
            && page.contains("data-project=\"broken\" data-state=\"down\"")
            && page.contains("the poller task panicked: "),
        "{page}"
    );

    running.shutdown().await;
    server.shutdown().await;
}
