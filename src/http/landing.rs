//! The landing page (`GET /`), in the manner of the exporter-toolkit's: name, version and links,
//! then one card per project with what only this exporter knows — mode, state, the age of the
//! data served, requests per poll against the budget, the last error, workflows and live
//! executions, and the failures webhooks told of.
//!
//! One self-contained HTML document: no script, no external asset, inline CSS that stacks the
//! cards on a phone. Every value from outside (names, errors, webhook messages) is escaped.

use std::fmt::Write as _;
use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::{Clock, rfc3339_seconds};
use crate::state::ProjectState;
use crate::webhook::RecentFailure;

/// What a project's poller reads: `project`, `conversations`, or `demo` (the embedded
/// simulator), as the landing page and the start line name it.
pub type ModeLabel = &'static str;

/// What the page needs besides the projects' states: the clock its ages are computed with and
/// each project's mode, in the order of the projects.
#[derive(Clone, Debug)]
pub struct Landing {
    pub clock: Clock,
    pub modes: Vec<ModeLabel>,
}

/// The state of a project as the page names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The last poll completed.
    Up,
    /// The last poll failed; what an earlier one (or the saved state) established is served.
    DownServingLastGood,
    /// Polls failed and none ever completed: nothing is served yet.
    DownNoState,
    /// No poll finished yet; `saved` when the state restored from `--storage.path` is served.
    Waiting { saved: bool },
}

impl Status {
    pub fn of(p: &ProjectState) -> Status {
        let has_state = p.ready || p.last_success.is_some();
        if p.up {
            Status::Up
        } else if p.polls_success + p.polls_error == 0 && p.last_error.is_none() {
            Status::Waiting {
                saved: p.last_success.is_some(),
            }
        } else if has_state {
            Status::DownServingLastGood
        } else {
            Status::DownNoState
        }
    }

    /// Short, for the badge and `data-state`.
    pub fn key(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::DownServingLastGood | Status::DownNoState => "down",
            Status::Waiting { .. } => "waiting",
        }
    }

    /// In words.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::DownServingLastGood => "down, serving the last good state",
            Status::DownNoState => "down, no state yet",
            Status::Waiting { saved: false } => "waiting for the first poll",
            Status::Waiting { saved: true } => {
                "waiting for the first poll, serving the saved state"
            }
        }
    }
}

/// One project's card, read from its state at one instant.
#[derive(Clone, Debug)]
pub struct Card {
    pub name: String,
    pub mode: ModeLabel,
    pub status: Status,
    pub last_success: Option<OffsetDateTime>,
    /// How old the served data is, to the second.
    pub age: Option<Duration>,
    /// Requests of the last poll; `None` before the first poll finished.
    pub requests: Option<u64>,
    pub budget_per_poll: u64,
    pub last_poll_duration: Option<Duration>,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub last_error: Option<String>,
    pub workflows: usize,
    pub live_executions: u64,
    /// Newest first.
    pub failures: Vec<RecentFailure>,
}

impl Card {
    /// The card of `p` at `now`.
    pub fn of(p: &ProjectState, mode: ModeLabel, now: OffsetDateTime) -> Card {
        let polled = p.polls_success + p.polls_error > 0;
        Card {
            name: p.name.clone(),
            mode,
            status: Status::of(p),
            last_success: p.last_success,
            age: p
                .last_success
                .map(|t| Duration::from_secs((now - t).whole_seconds().max(0).unsigned_abs())),
            requests: polled.then_some(p.last_poll_requests),
            budget_per_poll: crate::poller::budget_per_poll(p.rate_limit, p.poll_interval),
            last_poll_duration: p.last_poll_duration,
            polls_ok: p.polls_success,
            polls_failed: p.polls_error,
            last_error: p.last_error.clone(),
            workflows: p.snapshot.workflows.len(),
            live_executions: p.snapshot.live.values().map(|b| b.count).sum(),
            failures: Vec::new(),
        }
    }
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct Page<'a> {
    pub version: &'a str,
    pub telemetry_path: &'a str,
    pub cards: Vec<Card>,
}

/// Where the dashboards and their documentation are, relative to the repository.
const DOCS: [(&str, &str); 4] = [
    (
        "Kapso workflows dashboard",
        "dashboards/kapso-workflows.json",
    ),
    (
        "Kapso exporter health dashboard",
        "dashboards/kapso-exporter-health.json",
    ),
    (
        "Dashboards and alerts (README)",
        "README.md#dashboards-and-alerts",
    ),
    ("Runbooks for every alert", "docs/runbooks.md"),
];

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2433;--muted:#5c6370;--bg:#f6f7f9;--card:#fff;--line:#d8dce3;--up:#1a7f37;--down:#c62828;--wait:#9a6700}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--muted:#a0a7b4;--bg:#14171c;--card:#1e232b;--line:#343b47;--up:#4ac26b;--down:#ff6b6b;--wait:#d4a72c}}\
*{box-sizing:border-box}\
body{margin:0;padding:1rem;font:16px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
header,main{max-width:72rem;margin:0 auto}\
h1{margin:0 0 .25rem;font-size:1.6rem}\
h2{font-size:1.2rem;margin:1.5rem 0 .5rem}\
.version{margin:0;color:var(--muted)}\
nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:.5rem;padding:0;margin:.75rem 0 0}\
nav a{display:inline-block;padding:.35rem .8rem;border:1px solid var(--line);border-radius:.4rem;background:var(--card);color:inherit;text-decoration:none}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(20rem,1fr));gap:1rem}\
.project{background:var(--card);border:1px solid var(--line);border-left:.35rem solid var(--wait);border-radius:.5rem;padding:.75rem 1rem;min-width:0}\
.project[data-state=up]{border-left-color:var(--up)}\
.project[data-state=down]{border-left-color:var(--down)}\
.project h3{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem;margin:0 0 .5rem;font-size:1.1rem;overflow-wrap:anywhere}\
.badge{font-size:.8rem;padding:.1rem .5rem;border-radius:1rem;color:#fff;background:var(--wait)}\
.project[data-state=up] .badge{background:var(--up)}\
.project[data-state=down] .badge{background:var(--down)}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .75rem;margin:0}\
dt{color:var(--muted)}\
dd{margin:0;overflow-wrap:anywhere}\
.error{color:var(--down)}\
.failures{margin:.5rem 0 0;padding-left:1.1rem;font-size:.9rem;overflow-wrap:anywhere}\
code{font-size:.9em}\
time{white-space:nowrap}\
@media (max-width:30rem){body{padding:.6rem}.cards{grid-template-columns:1fr}.project{padding:.6rem .75rem}}\
@media (max-width:20rem){dl{grid-template-columns:1fr}dt{margin-top:.3rem}}\
";

/// The whole document.
pub fn render(page: &Page<'_>) -> String {
    let mut html = String::with_capacity(8192);
    let path = escape(page.telemetry_path);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Kapso Exporter</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header>\n<h1>Kapso Exporter</h1>\n<p class=\"version\">Prometheus exporter for Kapso workflow executions · version <span id=\"version\">{version}</span></p>\n\
         <nav><ul>\n<li><a href=\"{path}\">Metrics</a></li>\n<li><a href=\"/-/healthy\">Health</a></li>\n<li><a href=\"/-/ready\">Readiness</a></li>\n</ul></nav>\n\
         </header>\n<main>\n<h2>Projects</h2>\n<div class=\"cards\">\n",
        version = escape(page.version),
    );
    for card in &page.cards {
        render_card(&mut html, card);
    }
    html.push_str("</div>\n<h2>Dashboards</h2>\n<ul class=\"docs\">\n");
    for (title, target) in DOCS {
        html.push_str(&doc_link(title, target));
    }
    html.push_str("</ul>\n</main>\n</body>\n</html>\n");
    html
}

/// A document of the repository: a link when the crate names its repository, else its path.
fn doc_link(title: &str, target: &str) -> String {
    let repository = env!("CARGO_PKG_REPOSITORY").trim_end_matches('/');
    if repository.is_empty() {
        format!(
            "<li>{} — <code>{}</code> in the repository</li>\n",
            escape(title),
            escape(target)
        )
    } else {
        format!(
            "<li><a href=\"{}/blob/main/{}\">{}</a></li>\n",
            escape(repository),
            escape(target),
            escape(title)
        )
    }
}

fn render_card(html: &mut String, c: &Card) {
    let name = escape(&c.name);
    let _ = write!(
        html,
        "<section class=\"project\" data-project=\"{name}\" data-state=\"{key}\">\n\
         <h3><span class=\"name\">{name}</span> <span class=\"badge\">{key}</span></h3>\n<dl>\n",
        key = c.status.key(),
    );
    let mut item = |term: &str, value: &str| {
        let _ = writeln!(html, "<dt>{term}</dt><dd>{value}</dd>");
    };
    item("Mode", c.mode);
    item(
        "State",
        &format!(
            "<span class=\"state\">{}</span>",
            escape(c.status.describe())
        ),
    );
    item(
        "Last success",
        &match (c.last_success, c.age) {
            (Some(t), Some(age)) => {
                let t = escape(&rfc3339_seconds(t));
                format!(
                    "<time datetime=\"{t}\">{t}</time> ({} ago)",
                    humantime::format_duration(age)
                )
            }
            _ => "never".to_owned(),
        },
    );
    item(
        "Requests per poll",
        &match c.requests {
            Some(n) => {
                let took = c.last_poll_duration.map_or(String::new(), |d| {
                    format!(", took {}", humantime::format_duration(millis(d)))
                });
                format!("{n} of {} allowed{took}", c.budget_per_poll)
            }
            None => format!("no poll yet ({} allowed)", c.budget_per_poll),
        },
    );
    item("Workflows", &c.workflows.to_string());
    item("Live executions", &c.live_executions.to_string());
    item(
        "Polls",
        &format!("{} ok, {} failed", c.polls_ok, c.polls_failed),
    );
    item(
        "Last error",
        &match &c.last_error {
            Some(e) => format!("<span class=\"error\">{}</span>", escape(e)),
            None => "none".to_owned(),
        },
    );
    html.push_str("</dl>\n");
    if !c.failures.is_empty() {
        html.push_str(
            "<p>Recent failures (webhooks, newest first):</p>\n<ul class=\"failures\">\n",
        );
        for f in &c.failures {
            let _ = writeln!(
                html,
                "<li>{} workflow {} execution {}: {}</li>",
                escape(&rfc3339_seconds(f.occurred_at)),
                escape(&f.workflow_id),
                escape(&f.execution_id),
                escape(&f.message),
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</section>\n");
}

/// `d` to the millisecond, for reading.
fn millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `s` safe in HTML text and in double- or single-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::{LiveBucket, Snapshot, WorkflowMeta};

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("valid")
    }

    /// 2026-12-01T19:06:34Z, with nanoseconds the page must not show.
    fn when() -> OffsetDateTime {
        at(1_796_151_994)
            .replace_nanosecond(189_351_611)
            .expect("valid")
    }

    fn project(name: &str) -> ProjectState {
        ProjectState::new(name, Duration::from_secs(60), 80, Arc::default())
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.workflows.insert(
            Arc::from("wf-1"),
            WorkflowMeta {
                name: "Support".into(),
                status: "active".into(),
            },
        );
        s.workflows.insert(
            Arc::from("wf-2"),
            WorkflowMeta {
                name: "Sales".into(),
                status: "active".into(),
            },
        );
        for (status, count) in [
            (crate::kapso::ExecutionStatus::Running, 2),
            (crate::kapso::ExecutionStatus::Waiting, 3),
        ] {
            s.live.insert(
                (Arc::from("wf-1"), status),
                LiveBucket {
                    last_events: Vec::new(),
                    count,
                },
            );
        }
        s
    }

    fn page_of(p: &ProjectState, mode: ModeLabel, now: OffsetDateTime) -> String {
        render(&Page {
            version: "1.2.3",
            telemetry_path: "/metrics",
            cards: vec![Card::of(p, mode, now)],
        })
    }

    #[test]
    fn a_project_up_shows_its_numbers() {
        let mut p = project("acme");
        p.record_success(snapshot(), when(), Duration::from_millis(1234), 12);
        let page = page_of(&p, "project", when() + Duration::from_secs(75));
        assert!(page.contains("data-state=\"up\""), "{page}");
        assert!(page.contains("<span class=\"state\">up</span>"), "{page}");
        assert!(
            page.contains(
                "<time datetime=\"2026-12-01T19:06:34Z\">2026-12-01T19:06:34Z</time> (1m 15s ago)"
            ),
            "{page}"
        );
        assert!(!page.contains("189351611"), "{page}");
        assert!(page.contains("12 of 80 allowed, took 1s 234ms"), "{page}");
        assert!(page.contains("<dt>Workflows</dt><dd>2</dd>"), "{page}");
        assert!(
            page.contains("<dt>Live executions</dt><dd>5</dd>"),
            "{page}"
        );
        assert!(page.contains("<dt>Mode</dt><dd>project</dd>"), "{page}");
        assert!(page.contains("<dt>Last error</dt><dd>none</dd>"), "{page}");
        assert!(page.contains("1 ok, 0 failed"), "{page}");
    }

    #[test]
    fn the_page_has_the_toolkit_parts_and_no_external_asset() {
        let page = page_of(&project("acme"), "demo", when());
        for part in [
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<h1>Kapso Exporter</h1>",
            "<span id=\"version\">1.2.3</span>",
            "<a href=\"/metrics\">Metrics</a>",
            "<a href=\"/-/healthy\">Health</a>",
            "<a href=\"/-/ready\">Readiness</a>",
            "<dt>Mode</dt><dd>demo</dd>",
            "dashboards/kapso-workflows.json",
            "README.md#dashboards-and-alerts",
        ] {
            assert!(page.contains(part), "{part} missing: {page}");
        }
        for external in ["<script", "src=", "<link", "@import", "url("] {
            assert!(!page.contains(external), "{external} in {page}");
        }
    }

    #[test]
    fn waiting_claims_no_success_and_no_state() {
        let p = project("acme");
        assert_eq!(Status::of(&p), Status::Waiting { saved: false });
        let page = page_of(&p, "project", when());
        assert!(page.contains("data-state=\"waiting\""), "{page}");
        assert!(page.contains("waiting for the first poll<"), "{page}");
        assert!(
            page.contains("<dt>Last success</dt><dd>never</dd>"),
            "{page}"
        );
        assert!(page.contains("no poll yet (80 allowed)"), "{page}");
        assert!(!page.contains("<time"), "{page}");
        assert!(!page.contains("last good state"), "{page}");
    }

    #[test]
    fn a_restored_state_is_served_while_waiting() {
        let mut p = project("acme");
        p.last_success = Some(when());
        assert_eq!(Status::of(&p), Status::Waiting { saved: true });
        assert!(page_of(&p, "project", when()).contains("serving the saved state"));
    }

    #[test]
    fn down_without_any_success_says_no_state_yet() {
        let mut p = project("acme");
        p.record_failure("transport", "cannot reach Kapso".into(), Duration::ZERO, 1);
        assert_eq!(Status::of(&p), Status::DownNoState);
        let page = page_of(&p, "project", when());
        assert!(page.contains("data-state=\"down\""), "{page}");
        assert!(page.contains("down, no state yet"), "{page}");
        assert!(
            page.contains("<dt>Last success</dt><dd>never</dd>"),
            "{page}"
        );
        assert!(!page.contains("last good state"), "{page}");
        assert!(page.contains("1 of 80 allowed"), "{page}");
    }

    #[test]
    fn down_after_a_success_serves_the_last_good_state() {
        let mut p = project("acme");
        p.record_success(snapshot(), when(), Duration::ZERO, 3);
        p.record_failure("timeout", "request timed out".into(), Duration::ZERO, 2);
        assert_eq!(Status::of(&p), Status::DownServingLastGood);
        let page = page_of(&p, "conversations", when() + Duration::from_secs(5));
        assert!(page.contains("down, serving the last good state"), "{page}");
        assert!(page.contains("(5s ago)"), "{page}");
        assert!(page.contains("request timed out"), "{page}");
        assert!(page.contains("<dd>conversations</dd>"), "{page}");
    }

    #[test]
    fn a_dead_poller_is_down() {
        // The supervisor marks the project down with an error and no poll recorded.
        let mut p = project("acme");
        p.last_error = Some("the poller task panicked: boom".into());
        assert_eq!(Status::of(&p), Status::DownNoState);
    }

    #[test]
    fn everything_from_outside_is_escaped() {
        let mut p = project("<b>\"x\"&'y'</b>");
        p.record_failure(
            "client_error",
            "<script>alert(1)</script>".into(),
            Duration::ZERO,
            1,
        );
        let mut card = Card::of(&p, "project", when());
        card.failures.push(RecentFailure {
            occurred_at: when(),
            workflow_id: "<wf>".into(),
            execution_id: "\"ex\"".into(),
            message: "<img src=x onerror=alert(1)>".into(),
        });
        let page = render(&Page {
            version: "<v>",
            telemetry_path: "/m\"><script>",
            cards: vec![card],
        });
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("<wf>"), "{page}");
        assert!(
            page.contains("data-project=\"&lt;b&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/b&gt;\""),
            "{page}"
        );
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("Recent failures"), "{page}");
        assert!(
            page.contains("2026-12-01T19:06:34Z workflow &lt;wf&gt;"),
            "{page}"
        );
        assert!(
            page.contains("<span id=\"version\">&lt;v&gt;</span>"),
            "{page}"
        );
        assert!(
            page.contains("href=\"/m&quot;&gt;&lt;script&gt;\""),
            "{page}"
        );
    }
}
