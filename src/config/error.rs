//! What is wrong with the configuration, and where the value came from.

use std::fmt;
use std::path::PathBuf;

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(String),
    /// A key of `--config.file`, as a path (`projects[1].poll_interval`), with its line when
    /// it could be found. An empty key is the file as a whole.
    File {
        path: PathBuf,
        key: String,
        line: Option<usize>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File { path, key, line } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                if !key.is_empty() {
                    write!(f, ": {key}")?;
                }
                Ok(())
            }
        }
    }
}

impl Origin {
    /// The origin as a short phrase for another setting's message: "from --poll.interval".
    pub fn phrase(origin: Option<&Origin>) -> String {
        match origin {
            None => "the default".to_owned(),
            Some(Origin::File { key, .. }) => format!("{key} in the config file"),
            Some(o) => o.to_string(),
        }
    }

    /// Whether the value was written under `projects:` in the file (its key names the project).
    fn is_project_key(&self) -> bool {
        matches!(self, Origin::File { key, .. } if key.starts_with("projects["))
    }
}

/// One configuration problem, said in one line, with where the value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    origin: Option<Origin>,
    /// The named project the setting belongs to, when that is not clear from the origin.
    project: Option<String>,
    message: String,
}

impl ConfigError {
    pub fn new(origin: Origin, message: impl Into<String>) -> Self {
        ConfigError {
            origin: Some(origin),
            project: None,
            message: one_line(message.into()),
        }
    }

    /// A problem of no single setting (a missing key, say).
    pub fn general(message: impl Into<String>) -> Self {
        ConfigError {
            origin: None,
            project: None,
            message: one_line(message.into()),
        }
    }

    /// At `origin` if there is one, else general.
    pub fn at(origin: Option<&Origin>, message: impl Into<String>) -> Self {
        match origin {
            Some(o) => ConfigError::new(o.clone(), message),
            None => ConfigError::general(message),
        }
    }

    /// Says which project the problem belongs to.
    pub fn in_project(mut self, project: &str) -> Self {
        if !self.origin.as_ref().is_some_and(Origin::is_project_key) {
            self.project = Some(project.to_owned());
        }
        self
    }

    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(project) = &self.project {
            write!(f, "project {project:?}: ")?;
        }
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

fn one_line(message: String) -> String {
    if message.contains(['\n', '\r']) {
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        message
    }
}

/// Every problem found, in the order found; a [`Config`](super::Config) is built only when
/// there is none.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// The value, or `None` with the error kept.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_origin_first() {
        let flag = ConfigError::new(
            Origin::Flag("--poll.interval"),
            "\"soon\" is not a duration",
        );
        assert_eq!(
            flag.to_string(),
            "--poll.interval: \"soon\" is not a duration"
        );
        let env = ConfigError::new(Origin::Env("KAPSO_API_KEY".into()), "is empty");
        assert_eq!(
            env.to_string(),
            "environment variable KAPSO_API_KEY: is empty"
        );
        let file = Origin::File {
            path: "config.yml".into(),
            key: "projects[1].poll_interval".into(),
            line: Some(7),
        };
        let e = ConfigError::new(file.clone(), "must be longer than zero").in_project("beta");
        assert_eq!(
            e.to_string(),
            "config.yml:7: projects[1].poll_interval: must be longer than zero",
            "the key names the project already"
        );
        assert_eq!(e.origin(), Some(&file));
        let e = ConfigError::new(Origin::Flag("--kapso.timeout"), "2m\nis long").in_project("a");
        assert_eq!(e.to_string(), "project \"a\": --kapso.timeout: 2m is long");
        let whole = Origin::File {
            path: "c.yml".into(),
            key: String::new(),
            line: None,
        };
        assert_eq!(whole.to_string(), "c.yml");
    }
}
