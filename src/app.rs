//! Wiring: builds the clients, pollers, registry and router from a validated [`Config`], and
//! runs them until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::kapso::{ApiKey, Client, RetryPolicy};
use crate::poller::{self, Poller};
use crate::simulator::{Simulator, SimulatorConfig};
use crate::state::{ProjectState, SharedProject};
use crate::{http, metrics};

/// How long in-flight scrapes may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything the exporter runs, built but not started: tests drive `pollers` step by step and
/// call `router` directly.
pub struct Exporter {
    pub router: axum::Router,
    pub pollers: Vec<Poller>,
    pub projects: Vec<SharedProject>,
}

/// Builds the exporter for `config`, reading time from `clock`.
pub fn build(config: &Config, clock: Clock, retry: RetryPolicy) -> anyhow::Result<Exporter> {
    let mut pollers = Vec::new();
    let mut projects = Vec::new();
    for p in &config.projects {
        let client = Client::new(
            p.base_url.clone(),
            p.api_key.clone(),
            p.rate_limit,
            p.timeout,
            retry,
        )
        .with_context(|| format!("failed to build the HTTP client of project {}", p.name))?;
        let state =
            ProjectState::new(&p.name, p.poll_interval, p.rate_limit, client.stats()).shared();
        projects.push(state.clone());
        pollers.push(Poller::new(
            p,
            client,
            clock.clone(),
            state,
            config.max_conversations,
        ));
    }
    let registry = metrics::registry(projects.clone(), clock, &config.stall_thresholds);
    let router = http::router(registry, projects.clone(), &config.telemetry_path);
    let router = http::auth::protect(router, &config.web);
    Ok(Exporter {
        router,
        pollers,
        projects,
    })
}

/// A running exporter.
pub struct Running {
    pub addr: SocketAddr,
    pub projects: Vec<SharedProject>,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stops polling and serving, waiting at most [`SHUTDOWN_GRACE`] for open requests.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period elapsed; aborting open connections");
            self.tasks.abort_all();
        }
    }
}

/// Binds the listen address, starts the pollers and the HTTP server (and, with `--demo`, the
/// embedded simulator), and returns at once.
pub async fn start(mut config: Config, clock: Clock) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
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
        for p in &mut config.projects {
            p.base_url = running.base_url.clone();
            p.api_key = key.clone();
        }
        let ticker = sim.run_ticker(Duration::from_secs(1));
        let token = cancel.clone();
        tasks.spawn(async move {
            // The simulator serves and evolves until shutdown.
            let _running = running;
            token.cancelled().await;
            ticker.abort();
        });
    }
    let listener = TcpListener::bind(config.listen_address)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen_address))?;
    let addr = listener
        .local_addr()
        .context("failed to read the listen address")?;
    let exporter = build(&config, clock, RetryPolicy::default())?;
    for (poller, p) in exporter.pollers.into_iter().zip(&config.projects) {
        tracing::info!(interval = %humantime::format_duration(p.poll_interval), budget = p.rate_limit, "polling {}", poller::describe(p));
        tasks.spawn(poller.run(cancel.clone()));
    }
    tasks.spawn(http::server::serve(
        listener,
        exporter.router,
        config.web.tls.clone(),
        config.web_limits,
        cancel.clone(),
    ));
    tracing::info!(web = %config.web.describe(), max_connections = config.web_limits.max_connections, "HTTP server configured");
    tracing::info!(address = %addr, path = %config.telemetry_path, "serving metrics");
    Ok(Running {
        addr,
        projects: exporter.projects,
        cancel,
        tasks,
    })
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = start(config, Clock::system()).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
