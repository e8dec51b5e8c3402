//! An in-memory Kapso Platform API for tests, benchmarks and the exporter's `--demo` mode.
//!
//! It serves, under `/platform/v1`, `GET /workflows`, `/workflows/{id}`,
//! `/workflows/{id}/executions`, `/workflow_executions/{id}`, `/whatsapp/conversations`,
//! `/whatsapp/conversations/{id}` and `/whatsapp/conversations/{id}/flow_executions`, with the
//! shapes, ordering, cursors, errors and rate limits described in `docs/kapso-api.md` and
//! the published OpenAPI files (checked by `tests/it/simulator_contract.rs`).
//!
//! Tests drive the world step by step ([`Simulator::start_execution`],
//! [`Simulator::set_status`], [`Simulator::tick`]) and compare the exporter's output with
//! [`Simulator::ground_truth`]. [`Faults`] break the API; [`Variance`] makes it differ in
//! ways Kapso's documents allow (timestamp precision and offsets, missing or lagging counts,
//! unknown statuses, duplicates, bad rows, deletions, flaky workflow lists), each switchable on
//! its own and off by default; scripted controls such as [`Simulator::delete_execution`] and
//! [`Simulator::hide_workflow`] apply them to chosen objects. Data timestamps come from the
//! injected [`Clock`], so a test sharing one manual clock with the exporter gets exact answers;
//! rate-limit windows and latency use tokio's monotonic time.
//!
//! It also registers project webhooks (`POST /whatsapp/webhooks` or
//! [`Simulator::register_webhook`]) and sends them `workflow.execution.failed` and
//! `workflow.execution.handoff` events, one per failure and handoff that ground truth counts,
//! signed and retried as Kapso does, driven by [`Simulator::deliver_due`] (or
//! [`Simulator::run_webhook_delivery`]) and broken on demand by [`WebhookFaults`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kapso_exporter::clock::Clock;
//! use kapso_exporter::simulator::{Simulator, SimulatorConfig};
//!
//! let sim = Simulator::new(SimulatorConfig::demo(), Clock::system());
//! let running = sim.spawn().await?;
//! println!("Kapso API at {}", running.base_url);
//! # Ok(()) }
//! ```

mod api;
mod codec;
mod paging;
mod traffic;
mod variance;
mod webhooks;
mod world;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use codec::{Uid, micros, parse_uuid};
use traffic::Traffic;
use webhooks::Webhooks;
use world::World;

pub use traffic::endpoints;
pub use variance::{PRESETS, Precision, Precisions, Presence, StartOverride, Variance};
pub use webhooks::{
    DUPLICATE_DELAY, DeliveredEvent, DeliveryReport, EVENT_FAILED, EVENT_HANDOFF, EventCounts,
    RETRY_DELAYS, WebhookFaults, WebhookOptions, WebhookStats, signature as webhook_signature,
};

/// How to populate and run a [`Simulator`].
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// The API key clients must send as `X-API-Key`.
    pub api_key: String,
    /// Number of workflows (with 4 or more, the last is archived; with 5 or more, the one
    /// before it is a draft; the rest are active).
    pub workflows: usize,
    /// Number of WhatsApp conversations.
    pub conversations: usize,
    /// Executions in a live status (running, waiting, handoff) at start; also the population
    /// that [`Simulator::tick`] steers towards.
    pub live_executions: usize,
    /// Ended or failed executions from the last 24 hours at start.
    pub terminal_executions: usize,
    /// Seed for every random choice: ids, population, evolution and faults.
    pub seed: u64,
    /// Requests per minute per API key (`None`: unlimited, and no `X-RateLimit-*` headers).
    pub rate_limit_per_minute: Option<u32>,
    /// Latency added to every response.
    pub latency: Duration,
    /// API variance from the start (change it later with [`Simulator::set_variance`]).
    pub variance: Variance,
}

impl SimulatorConfig {
    /// A small realistic project: 6 workflows (4 active, a draft, an archived one),
    /// 60 conversations, 120 live executions and 400 from the last day, the `platform` plan's
    /// 1000 requests per minute and 15 ms latency. The API key is `demo-api-key`.
    pub fn demo() -> Self {
        SimulatorConfig {
            api_key: "demo-api-key".to_owned(),
            workflows: 6,
            conversations: 60,
            live_executions: 120,
            terminal_executions: 400,
            seed: 42,
            rate_limit_per_minute: Some(1000),
            latency: Duration::from_millis(15),
            variance: Variance::default(),
        }
    }
}

/// An execution status as the API spells it (docs/kapso-api.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecStatus {
    /// Executing steps now.
    Running,
    /// Parked for user input or a timeout.
    Waiting,
    /// Handed to a human agent.
    Handoff,
    /// Completed (terminal).
    Ended,
    /// Terminated by an error (terminal).
    Failed,
}

impl ExecStatus {
    /// Every status, in declaration order.
    pub const ALL: [ExecStatus; 5] = [
        ExecStatus::Running,
        ExecStatus::Waiting,
        ExecStatus::Handoff,
        ExecStatus::Ended,
        ExecStatus::Failed,
    ];

    /// The non-final statuses.
    pub const LIVE: [ExecStatus; 3] = [
        ExecStatus::Running,
        ExecStatus::Waiting,
        ExecStatus::Handoff,
    ];

    /// The wire spelling: `running`, `waiting`, `handoff`, `ended` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Running => "running",
            ExecStatus::Waiting => "waiting",
            ExecStatus::Handoff => "handoff",
            ExecStatus::Ended => "ended",
            ExecStatus::Failed => "failed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<ExecStatus> {
        ExecStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether this is `ended` or `failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, ExecStatus::Ended | ExecStatus::Failed)
    }

    /// Whether this is `running`, `waiting` or `handoff`.
    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    fn index(self) -> usize {
        self as usize
    }

    fn live_index(self) -> Option<usize> {
        self.is_live().then_some(self as usize)
    }
}

impl fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failures to inject into responses; change them at any time with [`Simulator::set_faults`].
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Extra latency per request (added to [`SimulatorConfig::latency`]).
    pub latency: Duration,
    /// Probability that an accepted request gets a 500, 502 or 503.
    pub server_error_rate: f64,
    /// The next N accepted requests get 500, 502, 503, 500, … (counts down).
    pub fail_next: u32,
    /// Probability that a 200 carries invalid JSON (half the body, or `{"data": [`).
    pub malformed_rate: f64,
    /// `paging.next` always repeats the cursor the page was fetched with (never null).
    pub looping_cursor: bool,
    /// Probability that an execution row shows a status outside the spec's enum.
    pub unknown_status_rate: f64,
    /// A slow body: a 200's headers and first half go out at once, the rest after this pause.
    pub body_stall: Duration,
    /// Probability that a 200 announces its full `Content-Length` but the connection closes
    /// after half the body (a truncated transfer, not just bad JSON).
    pub truncated_rate: f64,
    /// Changes to the shape of every 200 body (schema drift).
    pub drift: Drift,
    /// A 429 storm: while set, every authenticated request is refused with 429 and
    /// `Retry-After` of this many seconds, whatever the rate limit says (a gateway shedding
    /// load in front of the API); these 429s carry no `X-RateLimit-*` headers.
    pub throttle_secs: Option<u64>,
    /// A huge page: every 200 body carries an extra string field of this many bytes, streamed
    /// without the simulator holding it in memory.
    pub padding_bytes: u64,
}

/// Schema drift of 200 bodies; each applies to every object in `data` (and nested
/// `workflow` objects of execution rows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Fields no spec lists, on every object, on the envelope and in `paging`.
    pub extra_fields: bool,
    /// Every field but `id`, `status` and `workflow.id` is `null`.
    pub null_fields: bool,
    /// Every field but `id`, `status` and `workflow.id` is left out.
    pub missing_fields: bool,
    /// Rows without `id` (a required field).
    pub missing_ids: bool,
    /// Every UUID is written as 32 hex digits without dashes (the simulator accepts that
    /// form back in paths and filters).
    pub non_uuid_ids: bool,
}

/// A workflow as ground truth lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowTruth {
    /// Workflow id (UUID).
    pub id: String,
    /// Workflow name.
    pub name: String,
    /// Lifecycle status (`draft`, `active`, `archived`).
    pub status: String,
    /// Executions ever created for it (the API's `execution_count` by default).
    pub execution_count: u64,
    /// Executions of it that exist now: `execution_count` minus deleted ones (what the
    /// shrinking-count variance shows).
    pub existing_executions: u64,
}

/// What the API shows at one instant, for comparing with the exporter's output.
#[derive(Clone, Debug, Default)]
pub struct GroundTruth {
    /// Every workflow, in creation order.
    pub workflows: Vec<WorkflowTruth>,
    /// Live executions per (workflow id, live status); every workflow × live status present.
    pub live: BTreeMap<(String, ExecStatus), u64>,
    /// Live executions per (conversation id, workflow id, status); nonzero entries only.
    pub per_conversation: BTreeMap<(String, String, ExecStatus), u64>,
    /// Oldest `last_event_at` per (workflow id, live status), present when the count is > 0.
    pub oldest_last_event: BTreeMap<(String, ExecStatus), OffsetDateTime>,
    /// Oldest `last_event_at` per (conversation id, workflow id, live status).
    pub conversation_oldest_last_event: BTreeMap<(String, String, ExecStatus), OffsetDateTime>,
    /// Every live `last_event_at` per (workflow id, live status), ascending.
    pub live_last_events: BTreeMap<(String, ExecStatus), Vec<OffsetDateTime>>,
    /// Executions started since the last [`Simulator::mark`], per workflow id (zero-filled).
    pub started: BTreeMap<String, u64>,
    /// Transitions into `ended`/`failed` since the last mark, per (workflow id, status),
    /// zero-filled; executions started directly in a terminal status count too.
    pub finished: BTreeMap<(String, ExecStatus), u64>,
    /// Transitions into `handoff` since the last mark (including executions started in
    /// handoff), per workflow id, zero-filled.
    pub handoffs: BTreeMap<String, u64>,
    /// Executions now in a status outside the spec's enum, per (workflow id, status string);
    /// nonzero entries only. They are in no live count.
    pub unknown_status: BTreeMap<(String, String), u64>,
    /// Live executions per ([`StepTruth`], live status); nonzero entries only.
    pub steps: BTreeMap<(StepTruth, ExecStatus), u64>,
    /// Oldest `last_event_at` per ([`StepTruth`], live status), present when the count is > 0.
    pub step_oldest_last_event: BTreeMap<(StepTruth, ExecStatus), OffsetDateTime>,
    /// Transitions into `failed` since the last mark (executions started failed included),
    /// per step the execution was at when it failed; nonzero entries only.
    pub step_failures: BTreeMap<StepTruth, u64>,
}

/// A step of a workflow, as the exporter's step series label it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepTruth {
    pub workflow_id: String,
    /// `current_step.identifier`.
    pub step: String,
    /// `current_step.stepable_type`.
    pub step_type: String,
}

impl GroundTruth {
    /// Live executions of one workflow in one status (0 if unknown).
    pub fn live_count(&self, workflow_id: &str, status: ExecStatus) -> u64 {
        self.live
            .get(&(workflow_id.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    /// Live executions over all workflows and statuses.
    pub fn live_total(&self) -> u64 {
        self.live.values().sum()
    }
}

/// What clients sent, as the simulator saw it.
#[derive(Clone, Debug, Default)]
pub struct RequestStats {
    /// Responses per (endpoint template from [`endpoints`], HTTP status).
    pub by_endpoint: BTreeMap<(String, u16), u64>,
    /// All responses.
    pub total: u64,
    /// The most requests accepted (authenticated, not 429) for one API key in any 60 s window.
    pub max_in_window: u64,
    /// 429 responses sent.
    pub rate_limited: u64,
    /// Authenticated requests that arrived while a `Retry-After` this simulator gave the same
    /// key was still running (a client that honours 429s keeps this at 0, except for requests
    /// it had already sent when the 429 left).
    pub during_pause: u64,
    /// Padding bytes (the huge-page fault) handed to the server connections so far.
    pub padding_bytes_sent: u64,
}

impl RequestStats {
    /// Responses for one endpoint template, any status.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.by_endpoint
            .iter()
            .filter(|((e, _), _)| e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }

    /// Responses with one HTTP status, any endpoint.
    pub fn count_status(&self, status: u16) -> u64 {
        self.by_endpoint
            .iter()
            .filter(|((_, s), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

/// State shared by the handle and the HTTP handlers.
pub(crate) struct Shared {
    clock: Clock,
    world: Mutex<World>,
    faults: Mutex<Faults>,
    fault_rng: Mutex<StdRng>,
    fault_seq: AtomicU64,
    padding_sent: Arc<AtomicU64>,
    api_key: Mutex<String>,
    traffic: Mutex<Traffic>,
    rate_limit: Option<u32>,
    latency: Duration,
    webhooks: Mutex<Webhooks>,
    webhook_client: OnceLock<reqwest::Client>,
}

impl Shared {
    /// The status of an injected server error for this request, if any.
    fn server_fault(&self) -> Option<StatusCode> {
        const CODES: [StatusCode; 3] = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        let mut faults = lock(&self.faults);
        if faults.fail_next > 0 {
            faults.fail_next -= 1;
            let n = self.fault_seq.fetch_add(1, Ordering::Relaxed);
            return Some(CODES[(n % 3) as usize]);
        }
        let mut rng = lock(&self.fault_rng);
        chance(&mut rng, faults.server_error_rate).then(|| CODES[rng.random_range(0..3)])
    }
}

/// Locks a mutex, recovering from poisoning (a panicked test thread must not wedge the API).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A draw with probability `p`; no draw at all (so no change to the sequence) when `p <= 0`.
fn chance(rng: &mut StdRng, p: f64) -> bool {
    p.is_finite() && p > 0.0 && rng.random_bool(p.min(1.0))
}

/// A handle on one simulated Kapso project; clones share it.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("rate_limit", &self.shared.rate_limit)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A project populated deterministically from `config.seed`, as of `clock.now()`.
    pub fn new(config: SimulatorConfig, clock: Clock) -> Simulator {
        let world = World::populated(&config, micros(clock.now()));
        Simulator::with_world(world, &config, clock)
    }

    /// A project with no data and no rate limit or latency, for scripted tests.
    pub fn empty(api_key: &str, clock: Clock) -> Simulator {
        let config = SimulatorConfig {
            api_key: api_key.to_owned(),
            workflows: 0,
            conversations: 0,
            live_executions: 0,
            terminal_executions: 0,
            seed: 0,
            rate_limit_per_minute: None,
            latency: Duration::ZERO,
            variance: Variance::default(),
        };
        Simulator::with_world(World::empty(config.seed), &config, clock)
    }

    fn with_world(mut world: World, config: &SimulatorConfig, clock: Clock) -> Simulator {
        world.variance = config.variance.clone();
        Simulator {
            shared: Arc::new(Shared {
                clock,
                world: Mutex::new(world),
                faults: Mutex::new(Faults::default()),
                fault_rng: Mutex::new(StdRng::seed_from_u64(config.seed ^ 0x5EED_FA17)),
                fault_seq: AtomicU64::new(0),
                padding_sent: Arc::default(),
                api_key: Mutex::new(config.api_key.clone()),
                traffic: Mutex::new(Traffic::default()),
                rate_limit: config.rate_limit_per_minute,
                latency: config.latency,
                webhooks: Mutex::new(Webhooks::new(config.seed)),
                webhook_client: OnceLock::new(),
            }),
        }
    }

    /// The axum router serving the API under `/platform/v1`.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Serves the API on `127.0.0.1` with an ephemeral port until the returned handle is
    /// shut down or dropped.
    pub async fn spawn(&self) -> std::io::Result<RunningSimulator> {
        self.spawn_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves the API on `addr`, for example the address of a simulator that was shut down
    /// (the API-unreachable fault and its recovery).
    pub async fn spawn_at(&self, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let base_url = url::Url::parse(&format!("http://{addr}/platform/v1"))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = self.router();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "simulator server stopped with an error");
            }
        });
        Ok(RunningSimulator {
            base_url,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Calls [`Simulator::tick`] every `every` with the time that really passed, until the
    /// returned task is aborted. For `--demo` mode on the system clock.
    pub fn run_ticker(&self, every: Duration) -> JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every.max(Duration::from_millis(10)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                interval.tick().await;
                let now = tokio::time::Instant::now();
                sim.tick(now - last);
                last = now;
            }
        })
    }

    fn now_us(&self) -> i64 {
        micros(self.shared.clock.now())
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.shared.world)
    }

    /// Adds a workflow created now; returns its id.
    pub fn add_workflow(&self, name: &str, status: &str) -> String {
        let now = self.now_us();
        Uid(self.world().add_workflow(name, status, now)).to_string()
    }

    /// Adds an active conversation created now; returns its id.
    pub fn add_conversation(&self) -> String {
        let now = self.now_us();
        Uid(self.world().add_conversation(now)).to_string()
    }

    /// Starts an execution now (started_at is bumped by 1 µs if the clock has not moved since
    /// the previous start). Returns its id, or an empty string if `workflow_id` is unknown.
    /// An unknown `conversation_id` starts it without a conversation.
    pub fn start_execution(
        &self,
        workflow_id: &str,
        conversation_id: Option<&str>,
        status: ExecStatus,
    ) -> String {
        let now = self.now_us();
        let mut world = self.world();
        let Some(wf) = parse_uuid(workflow_id).and_then(|id| world.workflow_index(id)) else {
            tracing::warn!(workflow_id, "start_execution: unknown workflow");
            return String::new();
        };
        let conv = conversation_id.and_then(|c| {
            let found = parse_uuid(c).and_then(|id| world.conversation_index(id));
            if found.is_none() {
                tracing::warn!(conversation_id = c, "start_execution: unknown conversation");
            }
            found
        });
        let id = world.start_execution(wf, conv, status, now);
        self.flush_transitions(&mut world);
        Uid(id).to_string()
    }

    /// Moves an execution to `status` now: last_event_at = now, ended_at = now for terminal
    /// statuses (null otherwise). Unknown ids are ignored.
    pub fn set_status(&self, execution_id: &str, status: ExecStatus) {
        let now = self.now_us();
        let known = parse_uuid(execution_id).is_some_and(|id| {
            let mut world = self.world();
            let known = world.set_status(id, status, now);
            self.flush_transitions(&mut world);
            known
        });
        if !known {
            tracing::warn!(execution_id, "set_status: unknown execution");
        }
    }

    /// Records a new event on an execution: last_event_at = now. Unknown ids are ignored.
    pub fn touch(&self, execution_id: &str) {
        let now = self.now_us();
        let known = parse_uuid(execution_id).is_some_and(|id| self.world().touch(id, now));
        if !known {
            tracing::warn!(execution_id, "touch: unknown execution");
        }
    }

    /// Moves an execution to the step `identifier` of its workflow (at `now`, with a new
    /// event), whatever its status; unknown ids and identifiers are logged and ignored.
    pub fn set_step(&self, execution_id: &str, identifier: &str) {
        let now = self.now_us();
        let moved =
            parse_uuid(execution_id).is_some_and(|id| self.world().set_step(id, identifier, now));
        if !moved {
            tracing::warn!(
                execution_id,
                identifier,
                "set_step: unknown execution or step"
            );
        }
    }

    /// The steps of a workflow's graph: (identifier, stepable_type), in graph order.
    pub fn workflow_steps(&self, workflow_id: &str) -> Vec<(String, String)> {
        let world = self.world();
        parse_uuid(workflow_id)
            .and_then(|id| world.workflow_index(id))
            .map(|wi| {
                world.workflows[wi as usize]
                    .steps
                    .iter()
                    .map(|s| (s.identifier.to_owned(), s.stepable_type.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces the API variance. Rendering settings apply to the next response; settings
    /// about how the world evolves apply to changes made from now on.
    pub fn set_variance(&self, variance: Variance) {
        self.world().variance = variance;
    }

    /// The API variance now.
    pub fn variance(&self) -> Variance {
        self.world().variance.clone()
    }

    /// Adds a workflow created at `created_at` (in the past or future, not bumped); returns
    /// its id.
    pub fn add_workflow_at(&self, name: &str, status: &str, created_at: OffsetDateTime) -> String {
        Uid(self
            .world()
            .add_workflow_at(name, status, micros(created_at)))
        .to_string()
    }

    /// Renders a workflow without `created_at` (`true`) or with it again (`false`); filters
    /// still use its true creation time. Unknown ids are ignored.
    pub fn omit_created_at(&self, workflow_id: &str, omit: bool) {
        self.with_workflow("omit_created_at", workflow_id, |w| w.omit_created_at = omit);
    }

    /// Leaves a workflow out of the next `listings` `GET /workflows` answers (0 shows it
    /// again); `GET /workflows/{id}` and its executions still answer. Unknown ids are ignored.
    pub fn hide_workflow(&self, workflow_id: &str, listings: u32) {
        self.with_workflow("hide_workflow", workflow_id, |w| {
            w.hidden_listings = listings
        });
    }

    /// Answers the next `listings` `GET /workflows` requests with `{"data": []}` (0 ends it).
    pub fn empty_workflow_lists(&self, listings: u32) {
        self.world().empty_workflow_lists(listings);
    }

    /// Makes `GET /workflows/{id}/executions` answer with `status` (e.g. 404 or 422) and a
    /// flat `{"error": …}` body until cleared with `None`. Unknown ids are ignored.
    pub fn fail_workflow_executions(&self, workflow_id: &str, status: Option<u16>) {
        self.with_workflow("fail_workflow_executions", workflow_id, |w| {
            w.executions_error = status;
        });
    }

    /// Deletes a workflow: it leaves every listing, and it, its executions' lists and
    /// `GET /workflow_executions/{id}` of each of its executions answer 404. Ground truth
    /// drops it. Unknown ids are ignored.
    pub fn delete_workflow(&self, workflow_id: &str) {
        let known = parse_uuid(workflow_id).is_some_and(|id| self.world().delete_workflow(id));
        if !known {
            tracing::warn!(workflow_id, "delete_workflow: unknown workflow");
        }
    }

    /// Deletes an execution: it leaves every list and `GET /workflow_executions/{id}` answers
    /// 404. It still counts as started; it is not live and never finishes. `execution_count`
    /// drops only with [`Variance::shrinking_count`]. Unknown ids are ignored.
    pub fn delete_execution(&self, execution_id: &str) {
        let known = parse_uuid(execution_id).is_some_and(|id| self.world().delete_execution(id));
        if !known {
            tracing::warn!(execution_id, "delete_execution: unknown execution");
        }
    }

    /// Moves an execution now to a status outside the spec's enum, such as `paused`: it
    /// leaves the status-filtered lists but stays in unfiltered ones and in
    /// `GET /workflow_executions/{id}`, with that status. A spec status (`waiting`, …) is the
    /// same as [`Simulator::set_status`]. Entering or leaving an unknown status is neither a
    /// start nor a finish in ground truth; leaving it for `ended` or `failed` is a finish if the
    /// execution was live before. Unknown ids are ignored.
    pub fn set_unknown_status(&self, execution_id: &str, status: &str) {
        let now = self.now_us();
        let known = parse_uuid(execution_id).is_some_and(|id| {
            let mut world = self.world();
            let known = world.set_unknown_status(id, status, now);
            self.flush_transitions(&mut world);
            known
        });
        if !known {
            tracing::warn!(execution_id, "set_unknown_status: unknown execution");
        }
    }

    /// Renders an execution's `started_at` missing, null or in another year; the true start
    /// still orders, filters and pages it. Unknown ids are ignored.
    pub fn set_start_override(&self, execution_id: &str, start: StartOverride) {
        let mut world = self.world();
        match parse_uuid(execution_id).filter(|&id| world.execution(id).is_some()) {
            Some(id) => {
                world.start_overrides.insert(id, start);
            }
            None => tracing::warn!(execution_id, "set_start_override: unknown execution"),
        }
    }

    /// Renders an execution's true `started_at` again.
    pub fn clear_start_override(&self, execution_id: &str) {
        if let Some(id) = parse_uuid(execution_id) {
            self.world().start_overrides.remove(&id);
        }
    }

    fn with_workflow(&self, what: &str, workflow_id: &str, f: impl FnOnce(&mut world::Workflow)) {
        let mut world = self.world();
        match parse_uuid(workflow_id).and_then(|id| world.workflow_index(id)) {
            Some(i) => f(world.workflow_mut(i)),
            None => tracing::warn!(workflow_id, "{what}: unknown workflow"),
        }
    }

    /// Evolves the world over the `dt` that ends now (advance the clock first): executions
    /// start, wait, hand off, resume from handoff, end and fail at seeded random times inside
    /// the interval. By default about 1/12 of [`SimulatorConfig::live_executions`] finish per
    /// minute and starts keep the live population near that target. With
    /// [`Variance::unknown_statuses`], [`Variance::deletions`] or
    /// [`Variance::flaky_workflow_list`] set, executions also go `paused` and come back, old
    /// ones are deleted, and workflows drop out of some listings; ground truth follows.
    pub fn tick(&self, dt: Duration) {
        let now = self.now_us();
        let mut world = self.world();
        world.tick(now, dt);
        self.flush_transitions(&mut world);
    }

    /// Queues webhook events for the transitions the world recorded (lock order: world, then
    /// webhooks).
    fn flush_transitions(&self, world: &mut World) {
        let transitions = world.take_transitions();
        if !transitions.is_empty() {
            let now = self.now_us();
            lock(&self.shared.webhooks).enqueue(world.project_id, &transitions, now);
        }
    }

    // ----- webhooks --------------------------------------------------------------------

    /// Registers an active Kapso-kind project webhook (payload v2, no custom headers) for
    /// `events` (see [`EVENT_FAILED`], [`EVENT_HANDOFF`]), as `POST /whatsapp/webhooks` does;
    /// returns its id. Only transitions from now on send events.
    pub fn register_webhook(&self, url: &str, secret: &str, events: &[&str]) -> String {
        let now = self.now_us();
        let mut world = self.world();
        world.record_transitions();
        let id = lock(&self.shared.webhooks).register(url, secret, events, now);
        Uid(id).to_string()
    }

    /// Deletes a webhook and its queued attempts; `false` if the id is unknown.
    pub fn delete_webhook(&self, webhook_id: &str) -> bool {
        parse_uuid(webhook_id).is_some_and(|id| lock(&self.shared.webhooks).remove(id))
    }

    /// Replaces the webhook delivery faults.
    pub fn set_webhook_faults(&self, faults: WebhookFaults) {
        lock(&self.shared.webhooks).faults = faults;
    }

    /// Replaces the webhook retry scale and timeout.
    pub fn set_webhook_options(&self, options: WebhookOptions) {
        lock(&self.shared.webhooks).options = options;
    }

    /// Webhook statistics since the simulator was created.
    pub fn webhook_stats(&self) -> WebhookStats {
        lock(&self.shared.webhooks).stats()
    }

    /// Every successful webhook delivery so far, in the order the 2xx answers came.
    pub fn webhook_deliveries(&self) -> Vec<DeliveredEvent> {
        lock(&self.shared.webhooks).delivered()
    }

    /// Sends every webhook attempt due at the clock's current instant, one after the other
    /// (queue order: due time, then the order events were queued; shuffled under
    /// [`WebhookFaults::reorder`]), and waits for each answer or its timeout. A 2xx delivers;
    /// anything else is retried [`RETRY_DELAYS`] (scaled) after this instant, and dropped
    /// after the 4th attempt. Attempts that fall due while it runs wait for the next call.
    pub async fn deliver_due(&self) -> DeliveryReport {
        let now = self.now_us();
        let (due, timeout) = {
            let mut hooks = lock(&self.shared.webhooks);
            (hooks.take_due(now), hooks.options.timeout)
        };
        if due.is_empty() {
            let pending = lock(&self.shared.webhooks).stats().pending;
            return DeliveryReport {
                pending,
                ..DeliveryReport::default()
            };
        }
        let client = self
            .shared
            .webhook_client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .unwrap_or_default()
            })
            .clone();
        let mut results = Vec::with_capacity(due.len());
        for p in due {
            let outcome = webhooks::send(&client, &p, timeout).await;
            results.push((p, outcome));
        }
        lock(&self.shared.webhooks).finish(now, results)
    }

    /// Calls [`Simulator::deliver_due`] every `every` until the returned task is aborted. For
    /// `--demo` and the benchmark on the system clock.
    pub fn run_webhook_delivery(&self, every: Duration) -> JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every.max(Duration::from_millis(10)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                sim.deliver_due().await;
            }
        })
    }

    /// What `--demo` needs to push webhooks to the exporter: registers a webhook for `url`
    /// (e.g. `http://127.0.0.1:9899/webhooks/kapso`) signed with `secret`, subscribed to both
    /// workflow events, and starts [`Simulator::run_webhook_delivery`] every second. Returns
    /// the webhook id and the driver (abort it to stop).
    pub fn start_webhooks(&self, url: &str, secret: &str) -> (String, JoinHandle<()>) {
        let id = self.register_webhook(url, secret, &[EVENT_FAILED, EVENT_HANDOFF]);
        (id, self.run_webhook_delivery(Duration::from_secs(1)))
    }

    /// Sets how many executions finish per minute in [`Simulator::tick`] (88 % end, 12 % fail).
    pub fn set_finish_rate(&self, per_minute: f64) {
        self.world().set_finish_rate(per_minute);
    }

    /// The current ground truth.
    pub fn ground_truth(&self) -> GroundTruth {
        self.world().ground_truth()
    }

    /// Resets the started/finished/handoff counters of [`GroundTruth`] to zero.
    pub fn mark(&self) {
        self.world().mark();
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// The injected faults now (`fail_next` counts down as it is used).
    pub fn faults(&self) -> Faults {
        lock(&self.shared.faults).clone()
    }

    /// Replaces the accepted API key; an empty key rejects every request.
    pub fn set_api_key(&self, key: &str) {
        *lock(&self.shared.api_key) = key.to_owned();
    }

    /// Request statistics since the simulator was created.
    pub fn stats(&self) -> RequestStats {
        let mut stats = lock(&self.shared.traffic).stats();
        stats.padding_bytes_sent = self.shared.padding_sent.load(Ordering::Relaxed);
        stats
    }

    /// The clock data timestamps come from.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }
}

/// A simulator serving HTTP on a local port; stops when shut down or dropped.
#[derive(Debug)]
pub struct RunningSimulator {
    /// `http://127.0.0.1:PORT/platform/v1`
    pub base_url: url::Url,
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningSimulator {
    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
