//! Configuration in two stages: the typed command line ([`Cli`], `config/cli.rs`), then the
//! command line, the environment and the optional YAML file (`config/file.rs`) merged into a
//! [`Config`] and validated once: here, and per project in `config/project.rs`. Problems are
//! [`ConfigError`]s (`config/error.rs`); `config/summary.rs` says the effective settings.
//!
//! Precedence: a flag wins over its environment variable, that over the file, the file over the
//! defaults (a project's own keys under `projects:` win over flags given as defaults for every
//! project). Every problem is collected with where its value came from ([`Origin`]); nothing is
//! bound or started before the whole configuration is valid, and the rest of the program trusts
//! [`Config`].

mod cli;
mod error;
mod file;
mod project;
mod summary;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use cli::{Cli, LogFormat, LogLevel, Rejected, usage_error_line};
pub use error::{ConfigError, Origin};
pub use summary::human_duration;

use crate::kapso::ApiKey;
use crate::simulator::Variance;
use crate::web_config::WebConfig;
use crate::webhook::WebhookSecret;
use error::Problems;
use file::{FileConfig, Source};

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
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

/// The version with the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("KAPSO_EXPORTER_REVISION"),
    ")"
);

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
    /// `--demo`: every project's target is [`Target::Demo`].
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

/// One Kapso project (one API key).
#[derive(Clone, Debug)]
pub struct ProjectConfig {
    /// The `project` label.
    pub name: String,
    /// What the project's poller talks to.
    pub target: Target,
    pub rate_limit: u32,
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub mode: Mode,
    /// The secret Kapso signs this project's webhooks with; required when webhooks are on
    /// (with `--demo`, `app::start` makes one up for the simulator).
    pub webhook_secret: Option<WebhookSecret>,
}

impl ProjectConfig {
    /// The Kapso API key, `None` for the demo.
    pub fn api_key(&self) -> Option<&ApiKey> {
        match &self.target {
            Target::Kapso { api_key, .. } => Some(api_key),
            Target::Demo => None,
        }
    }

    /// The Kapso API's base URL, `None` for the demo.
    pub fn base_url(&self) -> Option<&Url> {
        match &self.target {
            Target::Kapso { base_url, .. } => Some(base_url),
            Target::Demo => None,
        }
    }
}

/// The API a project's poller talks to, decided when the configuration is merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The Kapso Platform API at `base_url`, with the project's key.
    Kapso { base_url: Url, api_key: ApiKey },
    /// The embedded simulator (`--demo`); its address and key exist only once it runs.
    Demo,
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

/// The poll interval of every project without one of its own: `None` after a problem; its
/// origin is `None` for the default.
type Interval = (Option<Duration>, Option<Origin>);

/// A setting and where it came from.
#[derive(Clone, Debug)]
struct Sourced<T> {
    value: T,
    origin: Origin,
}

fn flag<T>(value: Option<T>, name: &'static str) -> Option<Sourced<T>> {
    value.map(|value| Sourced {
        value,
        origin: Origin::Flag(name),
    })
}

impl Config {
    /// Merges the command line, the environment (`env` looks variables up) and the file named
    /// by `--config.file` (if any), and validates the result; the first problem found.
    pub fn load(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load_all(cli, env).map_err(|mut all| all.swap_remove(0))
    }

    /// [`Config::load`], with every problem found (never an empty list).
    pub fn load_all(
        cli: &Cli,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let check = Config::check(cli, env);
        match check.config {
            Some(config) if check.problems.is_empty() => Ok(config),
            _ => Err(check.problems),
        }
    }

    /// What `--config.check` reports: every problem, and the effective settings of what is
    /// valid.
    pub fn check(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Check {
        if cli.api_key.is_some() {
            // The value was dropped when parsed; only the hint is said.
            return Check {
                config: None,
                problems: vec![ConfigError::new(
                    Origin::Flag("--kapso.api-key"),
                    "a key is not accepted as a flag value (it would show in the process list and the shell history): set the KAPSO_API_KEY environment variable or use --kapso.api-key-file PATH",
                )],
                settings: Vec::new(),
            };
        }
        let mut merge = Merge {
            cli,
            env,
            file: FileConfig::default(),
            source: Source::default(),
            problems: Problems::default(),
        };
        if let Some(path) = &cli.config_file {
            match file::read(path) {
                Ok((file, source)) => (merge.file, merge.source) = (file, source),
                Err(e) => merge.problems.push(e),
            }
        }
        let (config, settings) = merge.config();
        let mut problems = merge.problems.into_vec();
        if config.is_none() && problems.is_empty() {
            problems.push(ConfigError::general("invalid configuration"));
        }
        Check {
            config: config.filter(|_| problems.is_empty()),
            problems,
            settings,
        }
    }
}

/// The result of [`Config::check`].
#[derive(Debug)]
pub struct Check {
    /// The configuration, when there is no problem.
    pub config: Option<Config>,
    /// Every problem found, in the order found.
    pub problems: Vec<ConfigError>,
    /// The effective settings, one line each; a setting with a problem is left out (with
    /// problems in projects, only the valid projects are listed).
    pub settings: Vec<String>,
}

/// The merge in progress: the inputs and the problems found so far.
struct Merge<'a> {
    cli: &'a Cli,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: FileConfig,
    source: Source,
    problems: Problems,
}

impl Merge<'_> {
    /// The configuration if every setting is valid, and the effective settings of those that
    /// are, in words.
    fn config(&mut self) -> (Option<Config>, Vec<String>) {
        let demo_variance = self.demo_variance();
        let poll_interval = self.poll_interval();
        let projects = self.projects(poll_interval);
        let listen = self.listen_address();
        let telemetry_path = self.telemetry_path();
        let web = self.web_config();
        let max_connections = self.max_connections();
        let log_level = self.log_level();
        let log_format = self.log_format();
        let max_conversations = self
            .cli
            .max_conversations
            .or(self.file.metrics.max_conversations)
            .unwrap_or(DEFAULT_MAX_CONVERSATIONS);
        let max_steps_per_workflow = self.max_steps_per_workflow();
        let stall_thresholds = self.stall_thresholds();
        let webhook = self.webhook(listen.clone(), &projects);
        let storage_path = self.storage_path();
        let settings = summary::lines(&summary::Parts {
            projects: &projects,
            listen_address: listen.as_ref().map(|l| l.value),
            telemetry_path: telemetry_path.as_deref(),
            web: web.as_ref(),
            max_connections,
            webhook: webhook.as_ref(),
            storage_path: storage_path.as_ref(),
            max_conversations,
            max_steps_per_workflow,
            stall_thresholds: stall_thresholds.as_deref(),
            log_level: log_level.map(LogLevel::level),
            log_format,
        });
        let config = (|| {
            Some(Config {
                projects,
                listen_address: listen?.value,
                telemetry_path: telemetry_path?,
                web: web?,
                web_limits: WebLimits {
                    max_connections: max_connections?,
                    ..WebLimits::default()
                },
                log_level: log_level?.level(),
                log_format: log_format?,
                max_conversations,
                max_steps_per_workflow: max_steps_per_workflow?,
                stall_thresholds: stall_thresholds?,
                demo: self.cli.demo,
                demo_variance: demo_variance?,
                webhook: webhook?,
                storage_path: storage_path?,
            })
        })();
        (config, settings)
    }

    fn at(&self, key: &str) -> Origin {
        self.source.origin(key)
    }

    /// A file value `key`, parsed by `parse`; a problem said at the key.
    fn file_value<T, U>(
        &mut self,
        value: Option<&T>,
        key: &str,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<Sourced<U>> {
        let value = value?;
        let origin = self.at(key);
        match parse(value) {
            Ok(value) => Some(Sourced { value, origin }),
            Err(e) => {
                self.problems.push(ConfigError::new(origin, e));
                None
            }
        }
    }

    fn file_duration(&mut self, value: Option<&String>, key: &str) -> Option<Sourced<Duration>> {
        self.file_value(value, key, |v| cli::parse_duration(v))
    }

    fn file_path(&self, value: Option<&PathBuf>, key: &str) -> Option<Sourced<PathBuf>> {
        value.map(|p| Sourced {
            value: self.source.resolve(p),
            origin: self.at(key),
        })
    }

    fn file_text(&self, value: Option<&String>, key: &str) -> Option<Sourced<String>> {
        value.map(|v| Sourced {
            value: v.clone(),
            origin: self.at(key),
        })
    }

    fn demo_variance(&mut self) -> Option<Variance> {
        let origin = Origin::Flag("--demo.variance");
        match (&self.cli.demo_variance, self.cli.demo) {
            (None, _) => Some(Variance::default()),
            (Some(_), false) => {
                self.problems
                    .push(ConfigError::new(origin, "is only valid with --demo"));
                None
            }
            (Some(list), true) => self.problems.check(
                Variance::parse_list(list)
                    .map_err(|e| ConfigError::new(origin, format!("{list:?}: {e}"))),
            ),
        }
    }

    /// The interval of every project without one of its own.
    fn poll_interval(&mut self) -> Interval {
        let given = flag(self.cli.poll_interval, "--poll.interval").or_else(|| {
            let value = self.file.poll.interval.clone();
            self.file_duration(value.as_ref(), "poll.interval")
        });
        match given {
            Some(s) if s.value.is_zero() => {
                self.problems.push(ConfigError::new(
                    s.origin.clone(),
                    "must be longer than zero",
                ));
                (None, Some(s.origin))
            }
            Some(s) => (Some(s.value), Some(s.origin)),
            None if self.cli.demo => (Some(DEMO_POLL_INTERVAL), None),
            None => (Some(DEFAULT_POLL_INTERVAL), None),
        }
    }

    fn listen_address(&mut self) -> Option<Sourced<SocketAddr>> {
        if let Some(s) = flag(self.cli.listen_address, "--web.listen-address") {
            return Some(s);
        }
        let value = self.file.web.listen_address.clone();
        if value.is_some() {
            return self.file_value(value.as_ref(), "web.listen_address", |v| {
                cli::parse_listen_address(v)
            });
        }
        cli::parse_listen_address(DEFAULT_LISTEN_ADDRESS)
            .ok()
            .map(|value| Sourced {
                value,
                origin: Origin::Flag("--web.listen-address"),
            })
    }

    fn telemetry_path(&mut self) -> Option<String> {
        let given = flag(self.cli.telemetry_path.clone(), "--web.telemetry-path").or_else(|| {
            let value = self.file.web.telemetry_path.clone();
            self.file_text(value.as_ref(), "web.telemetry_path")
        });
        let Some(given) = given else {
            return Some(DEFAULT_TELEMETRY_PATH.to_owned());
        };
        let path = given.value;
        if !path.starts_with('/')
            || path == "/"
            || path.starts_with("/-/")
            || path.contains(['?', '#', ' '])
        {
            self.problems.push(ConfigError::new(
                given.origin,
                format!("{path:?} must be an absolute path other than / and /-/..."),
            ));
            return None;
        }
        Some(path)
    }

    /// An exporter-toolkit web configuration file, loaded.
    fn load_web(&mut self, given: Option<Sourced<PathBuf>>) -> Option<WebConfig> {
        let Some(given) = given else {
            return Some(WebConfig::default());
        };
        let loaded = WebConfig::load(&given.value).map_err(|e| {
            ConfigError::new(
                given.origin,
                format!("invalid web config file {}: {e}", given.value.display()),
            )
        });
        self.problems.check(loaded)
    }

    fn web_config(&mut self) -> Option<WebConfig> {
        let given = flag(self.cli.web_config_file.clone(), "--web.config.file").or_else(|| {
            let value = self.file.web.config_file.clone();
            self.file_path(value.as_ref(), "web.config_file")
        });
        self.load_web(given)
    }

    fn max_connections(&mut self) -> Option<usize> {
        self.at_least_one(
            flag(self.cli.max_connections, "--web.max-connections"),
            self.file.web.max_connections,
            "web.max_connections",
            DEFAULT_MAX_CONNECTIONS,
        )
    }

    fn max_steps_per_workflow(&mut self) -> Option<usize> {
        self.at_least_one(
            flag(
                self.cli.max_steps_per_workflow,
                "--metrics.max-steps-per-workflow",
            ),
            self.file.metrics.max_steps_per_workflow,
            "metrics.max_steps_per_workflow",
            DEFAULT_MAX_STEPS_PER_WORKFLOW,
        )
    }

    fn at_least_one(
        &mut self,
        given: Option<Sourced<usize>>,
        file: Option<usize>,
        key: &str,
        default: usize,
    ) -> Option<usize> {
        let given = given.or_else(|| {
            file.map(|value| Sourced {
                value,
                origin: self.at(key),
            })
        });
        match given {
            None => Some(default),
            Some(g) if g.value == 0 => {
                self.problems
                    .push(ConfigError::new(g.origin, "must be at least 1"));
                None
            }
            Some(g) => Some(g.value),
        }
    }

    fn log_level(&mut self) -> Option<LogLevel> {
        let file = self.file.log.level.clone();
        self.log_enum(self.cli.log_level, file, "log.level", LogLevel::Info)
    }

    fn log_format(&mut self) -> Option<LogFormat> {
        let file = self.file.log.format.clone();
        self.log_enum(self.cli.log_format, file, "log.format", LogFormat::Logfmt)
    }

    /// A flag's value, else the file's (one of the enum's names), else `default`; `None` after
    /// a problem.
    fn log_enum<E: clap::ValueEnum + Copy>(
        &mut self,
        flag: Option<E>,
        file: Option<String>,
        key: &str,
        default: E,
    ) -> Option<E> {
        if flag.is_some() {
            return flag;
        }
        if file.is_none() {
            return Some(default);
        }
        self.file_value(file.as_ref(), key, |v| {
            E::from_str(v.trim(), false).map_err(|_| {
                let names: Vec<String> = E::value_variants()
                    .iter()
                    .filter_map(|e| e.to_possible_value().map(|p| p.get_name().to_owned()))
                    .collect();
                format!("{v:?} is not one of {}", names.join(", "))
            })
        })
        .map(|s| s.value)
    }

    fn stall_thresholds(&mut self) -> Option<Vec<Duration>> {
        let given: Vec<Sourced<Duration>> = if !self.cli.stall_thresholds.is_empty() {
            self.cli
                .stall_thresholds
                .iter()
                .filter_map(|d| flag(Some(*d), "--metrics.stall-thresholds"))
                .collect()
        } else if let Some(list) = self.file.metrics.stall_thresholds.clone() {
            if list.is_empty() {
                self.problems.push(ConfigError::new(
                    self.at("metrics.stall_thresholds"),
                    "must name at least one duration",
                ));
                return None;
            }
            let parsed: Vec<_> = list
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    self.file_duration(Some(t), &format!("metrics.stall_thresholds[{i}]"))
                })
                .collect();
            parsed.into_iter().collect::<Option<Vec<_>>>()?
        } else {
            return Some(DEFAULT_STALL_THRESHOLDS.map(Duration::from_secs).to_vec());
        };
        let mut thresholds = Vec::new();
        for t in given {
            if t.value.as_secs() == 0 || t.value.subsec_nanos() != 0 {
                self.problems.push(ConfigError::new(
                    t.origin,
                    format!(
                        "{} must be a whole number of seconds, at least 1s",
                        human_duration(t.value)
                    ),
                ));
                return None;
            }
            thresholds.push(t.value);
        }
        thresholds.sort();
        thresholds.dedup();
        Some(thresholds)
    }

    fn webhook(
        &mut self,
        listen: Option<Sourced<SocketAddr>>,
        projects: &[ProjectConfig],
    ) -> Option<Option<WebhookListener>> {
        let address =
            flag(self.cli.webhook_listen_address, "--webhook.listen-address").or_else(|| {
                let value = self.file.webhook.listen_address.clone();
                self.file_value(value.as_ref(), "webhook.listen_address", |v| {
                    cli::parse_listen_address(v)
                })
            });
        let address = address.or_else(|| {
            // The demo receives its simulator's webhooks on a port of its own choosing.
            self.cli.demo.then(|| Sourced {
                value: SocketAddr::from(([127, 0, 0, 1], 0)),
                origin: Origin::Flag("--demo"),
            })
        });
        let web_file = flag(
            self.cli.webhook_config_file.clone(),
            "--webhook.config.file",
        )
        .or_else(|| {
            let value = self.file.webhook.config_file.clone();
            self.file_path(value.as_ref(), "webhook.config_file")
        });
        let Some(address) = address else {
            if let Some(w) = web_file {
                self.problems.push(ConfigError::new(
                    w.origin,
                    "is only valid with a webhook listener (--webhook.listen-address, or webhook.listen_address in the config file)",
                ));
                return None;
            }
            let had_address = self.cli.webhook_listen_address.is_some()
                || self.file.webhook.listen_address.is_some();
            return (!had_address).then_some(None);
        };
        let web = self.load_web(web_file);
        if let Some(listen) = listen {
            if address.value == listen.value && address.value.port() != 0 {
                self.problems.push(ConfigError::new(
                    address.origin.clone(),
                    format!(
                        "{} must differ from the metrics listen address ({})",
                        address.value,
                        Origin::phrase(Some(&listen.origin))
                    ),
                ));
                return None;
            }
        }
        if !self.cli.demo {
            for p in projects.iter().filter(|p| p.webhook_secret.is_none()) {
                let e = ConfigError::new(
                    address.origin.clone(),
                    "webhooks are on but there is no webhook secret: set KAPSO_WEBHOOK_SECRET, --webhook.secret-file, or webhook_secret_file / webhook_secret_env in the config file",
                );
                self.problems.push(if p.name == DEFAULT_PROJECT {
                    e
                } else {
                    e.in_project(&p.name)
                });
            }
        }
        Some(Some(WebhookListener {
            address: address.value,
            web: web?,
        }))
    }

    fn storage_path(&mut self) -> Option<Option<PathBuf>> {
        let given = flag(self.cli.storage_path.clone(), "--storage.path").or_else(|| {
            let value = self.file.storage.path.clone();
            self.file_path(value.as_ref(), "storage.path")
        });
        let Some(given) = given else {
            return Some(None);
        };
        let path = &given.value;
        if path.as_os_str().is_empty() || (path.exists() && !path.is_dir()) {
            self.problems.push(ConfigError::new(
                given.origin,
                format!("{} must be a directory", path.display()),
            ));
            return None;
        }
        Some(Some(given.value))
    }
}

/// Conversation ids, one per line; blank lines and `#` comments are ignored.
pub fn parse_conversations_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
