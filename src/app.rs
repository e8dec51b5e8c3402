//! Wiring: builds the clients, pollers, registry and router from a validated [`Config`], and
//! runs them, supervised (see [`crate::supervisor`]), until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, Target};
use crate::kapso::{ApiKey, Client, RetryPolicy};
use crate::poller::{self, Poller};
use crate::simulator::{Simulator, SimulatorConfig};
use crate::state::{ProjectState, SharedProject};
use crate::storage::Store;
use crate::supervisor::{Supervisor, TaskCollector, Tasks};
use crate::webhook::{Dedupe, Endpoint, Receiver};
use crate::{http, metrics};

/// How long in-flight scrapes may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything the exporter runs, built but not started: tests drive `pollers` step by step and
/// call `router` directly.
pub struct Exporter {
    pub router: axum::Router,
    pub pollers: Vec<Poller>,
    pub projects: Vec<SharedProject>,
    /// The supervised tasks that `/-/healthy`, `/-/ready` and `kapso_exporter_task_up` report;
    /// empty until [`start`] spawns them.
    pub tasks: Tasks,
    /// The webhook receiver and its router (behind the webhook listener's web config), when
    /// webhooks are on.
    pub webhooks: Option<(Receiver, axum::Router)>,
}

/// Builds the exporter for `config`, reading time from `clock`.
pub fn build(config: &Config, clock: Clock, retry: RetryPolicy) -> anyhow::Result<Exporter> {
    build_with(config, clock, retry, Tasks::default(), None)
}

/// [`build`], reporting the supervised tasks of `tasks`; `demo` is the running simulator's URL
/// and key, where [`Target::Demo`] projects go.
fn build_with(
    config: &Config,
    clock: Clock,
    retry: RetryPolicy,
    tasks: Tasks,
    demo: Option<&(url::Url, ApiKey)>,
) -> anyhow::Result<Exporter> {
    let mut pollers = Vec::new();
    let mut projects = Vec::new();
    let mut deliveries = Vec::new();
    for p in &config.projects {
        let (base_url, api_key) = match (&p.target, demo) {
            (Target::Kapso { base_url, api_key }, _) => (base_url.clone(), api_key.clone()),
            (Target::Demo, Some(sim)) => sim.clone(),
            (Target::Demo, None) => {
                anyhow::bail!("project {}: the demo needs its simulator", p.name)
            }
        };
        let client = Client::new(base_url, api_key.clone(), p.rate_limit, p.timeout, retry)
            .with_context(|| format!("failed to build the HTTP client of project {}", p.name))?;
        let state =
            ProjectState::new(&p.name, p.poll_interval, p.rate_limit, client.stats()).shared();
        projects.push(state.clone());
        let mut poller = Poller::new(p, client, clock.clone(), state, config.max_conversations)
            .with_max_steps(config.max_steps_per_workflow);
        let window = Arc::new(Mutex::new(Dedupe::default()));
        if let Some(dir) = &config.storage_path {
            let store = Store::new(dir, &p.name, &api_key);
            poller.restore_from(store, config.webhook.is_some().then(|| window.clone()));
        }
        deliveries.push(window);
        pollers.push(poller);
    }
    let webhooks = config.webhook.as_ref().map(|listener| {
        let endpoints = pollers
            .iter()
            .zip(&config.projects)
            .zip(&projects)
            .zip(&deliveries)
            .filter_map(|(((poller, p), state), window)| {
                poller::lock(&poller.tracker()).enable_events();
                Some(Endpoint {
                    project: p.name.clone(),
                    secret: p.webhook_secret.clone()?,
                    tracker: poller.tracker(),
                    state: state.clone(),
                    conversation_mode: poller.conversation_mode(),
                    deliveries: window.clone(),
                })
            })
            .collect();
        let receiver = Receiver::new(endpoints, clock.clone());
        let router = http::auth::protect(receiver.router(), &listener.web);
        (receiver, router)
    });
    let landing = http::landing::Landing {
        clock: clock.clone(),
        modes: config
            .projects
            .iter()
            .map(|p| poller::mode_label(p, config.demo))
            .collect(),
    };
    let mut registry = metrics::registry(projects.clone(), clock, &config.stall_thresholds);
    // Collectors of their own, so that these metrics stay apart from the project metrics.
    registry.register_collector(Box::new(TaskCollector::new(tasks.clone())));
    if let Some((receiver, _)) = &webhooks {
        registry.register_collector(Box::new(receiver.collector()));
    }
    let router = http::router(
        registry,
        projects.clone(),
        tasks.clone(),
        &config.telemetry_path,
        webhooks.as_ref().map(|(r, _)| r.clone()),
        landing,
    );
    let router = http::auth::protect(router, &config.web);
    Ok(Exporter {
        router,
        pollers,
        projects,
        tasks,
        webhooks,
    })
}

/// A running exporter.
pub struct Running {
    pub addr: SocketAddr,
    /// Where the webhook listener listens, when webhooks are on.
    pub webhook_addr: Option<SocketAddr>,
    pub projects: Vec<SharedProject>,
    /// The supervised tasks: `poller/<project>`, `http` and, with `--demo`, `simulator`.
    pub tasks: Tasks,
    supervisor: Supervisor,
}

impl Running {
    /// Stops polling and serving, waiting at most [`SHUTDOWN_GRACE`] for open requests.
    pub async fn shutdown(self) {
        self.supervisor.shutdown(SHUTDOWN_GRACE).await;
    }
}

/// Binds the listen address, starts the pollers and the HTTP server (and, with `--demo`, the
/// embedded simulator), and returns at once.
pub async fn start(mut config: Config, clock: Clock) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let tasks = Tasks::default();
    let mut supervisor = Supervisor::new(tasks.clone(), cancel.clone());
    // With --demo, the simulator and the secret its webhooks are signed with.
    let mut demo_webhooks = None;
    let mut demo_target = None;
    if config.demo {
        let variance = config.demo_variance.clone();
        let demo = SimulatorConfig {
            variance,
            ..SimulatorConfig::demo()
        };
        let key = ApiKey::new(demo.api_key.clone());
        let sim = Simulator::new(demo, clock.clone());
        let running = sim
            .spawn()
            .await
            .context("failed to start the demo simulator")?;
        tracing::info!(url = %running.base_url, "demo: serving a simulated Kapso API");
        // The demo's webhooks are signed with a secret made up for this run.
        let secret: String = {
            use rand::Rng as _;
            let mut rng = rand::rng();
            (0..32)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect()
        };
        demo_target = Some((running.base_url.clone(), key));
        for p in &mut config.projects {
            p.webhook_secret = Some(crate::webhook::WebhookSecret::new(secret.clone()));
        }
        demo_webhooks = Some((sim.clone(), secret));
        let ticker = sim.run_ticker(Duration::from_secs(1));
        let token = cancel.clone();
        supervisor.spawn("simulator", async move {
            // The simulator serves and evolves until shutdown.
            let _running = running;
            until_cancelled(ticker, token).await;
        });
    }
    let listener = bind(config.listen_address)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen_address))?;
    let addr = listener
        .local_addr()
        .context("failed to read the listen address")?;
    if let Some(dir) = &config.storage_path {
        crate::storage::prepare(dir)
            .with_context(|| format!("cannot use --storage.path {}", dir.display()))?;
    }
    let webhook_listener = match &config.webhook {
        Some(w) => Some(
            bind(w.address)
                .await
                .with_context(|| format!("failed to listen on {} for webhooks", w.address))?,
        ),
        None => None,
    };
    let webhook_addr = webhook_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("failed to read the webhook listen address")?;
    let exporter = build_with(
        &config,
        clock,
        RetryPolicy::default(),
        tasks,
        demo_target.as_ref(),
    )?;
    for ((poller, p), state) in exporter
        .pollers
        .into_iter()
        .zip(&config.projects)
        .zip(&exporter.projects)
    {
        tracing::info!(
            mode = poller::mode_label(p, config.demo),
            base_url = %p
                .base_url()
                .or(demo_target.as_ref().map(|(url, _)| url))
                .map_or_else(String::new, crate::kapso::shown_url),
            interval = %humantime::format_duration(p.poll_interval),
            budget_per_minute = p.rate_limit,
            budget_per_poll = poller::budget_per_poll(p.rate_limit, p.poll_interval),
            "polling {}",
            poller::describe(p)
        );
        supervisor.spawn_poller(state.clone(), poller.run(cancel.clone()));
    }
    supervisor.spawn(
        "http",
        http::server::serve(
            listener,
            exporter.router,
            config.web.tls.clone(),
            config.web_limits,
            cancel.clone(),
        ),
    );
    if let (Some(listener), Some((_, router)), Some(w)) =
        (webhook_listener, exporter.webhooks, &config.webhook)
    {
        supervisor.spawn(
            "webhook",
            http::server::serve(
                listener,
                router,
                w.web.tls.clone(),
                config.web_limits,
                cancel.clone(),
            ),
        );
        if let Some(addr) = webhook_addr {
            tracing::info!(address = %addr, web = %w.web.describe(), "receiving Kapso webhooks on POST /webhooks/kapso");
        }
    }
    if let (Some((sim, secret)), Some(addr)) = (demo_webhooks, webhook_addr) {
        // The demo simulator pushes its failures and handoffs to the exporter, as Kapso would.
        let scheme = if config.webhook.as_ref().is_some_and(|w| w.web.tls.is_some()) {
            "https"
        } else {
            "http"
        };
        let host = if addr.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let url = format!("{scheme}://{host}/webhooks/kapso");
        let (_, driver) = sim.start_webhooks(&url, &secret);
        tracing::info!(url = %url, "demo: the simulator sends its webhooks here");
        supervisor.spawn(
            "simulator-webhooks",
            until_cancelled(driver, cancel.clone()),
        );
    }
    tracing::info!(web = %config.web.describe(), max_connections = config.web_limits.max_connections, "HTTP server configured");
    tracing::info!(address = %addr, path = %config.telemetry_path, "serving metrics");
    Ok(Running {
        addr,
        webhook_addr,
        projects: exporter.projects,
        tasks: exporter.tasks,
        supervisor,
    })
}

/// Waits for the background task `task` of the demo simulator until `token` fires (then
/// aborts it); a task that panicked fails the caller with its panic, so that the supervisor
/// sees it.
async fn until_cancelled(mut task: tokio::task::JoinHandle<()>, token: CancellationToken) {
    tokio::select! {
        _ = token.cancelled() => task.abort(),
        ended = &mut task => {
            if let Err(e) = ended {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

/// Binds `addr`. `[::]` (what `:PORT` means) is a dual-stack socket where the host has IPv6
/// (Linux's default), so IPv4 clients connect too; on a host without IPv6 it falls back to
/// `0.0.0.0`, as Go exporters do.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e)
            if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
                && e.kind() != std::io::ErrorKind::AddrInUse =>
        {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::debug!(error = %e, "no IPv6 here; listening on {v4}");
            TcpListener::bind(v4).await
        }
        other => other,
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // The handlers are installed before anything starts, so that a signal that arrives while
    // the exporter starts (or right after it says it serves) stops it gracefully instead of
    // killing it.
    let signals = shutdown_signal();
    let running = start(config, Clock::system()).await?;
    signals.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves at the first signal.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait(interrupt) => {}
            _ = wait(terminate) => {}
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
