//! The projects of the merge: each project's settings from the command line, the environment
//! and the file, each with its origin, validated into a [`ProjectConfig`] with its
//! [`Target`].

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::error::{ConfigError, Origin, Problems};
use super::file::FileProject;
use super::{
    DEFAULT_BASE_URL, DEFAULT_PROJECT, DEFAULT_RATE_LIMIT, DEFAULT_TIMEOUT, DEMO_RATE_LIMIT,
    Interval, Merge, Mode, ProjectConfig, Sourced, Target, flag, human_duration,
    parse_conversations_file,
};
use crate::kapso::ApiKey;
use crate::webhook::WebhookSecret;

/// A project's settings before validation, each with its origin.
#[derive(Clone, Debug, Default)]
struct ProjectInput {
    base_url: Option<Sourced<String>>,
    api_key_file: Option<Sourced<PathBuf>>,
    api_key_env: Option<Sourced<String>>,
    rate_limit: Option<Sourced<u32>>,
    timeout: Option<Sourced<Duration>>,
    poll_interval: Option<Sourced<Duration>>,
    conversation_ids: Option<Sourced<Vec<String>>>,
    conversations_file: Option<Sourced<PathBuf>>,
    discover: Option<Sourced<Duration>>,
    webhook_secret_file: Option<Sourced<PathBuf>>,
    webhook_secret_env: Option<Sourced<String>>,
    /// Where the project is declared (`projects[i]` of the file), for problems of no one key.
    place: Option<Origin>,
}

impl ProjectInput {
    /// Field by field, `self`'s settings, else `fallback`'s.
    fn or(self, fallback: &ProjectInput) -> ProjectInput {
        let f = fallback.clone();
        ProjectInput {
            base_url: self.base_url.or(f.base_url),
            api_key_file: self.api_key_file.or(f.api_key_file),
            api_key_env: self.api_key_env.or(f.api_key_env),
            rate_limit: self.rate_limit.or(f.rate_limit),
            timeout: self.timeout.or(f.timeout),
            poll_interval: self.poll_interval.or(f.poll_interval),
            conversation_ids: self.conversation_ids.or(f.conversation_ids),
            conversations_file: self.conversations_file.or(f.conversations_file),
            discover: self.discover.or(f.discover),
            webhook_secret_file: self.webhook_secret_file.or(f.webhook_secret_file),
            webhook_secret_env: self.webhook_secret_env.or(f.webhook_secret_env),
            place: self.place.or(f.place),
        }
    }
}

/// A secret (API key or webhook secret) looked for in its usual places.
struct SecretSpec<'a> {
    file: &'a Option<Sourced<PathBuf>>,
    env: &'a Option<Sourced<String>>,
    fallback: Option<Sourced<String>>,
    what: &'static str,
}

impl Merge<'_> {
    /// The command line's project settings (defaults for every project).
    fn cli_project(&self) -> ProjectInput {
        let cli = self.cli;
        let base_url = flag(
            cli.base_url.as_ref().map(Url::to_string),
            "--kapso.base-url",
        )
        .or_else(|| {
            (self.env)("KAPSO_BASE_URL")
                .filter(|v| !v.trim().is_empty())
                .map(|v| Sourced {
                    value: v.trim().to_owned(),
                    origin: Origin::Env("KAPSO_BASE_URL".to_owned()),
                })
        });
        ProjectInput {
            base_url,
            api_key_file: flag(cli.api_key_file.clone(), "--kapso.api-key-file"),
            api_key_env: None,
            rate_limit: flag(cli.rate_limit, "--kapso.rate-limit"),
            timeout: flag(cli.timeout, "--kapso.timeout"),
            poll_interval: None,
            conversation_ids: flag(
                Some(cli.conversation_ids.clone()).filter(|ids| !ids.is_empty()),
                "--kapso.conversation-id",
            ),
            conversations_file: flag(cli.conversations_file.clone(), "--kapso.conversations-file"),
            discover: flag(cli.discover_conversations, "--kapso.discover-conversations"),
            webhook_secret_file: flag(cli.webhook_secret_file.clone(), "--webhook.secret-file"),
            webhook_secret_env: None,
            place: None,
        }
    }

    /// `kapso:` or `projects[i]` of the file, under `prefix`.
    fn file_project(&mut self, p: &FileProject, prefix: &str) -> ProjectInput {
        let key = |k: &str| format!("{prefix}.{k}");
        ProjectInput {
            base_url: self.file_text(p.base_url.as_ref(), &key("base_url")),
            api_key_file: self.file_path(p.api_key_file.as_ref(), &key("api_key_file")),
            api_key_env: self.file_text(p.api_key_env.as_ref(), &key("api_key_env")),
            rate_limit: p.rate_limit.map(|value| Sourced {
                value,
                origin: self.at(&key("rate_limit")),
            }),
            timeout: self.file_duration(p.timeout.as_ref(), &key("timeout")),
            poll_interval: self.file_duration(p.poll_interval.as_ref(), &key("poll_interval")),
            conversation_ids: (!p.conversation_ids.is_empty()).then(|| Sourced {
                value: p.conversation_ids.clone(),
                origin: self.at(&key("conversation_ids")),
            }),
            conversations_file: self
                .file_path(p.conversations_file.as_ref(), &key("conversations_file")),
            discover: self.file_duration(
                p.discover_conversations.as_ref(),
                &key("discover_conversations"),
            ),
            webhook_secret_file: self
                .file_path(p.webhook_secret_file.as_ref(), &key("webhook_secret_file")),
            webhook_secret_env: self
                .file_text(p.webhook_secret_env.as_ref(), &key("webhook_secret_env")),
            place: prefix.starts_with("projects[").then(|| self.at(prefix)),
        }
    }

    /// The projects that are valid (a problem of the others is kept).
    pub(super) fn projects(&mut self, interval: Interval) -> Vec<ProjectConfig> {
        let kapso = std::mem::take(&mut self.file.kapso);
        let file_defaults = self.file_project(&kapso, "kapso");
        let defaults = self.cli_project().or(&file_defaults);
        let file_projects = std::mem::take(&mut self.file.projects);
        if self.cli.demo {
            return self.demo_project(&defaults, &file_projects, &interval);
        }
        if file_projects.is_empty() {
            let key = self.env_secret("KAPSO_API_KEY");
            let secret = self.env_secret("KAPSO_WEBHOOK_SECRET");
            let p = self.project(defaults, DEFAULT_PROJECT, &interval, key, secret);
            return p.into_iter().collect();
        }
        if !self.cli.conversation_ids.is_empty() || self.cli.conversations_file.is_some() {
            let origin = if self.cli.conversation_ids.is_empty() {
                Origin::Flag("--kapso.conversations-file")
            } else {
                Origin::Flag("--kapso.conversation-id")
            };
            self.problems.push(ConfigError::new(
                origin,
                "cannot be combined with projects in the config file; set conversation_ids or conversations_file per project",
            ));
        }
        let single = file_projects.len() == 1;
        let mut projects = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, p) in file_projects.iter().enumerate() {
            let prefix = format!("projects[{i}]");
            let input = self.file_project(p, &prefix).or(&defaults);
            let Some(name) = self.project_name(p.name.as_deref(), &prefix) else {
                continue;
            };
            if !names.insert(name.clone()) {
                let origin = self.at(&format!("{prefix}.name"));
                let e = ConfigError::new(origin, format!("project name {name:?} is used twice"));
                self.problems.push(e);
            }
            let (key, secret) = if single {
                let key = self.env_secret("KAPSO_API_KEY");
                (key, self.env_secret("KAPSO_WEBHOOK_SECRET"))
            } else {
                (None, None)
            };
            projects.extend(self.project(input, &name, &interval, key, secret));
        }
        projects
    }

    /// The demo's single project; no base URL may be given (it would not be used).
    fn demo_project(
        &mut self,
        defaults: &ProjectInput,
        file_projects: &[FileProject],
        interval: &Interval,
    ) -> Vec<ProjectConfig> {
        let mut given: Vec<Origin> = defaults.base_url.iter().map(|b| b.origin.clone()).collect();
        for (i, p) in file_projects.iter().enumerate() {
            if p.base_url.is_some() {
                given.push(self.at(&format!("projects[{i}].base_url")));
            }
        }
        for origin in given {
            self.problems.push(ConfigError::new(
                origin,
                "a base URL cannot be combined with --demo, which talks to its embedded simulator; drop one of them",
            ));
        }
        let p = self.project(defaults.clone(), DEFAULT_PROJECT, interval, None, None);
        p.into_iter().collect()
    }

    fn project_name(&mut self, name: Option<&str>, prefix: &str) -> Option<String> {
        let Some(name) = name else {
            self.problems
                .push(ConfigError::new(self.at(prefix), "a project needs a name"));
            return None;
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            let origin = self.at(&format!("{prefix}.name"));
            self.problems.push(ConfigError::new(
                origin,
                format!("project name {name:?} must be non-empty printable text"),
            ));
            return None;
        }
        Some(name.to_owned())
    }

    /// A secret from the environment variable `var`, trimmed; unset or blank is none.
    fn env_secret(&self, var: &str) -> Option<Sourced<String>> {
        (self.env)(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| Sourced {
                value: v.trim().to_owned(),
                origin: Origin::Env(var.to_owned()),
            })
    }

    /// One project, validated; its problems are kept and `None` returned.
    fn project(
        &mut self,
        p: ProjectInput,
        name: &str,
        interval: &Interval,
        fallback_key: Option<Sourced<String>>,
        fallback_secret: Option<Sourced<String>>,
    ) -> Option<ProjectConfig> {
        let mut scoped = Problems::default();
        std::mem::swap(&mut scoped, &mut self.problems);
        let built = self.project_inner(p, name, interval, fallback_key, fallback_secret);
        std::mem::swap(&mut scoped, &mut self.problems);
        let failed = !scoped.is_empty();
        for e in scoped.into_vec() {
            self.problems.push(if name == DEFAULT_PROJECT {
                e
            } else {
                e.in_project(name)
            });
        }
        if failed { None } else { built }
    }

    fn project_inner(
        &mut self,
        p: ProjectInput,
        name: &str,
        interval: &Interval,
        fallback_key: Option<Sourced<String>>,
        fallback_secret: Option<Sourced<String>>,
    ) -> Option<ProjectConfig> {
        let target = if self.cli.demo {
            Some(Target::Demo)
        } else {
            self.kapso_target(&p, name, fallback_key)
        };
        let default_limit = if self.cli.demo {
            DEMO_RATE_LIMIT
        } else {
            DEFAULT_RATE_LIMIT
        };
        let rate_limit = match &p.rate_limit {
            Some(r) if r.value == 0 => {
                self.problems.push(ConfigError::new(
                    r.origin.clone(),
                    "must be at least 1 request per minute",
                ));
                None
            }
            r => Some(r.as_ref().map_or(default_limit, |r| r.value)),
        };
        let (timeout, poll_interval) = self.timing(&p, interval);
        let mode = self.mode(&p);
        let webhook_secret = self.secret(SecretSpec {
            file: &p.webhook_secret_file,
            env: &p.webhook_secret_env,
            fallback: fallback_secret,
            what: "webhook secret",
        });
        Some(ProjectConfig {
            name: name.to_owned(),
            target: target?,
            rate_limit: rate_limit?,
            timeout: timeout?,
            poll_interval: poll_interval?,
            mode: mode?,
            webhook_secret: webhook_secret?.map(|s| WebhookSecret::new(s.value)),
        })
    }

    fn kapso_target(
        &mut self,
        p: &ProjectInput,
        name: &str,
        fallback_key: Option<Sourced<String>>,
    ) -> Option<Target> {
        let base_url = self.base_url(p.base_url.as_ref());
        let key = self.secret(SecretSpec {
            file: &p.api_key_file,
            env: &p.api_key_env,
            fallback: fallback_key,
            what: "API key",
        });
        let key = match key? {
            Some(key) => key,
            None if name == DEFAULT_PROJECT => {
                self.problems.push(ConfigError::general(
                    "no Kapso API key: set KAPSO_API_KEY or --kapso.api-key-file (or run with --demo)",
                ));
                return None;
            }
            None => {
                self.problems.push(ConfigError::at(
                    p.place.as_ref(),
                    "no Kapso API key: set api_key_file or api_key_env for the project (or kapso.api_key_file for all), or --kapso.api-key-file",
                ));
                return None;
            }
        };
        // Checked here, not when the client is built after the port is bound.
        if axum::http::HeaderValue::from_str(&key.value).is_err() {
            self.problems.push(ConfigError::new(
                key.origin,
                "the Kapso API key contains characters an HTTP header cannot carry (control characters or non-ASCII)",
            ));
            return None;
        }
        Some(Target::Kapso {
            base_url: base_url?,
            api_key: ApiKey::new(key.value),
        })
    }

    fn base_url(&mut self, given: Option<&Sourced<String>>) -> Option<Url> {
        let Some(given) = given else {
            return Url::parse(DEFAULT_BASE_URL).ok();
        };
        let raw = given.value.as_str();
        let problem = match Url::parse(raw) {
            Err(e) => format!("{raw:?} is not a URL: {e}"),
            Ok(url) if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() => {
                format!("{raw:?} must be an http(s) URL with a host")
            }
            Ok(url)
                if url.query().is_some()
                    || !url.username().is_empty()
                    || url.password().is_some() =>
            {
                "the base URL must not carry credentials or a query (the key goes in KAPSO_API_KEY)"
                    .to_owned()
            }
            Ok(url) => return Some(url),
        };
        self.problems
            .push(ConfigError::new(given.origin.clone(), problem));
        None
    }

    /// A secret from its file, its environment variable, or the fallback; `Some(None)` when
    /// there is none, `None` after a problem.
    fn secret(&mut self, spec: SecretSpec<'_>) -> Option<Option<Sourced<String>>> {
        let what = spec.what;
        let found = if let Some(path) = spec.file {
            let shown = path.value.display();
            match std::fs::read_to_string(&path.value) {
                Err(e) => Err(format!("cannot read {what} file {shown}: {e}")),
                Ok(text) if text.trim().is_empty() => Err(format!("{what} file {shown} is empty")),
                Ok(text) => Ok(Some(text.trim().to_owned())),
            }
            .map(|v| v.map(|value| (value, path.origin.clone())))
            .map_err(|e| ConfigError::new(path.origin.clone(), e))
        } else if let Some(var) = spec.env {
            match self.env_secret(&var.value) {
                Some(s) => Ok(Some((s.value, var.origin.clone()))),
                None => Err(ConfigError::new(
                    var.origin.clone(),
                    format!("environment variable {} is not set or empty", var.value),
                )),
            }
        } else {
            Ok(spec.fallback.map(|s| (s.value, s.origin)))
        };
        let found = self.problems.check(found)?;
        Some(found.map(|(value, origin)| Sourced { value, origin }))
    }

    /// The request timeout and the poll interval, the first shorter than the second.
    fn timing(
        &mut self,
        p: &ProjectInput,
        global: &Interval,
    ) -> (Option<Duration>, Option<Duration>) {
        let interval = match &p.poll_interval {
            Some(own) if own.value.is_zero() => {
                self.problems.push(ConfigError::new(
                    own.origin.clone(),
                    "must be longer than zero",
                ));
                None
            }
            Some(own) => Some((own.value, Some(own.origin.clone()))),
            None => global.0.map(|v| (v, global.1.clone())),
        };
        let timeout = p.timeout.as_ref();
        if let Some(t) = timeout.filter(|t| t.value.is_zero()) {
            self.problems.push(ConfigError::new(
                t.origin.clone(),
                "must be longer than zero",
            ));
            return (None, interval.map(|i| i.0));
        }
        let Some((interval, interval_origin)) = interval else {
            return (
                timeout.map_or(Some(DEFAULT_TIMEOUT), |t| Some(t.value)),
                None,
            );
        };
        let t = timeout.map_or(DEFAULT_TIMEOUT, |t| t.value);
        if t < interval {
            return (Some(t), Some(interval));
        }
        let e = match timeout {
            Some(given) => ConfigError::new(
                given.origin.clone(),
                format!(
                    "the request timeout ({}) must be shorter than the poll interval ({}, {})",
                    human_duration(t),
                    human_duration(interval),
                    Origin::phrase(interval_origin.as_ref())
                ),
            ),
            None => ConfigError::at(
                interval_origin.as_ref(),
                format!(
                    "the poll interval ({}) must be longer than the request timeout ({}, the default; {})",
                    human_duration(interval),
                    human_duration(t),
                    match interval_origin {
                        Some(Origin::File { .. }) => "set a shorter timeout in the config file",
                        _ => "set a shorter one with --kapso.timeout",
                    }
                ),
            ),
        };
        self.problems.push(e);
        (None, None)
    }

    fn mode(&mut self, p: &ProjectInput) -> Option<Mode> {
        let mut ids = Vec::new();
        let mut ok = true;
        if let Some(given) = &p.conversation_ids {
            ok &= self.check_ids(&given.value, &given.origin);
            ids.extend(given.value.iter().cloned());
        }
        if let Some(path) = &p.conversations_file {
            match std::fs::read_to_string(&path.value) {
                Ok(text) => {
                    let listed = parse_conversations_file(&text);
                    ok &= self.check_ids(&listed, &path.origin);
                    ids.extend(listed);
                }
                Err(e) => {
                    self.problems.push(ConfigError::new(
                        path.origin.clone(),
                        format!(
                            "cannot read conversations file {}: {e}",
                            path.value.display()
                        ),
                    ));
                    ok = false;
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let discover = match &p.discover {
            Some(d) if d.value.is_zero() => {
                self.problems.push(ConfigError::new(
                    d.origin.clone(),
                    "must be longer than zero",
                ));
                return None;
            }
            d => d.as_ref().map(|d| d.value),
        };
        if !ok {
            return None;
        }
        Some(if ids.is_empty() && discover.is_none() {
            Mode::Project
        } else {
            Mode::Conversations { ids, discover }
        })
    }

    fn check_ids(&mut self, ids: &[String], origin: &Origin) -> bool {
        let bad = ids.iter().find(|id| {
            id.trim().is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace())
        });
        if let Some(id) = bad {
            self.problems.push(ConfigError::new(
                origin.clone(),
                format!("conversation id {id:?} is empty or contains whitespace"),
            ));
        }
        bad.is_none()
    }
}
