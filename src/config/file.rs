//! The YAML configuration file (`--config.file`): its shape, its errors said in the file's
//! terms (keys and lines, never the program's type names), and where each key is.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ConfigError, Origin};

/// The file. Strict: unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with keys web, log, poll, metrics, kapso, projects, webhook, storage"
)]
pub struct FileConfig {
    #[serde(default)]
    pub web: FileWeb,
    #[serde(default)]
    pub log: FileLog,
    #[serde(default)]
    pub poll: FilePoll,
    #[serde(default)]
    pub metrics: FileMetrics,
    #[serde(default)]
    pub kapso: FileProject,
    #[serde(default)]
    pub projects: Vec<FileProject>,
    #[serde(default)]
    pub webhook: FileWebhook,
    #[serde(default)]
    pub storage: FileStorage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with key path")]
pub struct FileStorage {
    pub path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with keys listen_address, config_file"
)]
pub struct FileWebhook {
    pub listen_address: Option<String>,
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with keys listen_address, telemetry_path, config_file, max_connections"
)]
pub struct FileWeb {
    pub listen_address: Option<String>,
    pub telemetry_path: Option<String>,
    pub config_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with keys level, format")]
pub struct FileLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with key interval")]
pub struct FilePoll {
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with keys max_conversations, max_steps_per_workflow, stall_thresholds"
)]
pub struct FileMetrics {
    pub max_conversations: Option<usize>,
    pub max_steps_per_workflow: Option<usize>,
    pub stall_thresholds: Option<Vec<String>>,
}

/// `kapso:` (defaults of every project) and each entry of `projects:`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of project settings (name, base_url, api_key_file, api_key_env, ...)"
)]
pub struct FileProject {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key.
    pub api_key_env: Option<String>,
    pub rate_limit: Option<u32>,
    pub timeout: Option<String>,
    pub poll_interval: Option<String>,
    #[serde(default)]
    pub conversation_ids: Vec<String>,
    pub conversations_file: Option<PathBuf>,
    pub discover_conversations: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the webhook secret.
    pub webhook_secret_env: Option<String>,
}

/// The file as read: its path (as given), its text, and the directory relative paths in it
/// are relative to.
#[derive(Debug, Default)]
pub struct Source {
    pub path: PathBuf,
    text: String,
}

impl Source {
    /// Where `key` (`projects[1].poll_interval`) is, for an error about its value.
    pub fn origin(&self, key: &str) -> Origin {
        Origin::File {
            path: self.path.clone(),
            key: key.to_owned(),
            line: line_of(&self.text, key),
        }
    }

    /// A path written in the file, relative to the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        self.path
            .parent()
            .map_or_else(|| path.to_path_buf(), |dir| dir.join(path))
    }
}

/// Reads and decodes the file.
pub fn read(path: &Path) -> Result<(FileConfig, Source), ConfigError> {
    let whole = Origin::File {
        path: path.to_path_buf(),
        key: String::new(),
        line: None,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(whole.clone(), format!("cannot read the config file: {e}"))
    })?;
    let source = Source {
        path: path.to_path_buf(),
        text,
    };
    if source.text.trim().is_empty() {
        return Ok((FileConfig::default(), source));
    }
    match serde_norway::from_str(&source.text) {
        Ok(file) => Ok((file, source)),
        Err(e) => Err(decode_error(path, &e)),
    }
}

/// A decoding error in the file's terms: `config.yml:3: poll: expected a mapping with key
/// interval, found a list`.
fn decode_error(path: &Path, e: &serde_norway::Error) -> ConfigError {
    let text = e.to_string().replace(['\n', '\r'], " ");
    // serde_norway appends " at line L column C" (and more for syntax errors); the line is
    // taken from location() instead.
    let text = text.split(" at line ").next().unwrap_or(&text);
    let (key, message) = match text.split_once(": ") {
        Some((key, rest)) if is_key_path(key) => (key.to_owned(), rest),
        _ => (String::new(), text),
    };
    let origin = Origin::File {
        path: path.to_path_buf(),
        key,
        line: e.location().map(|l| l.line()),
    };
    ConfigError::new(origin, plain(message))
}

fn is_key_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
}

/// serde's wording, without the program's type names.
fn plain(message: &str) -> String {
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, found {}",
                expected_name(expected),
                found_name(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let known = known.trim_start_matches("one of ").replace('`', "");
        let field = field.replace('`', "");
        return if known.is_empty() || known == "nothing" {
            format!("unknown key {field}")
        } else {
            format!("unknown key {field} (known keys: {known})")
        };
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("missing key {}", field.replace('`', ""));
    }
    message.to_owned()
}

fn expected_name(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, at least 0".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "path string" => "a path".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a string" => "text".to_owned(),
        other => other.to_owned(),
    }
}

fn found_name(found: &str) -> String {
    let unquoted = |s: &str| s.trim_matches('`').to_owned();
    if found == "sequence" {
        "a list".to_owned()
    } else if found == "map" {
        "a mapping".to_owned()
    } else if found == "unit value" {
        "nothing (null)".to_owned()
    } else if let Some(s) = found.strip_prefix("string ") {
        format!("the text {s}")
    } else if let Some(n) = found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
    {
        format!("the number {}", unquoted(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        unquoted(b)
    } else {
        found.to_owned()
    }
}

/// One step of a key path: `projects`, `[1]`.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(key: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Step::Index(i));
            }
        }
    }
    out
}

/// The 1-based line of `key` in block-style YAML `text`: found by indentation, as far as the
/// path can be followed (a key inside a flow mapping `{...}` gives the line of the mapping).
/// `None` when not even the first step is found.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<Line<'_>> = text.lines().map(Line::new).collect();
    let mut found = None;
    // The line the current node starts at, and its column (-1: the document).
    let (mut at, mut column) = (0usize, -1i64);
    let mut after_key = true;
    for step in steps(key) {
        let start = if after_key {
            at + usize::from(found.is_some())
        } else {
            at
        };
        let hit = match step {
            Step::Key(name) => find_key(&lines, start, column, name, !after_key),
            Step::Index(i) => find_item(&lines, start, column, i),
        };
        let Some((line, col)) = hit else { break };
        found = Some(line + 1);
        (at, column) = (line, col);
        after_key = matches!(step, Step::Key(_));
    }
    found
}

/// A line of YAML: the column of its first content, of its key after any `- ` markers, the
/// key, and the column of its leading `-` if it is an item.
struct Line<'a> {
    content: Option<i64>,
    key_column: i64,
    key: Option<&'a str>,
    dash: Option<i64>,
}

impl<'a> Line<'a> {
    fn new(line: &'a str) -> Line<'a> {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Line {
                content: None,
                key_column: 0,
                key: None,
                dash: None,
            };
        }
        let content = (line.len() - trimmed.len()) as i64;
        let mut rest = trimmed;
        let mut key_column = content;
        let dash = (rest.starts_with("- ") || rest == "-").then_some(content);
        while let Some(r) = rest.strip_prefix("- ") {
            let r2 = r.trim_start();
            key_column += (rest.len() - r2.len()) as i64;
            rest = r2;
        }
        let key = rest
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches(['"', '\'']))
            .filter(|k| !k.is_empty() && !k.contains([' ', '{', '[']));
        Line {
            content: Some(content),
            key_column,
            key,
            dash,
        }
    }
}

/// `name` as a direct child of the node at `column`, from line `start`. `same_line`: the node
/// is a list item whose first key may sit on its own line (`- name: a`).
fn find_key(
    lines: &[Line<'_>],
    start: usize,
    column: i64,
    name: &str,
    same_line: bool,
) -> Option<(usize, i64)> {
    let mut child = None;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let Some(content) = line.content else {
            continue;
        };
        let first = same_line && i == start;
        if !first && content <= column {
            break;
        }
        let col = if first { line.key_column } else { content };
        let child_col = *child.get_or_insert(col);
        if col == child_col && line.key == Some(name) {
            return Some((i, col));
        }
    }
    None
}

/// Item `index` of the list under the key at `column`, from line `start`.
fn find_item(lines: &[Line<'_>], start: usize, column: i64, index: usize) -> Option<(usize, i64)> {
    let mut dash_col = None;
    let mut seen = 0;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let Some(content) = line.content else {
            continue;
        };
        if content < column || (content == column && line.dash.is_none()) {
            break;
        }
        let Some(dash) = line.dash else { continue };
        if *dash_col.get_or_insert(dash) != dash {
            continue;
        }
        if seen == index {
            return Some((i, dash));
        }
        seen += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
poll:
  interval: 30s
kapso:
  timeout: 5s
projects:
  - name: acme
    timeout: 1s
    poll_interval: soon
  -   name: beta

      poll_interval: 2m
- {name: c, timeout: 3s}
";

    #[test]
    fn finds_the_line_of_a_key_path() {
        assert_eq!(line_of(TEXT, "poll"), Some(2));
        assert_eq!(line_of(TEXT, "poll.interval"), Some(3));
        assert_eq!(line_of(TEXT, "kapso.timeout"), Some(5));
        assert_eq!(line_of(TEXT, "timeout"), None, "only direct children");
        assert_eq!(line_of(TEXT, "projects[0].name"), Some(7));
        assert_eq!(line_of(TEXT, "projects[0].poll_interval"), Some(9));
        assert_eq!(line_of(TEXT, "projects[1]"), Some(10));
        assert_eq!(line_of(TEXT, "projects[1].name"), Some(10));
        assert_eq!(line_of(TEXT, "projects[1].poll_interval"), Some(12));
        assert_eq!(line_of(TEXT, "projects[1].timeout"), Some(10), "the item");
        assert_eq!(line_of(TEXT, "nope"), None);
        let flat = "projects:\n- name: a\n  timeout: 1s\n- name: b\n  timeout: 2s\n";
        assert_eq!(line_of(flat, "projects[1].timeout"), Some(5));
    }

    fn decode(text: &str) -> String {
        let e = serde_norway::from_str::<FileConfig>(text).expect_err("invalid");
        decode_error(Path::new("config.yml"), &e).to_string()
    }

    #[test]
    fn decoding_errors_speak_of_keys_not_types() {
        assert_eq!(
            decode("poll:\n  - 1\n"),
            "config.yml:2: poll: expected a mapping with key interval, found a list"
        );
        assert_eq!(
            decode("projects:\n  - name: a\n    nope: 1\n"),
            format!(
                "config.yml:3: projects[0]: unknown key nope (known keys: name, base_url, api_key_file, api_key_env, rate_limit, timeout, poll_interval, conversation_ids, conversations_file, discover_conversations, webhook_secret_file, webhook_secret_env)"
            )
        );
        assert_eq!(
            decode("kapso:\n  rate_limit: -5\n"),
            "config.yml:2: kapso.rate_limit: expected a whole number, at least 0, found the number -5"
        );
        assert_eq!(
            decode("web: 3\n"),
            "config.yml:1: web: expected a mapping with keys listen_address, telemetry_path, config_file, max_connections, found the number 3"
        );
        for text in [
            "[1, 2]",
            "poll: {interval: [1]}",
            "metrics: {stall_thresholds: 5}",
            "a: b: c",
        ] {
            let e = decode(text);
            assert!(!e.contains("struct") && !e.contains("File"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
