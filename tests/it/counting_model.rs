//! Model-based property test of the counters, end to end: the real exporter (in process,
//! through `/metrics`) against the simulator, both on one manual clock, in random worlds under
//! random API variance.
//!
//! Each case draws, from one seed: a world (1-4 workflows made with `Simulator::empty` and
//! `add_workflow`, 2-6 conversations, a history before the exporter starts, in a fifth of the
//! cases more than 100 waiting executions in one workflow so its list pages), an API
//! [`Variance`] (the precision of each timestamp field and of the cursors, a UTC offset,
//! `execution_count` and `last_executed_at` present, null or absent, lagging counts, a
//! shrinking count, a workflow listed twice, overlapping pages, stale live lists, no
//! `created_at`), and which scripted behaviours it uses: executions to `paused` (outside the
//! spec's enum) and back or to an end, deletion of finished executions (a retention job) and
//! of live ones, rows whose `started_at` is missing, null, or in the year 9999 or 1970
//! (`set_start_override`, so the model knows which), workflows left out of up to 5 listings
//! (`hide_workflow`) or an empty listing (`empty_workflow_lists`), a workflow's executions
//! answering 404 or 422 for a poll (`fail_workflow_executions`), workflows created later, with
//! or without `created_at` or long ago (`add_workflow_at`, `omit_created_at`), and deleted.
//! A workflow left out of listings stays out for 1 to 5 (the grace period), one time in five
//! for 6 to 8.
//! Then, poll after poll, random transitions (start in each live status or finished, wait,
//! hand off, resume, end, fail, pause, come back, delete, and bursts of each) with the clock
//! moving in sub-second and multi-second steps, and the poll at a random time.
//!
//! The model keeps its own copy of the world and of the truth (equal to
//! `Simulator::ground_truth` after every poll), and, per execution, what a poll could have
//! seen: `seen` when a poll surely showed it to the exporter (a live list, a conversation's
//! listing, or a window listing the planner runs by its rule, see [`Model::windowed`]), and
//! `settled` when a poll surely read its outcome (it was live at the workflow's previous poll,
//! and every execution that leaves the live lists is looked up; or it was in such a listing).
//! Checked, from `/metrics`:
//! - after every poll: no counter (`kapso_workflow_executions_started_total`,
//!   `..._finished_total{status}`, `kapso_workflow_execution_handoffs_total`) exceeds the truth
//!   or goes back, and started, ended and failed are at least what polls surely saw; a
//!   workflow that committed shows `kapso_workflow_up 1` and live gauges equal to the truth,
//!   one left out of the listing or failing shows 0; each failing poll of a workflow is one
//!   `kapso_workflow_poll_errors_total{kind="client_error"}`; the poll fails (and `kapso_up`
//!   is 0) only when every listed workflow failed;
//! - after a rest (no transitions, the clock past every lag, every workflow listed, enough
//!   polls for every pending execution to be read by id): started, ended and failed equal the
//!   truth, the live gauges too, hand-offs where none can have been invisible, and
//!   `kapso_workflow_executions_outcome_unknown` is at most the executions still paused;
//!   except where the API cannot show it (below).
//!
//! # Exclusions from exactness
//!
//! Each is as narrow as the model can state it. An *uncertain* execution's start or finish may
//! be counted or not: the counter must lie between the truth without it and the truth.
//! - **Deleted before a poll read it**: a finished execution deleted before a poll surely read
//!   its outcome, or any execution deleted before a poll surely saw it (its outcome, or its
//!   start, is in no answer any more). The planner skips the window listing when the counts
//!   say nothing started, or when the new live ids are exactly the growth of
//!   `execution_count`; a lagging count (new live rows counted later than a finished one) or a
//!   shrinking one (a deletion offsetting a start) can make that wrong for a poll, and the
//!   window lists what it missed at the next poll whose counts move, unless it was deleted
//!   first.
//! - **Shrinking count, never listed**: with `shrinking_count`, an execution that started and
//!   left the live lists while a deletion offset its start in `execution_count` (so no poll
//!   surely listed it) is listed only if a later poll's counts move, which at rest they do not:
//!   uncertain. A lagging count catches up at rest, so it has no such exclusion.
//! - **Bad start in a late workflow's first window**: a workflow first listed after the
//!   exporter's first poll without a believable `created_at` after it counts the rows of its
//!   first window that started after that poll; a row whose `started_at` is missing or absurd
//!   cannot be placed, so its start and finish are uncertain.
//! - **Bad start in conversation mode**: a conversation's listing is the only source, and a new
//!   id whose `started_at` cannot be believed cannot be told from an old one (uncertain).
//! - **Coarse cursors and starts past a page**: a cursor in whole seconds or milliseconds
//!   skips, paging forward, the rows that share the last row's second (or millisecond) but
//!   are older than it. The exporter pages by `created_before` the last row's start instead,
//!   which lists every row, unless the rows' `started_at` is as coarse: then a slice ends
//!   with a whole second and cannot list more rows of one second than a page holds. A
//!   workflow that had more than 100 executions at a poll (so a list may page) under such
//!   cursors and starts is checked for `<=` and monotony only, its gauges not at all.
//! - **Deleted workflows**: gone from every listing, so what happened after their last poll
//!   cannot be read: `<=` and monotony only.
//! - **Forgotten workflows**: one missing from more than 5 listings in a row (past the grace
//!   period) loses its series (checked) and the exporter forgets its executions; back, it
//!   counts only what started after it was forgotten. `<=` and monotony (its counters
//!   continue where they were), and exact gauges.
//! - **Hand-offs** are exact only in workflows where Kapso's entries into `handoff` between
//!   two polls of an execution's workflow (or conversation) are exactly the one the exporter
//!   can see (in `handoff` now and not at the previous poll): none entered and left, or left
//!   and re-entered, none was deleted after entering, none went `handoff` -> `paused` ->
//!   `handoff` (the exporter sees that entry only if it read the execution while paused), and
//!   no execution of the workflow is uncertain.
//!
//! The generator keeps to what the exporter promises (README, *Failures* and *Counting*): the
//! first poll sees every workflow and no execution in an unknown status (it learns what
//! exists, and an execution it never saw live is not its to count); workflows are added from
//! 2 s after the first poll (a later workflow without `created_at` counts what started more
//! than the 1 s precision slack after that poll) and never with a `created_at` in the
//! future; a conversation never holds more than 100 executions (its listing does not page).
//!
//! `PROPTEST_CASES` sets the number of cases of the project-mode property (default 32, about
//! 10 s in debug); the conversation-mode property runs a third of them (at least 1). The seed
//! is fixed (`RngSeed::Fixed`), no failure file is written, shrinking only shortens the
//! number of polls, and a failure prints the case's seed, its setup, every uncertain
//! execution and the log of every transition and poll. Each property prints a summary of what
//! it checked (run with `--nocapture`) and fails if most workflows were not checked exactly.
#![allow(clippy::unwrap_used)]

use crate::counting_support;
use std::fmt::Write as _;
use std::time::Duration;

use crate::counting_support::{Counts, counts, live3, outcome_unknown, poll_errors, up};
use crate::support::{Harness, KEY, Samples, parse, series, step_truth, test_start};
use kapso_exporter::clock::Clock;
use kapso_exporter::simulator::{
    ExecStatus, Precision, Precisions, Presence, Simulator, StartOverride, Variance,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::{OffsetDateTime, UtcOffset};

use ExecStatus::{Ended, Failed, Handoff, Running, Waiting};

const SECOND: i64 = 1_000_000;
/// Rows per page the exporter asks for.
const PAGE: usize = 100;
/// Pending executions the exporter reads by id per workflow and poll.
const PENDING_PER_POLL: usize = 10;
/// Listings a workflow may be missing from before the exporter forgets it.
const GRACE: u32 = 5;

/// Which part of the exporter is under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Project,
    Conversations,
}

/// What a case may do besides its API variance.
#[derive(Clone, Debug)]
struct Setup {
    variance: Variance,
    /// Executions go `paused` (outside the spec's enum) and come back, or end from there.
    paused: bool,
    /// Finished executions are deleted (a retention job).
    delete_finished: bool,
    /// Live executions are deleted.
    delete_live: bool,
    /// Some executions show `started_at` missing, null, or in the year 9999 or 1970.
    bad_rows: bool,
    /// Workflows are left out of some listings, or a listing is empty.
    flaky_listing: bool,
    /// A workflow's executions lists answer 404 or 422 for one poll.
    flaky_executions: bool,
    /// Workflows are added (with or without `created_at`) and deleted.
    churn: bool,
    /// The first workflow has more than 100 waiting executions (its list pages).
    big: bool,
}

fn precision(rng: &mut StdRng) -> Precision {
    [Precision::Micros, Precision::Millis, Precision::Seconds][rng.random_range(0..3)]
}

fn presence(rng: &mut StdRng) -> Presence {
    match rng.random_range(0..100) {
        0..70 => Presence::Present,
        70..85 => Presence::Absent,
        _ => Presence::Null,
    }
}

fn lag(rng: &mut StdRng) -> Duration {
    match rng.random_range(0..100) {
        0..60 => Duration::ZERO,
        60..80 => Duration::from_millis(rng.random_range(500..3000)),
        _ => Duration::from_secs(30),
    }
}

impl Setup {
    fn random(rng: &mut StdRng, mode: Mode) -> Setup {
        let precision = match rng.random_range(0..100) {
            0..30 => Precisions::default(),
            30..50 => Precisions::all(Precision::Seconds),
            50..60 => Precisions::all(Precision::Millis),
            _ => Precisions {
                workflow_last_executed_at: precision(rng),
                workflow_created_at: precision(rng),
                started_at: precision(rng),
                last_event_at: precision(rng),
                ended_at: precision(rng),
                cursor: precision(rng),
            },
        };
        let offsets = [(5, 30), (-3, 0), (0, 0), (14, 0), (-11, 0)];
        let utc_offset = rng.random_bool(0.3).then(|| {
            let (h, m) = offsets[rng.random_range(0..offsets.len())];
            UtcOffset::from_hms(h, m, 0).unwrap()
        });
        let execution_count_lag = lag(rng);
        let last_executed_at_lag = if rng.random_bool(0.5) {
            execution_count_lag
        } else {
            lag(rng)
        };
        let variance = Variance {
            precision,
            utc_offset,
            execution_count: presence(rng),
            last_executed_at: presence(rng),
            execution_count_lag,
            last_executed_at_lag,
            shrinking_count: rng.random_bool(0.25),
            duplicate_workflows: rng.random_bool(0.25),
            overlapping_pages: rng.random_bool(0.25),
            stale_live_lists: rng.random_bool(0.3),
            bad_start_rate: 0.0,
            omit_created_at: rng.random_bool(0.25),
            unknown_statuses: false,
            deletions: false,
            flaky_workflow_list: false,
        };
        let project = mode == Mode::Project;
        Setup {
            paused: rng.random_bool(0.4),
            // A count that shrinks only differs when executions are deleted.
            delete_finished: variance.shrinking_count || rng.random_bool(0.4),
            delete_live: rng.random_bool(0.3),
            bad_rows: rng.random_bool(0.25),
            flaky_listing: project && rng.random_bool(0.35),
            flaky_executions: project && rng.random_bool(0.25),
            churn: rng.random_bool(0.35),
            big: project && rng.random_bool(0.2),
            variance,
        }
    }

    fn count_present(&self) -> bool {
        self.variance.execution_count == Presence::Present
    }

    /// Cursors and row starts both coarser than microseconds: the exporter's `created_before`
    /// slices then end with a whole second (or millisecond), which cannot list more rows of
    /// one second than a page holds.
    fn coarse_cursor_and_start(&self) -> bool {
        let p = self.variance.precision;
        p.cursor != Precision::Micros && p.started_at != Precision::Micros
    }

    fn lag_us(d: Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap()
    }
}

/// One execution as the model knows it.
#[derive(Clone, Debug)]
struct Exec {
    id: String,
    wf: usize,
    conv: Option<usize>,
    /// The true `started_at` (the simulator's, strictly increasing).
    start: i64,
    /// Polls made before it was created.
    born: usize,
    /// The spec status; while `paused`, the one it had before.
    status: ExecStatus,
    paused: bool,
    deleted: bool,
    bad_start: bool,
    /// Started after the baseline (in the truth's `started`).
    counted_start: bool,
    /// Finished after the baseline (in the truth's `finished`).
    counted_finish: bool,
    /// Live (not paused) at the last commit of its scope.
    live_at_commit: bool,
    /// A poll surely saw it (its start is counted if it is new).
    seen: bool,
    /// Finished, and a poll surely read its outcome.
    settled: bool,
    ever_paused: bool,
    /// Entries into `handoff` since the last commit of its scope.
    handoff_entries: u32,
    /// The live status the exporter saw at the last commit of its scope; `ambiguous` when it
    /// may instead have read it paused since (a pending execution is read by id, a few a
    /// poll).
    view: Option<ExecStatus>,
    view_ambiguous: bool,
    /// Whether its start / finish may or may not be counted (an exclusion applies).
    uncertain_start: bool,
    uncertain_finish: bool,
}

impl Exec {
    fn is_live(&self) -> bool {
        !self.deleted && !self.paused && self.status.is_live()
    }

    fn exists(&self) -> bool {
        !self.deleted
    }
}

/// One workflow as the model knows it.
#[derive(Clone, Debug)]
struct Wf {
    id: String,
    deleted: bool,
    /// Listings it will still be left out of.
    hidden: u32,
    missing_streak: u32,
    /// Missing from more listings in a row than the grace period: the exporter forgot it.
    forgotten: bool,
    /// The status its executions lists answer at the next poll.
    failing: Option<u16>,
    failed_polls: u32,
    /// Local time of its last commit (project mode), that poll's number, and the listing's
    /// `execution_count` and `last_executed_at` then.
    last_commit: Option<i64>,
    last_commit_poll: usize,
    signals: (Option<u64>, Option<i64>),
    /// Added after the baseline; `all` when its first window counts every row (a believable
    /// `created_at` after the baseline).
    late: bool,
    all: bool,
    /// The most executions it had at a commit.
    max_existing: usize,
    truth: Counts,
    handoffs_exact: bool,
    /// The largest counters the exporter showed (they must never go back).
    shown_max: Counts,
}

/// What the cases of one property did, printed at its end, so that a model that checks
/// nothing shows.
#[derive(Clone, Debug, Default)]
struct Stats {
    cases: u64,
    polls: u64,
    executions: u64,
    /// Starts and finishes in the truth of the workflows checked at rest.
    checked_starts: u64,
    checked_finishes: u64,
    /// Workflows checked at rest: exact, within a range (some execution uncertain), or only
    /// for `<=` and monotony.
    exact: u64,
    ranged: u64,
    unchecked: u64,
    exact_handoffs: u64,
    /// Window decisions of the model: listed, not listed, cannot tell; and listed only
    /// because `last_executed_at` moved.
    windows: [u64; 3],
    windows_by_last_executed_at: u64,
    uncertain_executions: u64,
    deletions: u64,
    /// Workflows forgotten after the grace period and back at rest.
    forgotten: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.cases += o.cases;
        self.polls += o.polls;
        self.executions += o.executions;
        self.checked_starts += o.checked_starts;
        self.checked_finishes += o.checked_finishes;
        self.exact += o.exact;
        self.ranged += o.ranged;
        self.unchecked += o.unchecked;
        self.exact_handoffs += o.exact_handoffs;
        for i in 0..3 {
            self.windows[i] += o.windows[i];
        }
        self.windows_by_last_executed_at += o.windows_by_last_executed_at;
        self.uncertain_executions += o.uncertain_executions;
        self.deletions += o.deletions;
        self.forgotten += o.forgotten;
    }
}

/// A case: the world, the exporter, and what the model knows.
struct Model {
    rng: StdRng,
    seed: u64,
    mode: Mode,
    setup: Setup,
    clock: Clock,
    h: Harness,
    wfs: Vec<Wf>,
    convs: Vec<String>,
    execs: Vec<Exec>,
    last_start: i64,
    baseline: Option<i64>,
    empty_listings: u32,
    polls: usize,
    log: Vec<String>,
    stats: Stats,
}

fn now_us(clock: &Clock) -> i64 {
    i64::try_from(clock.now().unix_timestamp_nanos() / 1000).unwrap()
}

fn fmt_t(us: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap();
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

impl Model {
    async fn new(seed: u64, mode: Mode) -> Model {
        let mut rng = StdRng::seed_from_u64(seed);
        let setup = Setup::random(&mut rng, mode);
        let clock = Clock::manual(test_start());
        let sim = Simulator::empty(KEY, clock.clone());
        sim.set_variance(setup.variance.clone());
        let n_wf = rng.random_range(1..=4);
        let n_conv = rng.random_range(2..=6);
        let convs: Vec<String> = (0..n_conv).map(|_| sim.add_conversation()).collect();
        let mut args: Vec<String> = Vec::new();
        if mode == Mode::Conversations {
            for c in &convs {
                args.push("--kapso.conversation-id".to_owned());
                args.push(c.clone());
            }
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let h = Harness::new(sim, clock.clone(), &argv).await;
        let mut m = Model {
            rng,
            seed,
            mode,
            setup,
            clock,
            h,
            wfs: Vec::new(),
            convs,
            execs: Vec::new(),
            last_start: i64::MIN,
            baseline: None,
            empty_listings: 0,
            polls: 0,
            log: Vec::new(),
            stats: Stats::default(),
        };
        for i in 0..n_wf {
            m.add_workflow_now(&format!("Workflow {i}"), false);
            let dt = m.rng.random_range(0..3 * SECOND);
            m.advance(dt);
        }
        // History before the exporter starts: never counted.
        if m.setup.big {
            let n = m.rng.random_range(101..=140);
            for _ in 0..n {
                m.start(0, Waiting);
                let dt = m.rng.random_range(0..2 * SECOND);
                m.advance(dt);
            }
        }
        for _ in 0..m.rng.random_range(0..15) {
            let dt = m.step_dt();
            m.advance(dt);
            m.transition(false);
        }
        let dt = m.rng.random_range(0..10 * SECOND);
        m.advance(dt);
        m
    }

    fn sim(&self) -> &Simulator {
        &self.h.sim
    }

    fn now(&self) -> i64 {
        now_us(&self.clock)
    }

    fn note(&mut self, what: String) {
        let line = format!("{} {what}", fmt_t(self.now()));
        self.log.push(line);
    }

    fn advance(&mut self, us: i64) {
        if us > 0 {
            self.clock
                .advance(Duration::from_micros(u64::try_from(us).unwrap()));
        }
    }

    /// A clock step between two transitions: sub-second, a few seconds, or longer.
    fn step_dt(&mut self) -> i64 {
        match self.rng.random_range(0..100) {
            // The same instant, or onto the next whole second (timestamps then lose nothing
            // to truncation, and share their second with what follows).
            0..5 => 0,
            5..10 => SECOND - self.now().rem_euclid(SECOND),
            10..50 => self.rng.random_range(1..SECOND),
            50..90 => self.rng.random_range(SECOND..10 * SECOND),
            _ => self.rng.random_range(10 * SECOND..90 * SECOND),
        }
    }

    fn counting(&self) -> bool {
        self.baseline.is_some()
    }

    // ----- the world -----------------------------------------------------------------------

    fn add_workflow_now(&mut self, name: &str, late: bool) {
        let past = late && self.rng.random_bool(0.3);
        let id = if past {
            let ago = Duration::from_secs(self.rng.random_range(3600..30 * 86_400));
            self.sim()
                .add_workflow_at(name, "active", self.clock.now() - ago)
        } else {
            self.sim().add_workflow(name, "active")
        };
        let omit = late && self.rng.random_bool(0.3);
        if omit {
            self.sim().omit_created_at(&id, true);
        }
        // Added at least 2 s after the baseline, so a rendered creation time (truncated by 1 s
        // at most) is after it, unless it was backdated.
        let all = late && !past && !omit && !self.setup.variance.omit_created_at;
        self.note(format!(
            "add workflow {} {id}{}{}",
            self.wfs.len(),
            if past { " created long ago" } else { "" },
            if omit { " without created_at" } else { "" }
        ));
        self.wfs.push(Wf {
            id,
            deleted: false,
            hidden: 0,
            missing_streak: 0,
            forgotten: false,
            failing: None,
            failed_polls: 0,
            last_commit: None,
            last_commit_poll: 0,
            signals: (None, None),
            late,
            all,
            max_existing: 0,
            truth: Counts::default(),
            handoffs_exact: true,
            shown_max: Counts::default(),
        });
    }

    fn delete_workflow(&mut self, wf: usize) {
        let id = self.wfs[wf].id.clone();
        self.note(format!("delete workflow {wf}"));
        self.sim().delete_workflow(&id);
        for x in 0..self.execs.len() {
            if self.execs[x].wf == wf && self.execs[x].exists() {
                self.forget(x);
            }
        }
        self.wfs[wf].deleted = true;
    }

    /// The conversation a new execution runs in: in conversation mode always one (the
    /// exporter sees nothing else), never one with 100 executions (its listing would page).
    fn pick_conversation(&mut self) -> Option<usize> {
        if self.mode == Mode::Project && self.rng.random_bool(0.2) {
            return None;
        }
        let load = |c: usize| {
            self.execs
                .iter()
                .filter(|e| e.conv == Some(c) && e.exists())
                .count()
        };
        let c = self.rng.random_range(0..self.convs.len());
        if load(c) < 90 {
            return Some(c);
        }
        (0..self.convs.len()).min_by_key(|&c| load(c))
    }

    fn start(&mut self, wf: usize, status: ExecStatus) -> usize {
        let conv = self.pick_conversation();
        let conv_id = conv.map(|c| self.convs[c].clone());
        let id = self
            .sim()
            .start_execution(&self.wfs[wf].id, conv_id.as_deref(), status);
        assert!(!id.is_empty(), "start in workflow {wf}");
        let start = self.now().max(self.last_start.saturating_add(1));
        self.last_start = start;
        let counting = self.counting();
        let x = self.execs.len();
        self.execs.push(Exec {
            id: id.clone(),
            wf,
            conv,
            start,
            born: self.polls,
            status,
            paused: false,
            deleted: false,
            bad_start: false,
            counted_start: counting,
            counted_finish: counting && status.is_terminal(),
            live_at_commit: false,
            seen: false,
            settled: false,
            ever_paused: false,
            handoff_entries: u32::from(status == Handoff),
            view: None,
            view_ambiguous: false,
            uncertain_start: false,
            uncertain_finish: false,
        });
        if counting {
            let t = &mut self.wfs[wf].truth;
            t.started += 1;
            match status {
                Handoff => t.handoffs += 1,
                Ended => t.ended += 1,
                Failed => t.failed += 1,
                Running | Waiting => {}
            }
        }
        let mut bad = None;
        if self.setup.bad_rows && self.rng.random_bool(0.2) {
            let o = [
                StartOverride::Missing,
                StartOverride::Null,
                StartOverride::Year(9999),
                StartOverride::Year(1970),
            ][self.rng.random_range(0..4)];
            self.sim().set_start_override(&id, o);
            self.execs[x].bad_start = true;
            // Conversation mode cannot tell a new id without a believable start from an old one.
            if self.mode == Mode::Conversations {
                self.uncertain(x);
            }
            bad = Some(o);
        }
        self.note(format!(
            "start x{x} in workflow {wf} conv {conv:?} {status}{}",
            bad.map_or(String::new(), |o| format!(" started_at shown as {o:?}"))
        ));
        x
    }

    fn uncertain(&mut self, x: usize) {
        let e = &mut self.execs[x];
        e.uncertain_start = true;
        e.uncertain_finish = true;
        self.wfs[e.wf].handoffs_exact = false;
    }

    /// Moves `x` to a spec status (from `paused` too), as the simulator's ground truth does.
    fn set(&mut self, x: usize, to: ExecStatus) {
        let counting = self.counting();
        let e = &mut self.execs[x];
        assert!(e.exists() && !e.status.is_terminal());
        let was_paused = e.paused;
        let from = e.status;
        if from == to && !was_paused {
            return;
        }
        e.status = to;
        e.paused = false;
        if to == Handoff {
            e.handoff_entries += 1;
        }
        let finishes = to.is_terminal();
        if finishes && counting {
            e.counted_finish = true;
        }
        let wf = e.wf;
        let w = &mut self.wfs[wf];
        if counting {
            if to == Handoff {
                w.truth.handoffs += 1;
            }
            match to {
                Ended => w.truth.ended += 1,
                Failed => w.truth.failed += 1,
                _ => {}
            }
        }
        let id = e.id.clone();
        self.sim().set_status(&id, to);
        self.note(format!(
            "x{x} {}{from} -> {to}",
            if was_paused { "paused, was " } else { "" }
        ));
    }

    fn pause(&mut self, x: usize) {
        let e = &mut self.execs[x];
        assert!(e.is_live());
        e.paused = true;
        e.ever_paused = true;
        let id = e.id.clone();
        self.sim().set_unknown_status(&id, "paused");
        self.note(format!("x{x} -> paused"));
    }

    /// What deleting `x` (or its workflow) costs the model: what no poll surely saw of it is
    /// uncertain.
    fn forget(&mut self, x: usize) {
        let e = &mut self.execs[x];
        if e.counted_start && !e.seen {
            e.uncertain_start = true;
        }
        if e.status.is_terminal() && e.counted_finish && !e.settled {
            e.uncertain_finish = true;
        }
        let lost = e.uncertain_start || e.uncertain_finish || e.handoff_entries > 0;
        e.deleted = true;
        if lost {
            self.wfs[e.wf].handoffs_exact = false;
        }
    }

    fn delete_execution(&mut self, x: usize) {
        self.stats.deletions += 1;
        self.forget(x);
        let (id, e) = (self.execs[x].id.clone(), &self.execs[x]);
        let what = format!(
            "delete x{x} ({}{}){}",
            if e.paused { "paused, " } else { "" },
            e.status,
            if e.uncertain_start || e.uncertain_finish {
                " before a poll surely read it"
            } else {
                ""
            }
        );
        self.sim().delete_execution(&id);
        self.note(what);
    }

    fn live_wfs(&self) -> Vec<usize> {
        (0..self.wfs.len())
            .filter(|&w| !self.wfs[w].deleted)
            .collect()
    }

    /// Workflows new executions may start in: none added after the baseline until 2 s after
    /// it (see the module doc).
    fn startable_wfs(&self) -> Vec<usize> {
        self.live_wfs()
            .into_iter()
            .filter(|&w| !self.wfs[w].late || self.now() >= self.wf_added_ok())
            .collect()
    }

    fn wf_added_ok(&self) -> i64 {
        self.baseline.map_or(i64::MIN, |b| b + 2 * SECOND)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.random_range(0..from.len())])
    }

    /// One random change at the current instant; `counting` is false before the baseline
    /// (no unknown statuses then).
    fn transition(&mut self, after_baseline: bool) {
        let roll = self.rng.random_range(0..110);
        let live: Vec<usize> = (0..self.execs.len())
            .filter(|&x| self.execs[x].is_live())
            .collect();
        let with = |s: &[ExecStatus]| -> Vec<usize> {
            live.iter()
                .copied()
                .filter(|&x| s.contains(&self.execs[x].status))
                .collect()
        };
        match roll {
            0..28 => {
                let wfs = self.startable_wfs();
                if let Some(wf) = self.pick(&wfs) {
                    let status = [Running, Running, Waiting, Handoff, Ended, Failed]
                        [self.rng.random_range(0..6)];
                    self.start(wf, status);
                }
            }
            28..36 => {
                if let Some(x) = self.pick(&with(&[Running])) {
                    self.set(x, Waiting);
                }
            }
            36..42 => {
                if let Some(x) = self.pick(&with(&[Waiting])) {
                    self.set(x, Running);
                }
            }
            42..49 => {
                if let Some(x) = self.pick(&with(&[Running, Waiting])) {
                    self.set(x, Handoff);
                }
            }
            49..53 => {
                if let Some(x) = self.pick(&with(&[Handoff])) {
                    self.set(x, Waiting);
                }
            }
            53..66 => {
                if let Some(x) = self.pick(&live) {
                    self.set(x, Ended);
                }
            }
            66..73 => {
                if let Some(x) = self.pick(&live) {
                    self.set(x, Failed);
                }
            }
            73..79 if after_baseline && self.setup.paused => {
                if let Some(x) = self.pick(&live) {
                    self.pause(x);
                }
            }
            79..85 if self.setup.paused => {
                let paused: Vec<usize> = (0..self.execs.len())
                    .filter(|&x| self.execs[x].exists() && self.execs[x].paused)
                    .collect();
                if let Some(x) = self.pick(&paused) {
                    let to =
                        [Waiting, Running, Handoff, Ended, Failed][self.rng.random_range(0..5)];
                    self.set(x, to);
                }
            }
            85..91 if self.setup.delete_finished => {
                let done: Vec<usize> = (0..self.execs.len())
                    .filter(|&x| self.execs[x].exists() && self.execs[x].status.is_terminal())
                    .collect();
                // A retention job deletes the oldest first, now and then any; sometimes just as
                // one more finishes (a shrinking count then does not move).
                if self.rng.random_bool(0.3) {
                    let wfs = self.startable_wfs();
                    if let Some(wf) = self.pick(&wfs) {
                        let status = [Ended, Failed][self.rng.random_range(0..2)];
                        self.start(wf, status);
                    }
                }
                let x = if self.rng.random_bool(0.6) {
                    done.first().copied()
                } else {
                    self.pick(&done)
                };
                if let Some(x) = x {
                    self.delete_execution(x);
                }
            }
            91..94 if self.setup.delete_live => {
                let alive: Vec<usize> = (0..self.execs.len())
                    .filter(|&x| self.execs[x].exists() && !self.execs[x].status.is_terminal())
                    .collect();
                if let Some(x) = self.pick(&alive) {
                    self.delete_execution(x);
                }
            }
            94..97 if self.setup.churn && after_baseline && self.now() >= self.wf_added_ok() => {
                let n = self.wfs.len();
                self.add_workflow_now(&format!("Workflow {n}"), true);
            }
            97..100 if self.setup.churn && after_baseline => {
                let wfs = self.live_wfs();
                if wfs.len() > 1 {
                    if let Some(wf) = self.pick(&wfs) {
                        self.delete_workflow(wf);
                    }
                }
            }
            // Bursts: many rows in the same second (coarse timestamps), many executions leaving
            // the live lists at once (status listings, more pending than read by id a poll).
            100..103 => {
                let wfs = self.startable_wfs();
                if let Some(wf) = self.pick(&wfs) {
                    for _ in 0..self.rng.random_range(5..=20) {
                        let status =
                            [Running, Waiting, Handoff, Ended, Failed][self.rng.random_range(0..5)];
                        self.start(wf, status);
                        let dt = self.rng.random_range(0..50_000);
                        self.advance(dt);
                    }
                }
            }
            103..106 => {
                if let Some(wf) = self.pick(&self.live_wfs()) {
                    let mine: Vec<usize> = live
                        .iter()
                        .copied()
                        .filter(|&x| self.execs[x].wf == wf)
                        .collect();
                    let n = self.rng.random_range(3..=15).min(mine.len());
                    let pause = after_baseline && self.setup.paused && self.rng.random_bool(0.4);
                    for &x in &mine[..n] {
                        if pause {
                            self.pause(x);
                        } else {
                            let to = [Ended, Ended, Failed][self.rng.random_range(0..3)];
                            self.set(x, to);
                        }
                    }
                }
            }
            106..108 if self.setup.paused => {
                let paused: Vec<usize> = (0..self.execs.len())
                    .filter(|&x| self.execs[x].exists() && self.execs[x].paused)
                    .collect();
                for x in paused {
                    let to =
                        [Waiting, Running, Handoff, Ended, Failed][self.rng.random_range(0..5)];
                    self.set(x, to);
                }
            }
            108..110 if self.setup.delete_live => {
                if let Some(wf) = self.pick(&self.live_wfs()) {
                    let mine: Vec<usize> = (0..self.execs.len())
                        .filter(|&x| {
                            let e = &self.execs[x];
                            e.wf == wf && e.exists() && !e.status.is_terminal()
                        })
                        .collect();
                    let n = self.rng.random_range(3..=12).min(mine.len());
                    for &x in &mine[..n] {
                        self.delete_execution(x);
                    }
                }
            }
            _ => {}
        }
    }

    // ----- polls ---------------------------------------------------------------------------

    /// Flaky listings and executions lists for the next poll.
    fn flake(&mut self) {
        if self.setup.flaky_listing && self.rng.random_bool(0.3) {
            let calm = self
                .wfs
                .iter()
                .all(|w| w.missing_streak == 0 && w.hidden == 0);
            if calm && self.empty_listings == 0 && self.rng.random_bool(0.25) {
                self.empty_listings = 1;
                self.sim().empty_workflow_lists(1);
                self.note("the next workflow list is empty".to_owned());
            } else {
                let calm: Vec<usize> = self
                    .live_wfs()
                    .into_iter()
                    .filter(|&w| self.wfs[w].hidden == 0 && self.wfs[w].missing_streak == 0)
                    .collect();
                if let Some(wf) = self.pick(&calm) {
                    // Up to the whole grace period of 5 listings, now and then past it.
                    let n = if self.rng.random_bool(0.2) {
                        self.rng.random_range(GRACE + 1..=GRACE + 3)
                    } else {
                        self.rng.random_range(1..=GRACE)
                    };
                    self.wfs[wf].hidden = n;
                    let id = self.wfs[wf].id.clone();
                    self.sim().hide_workflow(&id, n);
                    self.note(format!("workflow {wf} left out of the next {n} listings"));
                }
            }
        }
        if self.setup.flaky_executions && self.rng.random_bool(0.25) {
            let wfs = self.live_wfs();
            if let Some(wf) = self.pick(&wfs) {
                let status = if self.rng.random_bool(0.5) { 404 } else { 422 };
                self.wfs[wf].failing = Some(status);
                let id = self.wfs[wf].id.clone();
                self.sim().fail_workflow_executions(&id, Some(status));
                self.note(format!("workflow {wf} executions answer {status}"));
            }
        }
    }

    /// `execution_count` and `last_executed_at` as `GET /workflows` shows `wf` at `now`
    /// (what the exporter keeps of them: the simulator's rendering, parsed back).
    fn signals(&self, wf: usize, now: i64) -> (Option<u64>, Option<i64>) {
        let v = &self.setup.variance;
        let cutoff = |lag: Duration| {
            let lag = Setup::lag_us(lag);
            move |e: &&Exec| lag == 0 || e.start <= now - lag
        };
        let of_wf = self.execs.iter().filter(|e| e.wf == wf);
        let count = (v.execution_count == Presence::Present).then(|| {
            of_wf
                .clone()
                .filter(cutoff(v.execution_count_lag))
                .filter(|e| !v.shrinking_count || e.exists())
                .count() as u64
        });
        let last = if v.last_executed_at == Presence::Present {
            of_wf
                .filter(cutoff(v.last_executed_at_lag))
                .map(|e| e.start)
                .max()
                .map(|t| v.precision.workflow_last_executed_at.truncate_us(t))
        } else {
            None
        };
        (count, last)
    }

    /// Whether the exporter lists, at this poll of `wf`, the window (every execution it does
    /// not know yet), by the planner's rule (README, *How polling spends the API budget*): on
    /// the workflow's first poll; when `execution_count` is missing; when the live lists show
    /// no id it does not know and the counts differ from the previous listing; when they show
    /// some and these are not exactly the count's growth, each with a believable start.
    /// `None` when the model cannot tell which live ids the exporter knows (one back from
    /// `paused` that no poll surely saw).
    fn windowed(&self, wf: usize, now: i64) -> Option<bool> {
        let w = &self.wfs[wf];
        if w.last_commit.is_none() {
            return Some(true);
        }
        let (count, last) = self.signals(wf, now);
        let (prev_count, _) = w.signals;
        let (Some(count), Some(prev_count)) = (count, prev_count) else {
            return Some(true);
        };
        let k = w.last_commit_poll;
        let live = || self.execs.iter().filter(|e| e.wf == wf && e.is_live());
        if live().any(|e| e.born < k && !e.seen) {
            return None;
        }
        // Every execution created since the previous commit is unknown; the others it knows.
        let unknown: Vec<&Exec> = live().filter(|e| e.born >= k).collect();
        if unknown.is_empty() {
            return Some((Some(count), last) != w.signals);
        }

        let explained = count.saturating_sub(prev_count) == unknown.len() as u64
            && unknown.iter().all(|e| !e.bad_start);
        Some(!explained)
    }

    /// The commit of one scope (a workflow in project mode, every conversation in
    /// conversation mode): what the poll surely saw. `windowed`: every execution of the scope
    /// the exporter does not know is listed; `complete`: every execution of the scope is.
    fn committed(&mut self, scope: impl Fn(&Exec) -> bool, windowed: bool, complete: bool) {
        let baseline = self.polls == 1;
        let mut unseen_handoffs = Vec::new();
        for e in self.execs.iter_mut().filter(|e| e.exists() && scope(e)) {
            // A paused one the exporter knows is pending, read by id a few a poll, and may be
            // older than the window.
            let read = complete || (windowed && !e.ever_paused);
            if e.status.is_terminal() && !e.settled && (e.live_at_commit || read) {
                e.settled = true;
                e.seen = true;
            }
            if e.is_live() || windowed || complete {
                e.seen = true;
            }
            e.live_at_commit = e.is_live();
            // The exporter counts an entry into hand-off when it sees an execution in handoff
            // that it last saw in another status: Kapso's entries since the last poll must be
            // exactly that one, or none.
            let in_handoff = e.is_live() && e.status == Handoff;
            let visible = u32::from(in_handoff && e.view != Some(Handoff));
            if !baseline
                && (e.handoff_entries != visible || (e.view_ambiguous && e.handoff_entries > 0))
            {
                unseen_handoffs.push(e.wf);
            }
            e.handoff_entries = 0;
            if e.is_live() {
                e.view = Some(e.status);
                e.view_ambiguous = false;
            } else if e.paused {
                e.view_ambiguous |= e.view == Some(Handoff);
            }
        }
        for w in unseen_handoffs {
            self.wfs[w].handoffs_exact = false;
        }
    }

    async fn poll(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        if self.baseline.is_none() {
            self.sim().mark();
            self.baseline = Some(now);
        }
        self.polls += 1;
        // What this poll lists and commits.
        let empty = self.empty_listings > 0;
        self.empty_listings = self.empty_listings.saturating_sub(1);
        let mut listed = Vec::new();
        for w in 0..self.wfs.len() {
            if self.wfs[w].deleted {
                continue;
            }
            if self.wfs[w].hidden > 0 {
                self.wfs[w].hidden -= 1;
                continue;
            }
            if !empty {
                listed.push(w);
            }
        }
        let project = self.mode == Mode::Project;
        let committed: Vec<usize> = if project {
            listed
                .iter()
                .copied()
                .filter(|&w| self.wfs[w].failing.is_none())
                .collect()
        } else {
            Vec::new()
        };
        self.note(format!(
            "poll {}: listed {listed:?}, committed {committed:?}",
            self.polls
        ));
        let result = self.h.exporter.pollers[0].poll_once().await;
        let all_failed = project && !listed.is_empty() && committed.is_empty();
        prop_assert_eq!(
            result.is_err(),
            all_failed,
            "poll {}: {:?} (listed {:?}, committed {:?})",
            self.polls,
            result.err().map(|e| e.to_string()),
            listed,
            committed
        );
        // The model's view of what the poll saw.
        if project {
            for w in 0..self.wfs.len() {
                if listed.contains(&w) {
                    self.wfs[w].missing_streak = 0;
                } else {
                    self.wfs[w].missing_streak += 1;
                    if self.wfs[w].missing_streak > GRACE {
                        self.wfs[w].forgotten = true;
                    }
                }
                if listed.contains(&w) && self.wfs[w].failing.is_some() {
                    self.wfs[w].failed_polls += 1;
                }
            }
            for &w in &committed {
                let decision = self.windowed(w, now);
                let windowed = decision == Some(true);
                self.stats.windows[match decision {
                    Some(true) => 0,
                    Some(false) => 1,
                    None => 2,
                }] += 1;
                let signals = self.signals(w, now);
                let prev = self.wfs[w].signals;
                if windowed && prev.0 == signals.0 && prev.1 != signals.1 {
                    self.stats.windows_by_last_executed_at += 1;
                }
                if self.wfs[w].last_commit.is_none() && self.wfs[w].late && !self.wfs[w].all {
                    // First window of a late workflow without a believable creation time: rows
                    // without a believable start cannot be placed.
                    for x in 0..self.execs.len() {
                        let e = &self.execs[x];
                        if e.wf == w && e.exists() && e.bad_start {
                            self.uncertain(x);
                        }
                    }
                }
                self.committed(|e| e.wf == w, windowed, false);
                let existing = self
                    .execs
                    .iter()
                    .filter(|e| e.wf == w && e.exists())
                    .count();
                let wf = &mut self.wfs[w];
                wf.last_commit = Some(now);
                wf.last_commit_poll = self.polls;
                wf.signals = signals;
                wf.max_existing = wf.max_existing.max(existing);
            }
            for w in 0..self.wfs.len() {
                if let Some(_status) = self.wfs[w].failing.take() {
                    let id = self.wfs[w].id.clone();
                    self.sim().fail_workflow_executions(&id, None);
                }
            }
        } else {
            // Every conversation's listing holds all its executions, every status.
            self.committed(|e| e.conv.is_some(), true, true);
        }
        self.check(&committed, !all_failed).await
    }

    /// Whether a workflow's counters can be exact: its gauges can, and it was never forgotten
    /// (see the module doc).
    fn exact_counts(&self, w: usize) -> bool {
        self.exact_wf(w) && !self.wfs[w].forgotten
    }

    /// Whether a workflow's gauges can be exact (see the module doc).
    fn exact_wf(&self, w: usize) -> bool {
        let wf = &self.wfs[w];
        let may_skip = self.setup.coarse_cursor_and_start() && wf.max_existing > PAGE;
        !wf.deleted && !may_skip
    }

    fn truth_live(&self, w: usize) -> [u64; 3] {
        ExecStatus::LIVE.map(|s| {
            self.execs
                .iter()
                .filter(|e| e.wf == w && e.is_live() && e.status == s)
                .count() as u64
        })
    }

    /// The starts and finishes of `w` that polls surely saw, so the counters show at least
    /// these.
    fn surely_counted(&self, w: usize) -> Counts {
        let mut c = Counts::default();
        for e in self.execs.iter().filter(|e| e.wf == w) {
            if e.counted_start && e.seen && !e.uncertain_start {
                c.started += 1;
            }
            if e.counted_finish && e.settled && !e.uncertain_finish {
                match e.status {
                    Ended => c.ended += 1,
                    _ => c.failed += 1,
                }
            }
        }
        c
    }

    /// After every poll.
    async fn check(&mut self, committed: &[usize], ok: bool) -> Result<(), TestCaseError> {
        let s: Samples = parse(&self.h.scrape().await);
        let kapso_up = s
            .iter()
            .find(|((n, _), _)| n == "kapso_up")
            .map(|(_, v)| *v);
        prop_assert_eq!(kapso_up, Some(f64::from(u8::from(ok))), "kapso_up");
        let truth = self.sim().ground_truth();
        let poll = self.polls;
        for w in 0..self.wfs.len() {
            let wf = &self.wfs[w];
            // The model follows the simulator.
            if !wf.deleted {
                let t = counting_support::truth_counts(&truth, &wf.id);
                prop_assert_eq!(t, wf.truth, "model truth of workflow {}", w);
                prop_assert_eq!(
                    counting_support::truth_live3(&truth, &wf.id),
                    self.truth_live(w),
                    "model live of workflow {}",
                    w
                );
            }
            if self.mode == Mode::Project && wf.missing_streak > GRACE {
                prop_assert!(
                    counts(&s, &wf.id).is_none() && up(&s, &wf.id).is_none(),
                    "poll {}: workflow {} missing from {} listings still has series",
                    poll,
                    w,
                    wf.missing_streak
                );
                continue;
            }
            let Some(got) = counts(&s, &wf.id) else {
                continue;
            };
            prop_assert!(
                got.all_le(&wf.truth),
                "poll {}: workflow {} counted {:?}, more than the truth {:?}",
                poll,
                w,
                got,
                wf.truth
            );
            prop_assert!(
                wf.shown_max.all_le(&got),
                "poll {}: workflow {} went back from {:?} to {:?}",
                poll,
                w,
                wf.shown_max,
                got
            );
            self.wfs[w].shown_max = got;
            let wf = &self.wfs[w];
            // Failures by step: each at most the truth at its step, and together exactly the
            // failures counted (so wherever those are exact, every step is).
            let mut by_step = 0;
            for (labels, v) in series(&s, "kapso_workflow_step_failures_total") {
                if labels["workflow_id"] != wf.id || wf.deleted {
                    continue;
                }
                let step = step_truth(labels);
                let truth_n = truth.step_failures.get(&step).copied().unwrap_or(0);
                prop_assert!(
                    v as u64 <= truth_n,
                    "poll {}: workflow {} step {:?}: {} failures, more than the truth {}",
                    poll,
                    w,
                    step.step,
                    v,
                    truth_n
                );
                by_step += v as u64;
            }
            if !wf.deleted {
                prop_assert_eq!(
                    by_step,
                    got.failed,
                    "poll {}: workflow {}: failures by step vs failures",
                    poll,
                    w
                );
            }
            if self.mode == Mode::Project {
                let shown_up = up(&s, &wf.id);
                if committed.contains(&w) {
                    prop_assert_eq!(shown_up, Some(1.0), "poll {}: up of workflow {}", poll, w);
                } else if shown_up.is_some() || (!wf.deleted && wf.last_commit.is_some()) {
                    prop_assert_eq!(shown_up, Some(0.0), "poll {}: up of workflow {}", poll, w);
                }
                prop_assert_eq!(
                    poll_errors(&s, &wf.id, "client_error"),
                    f64::from(wf.failed_polls),
                    "poll {}: poll errors of workflow {}",
                    poll,
                    w
                );
            }
            if self.exact_counts(w) {
                // What a poll surely saw is counted by now.
                let low = self.surely_counted(w);
                prop_assert!(
                    low.started <= got.started
                        && low.ended <= got.ended
                        && low.failed <= got.failed,
                    "poll {}: workflow {} counted {:?}, but polls surely saw {:?}",
                    poll,
                    w,
                    got,
                    low
                );
            }
            let wf = &self.wfs[w];
            let fresh = match self.mode {
                Mode::Project => committed.contains(&w),
                Mode::Conversations => !wf.deleted,
            };
            if fresh && self.exact_wf(w) {
                prop_assert_eq!(
                    live3(&s, &wf.id).unwrap_or_default(),
                    self.truth_live(w),
                    "poll {}: live gauges (running, waiting, handoff) of workflow {}",
                    poll,
                    w
                );
            }
        }
        if self.mode == Mode::Conversations {
            // A workflow the exporter has not met has nothing live.
            for w in 0..self.wfs.len() {
                if !self.wfs[w].deleted && counts(&s, &self.wfs[w].id).is_none() {
                    prop_assert_eq!(self.truth_live(w), [0, 0, 0], "workflow {} unseen", w);
                }
            }
        }
        Ok(())
    }

    /// Random transitions and timing, then one poll.
    async fn interval(&mut self) -> Result<(), TestCaseError> {
        let changes = self.rng.random_range(0..12);
        for _ in 0..changes {
            let dt = self.step_dt();
            self.advance(dt);
            self.transition(true);
        }
        let dt = self.step_dt();
        self.advance(dt);
        if self.mode == Mode::Project {
            self.flake();
        }
        self.poll().await
    }

    /// No more changes: every workflow listed, the clock past every lag, pending executions
    /// read by id; then the exactness checks.
    async fn rest(&mut self) -> Result<(), TestCaseError> {
        self.note("rest".to_owned());
        for w in self.live_wfs() {
            self.wfs[w].hidden = 0;
            let id = self.wfs[w].id.clone();
            self.sim().hide_workflow(&id, 0);
        }
        self.empty_listings = 0;
        self.sim().empty_workflow_lists(0);
        let v = &self.setup.variance;
        let lag = Setup::lag_us(v.execution_count_lag.max(v.last_executed_at_lag));
        self.advance(lag + 2 * SECOND);
        let pending = self
            .execs
            .iter()
            .filter(|e| e.ever_paused || e.deleted)
            .count();
        let polls = 3 + pending.div_ceil(PENDING_PER_POLL);
        for _ in 0..polls {
            self.poll().await?;
            let dt = self.rng.random_range(SECOND..30 * SECOND);
            self.advance(dt);
        }
        let s: Samples = parse(&self.h.scrape().await);
        self.stats.cases = 1;
        self.stats.polls = self.polls as u64;
        self.stats.executions = self.execs.len() as u64;
        self.stats.uncertain_executions = self
            .execs
            .iter()
            .filter(|e| e.uncertain_start || e.uncertain_finish)
            .count() as u64;
        for w in 0..self.wfs.len() {
            if !self.exact_wf(w) {
                self.stats.unchecked += 1;
                continue;
            }
            let wf = &self.wfs[w];
            if wf.forgotten {
                // Forgotten and back: its counters continue, its gauges are the truth.
                self.stats.unchecked += 1;
                self.stats.forgotten += 1;
                prop_assert_eq!(
                    live3(&s, &wf.id).unwrap_or_default(),
                    self.truth_live(w),
                    "at rest: live gauges of workflow {} (forgotten and back)",
                    w
                );
                continue;
            }
            let got = counts(&s, &wf.id).unwrap_or_default();
            let mut lower = wf.truth;
            let shrinking = self.setup.variance.shrinking_count && self.setup.count_present();
            for e in self.execs.iter().filter(|e| e.wf == w) {
                // A shrinking count can hide, for good, what no poll surely saw.
                let hidden = shrinking && !e.seen;
                if e.counted_start && (e.uncertain_start || hidden) {
                    lower.started = lower.started.saturating_sub(1);
                }
                if e.counted_finish && (e.uncertain_finish || hidden) {
                    match e.status {
                        Ended => lower.ended = lower.ended.saturating_sub(1),
                        _ => lower.failed = lower.failed.saturating_sub(1),
                    }
                }
            }
            let ok = lower.started <= got.started
                && lower.ended <= got.ended
                && lower.failed <= got.failed;
            prop_assert!(
                ok,
                "at rest: workflow {} counted {:?}, truth {:?}, at least {:?}",
                w,
                got,
                wf.truth,
                lower
            );
            self.stats.checked_starts += wf.truth.started;
            self.stats.checked_finishes += wf.truth.ended + wf.truth.failed;
            if lower == wf.truth {
                self.stats.exact += 1;
            } else {
                self.stats.ranged += 1;
            }
            let exact_handoffs = wf.handoffs_exact && lower == wf.truth;
            if exact_handoffs {
                self.stats.exact_handoffs += 1;
                prop_assert_eq!(
                    got.handoffs,
                    wf.truth.handoffs,
                    "at rest: hand-offs of workflow {}",
                    w
                );
            }
            prop_assert_eq!(
                live3(&s, &wf.id).unwrap_or_default(),
                self.truth_live(w),
                "at rest: live gauges of workflow {}",
                w
            );
            let paused = self
                .execs
                .iter()
                .filter(|e| e.wf == w && e.exists() && e.paused)
                .count() as u64;
            if self.mode == Mode::Project {
                let unknown = outcome_unknown(&s, &wf.id).unwrap_or(0);
                prop_assert!(
                    unknown <= paused,
                    "at rest: workflow {} shows {} outcomes unknown, {} are paused",
                    w,
                    unknown,
                    paused
                );
            }
        }
        Ok(())
    }

    fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {:#x}, {:?} mode, {} polls\n{:#?}",
            self.seed, self.mode, self.polls, self.setup
        );
        for (i, w) in self.wfs.iter().enumerate() {
            let _ = writeln!(
                out,
                "workflow {i} {}: truth {:?}, shown {:?}, max existing {}, handoffs exact {}",
                w.id, w.truth, w.shown_max, w.max_existing, w.handoffs_exact
            );
        }
        for (x, e) in self.execs.iter().enumerate() {
            if e.uncertain_start || e.uncertain_finish || (e.counted_start && !e.seen) {
                let _ = writeln!(out, "x{x}: {e:?}");
            }
        }
        let skip = self.log.len().saturating_sub(400);
        if skip > 0 {
            let _ = writeln!(out, "... {skip} log lines left out");
        }
        for line in &self.log[skip..] {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

async fn run_case(
    seed: u64,
    polls: usize,
    mode: Mode,
    stats: &std::sync::Mutex<Stats>,
) -> Result<(), TestCaseError> {
    let mut m = Model::new(seed, mode).await;
    let outcome = async {
        m.poll().await?;
        for _ in 0..polls {
            m.interval().await?;
        }
        m.rest().await
    }
    .await;
    stats.lock().unwrap().add(&m.stats);
    outcome.map_err(|e| TestCaseError::fail(format!("{e}\n{}", m.report())))
}

fn cases(divisor: u32) -> u32 {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(32u32);
    (cases / divisor).max(1)
}

fn property(mode: Mode, cases: u32, seed: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 32,
        ..Config::default()
    });
    let stats = std::sync::Mutex::new(Stats::default());
    let result = runner.run(&(any::<u64>().no_shrink(), 1usize..12), |(seed, polls)| {
        rt.block_on(run_case(seed, polls, mode, &stats))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let stats = stats.into_inner().unwrap();
    eprintln!("{mode:?} mode: {stats:#?}");
    // Not vacuous: most workflows are checked exactly, and they saw starts and finishes.
    assert!(
        stats.exact * 2 > stats.exact + stats.ranged + stats.unchecked,
        "{stats:?}"
    );
    assert!(
        stats.checked_starts > 0 && stats.checked_finishes > 0,
        "{stats:?}"
    );
}

#[test]
fn project_mode_counters_are_never_too_high_and_exact_where_the_api_allows() {
    property(Mode::Project, cases(1), 0x4b41_5053_4f01);
}

#[test]
fn conversation_mode_counters_are_never_too_high_and_exact_where_the_api_allows() {
    property(Mode::Conversations, cases(3), 0x4b41_5053_4f02);
}
