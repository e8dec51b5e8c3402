//! Command line, environment and the optional YAML file, merged and validated once.
//!
//! Precedence: a flag (or its environment variable) wins over the file, the file over the
//! defaults. Everything is checked here, before a port is bound; the rest of the program trusts
//! [`Config`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use url::Url;

use crate::kapso::ApiKey;
use crate::simulator::Variance;
use crate::web_config::WebConfig;
use crate::webhook::WebhookSecret;

/// The server's limits, re-exported: `config::WebLimits` is part of [`Config`].
pub use crate::http::WebLimits;

/// The default Kapso Platform API.
pub const DEFAULT_BASE_URL: &str = "https://api.kapso.ai/platform/v1";
/// The default listen address; 9853 is this exporter's port in the 9xxx exporter range.
pub const DEFAULT_LISTEN_ADDRESS: &str = ":9853";
/// The `project` label of the single unnamed project.
pub const DEFAULT_PROJECT: &str = "default";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RATE_LIMIT: u32 = 80;
/// The demo simulates an enterprise plan (1000 requests per minute) polled every 15 s.
pub const DEMO_RATE_LIMIT: u32 = 800;
pub const DEMO_POLL_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONVERSATIONS: usize = 10_000;
pub const DEFAULT_MAX_STEPS_PER_WORKFLOW: usize = 50;
pub const DEFAULT_STALL_THRESHOLDS: [u64; 6] = [60, 300, 900, 3600, 14400, 86400];
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The version with the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("KAPSO_EXPORTER_REVISION"),
    ")"
);

/// Prometheus exporter for Kapso workflow executions.
///
/// Polls the Kapso Platform API in the background, within the API key's rate limit, and serves
/// the latest state on /metrics. The API key is read from the KAPSO_API_KEY environment variable
/// or from --kapso.api-key-file, never from a flag value.
#[derive(Debug, Default, Parser)]
#[command(name = "kapso-exporter", version = VERSION)]
pub struct Cli {
    /// Base URL of the Kapso Platform API [default: https://api.kapso.ai/platform/v1]
    #[arg(long = "kapso.base-url", env = "KAPSO_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// File holding the API key (instead of the KAPSO_API_KEY environment variable)
    #[arg(long = "kapso.api-key-file", value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Watch only this conversation (repeatable) through its flow_executions endpoint
    #[arg(long = "kapso.conversation-id", value_name = "ID")]
    pub conversation_ids: Vec<String>,
    /// File with conversation ids to watch, one per line ('#' starts a comment)
    #[arg(long = "kapso.conversations-file", value_name = "PATH")]
    pub conversations_file: Option<PathBuf>,
    /// Also watch conversations active within this duration, found by listing conversations
    #[arg(long = "kapso.discover-conversations", value_name = "DURATION")]
    pub discover_conversations: Option<String>,
    /// Requests per minute the exporter may spend per API key [default: 80]
    #[arg(long = "kapso.rate-limit", value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Timeout of one Kapso request [default: 10s]
    #[arg(long = "kapso.timeout", value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Time between the starts of two polls of a project [default: 60s]
    #[arg(long = "poll.interval", value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// Address to listen on for HTTP requests [default: :9853]
    #[arg(long = "web.listen-address", value_name = "ADDRESS")]
    pub listen_address: Option<String>,
    /// Exporter-toolkit web configuration file: TLS, basic auth, response headers, rate limit
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Most HTTP connections served at once; more wait in the listen backlog [default: 64]
    #[arg(long = "web.max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Address of a second listener that receives Kapso's webhooks (POST /webhooks/kapso); off by default
    #[arg(long = "webhook.listen-address", value_name = "ADDRESS")]
    pub webhook_listen_address: Option<String>,
    /// Exporter-toolkit web configuration file (TLS, basic auth) of the webhook listener
    #[arg(long = "webhook.config.file", value_name = "PATH")]
    pub webhook_config_file: Option<PathBuf>,
    /// File holding the webhook secret (instead of the KAPSO_WEBHOOK_SECRET environment variable)
    #[arg(long = "webhook.secret-file", value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Directory where each project's counting state is saved, so counters survive restarts; off by default
    #[arg(long = "storage.path", value_name = "DIR")]
    pub storage_path: Option<PathBuf>,
    /// Path under which to expose metrics [default: /metrics]
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// Only log messages with the given severity or above: error, warn, info, debug, trace [default: info]
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Output format of log messages: logfmt or json [default: logfmt]
    #[arg(long = "log.format", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Most conversations exported in per-conversation series, most stalled first [default: 10000]
    #[arg(long = "metrics.max-conversations", value_name = "N")]
    pub max_conversations: Option<usize>,
    /// Most steps per workflow with series of their own; the least populated fold into step="other" [default: 50]
    #[arg(long = "metrics.max-steps-per-workflow", value_name = "N")]
    pub max_steps_per_workflow: Option<usize>,
    /// Stall thresholds of kapso_workflow_executions_stalled, comma-separated [default: 1m,5m,15m,1h,4h,1d]
    #[arg(
        long = "metrics.stall-thresholds",
        value_name = "DURATIONS",
        value_delimiter = ','
    )]
    pub stall_thresholds: Vec<String>,
    /// YAML configuration file (flags override it; it can declare several projects)
    #[arg(long = "config.file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit
    #[arg(long = "config.check")]
    pub config_check: bool,
    /// Run against the embedded Kapso API simulator instead of the real API
    #[arg(long = "demo")]
    pub demo: bool,
    /// With --demo: API variance presets for the simulator, comma-separated (seconds, millis, mixed-precision, offset, missing-counts, lagging-counts, shrinking-counts, deletions, unknown-statuses, duplicates, bad-rows, flaky-workflow-list, no-created-at, all)
    #[arg(long = "demo.variance", value_name = "LIST")]
    pub demo_variance: Option<String>,
}

/// A configuration problem, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub projects: Vec<ProjectConfig>,
    pub listen_address: SocketAddr,
    pub telemetry_path: String,
    /// From `--web.config.file`; plain HTTP without authentication by default.
    pub web: WebConfig,
    pub web_limits: WebLimits,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    pub max_conversations: usize,
    /// Steps per workflow with series of their own (at least 1).
    pub max_steps_per_workflow: usize,
    /// Sorted, distinct, non-zero.
    pub stall_thresholds: Vec<Duration>,
    pub demo: bool,
    /// The demo simulator's API variance (`--demo.variance`); default without it.
    pub demo_variance: Variance,
    /// The webhook listener, when on (`--webhook.listen-address`, or `--demo`).
    pub webhook: Option<WebhookListener>,
    /// Where counting state is saved (`--storage.path`).
    pub storage_path: Option<PathBuf>,
}

/// The second listener, for Kapso's webhooks.
#[derive(Clone, Debug)]
pub struct WebhookListener {
    pub address: SocketAddr,
    /// From `--webhook.config.file`.
    pub web: WebConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// One Kapso project (one API key).
#[derive(Clone, Debug)]
pub struct ProjectConfig {
    /// The `project` label.
    pub name: String,
    pub base_url: Url,
    pub api_key: ApiKey,
    pub rate_limit: u32,
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub mode: Mode,
    /// The secret Kapso signs this project's webhooks with; required when webhooks are on.
    pub webhook_secret: Option<WebhookSecret>,
}

/// What a project's poller lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every workflow of the project, by live status (the default).
    Project,
    /// These conversations, plus those active within `discover` if set.
    Conversations {
        ids: Vec<String>,
        discover: Option<Duration>,
    },
}

/// The YAML file. Strict: unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    web: FileWeb,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    poll: FilePoll,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    kapso: FileProject,
    #[serde(default)]
    projects: Vec<FileProject>,
    #[serde(default)]
    webhook: FileWebhook,
    #[serde(default)]
    storage: FileStorage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    listen_address: Option<String>,
    config_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWeb {
    listen_address: Option<String>,
    telemetry_path: Option<String>,
    config_file: Option<PathBuf>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePoll {
    interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    max_conversations: Option<usize>,
    max_steps_per_workflow: Option<usize>,
    stall_thresholds: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProject {
    name: Option<String>,
    base_url: Option<String>,
    api_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key.
    api_key_env: Option<String>,
    rate_limit: Option<u32>,
    timeout: Option<String>,
    poll_interval: Option<String>,
    #[serde(default)]
    conversation_ids: Vec<String>,
    conversations_file: Option<PathBuf>,
    discover_conversations: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the webhook secret.
    webhook_secret_env: Option<String>,
}

impl Config {
    /// Reads the file named by `--config.file` (if any), merges it under the command line and
    /// validates the result. `env` looks up environment variables (the API key).
    pub fn load(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = match &cli.config_file {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let base = path_base(cli.config_file.as_deref());
        let demo_variance = match (&cli.demo_variance, cli.demo) {
            (None, _) => Variance::default(),
            (Some(_), false) => return Err(err("--demo.variance is only valid with --demo")),
            (Some(list), true) => Variance::parse_list(list)
                .map_err(|e| err(format!("--demo.variance {list:?}: {e}")))?,
        };
        let poll_interval = duration(
            "--poll.interval",
            cli.poll_interval
                .as_deref()
                .or(file.poll.interval.as_deref()),
        )?
        .unwrap_or(if cli.demo {
            DEMO_POLL_INTERVAL
        } else {
            DEFAULT_POLL_INTERVAL
        });

        // The command line's project settings: a project of their own, or defaults for the file's.
        let cli_project = FileProject {
            name: None,
            base_url: cli.base_url.clone(),
            api_key_file: cli.api_key_file.clone(),
            api_key_env: None,
            rate_limit: cli.rate_limit,
            timeout: cli.timeout.clone(),
            poll_interval: None,
            conversation_ids: cli.conversation_ids.clone(),
            conversations_file: cli.conversations_file.clone(),
            discover_conversations: cli.discover_conversations.clone(),
            webhook_secret_file: cli.webhook_secret_file.clone(),
            webhook_secret_env: None,
        };
        let defaults = overlay(&cli_project, &file.kapso);
        let env_secret = || {
            env("KAPSO_WEBHOOK_SECRET")
                .filter(|k| !k.trim().is_empty())
                .map(|k| WebhookSecret::new(k.trim()))
        };
        let mut projects = Vec::new();
        if cli.demo {
            // The demo talks to the embedded simulator; app::run fills in its URL and key.
            let mut project = defaults;
            project.base_url = Some("http://127.0.0.1/platform/v1".to_owned());
            project.rate_limit = project.rate_limit.or(Some(DEMO_RATE_LIMIT));
            projects.push(build_project(
                project,
                DEFAULT_PROJECT,
                poll_interval,
                &base,
                env,
                Some(ApiKey::new("demo")),
                None,
            )?);
        } else if file.projects.is_empty() {
            let fallback = env("KAPSO_API_KEY")
                .filter(|k| !k.trim().is_empty())
                .map(|k| ApiKey::new(k.trim()));
            projects.push(build_project(
                defaults,
                DEFAULT_PROJECT,
                poll_interval,
                &base,
                env,
                fallback,
                env_secret(),
            )?);
        } else {
            if !cli.conversation_ids.is_empty() || cli.conversations_file.is_some() {
                return Err(err(
                    "--kapso.conversation-id and --kapso.conversations-file cannot be combined with projects in --config.file; set them per project",
                ));
            }
            for (i, p) in file.projects.iter().enumerate() {
                let merged = overlay(p, &defaults);
                let name = p
                    .name
                    .clone()
                    .ok_or_else(|| err(format!("projects[{i}] in the config file has no name")))?;
                let fallback = if file.projects.len() == 1 {
                    env("KAPSO_API_KEY")
                        .filter(|k| !k.trim().is_empty())
                        .map(|k| ApiKey::new(k.trim()))
                } else {
                    None
                };
                let fallback_secret = if file.projects.len() == 1 {
                    env_secret()
                } else {
                    None
                };
                projects.push(build_project(
                    merged,
                    &name,
                    poll_interval,
                    &base,
                    env,
                    fallback,
                    fallback_secret,
                )?);
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &projects {
            if !names.insert(p.name.as_str()) {
                return Err(err(format!("project name {:?} is used twice", p.name)));
            }
        }

        let listen = cli
            .listen_address
            .as_deref()
            .or(file.web.listen_address.as_deref())
            .unwrap_or(DEFAULT_LISTEN_ADDRESS);
        let listen_address = parse_listen_address(listen)?;
        let telemetry_path = cli
            .telemetry_path
            .clone()
            .or(file.web.telemetry_path)
            .unwrap_or_else(|| "/metrics".to_owned());
        if !telemetry_path.starts_with('/')
            || telemetry_path == "/"
            || telemetry_path.starts_with("/-/")
            || telemetry_path.contains(['?', '#', ' '])
        {
            return Err(err(format!(
                "--web.telemetry-path {telemetry_path:?} must be an absolute path other than / and /-/..."
            )));
        }
        let web = match cli
            .web_config_file
            .clone()
            .or(file.web.config_file.map(|p| resolve(&base, &p)))
        {
            Some(path) => WebConfig::load(&path)
                .map_err(|e| err(format!("invalid --web.config.file {}: {e}", path.display())))?,
            None => WebConfig::default(),
        };
        let max_connections = cli
            .max_connections
            .or(file.web.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(err("--web.max-connections must be at least 1"));
        }
        let web_limits = WebLimits {
            max_connections,
            ..WebLimits::default()
        };
        let log_level = match cli
            .log_level
            .as_deref()
            .or(file.log.level.as_deref())
            .unwrap_or("info")
        {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            other => {
                return Err(err(format!(
                    "--log.level {other:?} is not one of error, warn, info, debug, trace"
                )));
            }
        };
        let log_format = match cli
            .log_format
            .as_deref()
            .or(file.log.format.as_deref())
            .unwrap_or("logfmt")
        {
            "logfmt" => LogFormat::Logfmt,
            "json" => LogFormat::Json,
            other => {
                return Err(err(format!(
                    "--log.format {other:?} is not one of logfmt, json"
                )));
            }
        };
        let max_conversations = cli
            .max_conversations
            .or(file.metrics.max_conversations)
            .unwrap_or(DEFAULT_MAX_CONVERSATIONS);
        let max_steps_per_workflow = cli
            .max_steps_per_workflow
            .or(file.metrics.max_steps_per_workflow)
            .unwrap_or(DEFAULT_MAX_STEPS_PER_WORKFLOW);
        if max_steps_per_workflow == 0 {
            return Err(err("--metrics.max-steps-per-workflow must be at least 1"));
        }
        let thresholds: Vec<String> = if !cli.stall_thresholds.is_empty() {
            cli.stall_thresholds.clone()
        } else if let Some(t) = file.metrics.stall_thresholds {
            t
        } else {
            DEFAULT_STALL_THRESHOLDS
                .iter()
                .map(|s| format!("{s}s"))
                .collect()
        };
        let mut stall_thresholds = Vec::new();
        for t in &thresholds {
            let d = parse_duration("--metrics.stall-thresholds", t.trim())?;
            if d.as_secs() == 0 || d.subsec_nanos() != 0 {
                return Err(err(format!(
                    "--metrics.stall-thresholds: {t:?} must be a whole number of seconds, at least 1s"
                )));
            }
            stall_thresholds.push(d);
        }
        stall_thresholds.sort();
        stall_thresholds.dedup();
        if stall_thresholds.is_empty() {
            return Err(err(
                "--metrics.stall-thresholds must name at least one duration",
            ));
        }
        let webhook = match cli
            .webhook_listen_address
            .as_deref()
            .or(file.webhook.listen_address.as_deref())
        {
            Some(address) => Some(parse_listen_address(address).map_err(|_| {
                err(format!(
                    "--webhook.listen-address {address:?} is not host:port or :port"
                ))
            })?),
            // The demo receives its simulator's webhooks on a port of its own choosing.
            None if cli.demo => Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            None => None,
        };
        let webhook_web = cli
            .webhook_config_file
            .clone()
            .or(file.webhook.config_file.map(|p| resolve(&base, &p)));
        let webhook = match (webhook, webhook_web) {
            (None, Some(_)) => {
                return Err(err(
                    "--webhook.config.file is only valid with --webhook.listen-address",
                ));
            }
            (None, None) => None,
            (Some(address), web) => {
                let web = match web {
                    Some(path) => WebConfig::load(&path).map_err(|e| {
                        err(format!(
                            "invalid --webhook.config.file {}: {e}",
                            path.display()
                        ))
                    })?,
                    None => WebConfig::default(),
                };
                if address == listen_address && address.port() != 0 {
                    return Err(err(format!(
                        "--webhook.listen-address {address} must differ from --web.listen-address"
                    )));
                }
                if !cli.demo {
                    if let Some(p) = projects.iter().find(|p| p.webhook_secret.is_none()) {
                        let whose = if p.name == DEFAULT_PROJECT {
                            String::new()
                        } else {
                            format!("project {:?}: ", p.name)
                        };
                        return Err(err(format!(
                            "{whose}webhooks are on (--webhook.listen-address) but there is no webhook secret: set KAPSO_WEBHOOK_SECRET, --webhook.secret-file, or webhook_secret_file / webhook_secret_env in the config file"
                        )));
                    }
                }
                Some(WebhookListener { address, web })
            }
        };
        let storage_path = cli
            .storage_path
            .clone()
            .or(file.storage.path.map(|p| resolve(&base, &p)));
        if let Some(path) = &storage_path {
            if path.as_os_str().is_empty() || (path.exists() && !path.is_dir()) {
                return Err(err(format!(
                    "--storage.path {} must be a directory",
                    path.display()
                )));
            }
        }
        Ok(Config {
            projects,
            listen_address,
            telemetry_path,
            web,
            web_limits,
            log_level,
            log_format,
            max_conversations,
            max_steps_per_workflow,
            stall_thresholds,
            demo: cli.demo,
            demo_variance,
            webhook,
            storage_path,
        })
    }
}

/// `p`'s settings, falling back to `defaults` field by field.
fn overlay(p: &FileProject, defaults: &FileProject) -> FileProject {
    FileProject {
        name: p.name.clone().or(defaults.name.clone()),
        base_url: p.base_url.clone().or(defaults.base_url.clone()),
        api_key_file: p.api_key_file.clone().or(defaults.api_key_file.clone()),
        api_key_env: p.api_key_env.clone().or(defaults.api_key_env.clone()),
        rate_limit: p.rate_limit.or(defaults.rate_limit),
        timeout: p.timeout.clone().or(defaults.timeout.clone()),
        poll_interval: p.poll_interval.clone().or(defaults.poll_interval.clone()),
        conversation_ids: if p.conversation_ids.is_empty() {
            defaults.conversation_ids.clone()
        } else {
            p.conversation_ids.clone()
        },
        conversations_file: p
            .conversations_file
            .clone()
            .or(defaults.conversations_file.clone()),
        discover_conversations: p
            .discover_conversations
            .clone()
            .or(defaults.discover_conversations.clone()),
        webhook_secret_file: p
            .webhook_secret_file
            .clone()
            .or(defaults.webhook_secret_file.clone()),
        webhook_secret_env: p
            .webhook_secret_env
            .clone()
            .or(defaults.webhook_secret_env.clone()),
    }
}

fn build_project(
    p: FileProject,
    name: &str,
    poll_interval: Duration,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    fallback_key: Option<ApiKey>,
    fallback_secret: Option<WebhookSecret>,
) -> Result<ProjectConfig, ConfigError> {
    let ctx = |m: String| {
        if name == DEFAULT_PROJECT {
            err(m)
        } else {
            err(format!("project {name:?}: {m}"))
        }
    };
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(err(format!(
            "project name {name:?} must be non-empty printable text"
        )));
    }
    let raw_url = p.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
    let base_url = Url::parse(raw_url)
        .map_err(|e| ctx(format!("--kapso.base-url {raw_url:?} is not a URL: {e}")))?;
    if !matches!(base_url.scheme(), "http" | "https") || base_url.host_str().is_none() {
        return Err(ctx(format!(
            "--kapso.base-url {raw_url:?} must be an http(s) URL with a host"
        )));
    }
    if base_url.query().is_some()
        || !base_url.username().is_empty()
        || base_url.password().is_some()
    {
        return Err(ctx(
            "--kapso.base-url must not carry credentials or a query (the key goes in KAPSO_API_KEY)"
                .to_owned(),
        ));
    }
    let api_key = if let Some(path) = &p.api_key_file {
        let path = resolve(base, path);
        let key = std::fs::read_to_string(&path)
            .map_err(|e| ctx(format!("cannot read API key file {}: {e}", path.display())))?;
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(ctx(format!("API key file {} is empty", path.display())));
        }
        ApiKey::new(key)
    } else if let Some(var) = &p.api_key_env {
        let key = env(var).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            ctx(format!(
                "environment variable {var} (api_key_env) is not set or empty"
            ))
        })?;
        ApiKey::new(key.trim())
    } else {
        fallback_key.ok_or_else(|| {
            ctx(
                "no Kapso API key: set KAPSO_API_KEY or --kapso.api-key-file (or run with --demo)"
                    .to_owned(),
            )
        })?
    };
    // Checked here, not when the client is built after the port is bound.
    if axum::http::HeaderValue::from_str(api_key.expose()).is_err() {
        return Err(ctx(
            "the Kapso API key contains characters an HTTP header cannot carry (control characters or non-ASCII)"
                .to_owned(),
        ));
    }
    let rate_limit = p.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT);
    if rate_limit == 0 {
        return Err(ctx(
            "--kapso.rate-limit must be at least 1 request per minute".to_owned(),
        ));
    }
    let timeout = duration("--kapso.timeout", p.timeout.as_deref())
        .map_err(|e| ctx(e.0))?
        .unwrap_or(DEFAULT_TIMEOUT);
    let poll_interval = duration("poll_interval", p.poll_interval.as_deref())
        .map_err(|e| ctx(e.0))?
        .unwrap_or(poll_interval);
    if poll_interval.is_zero() {
        return Err(ctx("--poll.interval must be longer than zero".to_owned()));
    }
    if timeout.is_zero() || timeout >= poll_interval {
        return Err(ctx(format!(
            "--kapso.timeout ({}) must be longer than zero and shorter than --poll.interval ({})",
            humantime::format_duration(timeout),
            humantime::format_duration(poll_interval)
        )));
    }
    let mut ids = p.conversation_ids.clone();
    if let Some(path) = &p.conversations_file {
        let path = resolve(base, path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ctx(format!(
                "cannot read conversations file {}: {e}",
                path.display()
            ))
        })?;
        ids.extend(parse_conversations_file(&text));
    }
    for id in &ids {
        if id.trim().is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ctx(format!(
                "conversation id {id:?} is empty or contains whitespace"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let discover = duration(
        "--kapso.discover-conversations",
        p.discover_conversations.as_deref(),
    )
    .map_err(|e| ctx(e.0))?;
    if discover.is_some_and(|d| d.is_zero()) {
        return Err(ctx(
            "--kapso.discover-conversations must be longer than zero".to_owned(),
        ));
    }
    let webhook_secret = if let Some(path) = &p.webhook_secret_file {
        let path = resolve(base, path);
        let secret = std::fs::read_to_string(&path).map_err(|e| {
            ctx(format!(
                "cannot read webhook secret file {}: {e}",
                path.display()
            ))
        })?;
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(ctx(format!(
                "webhook secret file {} is empty",
                path.display()
            )));
        }
        Some(WebhookSecret::new(secret))
    } else if let Some(var) = &p.webhook_secret_env {
        let secret = env(var).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            ctx(format!(
                "environment variable {var} (webhook_secret_env) is not set or empty"
            ))
        })?;
        Some(WebhookSecret::new(secret.trim()))
    } else {
        fallback_secret
    };
    let mode = if ids.is_empty() && discover.is_none() {
        Mode::Project
    } else {
        Mode::Conversations { ids, discover }
    };
    Ok(ProjectConfig {
        name: name.to_owned(),
        base_url,
        api_key,
        rate_limit,
        timeout,
        poll_interval,
        mode,
        webhook_secret,
    })
}

/// Conversation ids, one per line; blank lines and `#` comments are ignored.
pub fn parse_conversations_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read --config.file {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(&text).map_err(|e| {
        let detail = e.to_string().replace('\n', " ");
        err(format!(
            "invalid --config.file {}: {detail}",
            path.display()
        ))
    })
}

fn path_base(config_file: Option<&Path>) -> PathBuf {
    config_file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Relative paths in the config file are relative to the file.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn duration(flag: &str, value: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    value.map(|v| parse_duration(flag, v)).transpose()
}

fn parse_duration(flag: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        err(format!(
            "{flag} {value:?} is not a duration like 30s or 5m: {e}"
        ))
    })
}

/// `host:port`, `:port` (every interface) or `[v6]:port`.
fn parse_listen_address(value: &str) -> Result<SocketAddr, ConfigError> {
    let full = if value.starts_with(':') {
        // Every interface, IPv6 and IPv4 (a dual-stack socket; see app::bind).
        format!("[::]{value}")
    } else {
        value.to_owned()
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            err(format!(
                "--web.listen-address {value:?} is not host:port or :port"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["kapso-exporter"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("valid flags")
    }

    fn env_with_key(name: &str) -> Option<String> {
        (name == "KAPSO_API_KEY").then(|| "sk-test".to_owned())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_watch_the_whole_project() {
        let config = Config::load(&cli(&[]), &env_with_key).expect("valid");
        let p = &config.projects[0];
        assert_eq!(p.name, "default");
        assert_eq!(p.base_url.as_str(), DEFAULT_BASE_URL);
        assert_eq!(p.api_key.expose(), "sk-test");
        assert_eq!(p.rate_limit, 80);
        assert_eq!(p.poll_interval, Duration::from_secs(60));
        assert_eq!(p.mode, Mode::Project);
        assert_eq!(config.listen_address.port(), 9853);
        assert_eq!(config.telemetry_path, "/metrics");
        assert_eq!(config.stall_thresholds.len(), 6);
    }

    #[test]
    fn rejects_bad_values_with_one_line_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--poll.interval", "soon"], "--poll.interval"),
            (&["--poll.interval", "0s"], "--poll.interval"),
            (&["--kapso.timeout", "2m"], "--kapso.timeout"),
            (&["--kapso.rate-limit", "0"], "--kapso.rate-limit"),
            (&["--kapso.base-url", "ftp://x"], "--kapso.base-url"),
            (&["--web.listen-address", "nowhere"], "--web.listen-address"),
            (&["--web.telemetry-path", "metrics"], "--web.telemetry-path"),
            (&["--web.max-connections", "0"], "--web.max-connections"),
            (
                &["--web.config.file", "/nonexistent/web.yml"],
                "--web.config.file /nonexistent/web.yml",
            ),
            (&["--log.level", "loud"], "--log.level"),
            (&["--log.format", "xml"], "--log.format"),
            (
                &["--metrics.stall-thresholds", "1.5s"],
                "--metrics.stall-thresholds",
            ),
            (
                &["--kapso.api-key-file", "/nonexistent/key"],
                "API key file",
            ),
        ];
        for (args, needle) in cases {
            let e = Config::load(&cli(args), &env_with_key).expect_err("invalid");
            let text = e.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
            assert!(!text.contains('\n'), "{args:?}: not one line: {text}");
        }
        let e = Config::load(&cli(&[]), &no_env).expect_err("no key");
        assert!(e.to_string().contains("KAPSO_API_KEY"));
    }

    #[test]
    fn conversation_flags_select_conversation_mode() {
        let dir = std::env::temp_dir().join(format!("kx-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("conversations.txt");
        std::fs::write(&file, "# watched\nc-2\n\nc-3 # vip\nc-1\n").expect("write");
        let config = Config::load(
            &cli(&[
                "--kapso.conversation-id",
                "c-1",
                "--kapso.conversations-file",
                file.to_str().expect("utf-8"),
            ]),
            &env_with_key,
        )
        .expect("valid");
        assert_eq!(
            config.projects[0].mode,
            Mode::Conversations {
                ids: vec!["c-1".into(), "c-2".into(), "c-3".into()],
                discover: None
            }
        );
    }

    #[test]
    fn file_declares_several_projects_and_flags_override_it() {
        let dir = std::env::temp_dir().join(format!("kx-conf-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("acme.key"), "sk-acme\n").expect("write");
        let path = dir.join("config.yml");
        std::fs::write(
            &path,
            "poll:\n  interval: 30s\nweb:\n  listen_address: 127.0.0.1:9999\nprojects:\n  - name: acme\n    api_key_file: acme.key\n    rate_limit: 400\n  - name: beta\n    api_key_env: BETA_KEY\n    base_url: http://127.0.0.1:1234/platform/v1\n    conversation_ids: [c-9]\n",
        )
        .expect("write");
        let env = |name: &str| (name == "BETA_KEY").then(|| "sk-beta".to_owned());
        let path_str = path.to_str().expect("utf-8");
        let config = Config::load(
            &cli(&["--config.file", path_str, "--kapso.timeout", "5s"]),
            &env,
        )
        .expect("valid");
        assert_eq!(config.listen_address.port(), 9999);
        let [acme, beta] = &config.projects[..] else {
            panic!("two projects expected")
        };
        assert_eq!(
            (acme.name.as_str(), acme.api_key.expose(), acme.rate_limit),
            ("acme", "sk-acme", 400)
        );
        assert_eq!(acme.poll_interval, Duration::from_secs(30));
        assert_eq!(acme.timeout, Duration::from_secs(5));
        assert_eq!(beta.api_key.expose(), "sk-beta");
        assert_eq!(beta.rate_limit, DEFAULT_RATE_LIMIT);
        assert!(matches!(beta.mode, Mode::Conversations { .. }));

        std::fs::write(&path, "projects:\n  - name: acme\n    api_key_fille: x\n").expect("write");
        let e = Config::load(&cli(&["--config.file", path_str]), &env).expect_err("typo");
        assert!(e.to_string().contains("api_key_fille"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn web_settings_come_from_the_file_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("kx-conf-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("web.yml"),
            "rate_limit:\n  interval: 1s\n  burst: 3\n",
        )
        .expect("write");
        let path = dir.join("config.yml");
        std::fs::write(
            &path,
            "web:\n  config_file: web.yml\n  max_connections: 5\n",
        )
        .expect("write");
        let path = path.to_str().expect("utf-8");
        let config = Config::load(&cli(&["--config.file", path]), &env_with_key).expect("valid");
        assert_eq!(config.web_limits.max_connections, 5);
        assert_eq!(config.web.rate_limit.map(|r| r.burst), Some(3));
        let config = Config::load(
            &cli(&["--config.file", path, "--web.max-connections", "7"]),
            &env_with_key,
        )
        .expect("valid");
        assert_eq!(config.web_limits.max_connections, 7);
        let config = Config::load(&cli(&[]), &env_with_key).expect("valid");
        assert_eq!(config.web_limits, WebLimits::default());
        assert!(config.web.tls.is_none() && config.web.users.is_empty());
    }

    #[test]
    fn demo_needs_no_key() {
        let config = Config::load(&cli(&["--demo"]), &no_env).expect("valid");
        assert!(config.demo);
        assert_eq!(config.projects.len(), 1);
        assert_eq!(config.demo_variance, Variance::default());
    }

    #[test]
    fn demo_variance_needs_demo_and_known_presets() {
        let config = Config::load(&cli(&["--demo", "--demo.variance", "duplicates"]), &no_env)
            .expect("valid");
        assert!(config.demo_variance.duplicate_workflows);
        for args in [
            &["--demo.variance", "seconds"][..],
            &["--demo", "--demo.variance", "nope"][..],
        ] {
            let e = Config::load(&cli(args), &env_with_key).expect_err("invalid");
            assert!(e.to_string().starts_with("--demo.variance"), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn webhooks_need_a_secret_for_every_project_and_never_show_it() {
        let with = |name: &str| match name {
            "KAPSO_API_KEY" => Some("sk-test".to_owned()),
            "KAPSO_WEBHOOK_SECRET" => Some(" whsec-1 \n".to_owned()),
            _ => None,
        };
        let on = ["--webhook.listen-address", "127.0.0.1:9854"];
        let config = Config::load(&cli(&on), &with).expect("valid");
        let listener = config.webhook.as_ref().expect("on");
        assert_eq!(listener.address.port(), 9854);
        let secret = config.projects[0].webhook_secret.as_ref().expect("secret");
        assert_eq!(*secret, WebhookSecret::new("whsec-1"), "trimmed");
        assert!(!format!("{config:?}").contains("whsec-1"));
        // Off by default, even with a secret in the environment.
        assert!(
            Config::load(&cli(&[]), &with)
                .expect("valid")
                .webhook
                .is_none()
        );
        // The demo listens on a local port of its own.
        let demo = Config::load(&cli(&["--demo"]), &no_env).expect("valid");
        assert!(demo.webhook.is_some_and(|w| w.address.ip().is_loopback()));

        for (args, env, wanted) in [
            (
                &on[..],
                &env_with_key as &dyn Fn(&str) -> Option<String>,
                "no webhook secret",
            ),
            (
                &["--webhook.config.file", "/nonexistent.yml"][..],
                &with,
                "--webhook.config.file is only valid with --webhook.listen-address",
            ),
            (
                &["--webhook.listen-address", "nowhere"][..],
                &with,
                "--webhook.listen-address \"nowhere\"",
            ),
            (
                &["--webhook.listen-address", ":9853"][..],
                &with,
                "must differ from --web.listen-address",
            ),
            (
                &[
                    "--webhook.listen-address",
                    ":9854",
                    "--webhook.secret-file",
                    "/nonexistent",
                ][..],
                &with,
                "cannot read webhook secret file",
            ),
        ] {
            let e = Config::load(&cli(args), env).expect_err("invalid");
            assert!(e.to_string().contains(wanted), "{args:?}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn webhook_secrets_and_storage_come_from_the_file_per_project() {
        let dir = std::env::temp_dir().join(format!("kx-conf-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp file");
        std::fs::write(dir.join("a.secret"), "secret-a\n").expect("temp file");
        let file = dir.join("config.yml");
        std::fs::write(
            &file,
            "webhook: {listen_address: \"127.0.0.1:9854\"}\nstorage: {path: state}\nprojects:\n  - {name: a, api_key_env: KEY_A, webhook_secret_file: a.secret}\n  - {name: b, api_key_env: KEY_B, webhook_secret_env: HOOK_B}\n",
        )
        .expect("temp file");
        let env = |name: &str| match name {
            "KEY_A" | "KEY_B" => Some("sk".to_owned()),
            "HOOK_B" => Some("secret-b".to_owned()),
            _ => None,
        };
        let path = file.display().to_string();
        let config = Config::load(&cli(&["--config.file", &path]), &env).expect("valid");
        assert_eq!(config.storage_path, Some(dir.join("state")));
        let secrets: Vec<_> = config
            .projects
            .iter()
            .map(|p| p.webhook_secret.clone().expect("secret"))
            .collect();
        assert_eq!(
            secrets,
            [
                WebhookSecret::new("secret-a"),
                WebhookSecret::new("secret-b")
            ]
        );
        // A second project without a secret is refused, by name.
        let no_b = |name: &str| {
            (name != "HOOK_B")
                .then(|| "sk".to_owned())
                .filter(|_| name.starts_with("KEY"))
        };
        let e = Config::load(&cli(&["--config.file", &path]), &no_b).expect_err("invalid");
        assert!(e.to_string().contains("HOOK_B"), "{e}");
        // --storage.path must be a directory.
        let e = Config::load(&cli(&["--storage.path", &path]), &env_with_key).expect_err("file");
        assert!(e.to_string().contains("must be a directory"), "{e}");
        std::fs::remove_dir_all(&dir).expect("temp file");
    }

    #[test]
    fn the_key_from_the_environment_is_trimmed() {
        let env = |name: &str| (name == "KAPSO_API_KEY").then(|| "sk-test\n".to_owned());
        let config = Config::load(&cli(&[]), &env).expect("valid");
        assert_eq!(config.projects[0].api_key, ApiKey::new("sk-test"));
    }

    #[test]
    fn a_key_no_header_can_carry_is_a_configuration_error() {
        let env = |name: &str| (name == "KAPSO_API_KEY").then(|| "sk-te\u{7}st".to_owned());
        let e = Config::load(&cli(&[]), &env).expect_err("invalid");
        assert!(e.to_string().contains("HTTP header"), "{e}");
        assert!(
            !e.to_string().contains("sk-te"),
            "the key is not shown: {e}"
        );
    }
}
