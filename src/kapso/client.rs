//! The HTTP client of one Kapso project: authentication, rate limiting, retries, paging.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio::time::Instant;
use url::Url;

use super::error::ApiError;
use super::limiter::{MAX_PAUSE, RateLimiter};
use super::models::{
    Conversation, Execution, ExecutionStatus, ItemResponse, ListResponse, Workflow, error_message,
    format_timestamp,
};

/// The largest page Kapso serves.
pub const PAGE_LIMIT: u32 = 100;
/// The largest `max_pages` a caller may ask for (a larger one is lowered to it): 1,000,000
/// rows, so no list pages without end.
pub const MAX_PAGES: usize = 10_000;
/// Paging stops (with a `paging` error) after this many pages in a row that brought no row
/// the list had not already returned while `paging.next` still offered another cursor: a
/// list that makes no progress then costs at most `1 + STALL_PAGES` requests, not
/// `MAX_PAGES`. More than one, so that a page emptied by rows moving away between two
/// requests does not end the list.
pub const STALL_PAGES: usize = 3;
/// The pages `GET /workflows` may take. Kapso documents no paging there; a `paging.next` is
/// followed all the same, up to 10,000 workflows.
pub const WORKFLOW_PAGES: usize = 100;
/// The pages conversation discovery may take: 10,000 conversations, as many as
/// `--metrics.max-conversations` shows by default and far more than a key's budget can poll
/// (each costs at least one request per poll).
pub const CONVERSATION_PAGES: usize = 100;
/// The pause after a 429 without a usable `Retry-After`: Kapso's documented value.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A response body larger than this is refused rather than buffered.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Endpoint templates, the `endpoint` label of `kapso_api_requests_total`.
pub mod endpoint {
    pub const WORKFLOWS: &str = "/workflows";
    pub const WORKFLOW_EXECUTIONS: &str = "/workflows/{workflow_id}/executions";
    pub const EXECUTION: &str = "/workflow_executions/{execution_id}";
    pub const CONVERSATION_EXECUTIONS: &str =
        "/whatsapp/conversations/{conversation_id}/flow_executions";
    pub const CONVERSATIONS: &str = "/whatsapp/conversations";
}

/// A Kapso API key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the one header that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How failed requests are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt; doubles each time, with full jitter.
    pub base_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// Upper bound of one `Retry-After` pause to wait out and retry; longer ones (and any
    /// beyond [`MAX_PAUSE`]) fail the request, the key staying paused for at most
    /// [`MAX_PAUSE`].
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// What the client saw, read by the metrics at scrape time.
#[derive(Debug)]
pub struct ApiStats {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    rate_limit_remaining: AtomicI64,
    /// When the latest pause of the key ends: the limiter's own pause, mirrored here because
    /// the scrape path holds the stats, not the client.
    paused_until: Mutex<Option<Instant>>,
}

impl Default for ApiStats {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            rate_limit_remaining: AtomicI64::new(-1),
            paused_until: Mutex::default(),
        }
    }
}

impl ApiStats {
    fn record(&self, endpoint: &'static str, code: &str) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((endpoint, code.to_owned())).or_default() += 1;
    }

    /// Requests made, by endpoint template and HTTP status (`error` for transport failures).
    pub fn requests(&self) -> BTreeMap<(&'static str, String), u64> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The total number of requests made.
    pub fn total(&self) -> u64 {
        self.requests().values().sum()
    }

    /// The last `X-RateLimit-Remaining` seen, if any.
    pub fn rate_limit_remaining(&self) -> Option<u64> {
        u64::try_from(self.rate_limit_remaining.load(Ordering::Relaxed)).ok()
    }

    /// How long from now requests of this key still wait (after a 429's `Retry-After` or an
    /// `X-RateLimit-Remaining: 0`), `None` when the key is not paused. At most
    /// [`MAX_PAUSE`](super::limiter::MAX_PAUSE).
    pub fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        until
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    fn record_remaining(&self, remaining: u64) {
        self.rate_limit_remaining.store(
            i64::try_from(remaining).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    fn record_pause(&self, until: Instant) {
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        *paused = Some(paused.map_or(until, |t| t.max(until)));
    }
}

/// The client of one Kapso project (one API key).
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: ApiKey,
    /// The key as a header value marked sensitive: hyper and `http` print it as `Sensitive`
    /// in `Debug` (so trace logs of requests cannot show it) and HTTP/2 never indexes it.
    key_header: reqwest::header::HeaderValue,
    limiter: RateLimiter,
    retry: RetryPolicy,
    stats: std::sync::Arc<ApiStats>,
}

/// Query of `GET /workflows/{id}/executions`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub created_after: Option<OffsetDateTime>,
}

impl Client {
    /// A client for the API under `base` (e.g. `https://api.kapso.ai/platform/v1`).
    pub fn new(
        base: Url,
        key: ApiKey,
        requests_per_minute: u32,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kapso-exporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport {
                endpoint: "client",
                message: e.to_string(),
            })?;
        let mut key_header =
            reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| {
                ApiError::Transport {
                    endpoint: "client",
                    message: "the API key is not a valid HTTP header value".to_owned(),
                }
            })?;
        key_header.set_sensitive(true);
        Ok(Self {
            http,
            base,
            key,
            key_header,
            limiter: RateLimiter::new(requests_per_minute),
            retry,
            stats: Default::default(),
        })
    }

    /// What this client has seen so far.
    pub fn stats(&self) -> std::sync::Arc<ApiStats> {
        self.stats.clone()
    }

    /// `GET /workflows`: every workflow of the project (at most [`WORKFLOW_PAGES`] pages).
    pub async fn list_workflows(&self) -> Result<Vec<Workflow>, ApiError> {
        let url = self.url(endpoint::WORKFLOWS, &["workflows"])?;
        Pager::new(endpoint::WORKFLOWS, url, Vec::new(), WORKFLOW_PAGES)
            .collect(self)
            .await
    }

    /// `GET /workflows/{id}/executions`, page by page: at most `max_pages` pages (lowered to
    /// [`MAX_PAGES`], raised to 1).
    pub fn execution_pages(
        &self,
        workflow_id: &str,
        filter: ExecutionFilter,
        max_pages: usize,
    ) -> Result<ExecutionPages<'_>, ApiError> {
        let mut query = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if let Some(after) = filter.created_after {
            query.push(("created_after", format_timestamp(after)));
        }
        let url = self.url(
            endpoint::WORKFLOW_EXECUTIONS,
            &["workflows", workflow_id, "executions"],
        )?;
        Ok(ExecutionPages {
            client: self,
            pager: Pager::new(endpoint::WORKFLOW_EXECUTIONS, url, query, max_pages)
                .slicing_coarse_cursors(),
        })
    }

    /// `GET /whatsapp/conversations/{id}/flow_executions`, page by page: at most `max_pages`
    /// pages (lowered to [`MAX_PAGES`], raised to 1).
    pub fn conversation_execution_pages(
        &self,
        conversation_id: &str,
        max_pages: usize,
    ) -> Result<ExecutionPages<'_>, ApiError> {
        let url = self.url(
            endpoint::CONVERSATION_EXECUTIONS,
            &[
                "whatsapp",
                "conversations",
                conversation_id,
                "flow_executions",
            ],
        )?;
        Ok(ExecutionPages {
            client: self,
            pager: Pager::new(
                endpoint::CONVERSATION_EXECUTIONS,
                url,
                Vec::new(),
                max_pages,
            ),
        })
    }

    /// `GET /workflows/{id}/executions`, every page (at most `max_pages`).
    pub async fn list_workflow_executions(
        &self,
        workflow_id: &str,
        filter: ExecutionFilter,
        max_pages: usize,
    ) -> Result<Vec<Execution>, ApiError> {
        self.execution_pages(workflow_id, filter, max_pages)?
            .collect_rows()
            .await
    }

    /// `GET /whatsapp/conversations/{id}/flow_executions`, every page (at most `max_pages`).
    pub async fn list_conversation_executions(
        &self,
        conversation_id: &str,
        max_pages: usize,
    ) -> Result<Vec<Execution>, ApiError> {
        self.conversation_execution_pages(conversation_id, max_pages)?
            .collect_rows()
            .await
    }

    /// `GET /whatsapp/conversations?last_active_after=...`, every page (at most
    /// [`CONVERSATION_PAGES`]).
    pub async fn list_conversations(
        &self,
        last_active_after: OffsetDateTime,
    ) -> Result<Vec<Conversation>, ApiError> {
        let query = vec![("last_active_after", format_timestamp(last_active_after))];
        let url = self.url(endpoint::CONVERSATIONS, &["whatsapp", "conversations"])?;
        Pager::new(endpoint::CONVERSATIONS, url, query, CONVERSATION_PAGES)
            .collect(self)
            .await
    }

    /// `GET /workflow_executions/{id}`.
    pub async fn get_execution(&self, execution_id: &str) -> Result<Execution, ApiError> {
        let url = self.url(endpoint::EXECUTION, &["workflow_executions", execution_id])?;
        let item: ItemResponse<Execution> = self.get(endpoint::EXECUTION, url, &[]).await?;
        Ok(item.data)
    }

    /// The URL of `segments` under the base path, each segment percent-encoded (`/` too).
    ///
    /// `url` silently drops `.` and `..` segments and turns `""` into `//`, so such an id would
    /// address another resource (`/workflows/../executions` -> `/workflows/executions`); it is
    /// refused instead.
    fn url(&self, endpoint: &'static str, segments: &[&str]) -> Result<Url, ApiError> {
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(ApiError::InvalidId {
                endpoint,
                id: (*bad).to_owned(),
            });
        }
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Ok(url)
    }

    /// A server-supplied error text with the API key blanked out, should Kapso echo it.
    fn redact(&self, text: String) -> String {
        let key = self.key.expose();
        if key.is_empty() || !text.contains(key) {
            return text;
        }
        text.replace(key, "<redacted>")
    }

    /// One GET with rate limiting and retries, decoded as `T`.
    async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
        query: &[(&'static str, String)],
    ) -> Result<T, ApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.attempts;
            let permit = self.limiter.acquire().await;
            let sent = self
                .http
                .get(url.clone())
                .header("X-API-Key", self.key_header.clone())
                .header("Accept", "application/json")
                .query(query)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    drop(permit);
                    self.stats.record(endpoint, "error");
                    let err = transport_error(endpoint, e);
                    if last {
                        return Err(err);
                    }
                    tracing::debug!(endpoint, attempt, error = %err, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            };
            // Kapso counted the request by the time its answer arrived.
            drop(permit);
            let status = response.status();
            self.stats.record(endpoint, status.as_str());
            let remaining = rate_limit_remaining(response.headers());
            if let Some(remaining) = remaining {
                self.stats.record_remaining(remaining);
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                // The server's `Retry-After` decides. Kapso sends `X-RateLimit-Remaining: 0`
                // with its 429s too, which our window rule would stretch to up to 60 s after
                // the oldest request; the server knows better when it takes requests again.
                let asked = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                self.pause_for(asked);
                if last || asked > self.retry.max_retry_after || asked > MAX_PAUSE {
                    return Err(ApiError::RateLimited { endpoint });
                }
                tracing::warn!(endpoint, wait = ?asked, "rate limited by Kapso; pausing every request of this key");
                continue;
            }
            if let Some(remaining) = remaining {
                if let Some(until) = self.limiter.observe_remaining(remaining, Instant::now()) {
                    self.stats.record_pause(until);
                }
            }
            let body = match read_body(response, endpoint).await {
                Ok(body) => body,
                Err(err)
                    if !last
                        && matches!(err, ApiError::Timeout { .. } | ApiError::Transport { .. }) =>
                {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let message =
                || self.redact(error_message(&body).unwrap_or_else(|| format!("HTTP {status}")));
            match status.as_u16() {
                200..=299 => {
                    return serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                        endpoint,
                        message: e.to_string(),
                    });
                }
                401 | 403 => {
                    return Err(ApiError::Unauthorized {
                        endpoint,
                        status: status.as_u16(),
                        message: message(),
                    });
                }
                code @ (408 | 500..=599) => {
                    if last {
                        return Err(ApiError::Server {
                            endpoint,
                            status: code,
                            message: message(),
                        });
                    }
                    tracing::debug!(endpoint, attempt, status = code, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                code => {
                    return Err(ApiError::Client {
                        endpoint,
                        status: code,
                        message: message(),
                    });
                }
            }
        }
    }

    /// Pauses every request of the key for `wait` (capped at [`MAX_PAUSE`]), where the
    /// scrape path sees it too.
    fn pause_for(&self, wait: Duration) {
        let until = self.limiter.pause_for(wait, Instant::now());
        self.stats.record_pause(until);
    }

    /// Full-jitter exponential backoff before attempt `attempt + 1`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry
            .base_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.retry.max_backoff);
        // `Duration::mul_f64` panics when the product rounds beyond `Duration::MAX`, which a
        // `max_backoff` near it would do.
        let jitter = rand::rng().random_range(0.5..=1.0);
        Duration::try_from_secs_f64(exp.as_secs_f64() * jitter).unwrap_or(exp)
    }
}

/// The pages of one execution list, requested one at a time so that a caller can stop
/// early; made by [`Client::execution_pages`] and [`Client::conversation_execution_pages`].
///
/// Paging fails with a `paging` error, without another request, when a cursor comes back
/// ([`ApiError::CursorLoop`]), when [`STALL_PAGES`] pages in a row bring no row the list had
/// not returned ([`ApiError::NoProgress`]), or when more than `max_pages` pages would be
/// needed ([`ApiError::TooManyPages`]); such an error is final: every later call returns it
/// again. A failed request is not: calling [`next_page`](Self::next_page) again asks for the
/// same page.
#[derive(Debug)]
pub struct ExecutionPages<'a> {
    client: &'a Client,
    pager: Pager<Execution>,
}

impl ExecutionPages<'_> {
    /// The next page, `None` once the last page (`paging.next` null, empty or absent) was
    /// returned.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Execution>>, ApiError> {
        self.pager.next(self.client).await
    }

    /// The pages received so far.
    pub fn pages(&self) -> usize {
        self.pager.pages
    }

    /// The rows of every remaining page, in order.
    pub async fn collect_rows(self) -> Result<Vec<Execution>, ApiError> {
        self.pager.collect(self.client).await
    }
}

/// A row of a list, known by its id: the no-progress guard counts rows not returned before.
trait Row {
    fn row_id(&self) -> &str;

    /// The row's value of the list's keyset timestamp, where the row shows it.
    fn keyset_time(&self) -> Option<OffsetDateTime> {
        None
    }
}

impl Row for Execution {
    fn row_id(&self) -> &str {
        &self.id
    }

    /// Execution lists are keyed on the start (`created_at`, which rows show as `started_at`).
    fn keyset_time(&self) -> Option<OffsetDateTime> {
        self.started_at
    }
}

impl Row for Workflow {
    fn row_id(&self) -> &str {
        &self.id
    }
}

impl Row for Conversation {
    fn row_id(&self) -> &str {
        &self.id
    }
}

/// Why paging stopped for good.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// The last page was returned.
    End,
    CursorLoop,
    NoProgress(usize),
    TooManyPages(usize),
}

/// When a cursor's timestamp lost digits, the `created_before` that replaces it: the start
/// of the page's last row (`last`) where that row shows microseconds inside the cursor's
/// unit, else the last instant of the unit.
///
/// Kapso's cursors are Base64 of `{"values":["<created_at>","<id>"],"columns":[...]}` with a
/// microsecond timestamp (docs/kapso-api.md §3). A server whose cursor carries whole
/// seconds (or milliseconds) but compares it with the full-precision keys skips, after the
/// cursor, every row of the page's last second that is older than the last row. The exporter
/// never builds a cursor; it only reads this one's timestamp, and where it is written with
/// fewer than six digits of fraction it asks for the rows `created_before` (inclusive) the
/// last row's start instead, which repeats the rows of that instant and skips none. Where the
/// rows are as coarse as the cursor, the slice ends with the cursor's second (or
/// millisecond), repeating the rows of that unit already returned; more rows in one unit
/// than a page holds cannot be listed whole that way (docs/reliability.md). `None` for a
/// cursor that is not of that form (opaque, as the documents allow) or that keeps its
/// microseconds.
fn coarse_cursor_bound(cursor: &str, last: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Raw {
        values: Vec<serde_json::Value>,
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(cursor))
        .ok()?;
    let raw: Raw = serde_json::from_slice(&bytes).ok()?;
    let ts = raw.values.first()?.as_str()?;
    let t = OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    // The digits after the seconds, as written: "…:05Z" has none, "…:05.123Z" three.
    let seconds_end = ts.find('T')? + 9;
    let digits = ts
        .get(seconds_end..)?
        .strip_prefix('.')
        .map_or(0, |f| f.bytes().take_while(u8::is_ascii_digit).count());
    let unit_micros = 10i64.checked_pow(6u32.checked_sub(u32::try_from(digits).ok()?)?)?;
    if unit_micros == 1 {
        return None;
    }
    let end = t.checked_add(time::Duration::microseconds(unit_micros - 1))?;
    let precise = |l: &OffsetDateTime| l.nanosecond() % 1_000_000 != 0;
    Some(
        last.filter(|l| precise(l) && t <= *l && *l <= end)
            .unwrap_or(end),
    )
}

/// Follows `paging.next` of one list, page by page, with the guards of [`ExecutionPages`].
#[derive(Debug)]
struct Pager<T> {
    endpoint: &'static str,
    url: Url,
    query: Vec<(&'static str, String)>,
    max_pages: usize,
    /// Pages received so far.
    pages: usize,
    /// Pages in a row, up to the last one received, that brought no new row.
    stalled: usize,
    cursors: HashSet<String>,
    /// Hashes of the ids returned so far rather than copies of them: a list of 200,000 rows
    /// then holds 8 bytes a row. A collision could only make one page look like no progress
    /// if every row of it collided; with 64-bit hashes of at most 1,000,000 ids that does not
    /// happen in practice.
    ids: HashSet<u64>,
    hasher: RandomState,
    stop: Option<Stop>,
    /// Whether a cursor that lost digits is replaced by a `created_before` slice (see
    /// [`coarse_cursor_bound`]); only lists that document `created_before` on the cursor's
    /// column turn it on.
    slices: bool,
    /// The page being requested is such a slice: rows it repeats from earlier pages are
    /// dropped, because the slice asked for them again on purpose.
    slicing: bool,
    rows: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Row> Pager<T> {
    fn new(
        endpoint: &'static str,
        url: Url,
        mut query: Vec<(&'static str, String)>,
        max_pages: usize,
    ) -> Self {
        query.push(("limit", PAGE_LIMIT.to_string()));
        Self {
            endpoint,
            url,
            query,
            max_pages: max_pages.clamp(1, MAX_PAGES),
            pages: 0,
            stalled: 0,
            cursors: HashSet::new(),
            ids: HashSet::new(),
            hasher: RandomState::new(),
            stop: None,
            slices: false,
            slicing: false,
            rows: PhantomData,
        }
    }

    /// Pages past a cursor whose timestamp lost digits by `created_before` slices instead.
    fn slicing_coarse_cursors(mut self) -> Self {
        self.slices = true;
        self
    }

    async fn next(&mut self, client: &Client) -> Result<Option<Vec<T>>, ApiError> {
        let endpoint = self.endpoint;
        match self.stop {
            None => {}
            Some(Stop::End) => return Ok(None),
            Some(Stop::CursorLoop) => return Err(ApiError::CursorLoop { endpoint }),
            Some(Stop::NoProgress(pages)) => return Err(ApiError::NoProgress { endpoint, pages }),
            Some(Stop::TooManyPages(pages)) => {
                return Err(ApiError::TooManyPages { endpoint, pages });
            }
        }
        let mut page: ListResponse<T> = client.get(endpoint, self.url.clone(), &self.query).await?;
        self.pages += 1;
        let mut progress = false;
        let slice = std::mem::take(&mut self.slicing);
        let last = page.data.last().and_then(Row::keyset_time);
        page.data.retain(|row| {
            let new = self.ids.insert(self.hasher.hash_one(row.row_id()));
            progress |= new;
            new || !slice
        });
        match page.paging.and_then(|p| p.next).filter(|n| !n.is_empty()) {
            None => self.stop = Some(Stop::End),
            Some(next) => self.follow(next, progress, last),
        }
        Ok(Some(page.data))
    }

    /// Sets up the request of the page after `next`, or the guard that refuses it.
    fn follow(&mut self, next: String, progress: bool, last: Option<OffsetDateTime>) {
        self.stalled = if progress { 0 } else { self.stalled + 1 };
        // A slice that brought nothing new (more rows in one coarse unit than a page holds)
        // cannot be cut finer: the cursor is followed then, with what it may skip.
        let bound = (self.slices && progress)
            .then(|| coarse_cursor_bound(&next, last))
            .flatten();
        if let Some(bound) = bound {
            self.slice(bound);
            return;
        }
        self.stop = if self.cursors.contains(&next) {
            Some(Stop::CursorLoop)
        } else if self.stalled >= STALL_PAGES {
            Some(Stop::NoProgress(self.stalled))
        } else if self.pages >= self.max_pages {
            Some(Stop::TooManyPages(self.max_pages))
        } else {
            None
        };
        if self.stop.is_none() {
            self.query.retain(|(k, _)| *k != "after");
            self.query.push(("after", next.clone()));
            self.cursors.insert(next);
        }
    }

    /// Asks for the rows at or before `bound` (the end of the coarse unit of the cursor it
    /// replaces): the rows of that unit already returned come again and are dropped. The
    /// cursor is not recorded: a server that ignores `created_before` answers the same page,
    /// which brings nothing new, and the cursor is then followed.
    fn slice(&mut self, bound: OffsetDateTime) {
        self.stop = if self.pages >= self.max_pages {
            Some(Stop::TooManyPages(self.max_pages))
        } else if self.stalled >= STALL_PAGES {
            Some(Stop::NoProgress(self.stalled))
        } else {
            None
        };
        if self.stop.is_none() {
            self.query
                .retain(|(k, _)| *k != "after" && *k != "created_before");
            self.query.push(("created_before", format_timestamp(bound)));
            self.slicing = true;
        }
    }

    async fn collect(mut self, client: &Client) -> Result<Vec<T>, ApiError> {
        let mut rows = Vec::new();
        while let Some(page) = self.next(client).await? {
            rows.extend(page);
        }
        Ok(rows)
    }
}

async fn read_body(
    mut response: reqwest::Response,
    endpoint: &'static str,
) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(ApiError::Decode {
                        endpoint,
                        message: format!("body larger than {MAX_BODY_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport_error(endpoint, e)),
        }
    }
}

/// A request that got no answer, as one line: what failed, where (the URL without its query,
/// fragment or credentials) and the cause chain down to the operating system's reason
/// (`Connection refused`, a DNS or TLS failure).
fn transport_error(endpoint: &'static str, e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        return ApiError::Timeout { endpoint };
    }
    let url = e.url().map(shown_url);
    let e = e.without_url();
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = source {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    if let (Some(url), Some(first)) = (url, parts.first_mut()) {
        first.push_str(" to ");
        first.push_str(&url);
    }
    ApiError::Transport {
        endpoint,
        message: parts.join(": "),
    }
}

/// `url` as logs may show it: no query, fragment or credentials.
pub fn shown_url(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// `X-RateLimit-Remaining`, if it is a count.
fn rate_limit_remaining(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get("x-ratelimit-remaining")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
}

/// `Retry-After` as delay-seconds or an HTTP date. Delay-seconds beyond `u64` read as
/// `Duration::MAX` rather than as no header: the server asked for an absurdly long pause,
/// which the caller caps, not for the default one.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use time::macros::datetime;

    fn cursor_at(ts: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!(
            r#"{{"values":["{ts}","550e8400-e29b-41d4-a716-446655440000"],"columns":["created_at","id"]}}"#
        ))
    }

    #[test]
    fn only_a_cursor_that_lost_digits_is_sliced() {
        let bound = |ts: &str, last| coarse_cursor_bound(&cursor_at(ts), last);
        // Microseconds (the documented form, even on a whole second) are followed.
        assert_eq!(bound("2026-05-15T13:05:00.000000Z", None), None);
        assert_eq!(bound("2026-05-15T13:05:00.123456+02:00", None), None);
        // Seconds or milliseconds: the end of that unit, or the last row's precise start.
        assert_eq!(
            bound("2026-05-15T13:05:01Z", None),
            Some(datetime!(2026-05-15 13:05:01.999999 UTC))
        );
        assert_eq!(
            bound("2026-05-15T13:05:01.120Z", None),
            Some(datetime!(2026-05-15 13:05:01.120999 UTC))
        );
        assert_eq!(
            bound("2026-05-15T15:05:01+02:00", None),
            Some(datetime!(2026-05-15 13:05:01.999999 UTC))
        );
        let row = datetime!(2026-05-15 13:05:01.250042 UTC);
        assert_eq!(bound("2026-05-15T13:05:01Z", Some(row)), Some(row));
        // A row start outside the cursor's unit, or on a whole millisecond, is not trusted.
        let other = datetime!(2026-05-15 13:05:02.250042 UTC);
        let whole_ms = datetime!(2026-05-15 13:05:01.250 UTC);
        for last in [other, whole_ms] {
            assert_eq!(
                bound("2026-05-15T13:05:01Z", Some(last)),
                Some(datetime!(2026-05-15 13:05:01.999999 UTC))
            );
        }
        // Opaque or odd cursors are followed as they are.
        for odd in [
            "opaque",
            "",
            "bm90IGpzb24=",
            &cursor_at("yesterday"),
            &cursor_at(""),
        ] {
            assert_eq!(coarse_cursor_bound(odd, None), None, "{odd}");
        }
    }

    /// A refused connection says so, with the URL and without a placeholder or the query.
    #[tokio::test]
    async fn a_refused_connection_names_the_cause_and_the_url() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let base =
            Url::parse(&format!("http://user:pw@127.0.0.1:{port}/platform/v1")).expect("url");
        let client = Client::new(
            base,
            ApiKey::new("sk-secret"),
            600,
            Duration::from_secs(5),
            RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            },
        )
        .expect("client");
        let err = client
            .list_workflow_executions(
                "wf-1",
                ExecutionFilter {
                    status: Some(ExecutionStatus::Waiting),
                    created_after: None,
                },
                1,
            )
            .await
            .expect_err("nothing listens");
        let text = err.to_string();
        assert_eq!(err.kind(), "transport", "{text}");
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert!(
            text.contains(&format!(
                "error sending request to http://127.0.0.1:{port}/platform/v1/workflows/wf-1/executions: "
            )),
            "{text}"
        );
        for hidden in ["<url>", "?", "status=", "user", "pw@", "sk-secret"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn api_key_is_redacted_in_debug() {
        let key = ApiKey::new("sk-live-secret");
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn the_key_header_is_sensitive() {
        let client = Client::new(
            Url::parse("https://api.kapso.ai/platform/v1").expect("url"),
            ApiKey::new("sk-live-secret"),
            80,
            Duration::from_secs(5),
            RetryPolicy::default(),
        )
        .expect("client");
        assert!(client.key_header.is_sensitive());
        assert!(!format!("{client:?}").contains("secret"));
        let bad = Client::new(
            Url::parse("https://api.kapso.ai/platform/v1").expect("url"),
            ApiKey::new("sk-live-secret\n"),
            80,
            Duration::from_secs(5),
            RetryPolicy::default(),
        )
        .expect_err("a newline cannot be sent in a header");
        assert!(!bad.to_string().contains("secret"), "{bad}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().expect("header"),
        );
        let wait = retry_after(&headers).expect("a date");
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28));
        headers.insert("retry-after", "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn absurd_retry_after_values_read_as_long_pauses_without_panicking() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", u64::MAX.to_string().parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(u64::MAX)));
        // Beyond u64: an absurd pause was asked for, not none.
        headers.insert(
            "retry-after",
            "99999999999999999999999999".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::MAX));
        headers.insert(
            "retry-after",
            "Fri, 31 Dec 9999 23:59:59 GMT".parse().expect("header"),
        );
        let wait = retry_after(&headers).expect("a date");
        assert!(wait > MAX_PAUSE, "{wait:?}");
        // A date in the past is no pause.
        headers.insert(
            "retry-after",
            "Thu, 01 Jan 1970 00:00:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert("retry-after", "-5".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_never_panics_near_duration_max() {
        let client = Client::new(
            Url::parse("https://api.kapso.ai/platform/v1").expect("url"),
            ApiKey::new("k"),
            80,
            Duration::from_secs(5),
            RetryPolicy {
                base_backoff: Duration::MAX,
                max_backoff: Duration::MAX,
                ..RetryPolicy::default()
            },
        )
        .expect("client");
        for attempt in [1, 2, 40, u32::MAX] {
            assert!(client.backoff(attempt) > Duration::ZERO);
        }
    }

    #[test]
    fn max_pages_is_kept_between_one_and_max_pages() {
        let url = Url::parse("https://api.kapso.ai/platform/v1/workflows").expect("url");
        let pager = |max| Pager::<Workflow>::new(endpoint::WORKFLOWS, url.clone(), Vec::new(), max);
        assert_eq!(pager(usize::MAX).max_pages, MAX_PAGES);
        assert_eq!(pager(MAX_PAGES + 1).max_pages, MAX_PAGES);
        assert_eq!(pager(0).max_pages, 1);
        assert_eq!(pager(7).max_pages, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_for_counts_down_and_keeps_the_longest_pause() {
        let stats = ApiStats::default();
        assert_eq!(stats.paused_for(), None);
        let now = Instant::now();
        stats.record_pause(now + Duration::from_secs(30));
        stats.record_pause(now + Duration::from_secs(5));
        assert_eq!(stats.paused_for(), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(stats.paused_for(), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(stats.paused_for(), None);
    }

    #[test]
    fn ids_are_percent_encoded_as_path_segments() {
        let client = Client::new(
            Url::parse("https://api.kapso.ai/platform/v1").expect("url"),
            ApiKey::new("k"),
            80,
            Duration::from_secs(5),
            RetryPolicy::default(),
        )
        .expect("client");
        let url = client
            .url(
                endpoint::WORKFLOW_EXECUTIONS,
                &["workflows", "a/b?c", "executions"],
            )
            .expect("a valid id");
        assert_eq!(
            url.as_str(),
            "https://api.kapso.ai/platform/v1/workflows/a%2Fb%3Fc/executions"
        );
    }
}
