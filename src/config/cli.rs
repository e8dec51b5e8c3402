//! The command line, typed: durations, addresses and numbers are parsed here, so that a bad
//! value is a usage error naming its flag. Defaults and environment variables are applied when
//! the configuration is merged (`Config::load`), where their origin is known; `--help` states
//! them, and README's flag table states the same (`tests/binary/cli.rs` compares the two).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::VERSION;

/// Prometheus exporter for Kapso workflow executions.
///
/// Polls the Kapso Platform API in the background, within the API key's rate limit, and serves
/// the latest state on /metrics. The API key is read from the KAPSO_API_KEY environment variable
/// or from --kapso.api-key-file, never from a flag value. Exit codes: 64 for a usage or
/// configuration error, 69 when a valid configuration cannot start (a port in use).
#[derive(Debug, Default, Parser)]
#[command(name = "kapso-exporter", version = VERSION)]
pub struct Cli {
    /// Base URL of the Kapso Platform API [env: KAPSO_BASE_URL] [default: https://api.kapso.ai/platform/v1]
    #[arg(long = "kapso.base-url", value_name = "URL", value_parser = parse_url, help_heading = "Kapso")]
    pub base_url: Option<url::Url>,
    /// File holding the API key; without it the key is read from the KAPSO_API_KEY environment variable
    #[arg(
        long = "kapso.api-key-file",
        value_name = "PATH",
        help_heading = "Kapso"
    )]
    pub api_key_file: Option<PathBuf>,
    /// Not accepted: a key on the command line shows in the process list (a clear error instead of "unexpected argument")
    #[arg(
        long = "kapso.api-key",
        value_name = "KEY",
        hide = true,
        num_args = 0..=1,
        default_missing_value = "",
        allow_hyphen_values = true,
        value_parser = reject_value
    )]
    pub api_key: Option<Rejected>,
    /// Watch only this conversation (repeatable) through its flow_executions endpoint
    #[arg(
        long = "kapso.conversation-id",
        value_name = "ID",
        help_heading = "Kapso"
    )]
    pub conversation_ids: Vec<String>,
    /// File with conversation ids to watch, one per line ('#' starts a comment)
    #[arg(
        long = "kapso.conversations-file",
        value_name = "PATH",
        help_heading = "Kapso"
    )]
    pub conversations_file: Option<PathBuf>,
    /// Also watch conversations active within this duration, found by listing conversations
    #[arg(long = "kapso.discover-conversations", value_name = "DURATION", value_parser = parse_duration, help_heading = "Kapso")]
    pub discover_conversations: Option<Duration>,
    /// Requests per minute the exporter may spend per API key [default: 80 (800 with --demo)]
    #[arg(long = "kapso.rate-limit", value_name = "N", help_heading = "Kapso")]
    pub rate_limit: Option<u32>,
    /// Timeout of one Kapso request, shorter than the poll interval [default: 10s]
    #[arg(long = "kapso.timeout", value_name = "DURATION", value_parser = parse_duration, help_heading = "Kapso")]
    pub timeout: Option<Duration>,
    /// Time between the starts of two polls of a project [default: 60s (15s with --demo)]
    #[arg(long = "poll.interval", value_name = "DURATION", value_parser = parse_duration, help_heading = "Polling")]
    pub poll_interval: Option<Duration>,
    /// Address to listen on for HTTP requests: host:port, or :port for every interface [default: :9853]
    #[arg(long = "web.listen-address", value_name = "ADDRESS", value_parser = parse_listen_address, help_heading = "Web")]
    pub listen_address: Option<SocketAddr>,
    /// Path under which to expose metrics [default: /metrics]
    #[arg(long = "web.telemetry-path", value_name = "PATH", help_heading = "Web")]
    pub telemetry_path: Option<String>,
    /// Exporter-toolkit web configuration file: TLS, basic auth, response headers, rate limit
    #[arg(long = "web.config.file", value_name = "PATH", help_heading = "Web")]
    pub web_config_file: Option<PathBuf>,
    /// Most HTTP connections served at once; more wait in the listen backlog [default: 64]
    #[arg(long = "web.max-connections", value_name = "N", help_heading = "Web")]
    pub max_connections: Option<usize>,
    /// Address of a second listener that receives Kapso's webhooks (POST /webhooks/kapso); off by default (a local port with --demo); its secret comes from the KAPSO_WEBHOOK_SECRET environment variable
    #[arg(long = "webhook.listen-address", value_name = "ADDRESS", value_parser = parse_listen_address, help_heading = "Webhooks")]
    pub webhook_listen_address: Option<SocketAddr>,
    /// Exporter-toolkit web configuration file (TLS, basic auth) of the webhook listener
    #[arg(
        long = "webhook.config.file",
        value_name = "PATH",
        help_heading = "Webhooks"
    )]
    pub webhook_config_file: Option<PathBuf>,
    /// File holding the webhook secret (instead of the KAPSO_WEBHOOK_SECRET environment variable)
    #[arg(
        long = "webhook.secret-file",
        value_name = "PATH",
        help_heading = "Webhooks"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// Directory where each project's counting state is saved, so counters survive restarts; off by default
    #[arg(long = "storage.path", value_name = "DIR", help_heading = "Storage")]
    pub storage_path: Option<PathBuf>,
    /// Most conversations exported in per-conversation series, most stalled first [default: 10000]
    #[arg(
        long = "metrics.max-conversations",
        value_name = "N",
        help_heading = "Metrics"
    )]
    pub max_conversations: Option<usize>,
    /// Most steps per workflow with series of their own; the least populated fold into step="other" [default: 50]
    #[arg(
        long = "metrics.max-steps-per-workflow",
        value_name = "N",
        help_heading = "Metrics"
    )]
    pub max_steps_per_workflow: Option<usize>,
    /// Stall thresholds of kapso_workflow_executions_stalled, comma-separated [default: 1m,5m,15m,1h,4h,1d]
    #[arg(
        long = "metrics.stall-thresholds",
        value_name = "DURATIONS",
        value_delimiter = ',',
        value_parser = parse_duration,
        help_heading = "Metrics"
    )]
    pub stall_thresholds: Vec<Duration>,
    /// Only log messages with the given severity or above [default: info]
    #[arg(long = "log.level", value_name = "LEVEL", help_heading = "Logging")]
    pub log_level: Option<LogLevel>,
    /// Output format of log messages [default: logfmt]
    #[arg(long = "log.format", value_name = "FORMAT", help_heading = "Logging")]
    pub log_format: Option<LogFormat>,
    /// YAML configuration file (flags override it; it can declare several projects)
    #[arg(
        long = "config.file",
        value_name = "PATH",
        help_heading = "Configuration"
    )]
    pub config_file: Option<PathBuf>,
    /// Validate the configuration: print every problem found (on stderr) and the effective settings (on stdout), and exit
    #[arg(long = "config.check", help_heading = "Configuration")]
    pub config_check: bool,
    /// Run against the embedded Kapso API simulator instead of the real API (no key; not with --kapso.base-url)
    #[arg(long = "demo", help_heading = "Demo")]
    pub demo: bool,
    /// With --demo: API variance presets for the simulator, comma-separated (seconds, millis, mixed-precision, offset, missing-counts, lagging-counts, shrinking-counts, deletions, unknown-statuses, duplicates, bad-rows, flaky-workflow-list, no-created-at, all)
    #[arg(long = "demo.variance", value_name = "LIST", help_heading = "Demo")]
    pub demo_variance: Option<String>,
}

/// A usage error of clap in one line: its message and tips, without the usage block.
pub fn usage_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let line = parts.join("; ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("{line} (see --help)")
}

/// `--log.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn level(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// `--log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// The value of a flag that is refused whatever it is (`--kapso.api-key`); the value itself is
/// dropped at once, so that it shows nowhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rejected;

fn reject_value(_: &str) -> Result<Rejected, String> {
    Ok(Rejected)
}

/// A humantime duration: `30s`, `5m`, `1h 30m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("{value:?} is not a duration like 30s or 5m ({e})"))
}

/// `host:port`, `:port` (every interface, IPv6 and IPv4: a dual-stack socket, see `app::bind`)
/// or `[v6]:port`.
pub fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    let full = if value.starts_with(':') {
        format!("[::]{value}")
    } else {
        value.to_owned()
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{value:?} is not host:port or :port"))
}

/// An absolute URL (its scheme and parts are checked with the merged configuration).
pub fn parse_url(value: &str) -> Result<url::Url, String> {
    url::Url::parse(value.trim()).map_err(|e| format!("{value:?} is not a URL ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kapso-exporter").chain(args.iter().copied()))
    }

    #[test]
    fn values_are_typed_at_the_command_line() {
        let cli = parse(&[
            "--poll.interval",
            "1m 30s",
            "--web.listen-address",
            ":9999",
            "--log.level",
            "debug",
            "--log.format=json",
            "--metrics.stall-thresholds",
            "1m,1h",
        ])
        .expect("valid");
        assert_eq!(cli.poll_interval, Some(Duration::from_secs(90)));
        assert_eq!(cli.listen_address.map(|a| a.port()), Some(9999));
        assert_eq!(cli.log_level, Some(LogLevel::Debug));
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        assert_eq!(cli.stall_thresholds.len(), 2);
        for (args, flag) in [
            (&["--poll.interval", "soon"][..], "--poll.interval"),
            (
                &["--web.listen-address", "nowhere"][..],
                "--web.listen-address",
            ),
            (&["--log.level", "loud"][..], "--log.level"),
            (&["--log.format", "xml"][..], "--log.format"),
            (&["--kapso.rate-limit=-1"][..], "--kapso.rate-limit"),
            (&["--kapso.base-url", "not a url"][..], "--kapso.base-url"),
        ] {
            let e = parse(args).expect_err("invalid").to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn usage_errors_are_one_line_with_their_hints() {
        let e = parse(&["--log.level", "loud"]).expect_err("invalid");
        assert_eq!(
            usage_error_line(&e),
            "invalid value 'loud' for '--log.level <LEVEL>'; [possible values: error, warn, info, debug, trace] (see --help)"
        );
        let e = parse(&["--dem"]).expect_err("invalid");
        let line = usage_error_line(&e);
        assert!(line.contains("'--dem'") && line.contains("tip:"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn the_api_key_flag_parses_to_a_refusal_without_its_value() {
        for args in [
            &["--kapso.api-key", "sk-secret"][..],
            &["--kapso.api-key=sk-secret"][..],
            &["--kapso.api-key"][..],
            &["--kapso.api-key", "-sk-secret"][..],
        ] {
            let cli = parse(args).expect("parsed, refused later");
            assert_eq!(cli.api_key, Some(Rejected));
            assert!(!format!("{cli:?}").contains("sk-secret"));
        }
    }
}
