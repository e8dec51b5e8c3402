//! Hostile HTTP clients against the real server on 127.0.0.1: only GET and HEAD answered,
//! oversized headers refused, slowloris connections closed, slow handlers cut off, and a
//! connection cap that slow clients can fill without stalling the poller. The webhook listener
//! (`--webhook.listen-address`), which faces the internet, is held to the same limits: only POST
//! answered, big headers 431, slowloris closed, slow bodies cut off, its connection cap filled
//! without stalling the poller or the scrapes, and bodies over 1 MiB refused unread.
#![allow(clippy::unwrap_used)]

use crate::support;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{KEY, WEBHOOK_SECRET};
use axum::routing::get;
use kapso_exporter::app::{self, Running};
use kapso_exporter::clock::Clock;
use kapso_exporter::config::{Config, WebLimits};
use kapso_exporter::http::server;
use kapso_exporter::simulator::{RunningSimulator, Simulator};
use kapso_exporter::state;
use kapso_exporter::webhook::{BODY_LIMIT, WebhookSecret};
use tokio_util::sync::CancellationToken;

/// The exporter on 127.0.0.1:0 polling a simulator every `interval`, with `limits`.
async fn start(interval: &str, limits: WebLimits) -> (Running, RunningSimulator) {
    start_with(interval, limits, &[]).await
}

/// [`start`] with the webhook listener on 127.0.0.1:0 too; also returns its address.
async fn start_webhooks(
    interval: &str,
    limits: WebLimits,
) -> (Running, RunningSimulator, SocketAddr) {
    let (running, sim) = start_with(
        interval,
        limits,
        &["--webhook.listen-address", "127.0.0.1:0"],
    )
    .await;
    let addr = running.webhook_addr.expect("the webhook listener is on");
    assert_ne!(addr, running.addr);
    (running, sim, addr)
}

async fn start_with(
    interval: &str,
    limits: WebLimits,
    extra: &[&str],
) -> (Running, RunningSimulator) {
    let sim = Simulator::empty(KEY, Clock::system());
    sim.add_workflow("Support", "active");
    let server = sim.spawn().await.unwrap();
    let url = server.base_url.to_string();
    let mut args = vec![
        "--kapso.base-url",
        &url,
        "--kapso.rate-limit",
        "100000",
        "--kapso.timeout",
        "250ms",
        "--poll.interval",
        interval,
        "--web.listen-address",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut config: Config = support::config(&args);
    config.web_limits = limits;
    (app::start(config, Clock::system()).await.unwrap(), server)
}

/// Writes `request`, returns the status line of the answer (empty if the server closed).
fn status_line(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Every one of `hogs` is closed by the server within 15 s.
async fn assert_closed(hogs: Vec<TcpStream>) {
    tokio::task::spawn_blocking(move || {
        for mut s in hogs {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut buf = [0u8; 64];
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Err(e) if is_timeout(&e) => break false,
                    Err(_) => break true,
                    Ok(_) => {}
                }
            };
            assert!(closed, "a slow client is still connected");
        }
    })
    .await
    .unwrap();
}

fn polls(running: &Running) -> u64 {
    state::read(&running.projects[0]).polls_success
}

#[tokio::test]
async fn only_get_and_head_are_answered_and_big_headers_get_431() {
    let (running, _sim) = start("60s", WebLimits::default()).await;
    let addr = running.addr;
    tokio::task::spawn_blocking(move || {
        for method in ["GET", "HEAD"] {
            let req = format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            assert_eq!(
                status_line(addr, req.as_bytes()),
                "HTTP/1.1 200 OK",
                "{method}"
            );
        }
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
            for path in ["/metrics", "/", "/-/healthy", "/-/ready"] {
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                assert_eq!(
                    status_line(addr, req.as_bytes()),
                    "HTTP/1.1 405 Method Not Allowed",
                    "{method} {path}"
                );
            }
        }
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        assert_eq!(
            status_line(addr, big.as_bytes()),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Headers just under the limit are fine.
        let fits = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(8 * 1024)
        );
        assert_eq!(status_line(addr, fits.as_bytes()), "HTTP/1.1 200 OK");
    })
    .await
    .unwrap();
    running.shutdown().await;
}

#[tokio::test]
async fn a_slowloris_client_is_closed_after_the_header_timeout() {
    let limits = WebLimits {
        header_read_timeout: Duration::from_millis(500),
        ..WebLimits::default()
    };
    let (running, _sim) = start("60s", limits).await;
    let addr = running.addr;
    let took =
        tokio::task::spawn_blocking(move || trickle_headers(addr, b"GET /metrics HTTP/1.1\r\n"))
            .await
            .unwrap();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    running.shutdown().await;
}

/// Sends `head` and then one header byte every 100 ms, for at most 10 s (never a complete
/// request); returns how long the server took to close the connection.
fn trickle_headers(addr: SocketAddr, head: &'static [u8]) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        let head = head.iter().chain(b"X-Slow: ");
        for b in head.chain(std::iter::repeat(&b'a')).take(100) {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut buf = [0u8; 256];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Err(e) if is_timeout(&e) => panic!("not closed within 10 s"),
            Err(_) => break started.elapsed(),
            Ok(_) => {}
        }
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
    closed
}

#[tokio::test]
async fn a_handler_that_takes_too_long_gets_503() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "late"
        }),
    );
    let limits = WebLimits {
        request_timeout: Duration::from_millis(200),
        ..WebLimits::default()
    };
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(server::serve(
        listener,
        router,
        None,
        limits,
        cancel.clone(),
    ));
    let started = Instant::now();
    let line = tokio::task::spawn_blocking(move || {
        status_line(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(line, "HTTP/1.1 503 Service Unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("server stops on cancel")
        .unwrap();
}

/// Single-threaded on purpose: if serving slow clients blocked the runtime, the poller on the
/// same thread would stop.
#[tokio::test]
async fn slow_clients_filling_every_slot_do_not_stall_the_poller() {
    let limits = WebLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(5),
        ..WebLimits::default()
    };
    let (running, _sim) = start("300ms", limits).await;
    let addr = running.addr;
    let deadline = Instant::now() + Duration::from_secs(20);
    while polls(&running) == 0 {
        assert!(Instant::now() < deadline, "no first poll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two more slow clients than slots: four are served (and stall), two wait in the backlog.
    let hogs: Vec<TcpStream> = (0..limits.max_connections + 2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let hogged_at = Instant::now();
    // A well-behaved scrape queues behind them.
    let scrape = tokio::spawn(async move {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok::<_, reqwest::Error>((code, r.text().await?, Instant::now()))
    });

    // The poller keeps polling while every slot is held.
    let before = polls(&running);
    while polls(&running) < before + 3 {
        assert!(Instant::now() < deadline, "the poller stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !scrape.is_finished(),
        "the scrape was served while every slot should have been held"
    );

    // Once the slow clients time out, the scrape is answered.
    let (code, body, answered_at) = tokio::time::timeout(Duration::from_secs(30), scrape)
        .await
        .expect("the scrape was answered")
        .unwrap()
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("kapso_up{project=\"default\"} 1"), "{body}");
    assert!(
        answered_at.duration_since(hogged_at) >= Duration::from_secs(4),
        "answered after {:?}, before the slow clients timed out",
        answered_at.duration_since(hogged_at)
    );
    // The server closed the slow clients.
    assert_closed(hogs).await;
    running.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_stops_accepting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let router = axum::Router::new().route(
        "/slow",
        get(move || {
            let entered = entered.clone();
            async move {
                if let Some(tx) = entered.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                "finished\n"
            }
        }),
    );
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(server::serve(
        listener,
        router,
        None,
        WebLimits::default(),
        cancel.clone(),
    ));
    let request = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    tokio::time::timeout(Duration::from_secs(10), entered_rx)
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    let answer = request.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("finished\n"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve returns once the last connection closed")
        .unwrap();
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}

// ------------------------------------------------------------------------------------------------
// The webhook listener
// ------------------------------------------------------------------------------------------------

/// A delivery to the single project's path, signed with [`WEBHOOK_SECRET`], with `extra`
/// header lines; the body `{}` passes the signature check and is answered 200 `ignored`.
fn delivery(extra: &str, connection_close: bool) -> Vec<u8> {
    let body = b"{}";
    let signature = WebhookSecret::new(WEBHOOK_SECRET).sign(body);
    let close = if connection_close {
        "Connection: close\r\n"
    } else {
        ""
    };
    let mut req = format!(
        "POST /webhooks/kapso HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Webhook-Signature: {signature}\r\n{extra}{close}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Reads from `s` until the end of the status line (or 10 s, or the server closing).
fn read_status_line(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// `kapso_webhook_requests_total` of the default project for `result`, from `/metrics`.
async fn webhook_requests(running: &Running, result: &str) -> String {
    let body = reqwest::get(format!("http://{}/metrics", running.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series =
        format!("kapso_webhook_requests_total{{project=\"default\",result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series}in\n{body}"))
        .to_owned()
}

#[tokio::test]
async fn the_webhook_listener_answers_only_post_and_big_headers_get_431() {
    let (running, _sim, addr) = start_webhooks("60s", WebLimits::default()).await;
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            status_line(addr, &delivery("", true)),
            "HTTP/1.1 200 OK",
            "a signed delivery"
        );
        for method in ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
            for path in ["/webhooks/kapso", "/webhooks/kapso/default"] {
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                assert_eq!(
                    status_line(addr, req.as_bytes()),
                    "HTTP/1.1 405 Method Not Allowed",
                    "{method} {path}"
                );
            }
        }
        // The metrics are not served here.
        assert_eq!(
            status_line(
                addr,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ),
            "HTTP/1.1 404 Not Found"
        );
        let big = delivery(&format!("X-Big: {}\r\n", "a".repeat(64 * 1024)), true);
        assert_eq!(
            status_line(addr, &big),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Headers just under the limit are fine.
        let fits = delivery(&format!("X-Big: {}\r\n", "a".repeat(8 * 1024)), true);
        assert_eq!(status_line(addr, &fits), "HTTP/1.1 200 OK");
    })
    .await
    .unwrap();
    // The two deliveries that got through were read (and ignored: `{}` is no event).
    assert_eq!(webhook_requests(&running, "ignored").await, "2");
    running.shutdown().await;
}

#[tokio::test]
async fn a_slowloris_client_of_the_webhook_listener_is_closed_and_a_slow_body_cut_off() {
    let limits = WebLimits {
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        ..WebLimits::default()
    };
    let (running, _sim, addr) = start_webhooks("60s", limits).await;
    let took = tokio::task::spawn_blocking(move || {
        trickle_headers(addr, b"POST /webhooks/kapso HTTP/1.1\r\n")
    })
    .await
    .unwrap();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Complete headers, then a body of one byte every 100 ms: the handler reading it is cut
    // off by the request timeout.
    let (line, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        s.write_all(
            b"POST /webhooks/kapso HTTP/1.1\r\nHost: x\r\nX-Webhook-Signature: 00\r\nContent-Length: 100\r\n\r\n",
        )
        .unwrap();
        let mut writer = s.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..100 {
                if writer.write_all(b"a").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let line = read_status_line(&mut s);
        let took = started.elapsed();
        let _ = s.shutdown(std::net::Shutdown::Both);
        trickle.join().unwrap();
        (line, took)
    })
    .await
    .unwrap();
    assert_eq!(line, "HTTP/1.1 503 Service Unavailable");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    running.shutdown().await;
}

/// Single-threaded on purpose, as the test above for the main listener.
#[tokio::test]
async fn slow_clients_filling_every_webhook_slot_stall_neither_the_poller_nor_the_scrapes() {
    let limits = WebLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(5),
        ..WebLimits::default()
    };
    let (running, _sim, addr) = start_webhooks("300ms", limits).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while polls(&running) == 0 {
        assert!(Instant::now() < deadline, "no first poll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two more slow clients than slots: four are served (and stall), two wait in the backlog.
    let hogs: Vec<TcpStream> = (0..limits.max_connections + 2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /webhooks/kapso HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let hogged_at = Instant::now();
    // A well-behaved delivery queues behind them.
    let body = b"{}".to_vec();
    let signature = WebhookSecret::new(WEBHOOK_SECRET).sign(&body);
    let delivery = tokio::spawn(async move {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .post(format!("http://{addr}/webhooks/kapso"))
            .header("x-webhook-signature", signature)
            .body(body)
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok::<_, reqwest::Error>((code, r.text().await?, Instant::now()))
    });

    // The poller keeps polling, and the main listener keeps serving scrapes, while every
    // webhook slot is held: its slots are its own.
    let before = polls(&running);
    while polls(&running) < before + 3 {
        assert!(Instant::now() < deadline, "the poller stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scrape = tokio::time::timeout(
        Duration::from_secs(2),
        reqwest::get(format!("http://{}/metrics", running.addr)),
    )
    .await
    .expect("a scrape is answered while the webhook slots are full")
    .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(
        !delivery.is_finished(),
        "the delivery was served while every slot should have been held"
    );

    // Once the slow clients time out, the delivery is answered.
    let (code, body, answered_at) = tokio::time::timeout(Duration::from_secs(30), delivery)
        .await
        .expect("the delivery was answered")
        .unwrap()
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ignored\n"));
    assert!(
        answered_at.duration_since(hogged_at) >= Duration::from_secs(4),
        "answered after {:?}, before the slow clients timed out",
        answered_at.duration_since(hogged_at)
    );
    // The server closed the slow clients.
    assert_closed(hogs).await;
    running.shutdown().await;
}

#[tokio::test]
async fn a_webhook_body_over_1_mib_gets_413_before_it_is_sent() {
    let (running, _sim, addr) = start_webhooks("60s", WebLimits::default()).await;
    let signature = WebhookSecret::new(WEBHOOK_SECRET).sign(b"{}");
    let head = move |length: &str| {
        format!(
            "POST /webhooks/kapso HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Webhook-Signature: {signature}\r\n{length}\r\n"
        )
    };
    // A declared length over the limit: answered with no byte of the body sent.
    let over = head(&format!("Content-Length: {}\r\n", BODY_LIMIT + 1));
    let line = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(over.as_bytes()).unwrap();
        read_status_line(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(line, "HTTP/1.1 413 Payload Too Large");

    // A chunked body of no declared length: refused once 1 MiB was read, long before the
    // 64 MiB the client means to send; the server stops reading and closes.
    let chunked = head("Transfer-Encoding: chunked\r\n");
    let (line, sent) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(chunked.as_bytes()).unwrap();
        let mut writer = s.try_clone().unwrap();
        // A server that stopped reading without closing stalls the writes.
        writer
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sender = std::thread::spawn(move || {
            let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
            let mut sent = 0usize;
            while sent < 64 * 1024 * 1024 {
                if writer.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
                sent += 0x10000;
            }
            sent
        });
        let line = read_status_line(&mut s);
        // The sender stops on its own (the server closed, or stopped reading), not because
        // this side closed.
        let sent = sender.join().unwrap();
        let _ = s.shutdown(std::net::Shutdown::Both);
        (line, sent)
    })
    .await
    .unwrap();
    assert_eq!(line, "HTTP/1.1 413 Payload Too Large");
    assert!(
        sent < 64 * 1024 * 1024,
        "the client sent all of its {sent} bytes"
    );
    assert_eq!(webhook_requests(&running, "too_large").await, "2");
    running.shutdown().await;
}
