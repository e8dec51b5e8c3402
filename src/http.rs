//! The HTTP server. Endpoints:
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` (`--web.telemetry-path`) | the metrics, classic text or OpenMetrics by `Accept`, gzip by `Accept-Encoding` |
//! | `/` | landing page: name, version, links, each project's state |
//! | `/-/healthy` | 200 while every supervised task runs; 503 naming the ones that panicked or ended (see [`crate::supervisor`]) |
//! | `/-/ready` | 200 once every project completed its first poll and no supervised task failed, else 503 |
//!
//! Only GET and HEAD are answered (405 otherwise). A scrape never calls Kapso.
//! With `--web.config.file`, [`auth`] puts the rate limit, response headers and basic
//! authentication in front of every endpoint (as exporter-toolkit does, `/-/healthy` included);
//! [`server`] serves the router, plain or TLS, with limits against hostile clients.

pub mod auth;
mod gzip;
pub mod landing;
pub mod server;
pub mod tls;

pub use server::WebLimits;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use prometheus_client::registry::Registry;

use crate::config::VERSION;
use crate::http::landing::{Card, Landing, Page};
use crate::metrics;
use crate::state::{self, SharedProject};
use crate::supervisor::Tasks;
use crate::webhook::Receiver;

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    projects: Arc<Vec<SharedProject>>,
    tasks: Tasks,
    telemetry_path: Arc<str>,
    /// The webhook receiver, for the recent failures it was told of.
    webhooks: Option<Receiver>,
    landing: Arc<Landing>,
}

/// The router of every endpoint; `tasks` are the supervised tasks the health endpoints report,
/// `webhooks` the receiver whose recent failures the landing page lists, `landing` what else
/// the landing page shows.
pub fn router(
    registry: Registry,
    projects: Vec<SharedProject>,
    tasks: Tasks,
    telemetry_path: &str,
    webhooks: Option<Receiver>,
    landing: Landing,
) -> Router {
    let state = AppState {
        registry: Arc::new(registry),
        projects: Arc::new(projects),
        tasks,
        telemetry_path: Arc::from(telemetry_path),
        webhooks,
        landing: Arc::new(landing),
    };
    Router::new()
        .route(telemetry_path, get(metrics_handler))
        .route("/", get(landing_page))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .with_state(state)
}

/// Bytes of exposition per chunk of a `/metrics` answer (and per gzip segment).
const CHUNK: usize = 256 * 1024;
/// Chunks rendered ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// A chunk of the answer on its way to the client.
enum Piece {
    Plain(Bytes),
    /// A gzip segment, compressed on a gzip thread while rendering goes on.
    Gzip(tokio::sync::oneshot::Receiver<std::io::Result<gzip::Segment>>),
}

/// A piece, and whether it is the last.
type Sent = Result<(Piece, bool), std::io::Error>;

/// Sends the exposition on in chunks as it is rendered, so a scrape holds a few chunks instead
/// of the whole text.
struct ChunkWriter {
    buf: String,
    tx: tokio::sync::mpsc::Sender<Sent>,
    /// With gzip: chunks come back emptied once compressed, and are filled again, so a scrape
    /// allocates as many chunks as it has in flight rather than one per 256 KiB.
    gzip: Option<(
        std::sync::mpsc::Sender<String>,
        std::sync::mpsc::Receiver<String>,
    )>,
}

impl ChunkWriter {
    fn send(&mut self, last: bool) -> std::fmt::Result {
        let next = match &self.gzip {
            _ if last => String::new(),
            Some((_, spare)) => spare
                .try_recv()
                .unwrap_or_else(|_| String::with_capacity(CHUNK + 4096)),
            None => String::with_capacity(CHUNK + 4096),
        };
        let chunk = std::mem::replace(&mut self.buf, next);
        let piece = match &self.gzip {
            Some((recycle, _)) => Piece::Gzip(gzip::spawn(chunk, last, recycle.clone())),
            None => Piece::Plain(Bytes::from(chunk)),
        };
        // The receiver is gone when the client went away: stop rendering.
        self.tx
            .blocking_send(Ok((piece, last)))
            .map_err(|_| std::fmt::Error)
    }
}

impl std::fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK {
            self.send(false)?;
        }
        Ok(())
    }
}

/// The answer's bytes, in order, as the render thread's pieces arrive.
struct Answer {
    rx: tokio::sync::mpsc::Receiver<Sent>,
    /// What a gzip answer's trailer needs of the segments so far.
    trailer: gzip::Trailer,
    started: bool,
    done: bool,
}

impl Answer {
    /// The next bytes for the client; `None` after the last piece. A gzip answer's first bytes
    /// carry the header, its last the trailer.
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let first = !std::mem::replace(&mut self.started, true);
        let next = match self.rx.recv().await {
            Some(sent) => sent,
            None => Err(std::io::Error::other("rendering stopped")),
        };
        let (piece, last) = match next {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        self.done = last;
        let segment = match piece {
            Piece::Plain(bytes) => return Some(Ok(bytes)),
            Piece::Gzip(segment) => segment.await,
        };
        let segment = match segment {
            Ok(Ok(segment)) => segment,
            Ok(Err(e)) => return self.fail(e),
            Err(_) => return self.fail(std::io::Error::other("no gzip thread")),
        };
        self.trailer.add(&segment);
        if !first && !last {
            return Some(Ok(segment.deflate));
        }
        let mut bytes = Vec::with_capacity(segment.deflate.len() + 18);
        if first {
            bytes.extend_from_slice(&gzip::HEADER);
        }
        bytes.extend_from_slice(&segment.deflate);
        if last {
            bytes.extend_from_slice(&self.trailer.bytes());
        }
        Some(Ok(Bytes::from(bytes)))
    }

    /// Ends the answer with an error, which aborts the body.
    fn fail(&mut self, e: std::io::Error) -> Option<std::io::Result<Bytes>> {
        self.done = true;
        Some(Err(e))
    }
}

/// Whether `Accept-Encoding` accepts gzip (a `gzip` or `*` coding whose q is not 0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            (name.eq_ignore_ascii_case("gzip") || name == "*") && q.is_some_and(|q| q > 0.0)
        })
}

async fn metrics_handler(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let openmetrics = metrics::wants_openmetrics(accept);
    let gzip = accepts_gzip(&headers);
    let registry = app.registry.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Sent>(CHUNKS_AHEAD);
    // Encoding large snapshots is CPU work; keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: String::with_capacity(CHUNK + 4096),
            tx,
            gzip: gzip.then(std::sync::mpsc::channel),
        };
        let rendered = metrics::render_into(&registry, openmetrics, &mut out);
        if rendered.and_then(|()| out.send(true)).is_err() {
            let _ = out
                .tx
                .blocking_send(Err(std::io::Error::other("encoding metrics failed")));
        }
    });
    let mut answer = Answer {
        rx,
        trailer: gzip::Trailer::default(),
        started: false,
        done: false,
    };
    // A failure before the first chunk is still a 500; a later one aborts the body.
    let body = match answer.next().await {
        Some(Ok(chunk)) if answer.done => Body::from(chunk),
        Some(Ok(chunk)) => {
            let rest = futures::stream::unfold(answer, |mut answer| async move {
                Some((answer.next().await?, answer))
            });
            Body::from_stream(futures::stream::once(async { Ok(chunk) }).chain(rest))
        }
        Some(Err(_)) | None => {
            tracing::error!("encoding metrics failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response();
        }
    };
    let content_type = if openmetrics {
        metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        metrics::TEXT_CONTENT_TYPE
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// 503 once a supervised task failed, so that an orchestrator restarts the exporter.
async fn healthy(State(app): State<AppState>) -> Response {
    match app.tasks.describe_failures() {
        None => (StatusCode::OK, "Healthy\n").into_response(),
        Some(failures) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Unhealthy: {failures}\n"),
        )
            .into_response(),
    }
}

async fn ready(State(app): State<AppState>) -> Response {
    // A failed poller leaves its project unpolled: never report ready then.
    if let Some(failures) = app.tasks.describe_failures() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Not ready: {failures}\n"),
        )
            .into_response();
    }
    let waiting: Vec<String> = app
        .projects
        .iter()
        .filter(|p| !state::read(p).ready)
        .map(|p| state::read(p).name.clone())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "Ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Not ready: waiting for the first poll of {}\n",
                waiting.join(", ")
            ),
        )
            .into_response()
    }
}

async fn landing_page(State(app): State<AppState>) -> Html<String> {
    let now = app.landing.clock.now();
    let cards = app
        .projects
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mode = app.landing.modes.get(i).copied().unwrap_or("project");
            let mut card = Card::of(&state::read(p), mode, now);
            if let Some(w) = &app.webhooks {
                card.failures = w.recent_failures(&card.name);
            }
            card
        })
        .collect();
    Html(landing::render(&Page {
        version: VERSION,
        telemetry_path: &app.telemetry_path,
        cards,
    }))
}
