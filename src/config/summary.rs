//! What `--config.check` prints of a valid configuration: the effective settings, one line
//! each, in words (never a key or a secret).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Config, LogFormat, Mode, ProjectConfig, Target, WebhookListener};
use crate::web_config::WebConfig;

/// `7 days`, `1 day 2h`, `1h 30m`, `15s`, `500ms`: days in words, the rest as humantime
/// abbreviations.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if days > 0 {
        parts.push(count(days, "day", "days"));
    }
    for (n, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if n > 0 {
            parts.push(format!("{n}{unit}"));
        }
    }
    let millis = d.subsec_millis();
    if millis > 0 {
        parts.push(format!("{millis}ms"));
    }
    if parts.is_empty() {
        return "0s".to_owned();
    }
    parts.join(" ")
}

/// `1 conversation`, `2 conversations`.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

fn count_usize(n: usize, one: &str, many: &str) -> String {
    count(u64::try_from(n).unwrap_or(u64::MAX), one, many)
}

/// The settings a summary is made of; `None`: the setting has a problem (left out).
pub(super) struct Parts<'a> {
    pub projects: &'a [ProjectConfig],
    pub listen_address: Option<SocketAddr>,
    pub telemetry_path: Option<&'a str>,
    pub web: Option<&'a WebConfig>,
    pub max_connections: Option<usize>,
    pub webhook: Option<&'a Option<WebhookListener>>,
    pub storage_path: Option<&'a Option<PathBuf>>,
    pub max_conversations: usize,
    pub max_steps_per_workflow: Option<usize>,
    pub stall_thresholds: Option<&'a [Duration]>,
    pub log_level: Option<tracing::Level>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// The effective settings, one line each.
    pub fn summary(&self) -> Vec<String> {
        lines(&Parts {
            projects: &self.projects,
            listen_address: Some(self.listen_address),
            telemetry_path: Some(&self.telemetry_path),
            web: Some(&self.web),
            max_connections: Some(self.web_limits.max_connections),
            webhook: Some(&self.webhook),
            storage_path: Some(&self.storage_path),
            max_conversations: self.max_conversations,
            max_steps_per_workflow: Some(self.max_steps_per_workflow),
            stall_thresholds: Some(&self.stall_thresholds),
            log_level: Some(self.log_level),
            log_format: Some(self.log_format),
        })
    }
}

/// The summary's lines.
pub(super) fn lines(p: &Parts<'_>) -> Vec<String> {
    let mut lines: Vec<String> = p.projects.iter().map(project_line).collect();
    if let (Some(address), Some(path), Some(web), Some(n)) =
        (p.listen_address, p.telemetry_path, p.web, p.max_connections)
    {
        lines.push(format!(
            "metrics on {address}{path} ({}), at most {} at once",
            web.describe(),
            count_usize(n, "connection", "connections")
        ));
    }
    if let Some(Some(w)) = p.webhook {
        lines.push(format!(
            "webhooks on {} ({}), POST /webhooks/kapso",
            w.address,
            w.web.describe()
        ));
    }
    if let Some(Some(dir)) = p.storage_path {
        lines.push(format!("counting state saved in {}", dir.display()));
    }
    if let (Some(steps), Some(thresholds)) = (p.max_steps_per_workflow, p.stall_thresholds) {
        let thresholds: Vec<String> = thresholds.iter().map(|d| human_duration(*d)).collect();
        lines.push(format!(
            "series: at most {} and {} per workflow; stall thresholds {}",
            count_usize(p.max_conversations, "conversation", "conversations"),
            count_usize(steps, "step", "steps"),
            thresholds.join(", ")
        ));
    }
    if let (Some(level), Some(format)) = (p.log_level, p.log_format) {
        let format = match format {
            LogFormat::Logfmt => "logfmt",
            LogFormat::Json => "json",
        };
        lines.push(format!(
            "log level {}, format {format}",
            level.as_str().to_lowercase()
        ));
    }
    lines
}

fn project_line(p: &ProjectConfig) -> String {
    let target = match &p.target {
        Target::Kapso { base_url, .. } => format!("Kapso API at {base_url}"),
        Target::Demo => "the embedded simulator (demo)".to_owned(),
    };
    let watched = match &p.mode {
        Mode::Project => "every workflow".to_owned(),
        Mode::Conversations { ids, discover } => {
            let mut parts = Vec::new();
            if !ids.is_empty() {
                parts.push(count_usize(ids.len(), "conversation", "conversations"));
            }
            if let Some(d) = discover {
                parts.push(format!(
                    "conversations active within {}",
                    human_duration(*d)
                ));
            }
            parts.join(" + ")
        }
    };
    let webhooks = if p.webhook_secret.is_some() {
        ", webhook secret set"
    } else {
        ""
    };
    format!(
        "project {}: {target}, {watched}, polled every {} (timeout {}), budget {} per minute{webhooks}",
        p.name,
        human_duration(p.poll_interval),
        human_duration(p.timeout),
        count(p.rate_limit, "request", "requests"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_counts_read_as_words() {
        assert_eq!(human_duration(Duration::from_secs(7 * 86_400)), "7 days");
        assert_eq!(
            human_duration(Duration::from_secs(86_400 + 7200)),
            "1 day 2h"
        );
        assert_eq!(human_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(human_duration(Duration::ZERO), "0s");
        assert_eq!(
            count(1u32, "conversation", "conversations"),
            "1 conversation"
        );
        assert_eq!(
            count(2u32, "conversation", "conversations"),
            "2 conversations"
        );
    }
}
