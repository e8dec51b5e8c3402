//! Supervision of the background tasks: the poller of each project (`poller/<project>`), the
//! HTTP server (`http`) and, with `--demo`, the embedded simulator (`simulator`).
//!
//! A task that panics, or that ends before shutdown was requested, is logged at error level
//! once and recorded in [`Tasks`]. From then on `/-/healthy` and `/-/ready` answer 503 naming it,
//! so that an orchestrator restarts the exporter, and `kapso_exporter_task_up{task}` shows 0
//! ([`TaskCollector`]). A failed poller also marks its project down (`kapso_up` 0, with the
//! reason as the project's last error), since nothing polls it any more. A task that ends after
//! the cancellation token fired is shutting down normally and is not a failure.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::{self, SharedProject};

/// Why a supervised task stopped before shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It panicked; the panic message, on one line.
    Panicked(String),
    /// It returned although shutdown was not requested.
    Ended,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panicked(message) => write!(f, "panicked: {message}"),
            Failure::Ended => f.write_str("ended before shutdown was requested"),
        }
    }
}

/// One supervised task: its name and, once it failed, why.
#[derive(Debug)]
struct Entry {
    name: String,
    failure: Option<Failure>,
}

/// The supervised tasks and their outcome, shared by the supervisor, the health endpoints and
/// [`TaskCollector`]. Empty until tasks are spawned (as in [`crate::app::build`], where tests
/// drive the pollers themselves).
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic never happens while the lock is held; survive one anyway.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, name: String) -> usize {
        let mut entries = self.lock();
        entries.push(Entry {
            name,
            failure: None,
        });
        entries.len() - 1
    }

    fn fail(&self, index: usize, failure: Failure) {
        if let Some(entry) = self.lock().get_mut(index) {
            entry.failure = Some(failure);
        }
    }

    /// Every task that failed, by name, in the order they were spawned.
    pub fn failures(&self) -> Vec<(String, Failure)> {
        self.lock()
            .iter()
            .filter_map(|e| Some((e.name.clone(), e.failure.clone()?)))
            .collect()
    }

    /// Every task by name, and whether it still runs (or ended at shutdown).
    pub fn up(&self) -> Vec<(String, bool)> {
        self.lock()
            .iter()
            .map(|e| (e.name.clone(), e.failure.is_none()))
            .collect()
    }

    /// The failures as one line, `task reason; task reason`, or `None` when there is none.
    pub fn describe_failures(&self) -> Option<String> {
        let failures = self.failures();
        if failures.is_empty() {
            return None;
        }
        let parts: Vec<String> = failures
            .iter()
            .map(|(name, failure)| format!("{name} {failure}"))
            .collect();
        Some(parts.join("; "))
    }
}

/// Spawns named tasks and records the ones that panic or end before shutdown.
#[derive(Debug)]
pub struct Supervisor {
    cancel: CancellationToken,
    tasks: Tasks,
    running: JoinSet<()>,
}

impl Supervisor {
    /// A supervisor recording into `tasks`; `cancel` is the shutdown signal the tasks obey.
    pub fn new(tasks: Tasks, cancel: CancellationToken) -> Self {
        Self {
            cancel,
            tasks,
            running: JoinSet::new(),
        }
    }

    /// Runs `task` as `name`.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_inner(name.into(), None, task);
    }

    /// Runs the poller `task` of `project` as `poller/<project>`; if it fails, the project is
    /// marked down with the reason as its last error, since nothing updates it any more.
    pub fn spawn_poller<F>(&mut self, project: SharedProject, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = format!("poller/{}", state::read(&project).name);
        self.spawn_inner(name, Some(project), task);
    }

    fn spawn_inner<F>(&mut self, name: String, project: Option<SharedProject>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.tasks.register(name.clone());
        let tasks = self.tasks.clone();
        let cancel = self.cancel.clone();
        self.running.spawn(async move {
            // The task's own state is dropped with it after a panic; the shared project state
            // it wrote survives poisoning (see `state::write`), so catching is sound here.
            let failure = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) if cancel.is_cancelled() => return,
                Ok(()) => Failure::Ended,
                Err(payload) => Failure::Panicked(panic_message(payload.as_ref())),
            };
            tracing::error!(task = %name, reason = %failure, "a background task stopped; /-/healthy answers 503 from now on");
            if let Some(project) = project {
                let mut st = state::write(&project);
                st.up = false;
                st.last_error = Some(format!("the poller task {failure}"));
            }
            tasks.fail(index, failure);
        });
    }

    /// Requests shutdown and waits at most `grace` for the tasks to end, then aborts the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period elapsed; aborting the tasks still running");
            self.running.abort_all();
        }
    }
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`), on one line.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(no message)"
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Encodes `kapso_exporter_task_up{task}` at scrape time; nothing when no task was spawned.
#[derive(Debug)]
pub struct TaskCollector {
    tasks: Tasks,
}

impl TaskCollector {
    pub fn new(tasks: Tasks) -> Self {
        Self { tasks }
    }
}

impl Collector for TaskCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let up = self.tasks.up();
        if up.is_empty() {
            return Ok(());
        }
        crate::metrics::TASK_UP.emit(
            &mut encoder,
            up.iter().map(|(task, running)| {
                (
                    crate::metrics::Task { task },
                    crate::metrics::Value::Gauge(f64::from(u8::from(*running))),
                )
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::kapso::ApiStats;
    use crate::state::ProjectState;

    /// Waits until `tasks` records a failure, at most 10 s.
    async fn first_failure(tasks: &Tasks) -> (String, Failure) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(f) = tasks.failures().into_iter().next() {
                return f;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failure recorded"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_recorded_with_its_message() {
        let tasks = Tasks::default();
        let mut sup = Supervisor::new(tasks.clone(), CancellationToken::new());
        sup.spawn("static", async { panic!("static\nmessage") });
        let n = 7;
        sup.spawn("formatted", async move { panic!("formatted {n}") });
        sup.spawn("steady", std::future::pending());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tasks.failures().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{tasks:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            tasks.failures(),
            vec![
                (
                    "static".to_owned(),
                    Failure::Panicked("static message".to_owned())
                ),
                (
                    "formatted".to_owned(),
                    Failure::Panicked("formatted 7".to_owned())
                ),
            ]
        );
        assert_eq!(
            tasks.up(),
            vec![
                ("static".to_owned(), false),
                ("formatted".to_owned(), false),
                ("steady".to_owned(), true),
            ]
        );
        assert_eq!(
            tasks.describe_failures().unwrap(),
            "static panicked: static message; formatted panicked: formatted 7"
        );
        sup.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_recorded() {
        let tasks = Tasks::default();
        let mut sup = Supervisor::new(tasks.clone(), CancellationToken::new());
        sup.spawn("http", async {});
        assert_eq!(
            first_failure(&tasks).await,
            ("http".to_owned(), Failure::Ended)
        );
        assert_eq!(
            tasks.describe_failures().unwrap(),
            "http ended before shutdown was requested"
        );
    }

    #[tokio::test]
    async fn ending_after_cancellation_is_not_a_failure() {
        let tasks = Tasks::default();
        let cancel = CancellationToken::new();
        let mut sup = Supervisor::new(tasks.clone(), cancel.clone());
        for name in ["poller/a", "http"] {
            let token = cancel.clone();
            sup.spawn(name, async move { token.cancelled().await });
        }
        sup.shutdown(Duration::from_secs(10)).await;
        assert!(tasks.failures().is_empty(), "{tasks:?}");
        assert_eq!(tasks.describe_failures(), None);
        assert!(tasks.up().iter().all(|(_, up)| *up));
    }

    #[tokio::test]
    async fn a_failed_poller_marks_its_project_down() {
        let project = ProjectState::new(
            "sales",
            Duration::from_secs(60),
            80,
            Arc::new(ApiStats::default()),
        )
        .shared();
        state::write(&project).up = true;
        let tasks = Tasks::default();
        let mut sup = Supervisor::new(tasks.clone(), CancellationToken::new());
        sup.spawn_poller(project.clone(), async {
            panic!("overflow when adding duration to instant")
        });
        let (name, _) = first_failure(&tasks).await;
        assert_eq!(name, "poller/sales");
        let st = state::read(&project);
        assert!(!st.up);
        assert_eq!(
            st.last_error.as_deref(),
            Some("the poller task panicked: overflow when adding duration to instant")
        );
    }

    #[tokio::test]
    async fn the_collector_shows_each_task() {
        let tasks = Tasks::default();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(TaskCollector::new(tasks.clone())));
        let mut empty = String::new();
        prometheus_client::encoding::text::encode(&mut empty, &registry).unwrap();
        assert_eq!(empty, "# EOF\n");
        let mut sup = Supervisor::new(tasks.clone(), CancellationToken::new());
        sup.spawn("simulator", std::future::pending());
        sup.spawn("http", async {});
        first_failure(&tasks).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kapso_exporter_task_up{task=\"simulator\"} 1.0\n")
                && text.contains("kapso_exporter_task_up{task=\"http\"} 0.0\n"),
            "{text}"
        );
    }
}
