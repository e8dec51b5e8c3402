//! Contract tests of the Kapso HTTP client against a real (wiremock) HTTP server.
//!
//! What is pinned here comes from docs/kapso-api.md: `X-API-Key` only (§1), cursor paging on
//! `paging.next` with opaque Base64 cursors (§3), `Retry-After` on 429 (§8) and the flat
//! `{"error": "..."}` body (§9).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kapso_exporter::kapso::client::STALL_PAGES;
use kapso_exporter::kapso::limiter::MAX_PAUSE;
use kapso_exporter::kapso::{
    ApiError, ApiKey, Client, ExecutionFilter, ExecutionStatus, RetryPolicy, endpoint,
};
use serde_json::{Value, json};
use time::macros::datetime;
use url::Url;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "sk-live-0123456789abcdefSECRET";

/// The `max_pages` of lists whose ceiling a test does not exercise.
const PAGES: usize = 1000;

/// No call of these tests may take this long; a hang fails instead of stalling the suite.
const CALL_LIMIT: Duration = Duration::from_secs(10);

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(30),
    }
}

fn base_url(server: &MockServer) -> Url {
    Url::parse(&format!("{}/platform/v1", server.uri())).unwrap()
}

fn client_with(base: Url, per_minute: u32, timeout: Duration, retry: RetryPolicy) -> Arc<Client> {
    Arc::new(Client::new(base, ApiKey::new(KEY), per_minute, timeout, retry).unwrap())
}

fn client(server: &MockServer) -> Arc<Client> {
    client_with(
        base_url(server),
        1000,
        Duration::from_secs(5),
        fast_retry(3),
    )
}

async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, fut)
        .await
        .expect("the client call hung")
}

/// Answers every GET of `path` with `response`.
async fn mount_get(server: &MockServer, path_: &str, response: impl Respond + 'static) {
    Mock::given(method("GET"))
        .and(path(path_))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

fn query(req: &Request, name: &str) -> Option<String> {
    req.url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// Answers the n-th request (from 0) with `f(n)` and records when each request arrived.
struct Script<F> {
    f: F,
    arrivals: Arrivals,
}

impl<F> Respond for Script<F>
where
    F: Fn(usize) -> ResponseTemplate + Send + Sync + 'static,
{
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = {
            let mut arrivals = self.arrivals.lock().unwrap();
            arrivals.push(Instant::now());
            arrivals.len() - 1
        };
        (self.f)(n)
    }
}

fn script<F>(f: F) -> (Script<F>, Arrivals)
where
    F: Fn(usize) -> ResponseTemplate + Send + Sync + 'static,
{
    let arrivals = Arrivals::default();
    (
        Script {
            f,
            arrivals: arrivals.clone(),
        },
        arrivals,
    )
}

fn arrivals_of(a: &Arrivals) -> Vec<Instant> {
    a.lock().unwrap().clone()
}

async fn wait_for_arrivals(a: &Arrivals, n: usize) {
    bounded(async {
        while a.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn exec_row(id: &str) -> Value {
    json!({
        "id": id,
        "status": "running",
        "started_at": "2026-05-15T12:00:00.000000Z",
        "last_event_at": "2026-05-15T12:01:00Z",
        "workflow": {"id": "wf-1", "name": "Support", "status": "active"}
    })
}

/// A list page; `cursors.after` is always set, as in Kapso's own example, even on the last page.
fn page(rows: &[Value], next: Option<&str>) -> Value {
    json!({
        "data": rows,
        "paging": {
            "cursors": {"before": "Zmlyc3Q=", "after": next.unwrap_or("bGFzdC1yb3c=")},
            "next": next,
            "previous": null
        }
    })
}

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// A Kapso-like cursor (standard Base64 of the keyset JSON) that contains `+`, `/` and `=`.
fn cursor(seed: &str) -> String {
    for filler in 0..64 {
        let json = format!(
            r#"{{"values":["2026-05-15T12:05:00.000000Z","{seed}"],"columns":["created_at","id"],"f":"{}???>>>~~~"}}"#,
            "~".repeat(filler)
        );
        let encoded = STANDARD.encode(&json);
        if encoded.contains('+') && encoded.contains('/') && encoded.ends_with('=') {
            return encoded;
        }
    }
    panic!("no cursor with +, / and = for {seed}");
}

fn ids(rows: &[kapso_exporter::kapso::Execution]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn counts(entries: &[(&'static str, &str, u64)]) -> BTreeMap<(&'static str, String), u64> {
    entries
        .iter()
        .map(|(e, c, n)| ((*e, (*c).to_owned()), *n))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests: authentication, paths, query
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_request_carries_the_key_the_documented_path_and_limit() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ok(json!({"data": [{"id": "wf-1", "name": "Support"}]})),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/workflows/wf-1/executions",
        ok(page(&[exec_row("e1")], None)),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/c-1/flow_executions",
        ok(page(&[exec_row("e2")], None)),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations",
        ok(json!({
            "data": [{"id": "c-1", "last_active_at": "2026-05-15T12:00:00Z"}],
            "paging": {"next": null}
        })),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/workflow_executions/e1",
        ok(json!({"data": exec_row("e1")})),
    )
    .await;
    let client = client(&server);

    let workflows = bounded(client.list_workflows()).await.unwrap();
    assert_eq!(workflows[0].id, "wf-1");
    let filter = ExecutionFilter {
        status: Some(ExecutionStatus::Failed),
        created_after: Some(datetime!(2026-05-15 12:05:00.5 UTC)),
    };
    let rows = bounded(client.list_workflow_executions("wf-1", filter, PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["e1"]);
    let rows = bounded(client.list_conversation_executions("c-1", PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["e2"]);
    let conversations = bounded(client.list_conversations(datetime!(2026-05-15 11:00 UTC)))
        .await
        .unwrap();
    assert_eq!(conversations[0].id, "c-1");
    let exec = bounded(client.get_execution("e1")).await.unwrap();
    assert_eq!(exec.id, "e1");

    let requests = received(&server).await;
    let paths: Vec<&str> = requests.iter().map(|r| r.url.path()).collect();
    assert_eq!(
        paths,
        [
            "/platform/v1/workflows",
            "/platform/v1/workflows/wf-1/executions",
            "/platform/v1/whatsapp/conversations/c-1/flow_executions",
            "/platform/v1/whatsapp/conversations",
            "/platform/v1/workflow_executions/e1",
        ]
    );
    for req in &requests {
        assert_eq!(req.method, "GET");
        let keys: Vec<_> = req.headers.get_all("x-api-key").iter().collect();
        assert_eq!(keys, [KEY], "{}", req.url);
        assert!(
            req.headers.get("authorization").is_none(),
            "Authorization sent to {}",
            req.url
        );
    }
    // Every list asks for the largest page; the single-item GET has no query at all.
    for req in &requests[..4] {
        assert_eq!(query(req, "limit").as_deref(), Some("100"), "{}", req.url);
    }
    assert_eq!(requests[4].url.query(), None);
    assert_eq!(query(&requests[1], "status").as_deref(), Some("failed"));
    assert_eq!(
        query(&requests[1], "created_after").as_deref(),
        Some("2026-05-15T12:05:00.500000Z")
    );
    assert_eq!(
        query(&requests[3], "last_active_after").as_deref(),
        Some("2026-05-15T11:00:00.000000Z")
    );
}

#[tokio::test]
async fn a_trailing_slash_on_the_base_url_adds_no_empty_segment() {
    let server = MockServer::start().await;
    mount_get(&server, "/platform/v1/workflows", ok(json!({"data": []}))).await;
    let base = Url::parse(&format!("{}/platform/v1/", server.uri())).unwrap();
    let client = client_with(base, 1000, Duration::from_secs(5), fast_retry(1));
    assert!(bounded(client.list_workflows()).await.unwrap().is_empty());
    assert_eq!(
        received(&server).await[0].url.path(),
        "/platform/v1/workflows"
    );
}

#[tokio::test]
async fn ids_are_percent_encoded_as_single_path_segments() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows/team%2Fa%20b%3Fx%23y%25/executions",
        ok(page(&[exec_row("e1")], None)),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/conv%2F..%2Fworkflows/flow_executions",
        ok(page(&[exec_row("e2")], None)),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/workflow_executions/exec%2F1",
        ok(json!({"data": exec_row("exec/1")})),
    )
    .await;
    let client = client(&server);

    let rows = bounded(client.list_workflow_executions(
        "team/a b?x#y%",
        ExecutionFilter::default(),
        PAGES,
    ))
    .await
    .unwrap();
    assert_eq!(ids(&rows), ["e1"]);
    let rows = bounded(client.list_conversation_executions("conv/../workflows", PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["e2"]);
    assert_eq!(
        bounded(client.get_execution("exec/1")).await.unwrap().id,
        "exec/1"
    );
    let requests = received(&server).await;
    assert_eq!(requests.len(), 3);
    // `?` and `#` in the id stayed in the path: the only query is the client's own.
    assert_eq!(requests[0].url.query(), Some("limit=100"));
}

#[tokio::test]
async fn dot_and_empty_ids_are_refused_without_a_request() {
    // `url` drops "." and ".." segments, so `/workflows/../executions` would silently become
    // `/workflows/executions`, another resource; the client must refuse such ids.
    let server = MockServer::start().await;
    let client = client(&server);
    for id in ["", ".", ".."] {
        let err = bounded(client.list_workflow_executions(id, ExecutionFilter::default(), PAGES))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::InvalidId { endpoint: e, .. } if e == endpoint::WORKFLOW_EXECUTIONS),
            "{id:?}: {err:?}"
        );
        assert_eq!(err.kind(), "client_error");
        let err = bounded(client.list_conversation_executions(id, PAGES))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::InvalidId { .. }), "{id:?}: {err:?}");
        let err = bounded(client.get_execution(id)).await.unwrap_err();
        assert!(matches!(err, ApiError::InvalidId { .. }), "{id:?}: {err:?}");
    }
    assert!(received(&server).await.is_empty());
    assert_eq!(client.stats().total(), 0);
}

// ---------------------------------------------------------------------------------------------
// Paging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pages_are_followed_through_next_with_the_exact_cursor() {
    let c1 = cursor("550e8400-e29b-41d4-a716-446655440001");
    let c2 = cursor("550e8400-e29b-41d4-a716-446655440002");
    assert_ne!(c1, c2);
    for c in [&c1, &c2] {
        let decoded: Value = serde_json::from_slice(&STANDARD.decode(c).unwrap()).unwrap();
        assert_eq!(decoded["columns"], json!(["created_at", "id"]));
    }
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/platform/v1/workflows/wf-1/executions"))
        .and(query_param_is_missing("after"))
        .respond_with(ok(page(&[exec_row("r1"), exec_row("r2")], Some(&c1))))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/platform/v1/workflows/wf-1/executions"))
        .and(query_param("after", c1.as_str()))
        .respond_with(ok(page(&[exec_row("r3"), exec_row("r4")], Some(&c2))))
        .expect(1)
        .mount(&server)
        .await;
    // The last page: `next` is null although `cursors.after` is set.
    Mock::given(method("GET"))
        .and(path("/platform/v1/workflows/wf-1/executions"))
        .and(query_param("after", c2.as_str()))
        .respond_with(ok(page(&[exec_row("r5")], None)))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let filter = ExecutionFilter {
        status: Some(ExecutionStatus::Waiting),
        created_after: None,
    };
    let rows = bounded(client.list_workflow_executions("wf-1", filter, PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["r1", "r2", "r3", "r4", "r5"]);

    let requests = received(&server).await;
    assert_eq!(requests.len(), 3);
    let afters: Vec<Option<String>> = requests.iter().map(|r| query(r, "after")).collect();
    assert_eq!(afters, [None, Some(c1.clone()), Some(c2.clone())]);
    for req in &requests {
        // Filters and the page size travel with every page; `after` is never sent twice.
        assert_eq!(query(req, "status").as_deref(), Some("waiting"));
        assert_eq!(query(req, "limit").as_deref(), Some("100"));
        let afters = req.url.query_pairs().filter(|(k, _)| k == "after").count();
        assert!(afters <= 1, "{}", req.url);
        assert_eq!(req.headers.get("x-api-key").unwrap(), KEY);
    }
    // On the wire the cursor is percent-encoded (a raw `+` would arrive as a space).
    let raw = requests[1].url.query().unwrap();
    assert!(!raw.contains('+') && raw.contains("%2B"), "{raw}");
    assert!(raw.contains("%2F") && raw.contains("%3D"), "{raw}");
}

#[tokio::test]
async fn a_missing_paging_object_or_next_ends_the_list() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/c-1/flow_executions",
        ok(json!({
            "data": [exec_row("r1")],
            "paging": {"cursors": {"before": "YQ==", "after": "Yg=="}, "previous": null}
        })),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations",
        ok(json!({"data": [{"id": "c-1"}]})),
    )
    .await;
    let client = client(&server);
    let rows = bounded(client.list_conversation_executions("c-1", PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["r1"]);
    let conversations = bounded(client.list_conversations(datetime!(2026-05-15 11:00 UTC)))
        .await
        .unwrap();
    assert_eq!(conversations.len(), 1);
    assert_eq!(received(&server).await.len(), 2);
}

#[tokio::test]
async fn a_repeated_cursor_fails_with_cursor_loop_after_two_requests() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations",
        ok(json!({
            "data": [{"id": "c-1"}],
            "paging": {"cursors": {"after": "c2FtZQ=="}, "next": "c2FtZQ=="}
        })),
    )
    .await;
    let client = client(&server);
    let err = bounded(client.list_conversations(datetime!(2026-05-15 11:00 UTC)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::CursorLoop { endpoint: e } if e == endpoint::CONVERSATIONS),
        "{err:?}"
    );
    assert_eq!(err.kind(), "paging");
    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(query(&requests[0], "after"), None);
    assert_eq!(query(&requests[1], "after").as_deref(), Some("c2FtZQ=="));
}

/// Answers request `n` of an execution list with `rows(n)` under the fresh cursor `cur-{n}`.
fn endless(
    rows: impl Fn(usize) -> Vec<Value> + Send + Sync + 'static,
) -> (impl Respond + 'static, Arrivals) {
    script(move |n| ok(page(&rows(n), Some(&format!("cur-{n}")))))
}

#[tokio::test]
async fn empty_pages_with_fresh_cursors_stop_after_stall_pages() {
    let server = MockServer::start().await;
    let (responder, arrivals) = endless(|n| {
        if n == 0 {
            vec![exec_row("r1")]
        } else {
            Vec::new()
        }
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let err = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::NoProgress { endpoint: e, pages } if e == endpoint::WORKFLOW_EXECUTIONS && pages == STALL_PAGES),
        "{err:?}"
    );
    assert_eq!(err.kind(), "paging");
    assert!(err.to_string().contains("no new row"), "{err}");
    assert_eq!(arrivals_of(&arrivals).len(), 1 + STALL_PAGES);

    // A list that is empty from its first page stops no later.
    let server = MockServer::start().await;
    let (responder, arrivals) = endless(|_| Vec::new());
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/c-1/flow_executions",
        responder,
    )
    .await;
    let client = self::client(&server);
    let err = bounded(client.list_conversation_executions("c-1", PAGES))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::NoProgress { .. }), "{err:?}");
    assert!(arrivals_of(&arrivals).len() <= 1 + STALL_PAGES);
}

#[tokio::test]
async fn pages_repeating_seen_rows_under_fresh_cursors_stop_after_stall_pages() {
    let server = MockServer::start().await;
    let (responder, arrivals) = endless(|n| match n {
        0 => vec![exec_row("r1"), exec_row("r2")],
        n if n % 2 == 0 => vec![exec_row("r2"), exec_row("r1")],
        _ => vec![exec_row("r1")],
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let err = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::NoProgress { pages, .. } if pages == STALL_PAGES),
        "{err:?}"
    );
    assert_eq!(arrivals_of(&arrivals).len(), 1 + STALL_PAGES);
}

#[tokio::test]
async fn a_page_with_one_new_row_among_seen_ones_is_progress() {
    // Overlapping pages (a row moving between two requests) are tolerated.
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        let rows = [exec_row(&format!("r{n}")), exec_row(&format!("r{}", n + 1))];
        let next = format!("cur-{n}");
        ok(page(&rows, (n < 2 * STALL_PAGES).then_some(next.as_str())))
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let rows = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
        .await
        .unwrap();
    assert_eq!(arrivals_of(&arrivals).len(), 2 * STALL_PAGES + 1);
    assert_eq!(rows.len(), 2 * (2 * STALL_PAGES + 1));
}

#[tokio::test]
async fn more_than_max_pages_fails_with_the_ceiling() {
    let server = MockServer::start().await;
    let (responder, arrivals) = endless(|n| vec![exec_row(&format!("r{n}"))]);
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let err = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::TooManyPages { endpoint: e, pages: 3 } if e == endpoint::WORKFLOW_EXECUTIONS),
        "{err:?}"
    );
    assert_eq!(err.kind(), "paging");
    assert!(err.to_string().contains("ceiling"), "{err}");
    assert_eq!(arrivals_of(&arrivals).len(), 3);

    // A list of exactly `max_pages` pages is not refused.
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        let next = format!("cur-{n}");
        ok(page(
            &[exec_row(&format!("r{n}"))],
            (n < 2).then_some(next.as_str()),
        ))
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = self::client(&server);
    let rows = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), 3))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["r0", "r1", "r2"]);
    assert_eq!(arrivals_of(&arrivals).len(), 3);

    // `max_pages` 0 still reads the first page (`kapso::client` unit tests check that one
    // beyond `MAX_PAGES` is lowered to it).
    let server = MockServer::start().await;
    let (responder, arrivals) = endless(|n| vec![exec_row(&format!("r{n}"))]);
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/c-1/flow_executions",
        responder,
    )
    .await;
    let client = self::client(&server);
    let err = bounded(client.list_conversation_executions("c-1", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::TooManyPages { pages: 1, .. }),
        "{err:?}"
    );
    assert_eq!(arrivals_of(&arrivals).len(), 1);
}

#[tokio::test]
async fn next_page_lets_the_caller_stop_early() {
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        let next = format!("cur-{n}");
        ok(page(
            &[exec_row(&format!("r{n}"))],
            (n < 2).then_some(next.as_str()),
        ))
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let filter = ExecutionFilter {
        status: Some(ExecutionStatus::Waiting),
        created_after: None,
    };

    let mut pages = client.execution_pages("wf-1", filter, PAGES).unwrap();
    assert_eq!(received(&server).await.len(), 0, "requested before asked");
    let first = bounded(pages.next_page()).await.unwrap().unwrap();
    assert_eq!(ids(&first), ["r0"]);
    assert_eq!(pages.pages(), 1);
    drop(pages);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(arrivals_of(&arrivals).len(), 1, "a page nobody asked for");

    // Read to the end, the pages say so without asking again.
    let mut pages = client.execution_pages("wf-1", filter, PAGES).unwrap();
    let mut got = Vec::new();
    while let Some(page) = bounded(pages.next_page()).await.unwrap() {
        got.extend(page);
    }
    assert_eq!(ids(&got), ["r1", "r2"]);
    assert!(bounded(pages.next_page()).await.unwrap().is_none());
    assert_eq!(arrivals_of(&arrivals).len(), 3);
    let requests = received(&server).await;
    assert_eq!(query(&requests[2], "after").as_deref(), Some("cur-1"));
    assert_eq!(query(&requests[2], "status").as_deref(), Some("waiting"));
}

#[tokio::test]
async fn a_paging_guard_fails_every_later_call_without_a_request() {
    let server = MockServer::start().await;
    let (responder, arrivals) = endless(|_| Vec::new());
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let mut pages = client
        .execution_pages("wf-1", ExecutionFilter::default(), PAGES)
        .unwrap();
    for _ in 0..STALL_PAGES {
        assert!(
            bounded(pages.next_page())
                .await
                .unwrap()
                .unwrap()
                .is_empty()
        );
    }
    for _ in 0..2 {
        let err = bounded(pages.next_page()).await.unwrap_err();
        assert!(matches!(err, ApiError::NoProgress { .. }), "{err:?}");
    }
    assert_eq!(arrivals_of(&arrivals).len(), STALL_PAGES);
}

#[tokio::test]
async fn workflows_follow_a_next_cursor_under_the_same_guards() {
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| match n {
        0 => ok(json!({"data": [{"id": "wf-1"}], "paging": {"next": "d2Yy"}})),
        _ => ok(json!({"data": [{"id": "wf-2"}], "paging": {"next": null}})),
    });
    mount_get(&server, "/platform/v1/workflows", responder).await;
    let client = client(&server);
    let workflows = bounded(client.list_workflows()).await.unwrap();
    let ids: Vec<&str> = workflows.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["wf-1", "wf-2"]);
    assert_eq!(arrivals_of(&arrivals).len(), 2);
    assert_eq!(
        query(&received(&server).await[1], "after").as_deref(),
        Some("d2Yy")
    );

    let server = MockServer::start().await;
    let (responder, arrivals) =
        script(|n| ok(json!({"data": [{"id": "wf-1"}], "paging": {"next": format!("c{n}")}})));
    mount_get(&server, "/platform/v1/workflows", responder).await;
    let client = self::client(&server);
    let err = bounded(client.list_workflows()).await.unwrap_err();
    assert!(
        matches!(err, ApiError::NoProgress { endpoint: e, .. } if e == endpoint::WORKFLOWS),
        "{err:?}"
    );
    assert_eq!(arrivals_of(&arrivals).len(), 1 + STALL_PAGES);
}

// ---------------------------------------------------------------------------------------------
// 429 and Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_seconds_delays_the_retry() {
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        if n == 0 {
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "2")
                .insert_header("X-RateLimit-Limit", "100")
                .set_body_json(json!({"error": "Rate limit exceeded"}))
        } else {
            ok(json!({"data": [{"id": "wf-1"}]}))
        }
    });
    mount_get(&server, "/platform/v1/workflows", responder).await;
    let client = client(&server);

    let started = Instant::now();
    let workflows = bounded(client.list_workflows()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(workflows[0].id, "wf-1");
    let arrivals = arrivals_of(&arrivals);
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(4), "retried after {gap:?}");
    assert!(took >= Duration::from_secs(2), "call took {took:?}");
    assert_eq!(
        client.stats().requests(),
        counts(&[
            (endpoint::WORKFLOWS, "200", 1),
            (endpoint::WORKFLOWS, "429", 1)
        ])
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_delays_the_retry() {
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        if n == 0 {
            // Whole seconds only: `now + 3 s` truncated is at least 2 s after this arrival.
            let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
            ResponseTemplate::new(429).insert_header("Retry-After", date.as_str())
        } else {
            ok(json!({"data": exec_row("e1")}))
        }
    });
    mount_get(&server, "/platform/v1/workflow_executions/e1", responder).await;
    let client = client(&server);

    assert_eq!(bounded(client.get_execution("e1")).await.unwrap().id, "e1");
    let arrivals = arrivals_of(&arrivals);
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    // 50 ms of slack for the wall clock (the date) against the monotonic clock (arrivals).
    assert!(gap >= Duration::from_millis(1950), "retried after {gap:?}");
    assert!(gap <= Duration::from_millis(3500), "retried after {gap:?}");
}

#[tokio::test]
async fn a_429_pause_holds_a_concurrent_call_of_the_same_key() {
    let server = MockServer::start().await;
    let (first, first_arrivals) = script(|n| {
        if n == 0 {
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "2")
                .set_body_json(json!({"error": "Rate limit exceeded"}))
        } else {
            ok(json!({"data": [{"id": "wf-1"}]}))
        }
    });
    let (second, second_arrivals) = script(|_| ok(json!({"data": exec_row("e9")})));
    mount_get(&server, "/platform/v1/workflows", first).await;
    mount_get(&server, "/platform/v1/workflow_executions/e9", second).await;
    let client = client(&server);

    let a = tokio::spawn({
        let client = client.clone();
        async move { client.list_workflows().await }
    });
    wait_for_arrivals(&first_arrivals, 1).await;
    // Let the client read the 429 (answered at once) before the second call starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = tokio::spawn({
        let client = client.clone();
        async move { client.get_execution("e9").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        arrivals_of(&second_arrivals).is_empty(),
        "the second call was sent during the pause"
    );
    assert!(!b.is_finished());

    let workflows = bounded(a).await.unwrap().unwrap();
    assert_eq!(workflows[0].id, "wf-1");
    assert_eq!(bounded(b).await.unwrap().unwrap().id, "e9");
    let t0 = arrivals_of(&first_arrivals)[0];
    let retried = arrivals_of(&first_arrivals)[1] - t0;
    let other = arrivals_of(&second_arrivals)[0] - t0;
    assert!(
        retried >= Duration::from_secs(2),
        "retried after {retried:?}"
    );
    assert!(
        other >= Duration::from_secs(2),
        "second call sent after {other:?}"
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_fails_at_once_and_still_pauses_the_key() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ResponseTemplate::new(429).insert_header("Retry-After", "60"),
    )
    .await;
    // max_retry_after is 30 s in `fast_retry`.
    let client = client(&server);
    let started = Instant::now();
    let err = bounded(client.list_workflows()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(err, ApiError::RateLimited { endpoint: e } if e == endpoint::WORKFLOWS),
        "{err:?}"
    );
    assert_eq!(received(&server).await.len(), 1);
    let paused = client.stats().paused_for().expect("the key is paused");
    assert!(
        paused > Duration::from_secs(55) && paused <= Duration::from_secs(60),
        "{paused:?}"
    );

    let next = tokio::spawn({
        let client = client.clone();
        async move { client.list_workflows().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&server).await.len(), 1, "sent during the pause");
    assert!(!next.is_finished());
    next.abort();
}

#[tokio::test]
async fn an_absurd_retry_after_fails_the_request_and_pauses_at_most_max_pause() {
    for value in [
        "18446744073709551615".to_owned(),
        "99999999999999999999999999".to_owned(),
        "Fri, 31 Dec 9999 23:59:59 GMT".to_owned(),
        httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(400 * 24 * 3600)),
    ] {
        let server = MockServer::start().await;
        mount_get(
            &server,
            "/platform/v1/workflows",
            ResponseTemplate::new(429)
                .insert_header("Retry-After", value.as_str())
                .insert_header("X-RateLimit-Remaining", "0"),
        )
        .await;
        let client = client(&server);
        let started = Instant::now();
        let err = bounded(client.list_workflows()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{value}");
        assert!(
            matches!(err, ApiError::RateLimited { endpoint: e } if e == endpoint::WORKFLOWS),
            "{value}: {err:?}"
        );
        assert_eq!(err.kind(), "rate_limited");
        assert_eq!(received(&server).await.len(), 1, "{value}: retried");
        let paused = client.stats().paused_for().expect("the key is paused");
        assert!(paused <= MAX_PAUSE, "{value}: paused for {paused:?}");
        assert!(
            paused > MAX_PAUSE - Duration::from_secs(5),
            "{value}: paused for {paused:?}"
        );
        assert_eq!(client.stats().rate_limit_remaining(), Some(0));
    }
}

#[tokio::test]
async fn on_a_429_retry_after_decides_not_zero_remaining() {
    let server = MockServer::start().await;
    // Kapso's 429 carries both; the window rule alone would hold the retry for ~60 s.
    let (responder, arrivals) = script(|n| {
        if n == 0 {
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .insert_header("X-RateLimit-Limit", "100")
                .insert_header("X-RateLimit-Remaining", "0")
                .set_body_json(json!({"error": "Rate limit exceeded"}))
        } else {
            ok(json!({"data": [{"id": "wf-1"}]})).insert_header("X-RateLimit-Remaining", "99")
        }
    });
    mount_get(&server, "/platform/v1/workflows", responder).await;
    let client = client(&server);
    let stats = client.stats();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.list_workflows().await }
    });
    wait_for_arrivals(&arrivals, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused = stats.paused_for().expect("paused by the 429");
    assert!(paused <= Duration::from_secs(1), "paused for {paused:?}");
    // The gauge still shows what the 429 said.
    assert_eq!(stats.rate_limit_remaining(), Some(0));

    let workflows = bounded(call).await.unwrap().unwrap();
    assert_eq!(workflows[0].id, "wf-1");
    let arrivals = arrivals_of(&arrivals);
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    assert_eq!(stats.rate_limit_remaining(), Some(99));
    assert_eq!(stats.paused_for(), None);
}

#[tokio::test]
async fn zero_remaining_on_a_success_still_holds_the_key() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ok(json!({"data": []})).insert_header("X-RateLimit-Remaining", "0"),
    )
    .await;
    let client = client(&server);
    assert_eq!(client.stats().paused_for(), None);
    bounded(client.list_workflows()).await.unwrap();
    let paused = client.stats().paused_for().expect("paused by Remaining: 0");
    assert!(
        paused > Duration::from_secs(55) && paused <= Duration::from_secs(60),
        "{paused:?}"
    );
    let next = tokio::spawn({
        let client = client.clone();
        async move { client.list_workflows().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&server).await.len(), 1, "sent during the pause");
    next.abort();
}

// ---------------------------------------------------------------------------------------------
// Server errors, client errors, decoding, timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        if n < 2 {
            ResponseTemplate::new(500).set_body_string("<html>oops</html>")
        } else {
            ok(page(&[exec_row("e1")], None))
        }
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    let client = client(&server);
    let rows = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["e1"]);
    assert_eq!(arrivals_of(&arrivals).len(), 3);
}

#[tokio::test]
async fn a_persistent_503_gives_up_after_the_configured_attempts() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ResponseTemplate::new(503).set_body_json(json!({"error": "Service Unavailable"})),
    )
    .await;
    let client = client_with(
        base_url(&server),
        1000,
        Duration::from_secs(5),
        fast_retry(4),
    );
    let err = bounded(client.list_workflows()).await.unwrap_err();
    match &err {
        ApiError::Server {
            endpoint: e,
            status: 503,
            message,
        } => {
            assert_eq!(*e, endpoint::WORKFLOWS);
            assert_eq!(message, "Service Unavailable");
        }
        other => panic!("expected Server 503, got {other:?}"),
    }
    assert_eq!(err.kind(), "server_error");
    assert_eq!(received(&server).await.len(), 4);
}

#[tokio::test]
async fn unauthorized_is_reported_at_once_without_the_key() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid or missing API key"})),
    )
    .await;
    // A server that echoes the rejected key back must not leak it into logs either.
    mount_get(
        &server,
        "/platform/v1/workflow_executions/e1",
        ResponseTemplate::new(401).set_body_json(json!({
            "error": format!("Invalid API key {KEY}")
        })),
    )
    .await;
    let client = client(&server);

    let err = bounded(client.list_workflows()).await.unwrap_err();
    match &err {
        ApiError::Unauthorized {
            endpoint: e,
            status: 401,
            message,
        } => {
            assert_eq!(*e, endpoint::WORKFLOWS);
            assert!(message.contains("Invalid or missing API key"), "{message}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(received(&server).await.len(), 1, "a 401 was retried");
    assert!(err.is_key_wide(), "a rejected key concerns every request");
    assert!(format!("{err}").contains("Invalid or missing API key"));

    let echoed = bounded(client.get_execution("e1")).await.unwrap_err();
    assert!(
        matches!(echoed, ApiError::Unauthorized { .. }),
        "{echoed:?}"
    );
    assert!(format!("{echoed}").contains("Invalid API key"));
    assert_eq!(received(&server).await.len(), 2);

    for text in [
        format!("{err}"),
        format!("{err:?}"),
        format!("{echoed}"),
        format!("{echoed:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains(KEY), "the key leaked: {text}");
        assert!(!text.contains("SECRET"), "part of the key leaked: {text}");
    }
}

#[tokio::test]
async fn not_found_is_a_client_error_with_the_body_message() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/gone/flow_executions",
        ResponseTemplate::new(404).set_body_json(json!({"error": "Conversation not found"})),
    )
    .await;
    let client = client(&server);
    let err = bounded(client.list_conversation_executions("gone", PAGES))
        .await
        .unwrap_err();
    match &err {
        ApiError::Client {
            endpoint: e,
            status: 404,
            message,
        } => {
            assert_eq!(*e, endpoint::CONVERSATION_EXECUTIONS);
            assert_eq!(message, "Conversation not found");
        }
        other => panic!("expected Client 404, got {other:?}"),
    }
    assert!(!err.is_key_wide(), "a 404 concerns only that conversation");
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn truncated_json_is_a_decode_error_and_not_retried() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows/wf-1/executions",
        ResponseTemplate::new(200)
            .set_body_raw(r#"{"data":[{"id":"e1","status":"runn"#, "application/json"),
    )
    .await;
    let client = client(&server);
    let err = bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Decode { endpoint: e, .. } if e == endpoint::WORKFLOW_EXECUTIONS),
        "{err:?}"
    );
    assert_eq!(err.kind(), "decode");
    assert!(
        !err.is_key_wide(),
        "an undecodable list concerns only that workflow"
    );
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn well_formed_json_of_the_wrong_shape_is_a_decode_error() {
    let server = MockServer::start().await;
    // An object where the list belongs.
    mount_get(
        &server,
        "/platform/v1/workflows",
        ok(json!({"data": {"id": "wf-1"}})),
    )
    .await;
    // A bare array without the `data` envelope.
    mount_get(
        &server,
        "/platform/v1/workflows/wf-1/executions",
        ok(json!([exec_row("e1")])),
    )
    .await;
    // A row without its id.
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations",
        ok(json!({"data": [{"last_active_at": "2026-05-15T12:00:00Z"}]})),
    )
    .await;
    // The detail endpoint answering with a list.
    mount_get(
        &server,
        "/platform/v1/workflow_executions/e1",
        ok(json!({"data": [exec_row("e1")]})),
    )
    .await;
    let client = client(&server);

    let errors = [
        bounded(client.list_workflows()).await.unwrap_err(),
        bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
            .await
            .unwrap_err(),
        bounded(client.list_conversations(datetime!(2026-05-15 11:00 UTC)))
            .await
            .unwrap_err(),
        bounded(client.get_execution("e1")).await.unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    }
    assert_eq!(
        received(&server).await.len(),
        4,
        "a decode error was retried"
    );
}

#[tokio::test]
async fn a_slow_response_times_out_is_retried_and_finally_reported() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ok(json!({"data": []})).set_delay(Duration::from_secs(3)),
    )
    .await;
    let client = client_with(
        base_url(&server),
        1000,
        Duration::from_millis(200),
        fast_retry(3),
    );
    let started = Instant::now();
    let err = bounded(client.list_workflows()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, ApiError::Timeout { endpoint: e } if e == endpoint::WORKFLOWS),
        "{err:?}"
    );
    assert_eq!(err.kind(), "timeout");
    assert_eq!(received(&server).await.len(), 3);
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        client.stats().requests(),
        counts(&[(endpoint::WORKFLOWS, "error", 3)])
    );
}

#[tokio::test]
async fn a_timeout_followed_by_a_quick_answer_succeeds() {
    let server = MockServer::start().await;
    let (responder, arrivals) = script(|n| {
        let body = ok(json!({"data": exec_row("e1")}));
        if n == 0 {
            body.set_delay(Duration::from_secs(3))
        } else {
            body
        }
    });
    mount_get(&server, "/platform/v1/workflow_executions/e1", responder).await;
    let client = client_with(
        base_url(&server),
        1000,
        Duration::from_millis(200),
        fast_retry(3),
    );
    assert_eq!(bounded(client.get_execution("e1")).await.unwrap().id, "e1");
    assert_eq!(arrivals_of(&arrivals).len(), 2);
    assert_eq!(
        client.stats().requests(),
        counts(&[
            (endpoint::EXECUTION, "200", 1),
            (endpoint::EXECUTION, "error", 1)
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stats_count_requests_by_endpoint_and_code_and_keep_the_remaining_budget() {
    let server = MockServer::start().await;
    let (responder, _) = script(|n| match n {
        0 => ResponseTemplate::new(429).insert_header("Retry-After", "0"),
        1 => ResponseTemplate::new(500),
        _ => ok(page(&[exec_row("e1")], None)).insert_header("X-RateLimit-Remaining", "42"),
    });
    mount_get(&server, "/platform/v1/workflows/wf-1/executions", responder).await;
    mount_get(
        &server,
        "/platform/v1/workflow_executions/gone",
        ResponseTemplate::new(404)
            .insert_header("X-RateLimit-Remaining", "41")
            .set_body_json(json!({"error": "Not found"})),
    )
    .await;
    mount_get(&server, "/platform/v1/workflows", ok(json!({"data": []}))).await;
    let client = client(&server);
    let stats = client.stats();
    assert_eq!(stats.rate_limit_remaining(), None);
    assert!(stats.requests().is_empty());

    bounded(client.list_workflow_executions("wf-1", ExecutionFilter::default(), PAGES))
        .await
        .unwrap();
    assert_eq!(stats.rate_limit_remaining(), Some(42));
    assert_eq!(
        stats.requests(),
        counts(&[
            (endpoint::WORKFLOW_EXECUTIONS, "200", 1),
            (endpoint::WORKFLOW_EXECUTIONS, "429", 1),
            (endpoint::WORKFLOW_EXECUTIONS, "500", 1),
        ])
    );

    bounded(client.get_execution("gone")).await.unwrap_err();
    assert_eq!(stats.rate_limit_remaining(), Some(41));
    // A response without the header keeps the last value seen.
    bounded(client.list_workflows()).await.unwrap();
    assert_eq!(stats.rate_limit_remaining(), Some(41));
    assert_eq!(
        stats.requests(),
        counts(&[
            (endpoint::WORKFLOWS, "200", 1),
            (endpoint::WORKFLOW_EXECUTIONS, "200", 1),
            (endpoint::WORKFLOW_EXECUTIONS, "429", 1),
            (endpoint::WORKFLOW_EXECUTIONS, "500", 1),
            (endpoint::EXECUTION, "404", 1),
        ])
    );
    assert_eq!(stats.total(), 5);
    assert_eq!(received(&server).await.len(), 5);
}

#[tokio::test]
async fn transport_failures_are_counted_as_error() {
    // A port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let base = Url::parse(&format!("http://127.0.0.1:{port}/platform/v1")).unwrap();
    let client = client_with(base, 1000, Duration::from_secs(2), fast_retry(2));

    let err = bounded(client.list_conversation_executions("c-1", PAGES))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Transport { endpoint: e, .. } if e == endpoint::CONVERSATION_EXECUTIONS),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains(KEY));
    assert_eq!(
        client.stats().requests(),
        counts(&[(endpoint::CONVERSATION_EXECUTIONS, "error", 2)])
    );
}

// ---------------------------------------------------------------------------------------------
// Tolerant decoding
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rows_are_decoded_tolerantly() {
    let server = MockServer::start().await;
    mount_get(
        &server,
        "/platform/v1/whatsapp/conversations/c-1/flow_executions",
        ok(json!({
            "data": [
                {
                    // The endpoint's own example: non-UUID workflow id, step without `id`.
                    "id": "exec_1",
                    "status": "paused_by_admin",
                    "tracking_id": null,
                    "whatsapp_conversation_id": "c-1",
                    "started_at": "2025-12-05T10:00:00Z",
                    "last_event_at": "2025-12-05T10:05:00.123456Z",
                    "ended_at": null,
                    "workflow": {"id": "flow_789", "name": "Support", "status": "active"},
                    "current_step": {"identifier": "wait_response", "stepable_type": "FlowWaitStep"}
                },
                {"id": 42},
                {
                    "id": "e3",
                    "status": "handoff",
                    "whatsapp_conversation_id": null,
                    "started_at": "2025-12-05T12:00:00.5+02:00",
                    "last_event_at": "yesterday",
                    "workflow": "flow_789"
                }
            ],
            "paging": {"cursors": {"before": null, "after": null}, "next": null, "previous": null}
        })),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/workflows",
        ok(json!({"data": [
            {"id": "flow_789"},
            {
                "id": "3f0b8c1e-0000-4000-8000-000000000001",
                "name": "Onboarding",
                "slug": "onboarding",
                "status": "active",
                "execution_count": 17,
                "last_executed_at": null,
                "created_at": "2026-01-01T00:00:00.000000Z",
                "inbound_message_read_mode": "read_only"
            }
        ]})),
    )
    .await;
    mount_get(
        &server,
        "/platform/v1/workflow_executions/e4",
        ok(json!({"data": {
            "id": "e4",
            "status": "failed",
            "started_at": "2026-05-15T12:00:00Z",
            "error_details": {"message": "boom"},
            "execution_context": {"vars": {}, "system": {"trigger_type": "api_call"}},
            "events": [{"id": "ev1", "event_type": "execution_failed", "payload": {}}]
        }})),
    )
    .await;
    let client = client(&server);

    let rows = bounded(client.list_conversation_executions("c-1", PAGES))
        .await
        .unwrap();
    assert_eq!(ids(&rows), ["exec_1", "42", "e3"]);
    assert_eq!(rows[0].status, ExecutionStatus::Unknown);
    assert_eq!(rows[0].whatsapp_conversation_id.as_deref(), Some("c-1"));
    assert_eq!(rows[0].started_at, Some(datetime!(2025-12-05 10:00:00 UTC)));
    assert_eq!(
        rows[0].last_event_at,
        Some(datetime!(2025-12-05 10:05:00.123456 UTC))
    );
    let workflow = rows[0].workflow.as_ref().unwrap();
    assert_eq!(workflow.id.as_deref(), Some("flow_789"));
    assert_eq!(workflow.name.as_deref(), Some("Support"));

    assert_eq!(rows[1].status, ExecutionStatus::Unknown);
    assert_eq!(rows[1].started_at, None);
    assert_eq!(rows[1].last_event_at, None);
    assert_eq!(rows[1].workflow, None);
    assert_eq!(rows[1].whatsapp_conversation_id, None);

    assert_eq!(rows[2].status, ExecutionStatus::Handoff);
    assert_eq!(
        rows[2].started_at,
        Some(datetime!(2025-12-05 10:00:00.5 UTC))
    );
    assert_eq!(rows[2].last_event_at, None);
    assert_eq!(rows[2].workflow, None);

    let workflows = bounded(client.list_workflows()).await.unwrap();
    assert_eq!(workflows.len(), 2);
    assert_eq!(workflows[0].id, "flow_789");
    assert_eq!(workflows[0].name, None);
    assert_eq!(workflows[0].execution_count, None);
    assert_eq!(workflows[1].execution_count, Some(17));
    assert_eq!(workflows[1].status.as_deref(), Some("active"));
    assert_eq!(workflows[1].last_executed_at, None);
    assert_eq!(
        workflows[1].created_at,
        Some(datetime!(2026-01-01 00:00 UTC))
    );

    let detail = bounded(client.get_execution("e4")).await.unwrap();
    assert_eq!(detail.status, ExecutionStatus::Failed);
    assert_eq!(detail.started_at, Some(datetime!(2026-05-15 12:00 UTC)));
}

// ---------------------------------------------------------------------------------------------
// Client-side rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_limiter_holds_the_request_beyond_the_per_minute_budget() {
    let server = MockServer::start().await;
    mount_get(&server, "/platform/v1/workflows", ok(json!({"data": []}))).await;
    mount_get(
        &server,
        "/platform/v1/workflow_executions/e1",
        ok(json!({"data": exec_row("e1")})),
    )
    .await;
    let client = client_with(base_url(&server), 3, Duration::from_secs(5), fast_retry(3));
    let started = Instant::now();
    bounded(client.list_workflows()).await.unwrap();
    bounded(client.get_execution("e1")).await.unwrap();
    bounded(client.list_workflows()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the budget of 3 was not free"
    );
    assert_eq!(received(&server).await.len(), 3);

    let fourth = tokio::spawn({
        let client = client.clone();
        async move { client.get_execution("e1").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&server).await.len(), 3, "a 4th request went out");
    assert!(!fourth.is_finished());
    fourth.abort();
    assert!(fourth.await.unwrap_err().is_cancelled());
}
