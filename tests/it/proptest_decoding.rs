//! Property tests of everything the exporter parses from outside: API bodies, paging cursors and
//! the configuration file. None may panic; valid input must decode to what it says; invalid
//! input must give an error (one line, for the configuration).
//!
//! Each property runs proptest's default number of cases (256, a few seconds in all);
//! `PROPTEST_CASES=10000 cargo test --test it proptest_decoding::` runs a longer search.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::TempDir;
use axum::extract::{Query, State};
use axum::routing::get;
use kapso_exporter::config::{Cli, Config};
use kapso_exporter::kapso::client::STALL_PAGES;
use kapso_exporter::kapso::models::{
    Conversation, ItemResponse, ListResponse, Workflow, error_message, format_timestamp,
    parse_timestamp,
};
use kapso_exporter::kapso::{ApiError, ApiKey, Client, Execution, ExecutionStatus, RetryPolicy};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Proptest's defaults (which read `PROPTEST_CASES`), with shrinking bounded in time.
fn settings() -> ProptestConfig {
    ProptestConfig {
        max_shrink_time: 10_000,
        ..ProptestConfig::default()
    }
}

// ----- API bodies ------------------------------------------------------------------------

/// Field names the models read, and some they do not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "status",
            "name",
            "data",
            "paging",
            "next",
            "workflow",
            "started_at",
            "last_event_at",
            "whatsapp_conversation_id",
            "execution_count",
            "last_executed_at",
            "last_active_at",
            "error",
            "message",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,10}",
    ]
}

/// Scalars, biased towards values the models treat specially.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinities", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "running",
            "waiting",
            "handoff",
            "ended",
            "failed",
            "queued",
            "",
            "2026-05-15T13:05:00Z",
            "2026-05-15T13:05:00.123456Z",
            "2026-02-30T25:61:00Z",
            "550e8400-e29b-41d4-a716-446655440000",
            "18446744073709551616",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Decodes `bytes` as every response shape the client reads; only panics matter here.
fn decode_all(bytes: &[u8]) {
    let _ = serde_json::from_slice::<ListResponse<Execution>>(bytes);
    let _ = serde_json::from_slice::<ListResponse<Workflow>>(bytes);
    let _ = serde_json::from_slice::<ListResponse<Conversation>>(bytes);
    let _ = serde_json::from_slice::<ItemResponse<Execution>>(bytes);
    let _ = error_message(bytes);
}

/// A valid execution row as the API writes it, and what it must decode to.
#[derive(Clone, Debug)]
struct Row {
    id: String,
    status: ExecutionStatus,
    conversation: Option<String>,
    started_at: OffsetDateTime,
    last_event_at: Option<OffsetDateTime>,
    workflow: (String, String),
}

fn timestamp() -> impl Strategy<Value = OffsetDateTime> {
    // 2000-01-01 .. 2100-01-01, microsecond precision like the API.
    (946_684_800_000_000i64..4_102_444_800_000_000)
        .prop_map(|us| OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap())
}

fn row() -> impl Strategy<Value = Row> {
    (
        "[0-9a-f-]{1,36}|[a-z]{1,8}_[0-9]{1,6}",
        prop::sample::select(vec![
            ExecutionStatus::Running,
            ExecutionStatus::Waiting,
            ExecutionStatus::Handoff,
            ExecutionStatus::Ended,
            ExecutionStatus::Failed,
        ]),
        prop::option::of("[0-9a-f]{8}"),
        timestamp(),
        prop::option::of(timestamp()),
        ("[a-z0-9_]{1,12}", "\\PC{0,20}"),
    )
        .prop_map(
            |(id, status, conversation, started_at, last_event_at, workflow)| Row {
                id,
                status,
                conversation,
                started_at,
                last_event_at,
                workflow,
            },
        )
}

fn row_json(r: &Row) -> Value {
    json!({
        "id": r.id,
        "status": r.status.as_str(),
        "tracking_id": null,
        "whatsapp_conversation_id": r.conversation,
        "started_at": format_timestamp(r.started_at),
        "last_event_at": r.last_event_at.map(format_timestamp),
        "ended_at": null,
        "workflow": { "id": r.workflow.0, "name": r.workflow.1, "status": "active" },
        "current_step": { "identifier": "wait", "stepable_type": "FlowWaitStep" },
    })
}

proptest! {
    #![proptest_config(settings())]

    /// Any JSON document, and any prefix of it, decodes to a value or an error, never a panic.
    #[test]
    fn arbitrary_json_never_panics(value in json(), cut in any::<prop::sample::Index>()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        decode_all(&bytes);
        decode_all(&bytes[..cut.index(bytes.len() + 1)]);
        let wrapped = serde_json::to_vec(&json!({ "data": [value.clone()], "paging": value })).unwrap();
        decode_all(&wrapped);
    }

    /// Arbitrary bytes (not JSON at all) never panic either.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    /// Valid rows round-trip: every field the exporter reads comes back as written.
    #[test]
    fn valid_rows_round_trip(rows in prop::collection::vec(row(), 0..20), next in prop::option::of("\\PC{1,40}")) {
        let body = json!({
            "data": rows.iter().map(row_json).collect::<Vec<_>>(),
            "paging": { "cursors": {}, "next": next, "previous": null },
        });
        let page: ListResponse<Execution> = serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
        prop_assert_eq!(page.data.len(), rows.len());
        for (got, want) in page.data.iter().zip(&rows) {
            prop_assert_eq!(&got.id, &want.id);
            prop_assert_eq!(got.status, want.status);
            prop_assert_eq!(&got.whatsapp_conversation_id, &want.conversation);
            prop_assert_eq!(got.started_at, Some(want.started_at));
            prop_assert_eq!(got.last_event_at, want.last_event_at);
            let wf = got.workflow.clone().unwrap();
            prop_assert_eq!(wf.id.as_deref(), Some(want.workflow.0.as_str()));
            prop_assert_eq!(wf.name.as_deref(), Some(want.workflow.1.as_str()));
        }
        prop_assert_eq!(page.paging.and_then(|p| p.next), next);
    }

    /// Schema drift on a valid row: any field replaced by anything, or removed, and fields
    /// added. While `id` is a non-empty string or a number the row decodes, with that id; a
    /// string `status` maps to its status (or `Unknown`), anything else to `Unknown`.
    #[test]
    fn mutated_rows_decode_while_they_keep_an_id(
        r in row(),
        changes in prop::collection::btree_map(key(), prop::option::of(json()), 0..6),
    ) {
        let mut v = row_json(&r);
        let obj = v.as_object_mut().unwrap();
        for (k, change) in &changes {
            match change {
                Some(new) => { obj.insert(k.clone(), new.clone()); }
                None => { obj.remove(k); }
            }
        }
        let id = obj.get("id").cloned();
        let status = obj.get("status").cloned();
        let decoded = serde_json::from_value::<Execution>(v.clone());
        match id {
            Some(Value::String(s)) if !s.is_empty() => {
                let row = decoded.map_err(|e| TestCaseError::fail(format!("{e} in {v}")))?;
                prop_assert_eq!(row.id, s);
                let want = match &status {
                    Some(Value::String(s)) => ExecutionStatus::parse(s),
                    _ => ExecutionStatus::Unknown,
                };
                prop_assert_eq!(row.status, want);
            }
            Some(Value::Number(n)) => {
                let row = decoded.map_err(|e| TestCaseError::fail(format!("{e} in {v}")))?;
                prop_assert_eq!(row.id, n.to_string());
            }
            // Without a usable (non-empty) id the row cannot be tracked: an error, not a guess.
            _ => prop_assert!(decoded.is_err(), "decoded a row without an id: {v}"),
        }
    }

    /// Timestamps: whatever the string, parsing gives a time or `None`; formatted times parse
    /// back to themselves.
    #[test]
    fn timestamps_parse_or_not_and_round_trip(s in "\\PC{0,40}", t in timestamp()) {
        let _ = parse_timestamp(&s);
        prop_assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
    }
}

// ----- cursors and paging ----------------------------------------------------------------

/// What one scripted page says about the next one.
#[derive(Clone, Debug)]
enum Next {
    /// No `paging` object.
    NoPaging,
    /// `paging` without `next`.
    Missing,
    Null,
    Empty,
    /// One of [`CURSORS`], so cursors repeat often.
    Cursor(usize),
}

/// Cursors, some with characters that must be percent-encoded in the query.
const CURSORS: [&str; 6] = [
    "eyJ2YWx1ZXMiOlsiMjAyNiJdfQ==",
    "a b&c=d/e?f#g",
    "+/=",
    "ünïcødé",
    "%2F%zz",
    "next",
];

fn next() -> impl Strategy<Value = Next> {
    prop_oneof![
        1 => Just(Next::NoPaging),
        1 => Just(Next::Missing),
        1 => Just(Next::Null),
        1 => Just(Next::Empty),
        8 => (0..CURSORS.len()).prop_map(Next::Cursor),
    ]
}

#[derive(Default)]
struct Script {
    pages: Vec<(usize, Next)>,
    /// The `after` of each request received.
    afters: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Script>>;

async fn scripted_page(
    State(script): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::Json<Value> {
    let mut s = script.lock().unwrap();
    let i = s.afters.len();
    s.afters.push(q.get("after").cloned());
    let (rows, next) = s.pages.get(i).cloned().unwrap_or((0, Next::Null));
    let data: Vec<Value> = (0..rows)
        .map(|j| json!({ "id": format!("r{i}-{j}") }))
        .collect();
    let body = match next {
        Next::NoPaging => json!({ "data": data }),
        Next::Missing => json!({ "data": data, "paging": {} }),
        Next::Null => json!({ "data": data, "paging": { "next": null } }),
        Next::Empty => json!({ "data": data, "paging": { "next": "" } }),
        Next::Cursor(c) => json!({ "data": data, "paging": { "next": CURSORS[c] } }),
    };
    axum::Json(body)
}

/// What a correct client does with `pages`: the rows it returns (or a paging error: a cursor
/// loop, or `STALL_PAGES` empty pages in a row under a cursor), and the `after` it sends with
/// each request.
fn expected(pages: &[(usize, Next)]) -> (Result<Vec<String>, ()>, Vec<Option<String>>) {
    let mut rows = Vec::new();
    let mut afters = vec![None];
    let mut seen = std::collections::HashSet::new();
    let mut empty = 0;
    for i in 0.. {
        let (n, next) = pages.get(i).cloned().unwrap_or((0, Next::Null));
        rows.extend((0..n).map(|j| format!("r{i}-{j}")));
        // Row ids differ from page to page, so only an empty page makes no progress.
        empty = if n == 0 { empty + 1 } else { 0 };
        match next {
            Next::Cursor(c) => {
                if !seen.insert(c) || empty >= STALL_PAGES {
                    return (Err(()), afters);
                }
                afters.push(Some(CURSORS[c].to_owned()));
            }
            _ => return (Ok(rows), afters),
        }
    }
    unreachable!()
}

/// Any sequence of paging answers ends: with every row served, or with a paging error at the
/// first repeated cursor or run of empty pages; each cursor is sent back exactly as received.
#[test]
fn paging_always_ends_and_sends_cursors_back_verbatim() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let script: Shared = Arc::default();
    let app = axum::Router::new()
        .route(
            "/platform/v1/whatsapp/conversations/{id}/flow_executions",
            get(scripted_page),
        )
        .with_state(script.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = rt.spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(
        url::Url::parse(&format!("http://{addr}/platform/v1")).unwrap(),
        ApiKey::new("k"),
        1_000_000,
        Duration::from_secs(5),
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        },
    )
    .unwrap();
    let strategy = prop::collection::vec((0usize..4, next()), 0..12);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: settings().cases / 4,
        ..settings()
    });
    let result = runner.run(&strategy, |pages| {
        *script.lock().unwrap() = Script {
            pages: pages.clone(),
            afters: Vec::new(),
        };
        let got = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                client.list_conversation_executions("c1", 1000),
            )
            .await
        });
        let got = got.map_err(|_| TestCaseError::fail("paging did not end"))?;
        let (want, want_afters) = expected(&pages);
        match (got, want) {
            (Ok(rows), Ok(want)) => {
                let ids: Vec<String> = rows.into_iter().map(|r| r.id).collect();
                prop_assert_eq!(ids, want);
            }
            (Err(ApiError::CursorLoop { .. } | ApiError::NoProgress { .. }), Err(())) => {}
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "got {got:?}, want {want:?} for {pages:?}"
                )));
            }
        }
        prop_assert_eq!(&script.lock().unwrap().afters, &want_afters);
        Ok(())
    });
    server.abort();
    result.unwrap();
}

// ----- the configuration file ------------------------------------------------------------

const SECRET: &str = "sk-proptest-5ecret-c0nfig";

/// Loads `text` as the configuration file, with the key in the environment.
fn load(text: &str) -> Result<Config, String> {
    let dir = TempDir::new("kapso-proptest");
    let path = dir.0.join("config.yml");
    std::fs::write(&path, text).unwrap();
    let cli = Cli {
        config_file: Some(path),
        ..Cli::default()
    };
    let env = |name: &str| (name == "KAPSO_API_KEY").then(|| SECRET.to_owned());
    Config::load(&cli, &env).map_err(|e| e.to_string())
}

/// Values for configuration keys: plausible, implausible and wrongly typed. Addresses never
/// name a host, so no test waits for DNS.
fn config_value() -> impl Strategy<Value = serde_norway::Value> {
    use serde_norway::Value as Y;
    let scalar = prop_oneof![
        prop::sample::select(vec![
            "1m",
            "15s",
            "0s",
            "-5s",
            "1h",
            "10ms",
            "abc",
            "",
            ":9853",
            "127.0.0.1:0",
            "[::1]:0",
            ":99999",
            "debug",
            "trace",
            "json",
            "logfmt",
            "/metrics",
            "/",
            "/-/x",
            "https://api.kapso.ai/platform/v1",
            "ftp://x",
            "not a url",
            "KAPSO_API_KEY",
            "/nonexistent/key",
            "p1",
        ])
        .prop_map(|s| Y::String(s.to_owned())),
        any::<i64>().prop_map(|n| Y::Number(n.into())),
        any::<bool>().prop_map(Y::Bool),
        Just(Y::Null),
        "[a-z0-9:./ -]{0,12}".prop_map(Y::String),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop::collection::vec(inner, 0..3).prop_map(Y::Sequence)
    })
}

fn section(keys: &'static [&'static str]) -> impl Strategy<Value = serde_norway::Value> {
    prop::collection::btree_map(
        prop_oneof![
            8 => prop::sample::select(keys).prop_map(str::to_owned),
            1 => "[a-z_]{1,8}",
        ],
        config_value(),
        0..4,
    )
    .prop_map(|m| {
        serde_norway::Value::Mapping(
            m.into_iter()
                .map(|(k, v)| (serde_norway::Value::String(k), v))
                .collect(),
        )
    })
}

const PROJECT_KEYS: &[&str] = &[
    "name",
    "base_url",
    "api_key_env",
    "api_key_file",
    "rate_limit",
    "timeout",
    "poll_interval",
    "conversation_ids",
    "discover_conversations",
];

/// A configuration file shaped like the real one, with arbitrary values.
fn config_file() -> impl Strategy<Value = String> {
    (
        section(&["listen_address", "telemetry_path"]),
        section(&["level", "format"]),
        section(&["interval"]),
        section(&[
            "max_conversations",
            "max_steps_per_workflow",
            "stall_thresholds",
        ]),
        section(PROJECT_KEYS),
        prop::collection::vec(section(PROJECT_KEYS), 0..3),
        prop::sample::subsequence(
            vec!["web", "log", "poll", "metrics", "kapso", "projects"],
            0..=6,
        ),
    )
        .prop_map(|(web, log, poll, metrics, kapso, projects, present)| {
            let mut doc = serde_norway::Mapping::new();
            let all = [
                ("web", web),
                ("log", log),
                ("poll", poll),
                ("metrics", metrics),
                ("kapso", kapso),
                ("projects", serde_norway::Value::Sequence(projects)),
            ];
            for (k, v) in all {
                if present.contains(&k) {
                    doc.insert(serde_norway::Value::String(k.to_owned()), v);
                }
            }
            serde_norway::to_string(&doc).unwrap()
        })
}

fn check_config_result(result: Result<Config, String>) -> Result<(), TestCaseError> {
    match result {
        Ok(config) => {
            let debug = format!("{config:?}");
            prop_assert!(!debug.contains(SECRET), "the key in Debug: {debug}");
        }
        Err(e) => {
            prop_assert!(!e.is_empty());
            prop_assert!(!e.contains('\n'), "a multi-line error: {e:?}");
            prop_assert!(!e.contains(SECRET), "the key in an error: {e}");
            // Said in the file's terms, never the program's types.
            let rust_type = e.contains("struct ")
                || e.match_indices("File")
                    .any(|(i, _)| e[i + 4..].starts_with(|c: char| c.is_ascii_uppercase()))
                || ["u32", "usize", "u64", "i64", "Option<", "Vec<", "PathBuf"]
                    .iter()
                    .any(|t| e.contains(t));
            prop_assert!(!rust_type, "a Rust type name in an error: {e}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(settings())]

    /// Structured files with arbitrary values: a config or a one-line error, never a panic,
    /// and the key in neither.
    #[test]
    fn config_files_load_or_fail_in_one_line(text in config_file()) {
        check_config_result(load(&text))?;
    }

    /// Arbitrary text, and a valid file with bytes cut out of it, the same.
    #[test]
    fn arbitrary_config_text_loads_or_fails_in_one_line(
        text in "\\PC{0,200}",
        cut in any::<prop::sample::Index>(),
        len in 0usize..20,
    ) {
        check_config_result(load(&text))?;
        let valid = "web:\n  listen_address: \"127.0.0.1:0\"\npoll:\n  interval: 30s\nkapso:\n  rate_limit: 50\n  timeout: 5s\nprojects:\n  - name: a\n    api_key_env: KAPSO_API_KEY\n";
        let start = cut.index(valid.len());
        let end = (start + len).min(valid.len());
        if valid.is_char_boundary(start) && valid.is_char_boundary(end) {
            let mutated = format!("{}{}", &valid[..start], &valid[end..]);
            check_config_result(load(&mutated))?;
        }
    }
}
