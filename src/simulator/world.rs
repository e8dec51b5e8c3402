//! The simulated project: workflows, conversations and executions, their indexes, the seeded
//! evolution in [`World::tick`], and the ground truth that tests compare the exporter against.
//!
//! Every execution is indexed by (started_at µs, id) in four ordered sets: its workflow's
//! `all` and `by_status`, and its conversation's `all` and `by_status`. Conversations are
//! indexed by (last_active_at µs, id). Status changes move keys between sets, so a page is
//! O(log n + limit) and nothing scans the whole world per request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::codec::{Key, Uid, datetime, new_uuid};
use super::{ExecStatus, GroundTruth, SimulatorConfig, WorkflowTruth};

const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 60 * MINUTE_US;
const DAY_US: i64 = 24 * HOUR_US;

/// Marker for "not in a live vector".
const NOT_LIVE: u32 = u32::MAX;

/// A step of a workflow graph, as `current_step` and event `step` references show it.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub id: u128,
    pub identifier: &'static str,
    pub stepable_type: &'static str,
    pub x: f64,
    pub y: f64,
}

/// The steps every simulated workflow has (identifier, Ruby class; facts sheet §10).
const STEPS: [(&str, &str); 6] = [
    ("start", "FlowActionStep"),
    ("agent_reply", "FlowAgentStep"),
    ("route_intent", "FlowDecideStep"),
    ("wait_response", "FlowWaitStep"),
    ("handoff_to_agent", "FlowActionStep"),
    ("send_goodbye", "FlowActionStep"),
];

/// A workflow and the indexes of its executions.
#[derive(Debug)]
pub(crate) struct Workflow {
    pub id: u128,
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    pub status: String,
    pub created_us: i64,
    pub updated_us: i64,
    pub lock_version: i64,
    pub debounce_seconds: i64,
    pub read_mode: &'static str,
    pub steps: Vec<Step>,
    /// Relative share of new executions in [`World::tick`].
    weight: u32,
    /// Every execution ever created for it (the spec's `execution_count`).
    pub execution_count: u64,
    pub last_executed_us: Option<i64>,
    pub all: BTreeSet<Key>,
    pub by_status: [BTreeSet<Key>; 5],
}

impl Workflow {
    /// The step an execution in `status` currently sits on.
    pub fn step_for(&self, exec: &Execution) -> &Step {
        let index = match exec.status {
            ExecStatus::Running => 1 + (exec.id % 2) as usize,
            ExecStatus::Waiting => 3,
            ExecStatus::Handoff => 4,
            ExecStatus::Ended => 5,
            ExecStatus::Failed => 1,
        };
        self.steps
            .get(index)
            .or(self.steps.first())
            .unwrap_or(&FALLBACK_STEP)
    }
}

static FALLBACK_STEP: Step = Step {
    id: 0,
    identifier: "start",
    stepable_type: "FlowActionStep",
    x: 0.0,
    y: 0.0,
};

/// A WhatsApp conversation and the indexes of its executions.
#[derive(Debug)]
pub(crate) struct Conversation {
    pub id: u128,
    pub phone_number: String,
    pub contact_name: String,
    pub ended: bool,
    pub created_us: i64,
    pub last_active_us: i64,
    pub messages_count: u64,
    pub all: BTreeSet<Key>,
    pub by_status: [BTreeSet<Key>; 5],
}

/// One workflow execution. `workflow`/`conversation` are indexes into the world's vectors.
#[derive(Clone, Debug)]
pub(crate) struct Execution {
    pub id: u128,
    pub workflow: u32,
    pub conversation: Option<u32>,
    pub tracking_id: Option<u128>,
    pub status: ExecStatus,
    pub started_us: i64,
    pub last_event_us: i64,
    pub ended_us: Option<i64>,
    /// Position in `World::live[status]`, or [`NOT_LIVE`].
    live_pos: u32,
}

impl Execution {
    /// The keyset position of this execution in every execution index.
    pub fn key(&self) -> Key {
        (self.started_us, self.id)
    }
}

/// Counters since the last `mark()`, by workflow index.
#[derive(Clone, Debug, Default)]
struct Counters {
    started: Vec<u64>,
    finished: Vec<[u64; 2]>,
    handoffs: Vec<u64>,
}

/// The whole simulated project.
#[derive(Debug)]
pub(crate) struct World {
    rng: StdRng,
    pub project_id: u128,
    pub phone_number_id: String,
    pub workflows: Vec<Workflow>,
    workflow_ix: HashMap<u128, u32>,
    pub conversations: Vec<Conversation>,
    conversation_ix: HashMap<u128, u32>,
    /// Conversations by (last_active_at, id): all, and by status (0 active, 1 ended).
    pub conv_all: BTreeSet<Key>,
    pub conv_by_status: [BTreeSet<Key>; 2],
    pub executions: Vec<Execution>,
    execution_ix: HashMap<u128, u32>,
    /// Live executions per live status, for O(1) random picks in `tick`.
    live: [Vec<u32>; 3],
    last_started_us: i64,
    last_workflow_us: i64,
    counters: Counters,
    target_live: usize,
    finish_rate: Option<f64>,
}

/// An event `tick` applies at a given time.
#[derive(Clone, Copy, Debug)]
enum Event {
    Start,
    End,
    Fail,
    Wait,
    Resume,
    Handoff,
    Unhandoff,
    Touch,
}

const WORKFLOW_NAMES: [&str; 10] = [
    "Inbound Support",
    "Order Status",
    "Lead Qualification",
    "Appointment Booking",
    "Payment Reminder",
    "Feedback Survey",
    "Returns and Refunds",
    "Onboarding",
    "Delivery Tracking",
    "Legacy Welcome Flow",
];

const CONTACT_NAMES: [&str; 12] = [
    "Alicia", "Bruno", "Camila", "Diego", "Elena", "Felipe", "Gabriela", "Hugo", "Isabel",
    "Javier", "Karina", "Luis",
];

impl World {
    /// An empty project.
    pub fn empty(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let project_id = new_uuid(&mut rng);
        World {
            rng,
            project_id,
            phone_number_id: "1234567890".to_owned(),
            workflows: Vec::new(),
            workflow_ix: HashMap::new(),
            conversations: Vec::new(),
            conversation_ix: HashMap::new(),
            conv_all: BTreeSet::new(),
            conv_by_status: Default::default(),
            executions: Vec::new(),
            execution_ix: HashMap::new(),
            live: Default::default(),
            last_started_us: i64::MIN,
            last_workflow_us: i64::MIN,
            counters: Counters::default(),
            target_live: 0,
            finish_rate: None,
        }
    }

    /// A project populated from `config.seed`, as seen at `now_us`. The population itself is
    /// not counted in the since-`mark()` counters.
    pub fn populated(config: &SimulatorConfig, now_us: i64) -> World {
        let mut w = World::empty(config.seed);
        w.target_live = config.live_executions;
        let n = config.workflows;
        for i in 0..n {
            let name = WORKFLOW_NAMES
                .get(i)
                .map_or_else(|| format!("Workflow {}", i + 1), |n| (*n).to_owned());
            // With enough workflows, show every lifecycle status: one archived, one draft.
            let status = if n >= 4 && i == n - 1 {
                "archived"
            } else if n >= 5 && i == n - 2 {
                "draft"
            } else {
                "active"
            };
            let created = now_us - w.rng.random_range(30 * DAY_US..90 * DAY_US);
            w.insert_workflow(&name, status, created);
        }
        for _ in 0..config.conversations {
            let created = now_us - w.rng.random_range(HOUR_US..7 * DAY_US);
            w.insert_conversation(created);
        }
        w.populate_executions(config, now_us);
        // Conversations with no live execution and no activity in the last hour are ended.
        for ci in 0..w.conversations.len() {
            let c = &w.conversations[ci];
            let has_live = ExecStatus::LIVE
                .iter()
                .any(|s| !c.by_status[s.index()].is_empty());
            if !has_live && c.last_active_us < now_us - HOUR_US {
                w.set_conversation_ended(ci, true);
            }
        }
        w.counters = Counters {
            started: vec![0; w.workflows.len()],
            finished: vec![[0; 2]; w.workflows.len()],
            handoffs: vec![0; w.workflows.len()],
        };
        w
    }

    fn populate_executions(&mut self, config: &SimulatorConfig, now_us: i64) {
        let runnable: Vec<u32> = (0..self.workflows.len() as u32)
            .filter(|&i| self.workflows[i as usize].status != "draft")
            .collect();
        let active: Vec<u32> = runnable
            .iter()
            .copied()
            .filter(|&i| self.workflows[i as usize].status == "active")
            .collect();
        if runnable.is_empty() {
            return;
        }
        let live_pool = if active.is_empty() {
            &runnable
        } else {
            &active
        };
        // (started, last_event, ended, status, workflow)
        let mut plan: Vec<(i64, i64, Option<i64>, ExecStatus, u32)> =
            Vec::with_capacity(config.live_executions + config.terminal_executions);
        for _ in 0..config.terminal_executions {
            let wf = runnable[self.rng.random_range(0..runnable.len())];
            let started = now_us - self.rng.random_range(MINUTE_US..DAY_US);
            let ended = (started + self.rng.random_range(10_000_000..30 * MINUTE_US)).min(now_us);
            let status = if self.rng.random_bool(0.12) {
                ExecStatus::Failed
            } else {
                ExecStatus::Ended
            };
            plan.push((started, ended, Some(ended), status, wf));
        }
        for _ in 0..config.live_executions {
            let wf = self.pick_weighted(live_pool);
            // Skewed towards recent starts, with a tail of old, stuck ones.
            let u: f64 = self.rng.random();
            let age = (u * u * (3 * HOUR_US) as f64) as i64 + 1_000_000;
            let started = now_us - age;
            let status = match self.rng.random_range(0..100) {
                0..25 => ExecStatus::Running,
                25..85 => ExecStatus::Waiting,
                _ => ExecStatus::Handoff,
            };
            let last_event = if status == ExecStatus::Running && self.rng.random_bool(0.9) {
                now_us - self.rng.random_range(0..(2 * MINUTE_US).min(age))
            } else {
                started + self.rng.random_range(0..age)
            };
            plan.push((started, last_event, None, status, wf));
        }
        plan.sort_by_key(|p| p.0);
        for (started, last_event, ended, status, wf) in plan {
            let conv = self.random_conversation();
            let tracking = self.random_tracking(conv);
            let started = self.next_start(started);
            let ended = ended.map(|e| e.max(started));
            self.insert_execution(
                wf,
                conv,
                status,
                started,
                last_event.max(started),
                ended,
                tracking,
            );
        }
    }

    // ----- lookups ---------------------------------------------------------------------

    /// The index of a workflow by id.
    pub fn workflow_index(&self, id: u128) -> Option<u32> {
        self.workflow_ix.get(&id).copied()
    }

    /// The index of a conversation by id.
    pub fn conversation_index(&self, id: u128) -> Option<u32> {
        self.conversation_ix.get(&id).copied()
    }

    /// An execution by id.
    pub fn execution(&self, id: u128) -> Option<&Execution> {
        self.execution_ix
            .get(&id)
            .map(|&i| &self.executions[i as usize])
    }

    /// The execution a key of an execution index points to.
    pub fn execution_at(&self, key: &Key) -> Option<&Execution> {
        self.execution(key.1)
    }

    // ----- scripted changes ------------------------------------------------------------

    /// Adds a workflow created at `now_us` (bumped so creation times are strictly increasing).
    pub fn add_workflow(&mut self, name: &str, status: &str, now_us: i64) -> u128 {
        let created = now_us.max(self.last_workflow_us.saturating_add(1));
        let i = self.insert_workflow(name, status, created);
        self.workflows[i as usize].id
    }

    /// Adds an active conversation created (and last active) at `now_us`.
    pub fn add_conversation(&mut self, now_us: i64) -> u128 {
        let i = self.insert_conversation(now_us);
        self.conversations[i as usize].id
    }

    /// Starts an execution at `now_us` (bumped by 1 µs if needed so started_at is strictly
    /// increasing). Counts as started, and as a handoff or finish when started in one.
    pub fn start_execution(
        &mut self,
        workflow: u32,
        conversation: Option<u32>,
        status: ExecStatus,
        now_us: i64,
    ) -> u128 {
        let started = self.next_start(now_us);
        let ended = status.is_terminal().then_some(started);
        let tracking = self.random_tracking(conversation);
        let ix = self.insert_execution(
            workflow,
            conversation,
            status,
            started,
            started,
            ended,
            tracking,
        );
        self.count_start(workflow, status);
        self.executions[ix as usize].id
    }

    /// Moves an execution to `status` at `now_us`; `false` if the id is unknown.
    /// No transition rules are enforced: scripted tests may do what the real API refuses.
    pub fn set_status(&mut self, id: u128, status: ExecStatus, now_us: i64) -> bool {
        match self.execution_ix.get(&id) {
            Some(&ix) => {
                self.change_status(ix, status, now_us);
                true
            }
            None => false,
        }
    }

    /// Records a new event on an execution at `now_us`; `false` if the id is unknown.
    pub fn touch(&mut self, id: u128, now_us: i64) -> bool {
        match self.execution_ix.get(&id) {
            Some(&ix) => {
                self.touch_at(ix, now_us);
                true
            }
            None => false,
        }
    }

    /// Resets the since-mark counters to zero.
    pub fn mark(&mut self) {
        let n = self.workflows.len();
        self.counters = Counters {
            started: vec![0; n],
            finished: vec![[0; 2]; n],
            handoffs: vec![0; n],
        };
    }

    /// Overrides how many executions finish per minute in `tick`.
    pub fn set_finish_rate(&mut self, per_minute: f64) {
        self.finish_rate = Some(if per_minute.is_finite() {
            per_minute.max(0.0)
        } else {
            0.0
        });
    }

    // ----- primitives ------------------------------------------------------------------

    fn next_start(&mut self, at_us: i64) -> i64 {
        let t = at_us.max(self.last_started_us.saturating_add(1));
        self.last_started_us = t;
        t
    }

    fn insert_workflow(&mut self, name: &str, status: &str, created_us: i64) -> u32 {
        let id = new_uuid(&mut self.rng);
        let slug = self.unique_slug(name);
        let steps = STEPS
            .iter()
            .enumerate()
            .map(|(i, &(identifier, stepable_type))| Step {
                id: new_uuid(&mut self.rng),
                identifier,
                stepable_type,
                x: 100.0 + 250.0 * i as f64,
                y: if i % 2 == 0 { 100.0 } else { 220.0 },
            })
            .collect();
        let weight = self.rng.random_range(1..=5);
        let debounce_seconds = self.rng.random_range(1..=3);
        let lock_version = self.rng.random_range(1..=12);
        self.last_workflow_us = self.last_workflow_us.max(created_us);
        let index = self.workflows.len() as u32;
        self.workflows.push(Workflow {
            id,
            name: name.to_owned(),
            slug,
            description: Some(format!("Simulated workflow \"{name}\"")),
            status: status.to_owned(),
            created_us,
            updated_us: created_us,
            lock_version,
            debounce_seconds,
            read_mode: "read_with_typing",
            steps,
            weight,
            execution_count: 0,
            last_executed_us: None,
            all: BTreeSet::new(),
            by_status: Default::default(),
        });
        self.workflow_ix.insert(id, index);
        self.counters.started.push(0);
        self.counters.finished.push([0; 2]);
        self.counters.handoffs.push(0);
        index
    }

    fn unique_slug(&self, name: &str) -> String {
        let mut base = String::new();
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                base.push(c.to_ascii_lowercase());
            } else if !base.is_empty() && !base.ends_with('-') {
                base.push('-');
            }
        }
        while base.ends_with('-') {
            base.pop();
        }
        if base.is_empty() {
            base.push_str("workflow");
        }
        let taken = |s: &str| self.workflows.iter().any(|w| w.slug == s);
        if !taken(&base) {
            return base;
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|s| !taken(s))
            .unwrap_or(base)
    }

    fn insert_conversation(&mut self, created_us: i64) -> u32 {
        let id = new_uuid(&mut self.rng);
        let index = self.conversations.len() as u32;
        let phone_number = format!("1555{:07}", self.rng.random_range(0..10_000_000));
        let contact_name = CONTACT_NAMES[self.rng.random_range(0..CONTACT_NAMES.len())].to_owned();
        self.conversations.push(Conversation {
            id,
            phone_number,
            contact_name,
            ended: false,
            created_us,
            last_active_us: created_us,
            messages_count: 1,
            all: BTreeSet::new(),
            by_status: Default::default(),
        });
        self.conversation_ix.insert(id, index);
        self.conv_all.insert((created_us, id));
        self.conv_by_status[0].insert((created_us, id));
        index
    }

    fn set_conversation_ended(&mut self, ci: usize, ended: bool) {
        let c = &mut self.conversations[ci];
        if c.ended == ended {
            return;
        }
        let key = (c.last_active_us, c.id);
        self.conv_by_status[usize::from(c.ended)].remove(&key);
        c.ended = ended;
        self.conv_by_status[usize::from(c.ended)].insert(key);
    }

    /// An execution event at `at_us` makes its conversation active and moves last_active_at.
    fn bump_conversation(&mut self, ci: u32, at_us: i64) {
        let ci = ci as usize;
        self.set_conversation_ended(ci, false);
        let c = &mut self.conversations[ci];
        c.messages_count += 1;
        if at_us <= c.last_active_us {
            return;
        }
        let old = (c.last_active_us, c.id);
        let new = (at_us, c.id);
        c.last_active_us = at_us;
        self.conv_all.remove(&old);
        self.conv_all.insert(new);
        let set = &mut self.conv_by_status[0];
        set.remove(&old);
        set.insert(new);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "an execution has that many fields"
    )]
    fn insert_execution(
        &mut self,
        workflow: u32,
        conversation: Option<u32>,
        status: ExecStatus,
        started_us: i64,
        last_event_us: i64,
        ended_us: Option<i64>,
        tracking_id: Option<u128>,
    ) -> u32 {
        let id = new_uuid(&mut self.rng);
        let key = (started_us, id);
        let index = self.executions.len() as u32;
        let wf = &mut self.workflows[workflow as usize];
        wf.execution_count += 1;
        wf.last_executed_us = Some(
            wf.last_executed_us
                .map_or(started_us, |t| t.max(started_us)),
        );
        wf.all.insert(key);
        wf.by_status[status.index()].insert(key);
        if let Some(ci) = conversation {
            let c = &mut self.conversations[ci as usize];
            c.all.insert(key);
            c.by_status[status.index()].insert(key);
            self.bump_conversation(ci, last_event_us);
        }
        self.executions.push(Execution {
            id,
            workflow,
            conversation,
            tracking_id,
            status,
            started_us,
            last_event_us,
            ended_us,
            live_pos: NOT_LIVE,
        });
        self.execution_ix.insert(id, index);
        self.live_insert(index);
        index
    }

    fn live_insert(&mut self, ix: u32) {
        let e = &mut self.executions[ix as usize];
        if let Some(l) = e.status.live_index() {
            e.live_pos = self.live[l].len() as u32;
            self.live[l].push(ix);
        }
    }

    fn live_remove(&mut self, ix: u32) {
        let e = &mut self.executions[ix as usize];
        let (Some(l), pos) = (e.status.live_index(), e.live_pos) else {
            return;
        };
        e.live_pos = NOT_LIVE;
        let list = &mut self.live[l];
        let pos = pos as usize;
        if pos >= list.len() {
            return;
        }
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            self.executions[moved as usize].live_pos = pos as u32;
        }
    }

    fn count_start(&mut self, workflow: u32, status: ExecStatus) {
        let w = workflow as usize;
        self.counters.started[w] += 1;
        match status {
            ExecStatus::Handoff => self.counters.handoffs[w] += 1,
            ExecStatus::Ended => self.counters.finished[w][0] += 1,
            ExecStatus::Failed => self.counters.finished[w][1] += 1,
            ExecStatus::Running | ExecStatus::Waiting => {}
        }
    }

    fn change_status(&mut self, ix: u32, status: ExecStatus, at_us: i64) {
        let old = self.executions[ix as usize].status;
        if old == status {
            self.touch_at(ix, at_us);
            return;
        }
        self.live_remove(ix);
        let e = &mut self.executions[ix as usize];
        let key = e.key();
        let at_us = at_us.max(e.started_us).max(e.last_event_us);
        e.status = status;
        e.last_event_us = at_us;
        e.ended_us = status.is_terminal().then_some(at_us);
        let (workflow, conversation) = (e.workflow, e.conversation);
        let wf = &mut self.workflows[workflow as usize];
        wf.by_status[old.index()].remove(&key);
        wf.by_status[status.index()].insert(key);
        if let Some(ci) = conversation {
            let c = &mut self.conversations[ci as usize];
            c.by_status[old.index()].remove(&key);
            c.by_status[status.index()].insert(key);
            self.bump_conversation(ci, at_us);
        }
        self.live_insert(ix);
        let w = workflow as usize;
        if status == ExecStatus::Handoff {
            self.counters.handoffs[w] += 1;
        }
        if status.is_terminal() && !old.is_terminal() {
            self.counters.finished[w][usize::from(status == ExecStatus::Failed)] += 1;
        }
    }

    fn touch_at(&mut self, ix: u32, at_us: i64) {
        let e = &mut self.executions[ix as usize];
        e.last_event_us = e.last_event_us.max(at_us);
        let (conversation, at) = (e.conversation, e.last_event_us);
        if let Some(ci) = conversation {
            self.bump_conversation(ci, at);
        }
    }

    // ----- evolution -------------------------------------------------------------------

    /// Evolves the world over the `dt` that ends at `now_us`: executions start, wait, hand
    /// off, resume, end and fail at random times inside the interval, in time order.
    pub fn tick(&mut self, now_us: i64, dt: Duration) {
        // Rates are re-evaluated at least every simulated minute so long steps stay stable.
        let total_us = i64::try_from(dt.as_micros()).unwrap_or(i64::MAX);
        let steps = (total_us / MINUTE_US).clamp(0, 100_000) + 1;
        let step_us = total_us / steps;
        if step_us <= 0 {
            return;
        }
        for s in 0..steps {
            let end = now_us - (steps - 1 - s) * step_us;
            self.tick_window(end, step_us);
        }
    }

    fn tick_window(&mut self, end_us: i64, len_us: i64) {
        let minutes = len_us as f64 / MINUTE_US as f64;
        let [r, w, h] = self.live.each_ref().map(|v| v.len() as f64);
        let live = r + w + h;
        let finish = self.finish_rate.unwrap_or(self.target_live as f64 / 12.0);
        let start = (finish + (self.target_live as f64 - live) / 5.0).max(0.0);
        // Per-execution transitions use 1 - e^(-rate·t) so no execution moves twice as often
        // as its rate says, however long the window.
        let per = |pop: f64, rate: f64| pop * (1.0 - (-rate * minutes).exp());
        let plan = [
            (Event::Start, start * minutes),
            (Event::End, finish * 0.88 * minutes),
            (Event::Fail, finish * 0.12 * minutes),
            (Event::Wait, per(r, 0.5)),
            (Event::Resume, per(w, 0.15)),
            (Event::Handoff, per(r + w, 0.01)),
            (Event::Unhandoff, per(h, 0.05)),
            (Event::Touch, per(r, 0.5)),
        ];
        let mut events = Vec::new();
        for (event, expected) in plan {
            for _ in 0..self.sample_count(expected) {
                let t = end_us - self.rng.random_range(0..len_us);
                events.push((t, event));
            }
        }
        events.sort_by_key(|e| e.0);
        for (t, event) in events {
            self.apply(event, t);
        }
    }

    /// floor(expected) plus one more with the probability of the fractional part.
    fn sample_count(&mut self, expected: f64) -> u64 {
        if !expected.is_finite() || expected <= 0.0 {
            return 0;
        }
        let expected = expected.min(1e7);
        let whole = expected.floor();
        whole as u64 + u64::from(self.rng.random_bool(expected - whole))
    }

    fn apply(&mut self, event: Event, t: i64) {
        use ExecStatus::{Ended, Failed, Handoff, Running, Waiting};
        match event {
            Event::Start => {
                let active: Vec<u32> = (0..self.workflows.len() as u32)
                    .filter(|&i| self.workflows[i as usize].status == "active")
                    .collect();
                if active.is_empty() {
                    return;
                }
                let wf = self.pick_weighted(&active);
                let conv = self.random_conversation();
                let status = match self.rng.random_range(0..100) {
                    0..85 => Running,
                    85..97 => Waiting,
                    _ => Handoff,
                };
                let started = self.next_start(t);
                let tracking = self.random_tracking(conv);
                self.insert_execution(wf, conv, status, started, started, None, tracking);
                self.count_start(wf, status);
            }
            Event::End => {
                let from = match self.rng.random_range(0..100) {
                    0..35 => [Running, Waiting, Handoff],
                    35..85 => [Waiting, Running, Handoff],
                    _ => [Handoff, Waiting, Running],
                };
                self.transition(&from, Ended, t);
            }
            Event::Fail => self.transition(&[Running, Waiting], Failed, t),
            Event::Wait => self.transition(&[Running], Waiting, t),
            Event::Resume => self.transition(&[Waiting], Running, t),
            Event::Handoff => {
                let from = if self.rng.random_bool(0.6) {
                    [Running, Waiting]
                } else {
                    [Waiting, Running]
                };
                self.transition(&from, Handoff, t);
            }
            Event::Unhandoff => self.transition(&[Handoff], Waiting, t),
            Event::Touch => {
                if let Some(ix) = self.random_live(&[Running]) {
                    self.touch_at(ix, t);
                }
            }
        }
    }

    /// Moves a random execution from the first non-empty status of `from` to `to`.
    fn transition(&mut self, from: &[ExecStatus], to: ExecStatus, t: i64) {
        if let Some(ix) = self.random_live(from) {
            self.change_status(ix, to, t);
        }
    }

    fn random_live(&mut self, from: &[ExecStatus]) -> Option<u32> {
        let list = from
            .iter()
            .filter_map(|s| s.live_index())
            .find(|&l| !self.live[l].is_empty())?;
        let pos = self.rng.random_range(0..self.live[list].len());
        Some(self.live[list][pos])
    }

    fn pick_weighted(&mut self, from: &[u32]) -> u32 {
        let total: u32 = from
            .iter()
            .map(|&i| self.workflows[i as usize].weight)
            .sum();
        let mut roll = self.rng.random_range(0..total.max(1));
        for &i in from {
            let weight = self.workflows[i as usize].weight;
            if roll < weight {
                return i;
            }
            roll -= weight;
        }
        from.first().copied().unwrap_or(0)
    }

    fn random_conversation(&mut self) -> Option<u32> {
        if self.conversations.is_empty() || self.rng.random_bool(0.08) {
            return None;
        }
        Some(self.rng.random_range(0..self.conversations.len() as u32))
    }

    /// API-started executions carry a tracking id; WhatsApp-started ones sometimes do.
    fn random_tracking(&mut self, conversation: Option<u32>) -> Option<u128> {
        let p = if conversation.is_some() { 0.2 } else { 1.0 };
        self.rng.random_bool(p).then(|| new_uuid(&mut self.rng))
    }

    // ----- ground truth ----------------------------------------------------------------

    /// What the API shows right now, for tests to compare the exporter against.
    pub fn ground_truth(&self) -> GroundTruth {
        let wf_ids: Vec<String> = self
            .workflows
            .iter()
            .map(|w| Uid(w.id).to_string())
            .collect();
        let mut truth = GroundTruth::default();
        for (i, w) in self.workflows.iter().enumerate() {
            truth.workflows.push(WorkflowTruth {
                id: wf_ids[i].clone(),
                name: w.name.clone(),
                status: w.status.clone(),
                execution_count: w.execution_count,
            });
            for s in ExecStatus::LIVE {
                truth
                    .live
                    .insert((wf_ids[i].clone(), s), w.by_status[s.index()].len() as u64);
            }
            truth.started.insert(
                wf_ids[i].clone(),
                self.counters.started.get(i).copied().unwrap_or(0),
            );
            truth.handoffs.insert(
                wf_ids[i].clone(),
                self.counters.handoffs.get(i).copied().unwrap_or(0),
            );
            let finished = self.counters.finished.get(i).copied().unwrap_or([0; 2]);
            truth
                .finished
                .insert((wf_ids[i].clone(), ExecStatus::Ended), finished[0]);
            truth
                .finished
                .insert((wf_ids[i].clone(), ExecStatus::Failed), finished[1]);
        }
        let mut last_events: BTreeMap<(String, ExecStatus), Vec<i64>> = BTreeMap::new();
        for list in &self.live {
            for &ix in list {
                let e = &self.executions[ix as usize];
                let wf = &wf_ids[e.workflow as usize];
                last_events
                    .entry((wf.clone(), e.status))
                    .or_default()
                    .push(e.last_event_us);
                if let Some(ci) = e.conversation {
                    let conv = Uid(self.conversations[ci as usize].id).to_string();
                    let key = (conv, wf.clone(), e.status);
                    let at = datetime(e.last_event_us);
                    truth
                        .conversation_oldest_last_event
                        .entry(key.clone())
                        .and_modify(|t| *t = (*t).min(at))
                        .or_insert(at);
                    *truth.per_conversation.entry(key).or_default() += 1;
                }
            }
        }
        for (key, mut times) in last_events {
            times.sort_unstable();
            if let Some(&oldest) = times.first() {
                truth
                    .oldest_last_event
                    .insert(key.clone(), datetime(oldest));
            }
            truth
                .live_last_events
                .insert(key, times.into_iter().map(datetime).collect());
        }
        truth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(live: usize) -> SimulatorConfig {
        SimulatorConfig {
            live_executions: live,
            terminal_executions: 50,
            ..SimulatorConfig::demo()
        }
    }

    const NOW: i64 = 1_780_000_000_000_000;

    /// Every index agrees with the execution records.
    fn check_indexes(w: &World) {
        let mut per_wf = vec![[0usize; 5]; w.workflows.len()];
        for e in &w.executions {
            per_wf[e.workflow as usize][e.status.index()] += 1;
            let wf = &w.workflows[e.workflow as usize];
            assert!(wf.by_status[e.status.index()].contains(&e.key()));
            if let Some(ci) = e.conversation {
                assert!(
                    w.conversations[ci as usize].by_status[e.status.index()].contains(&e.key())
                );
            }
            assert!(e.last_event_us >= e.started_us);
            assert_eq!(e.ended_us.is_some(), e.status.is_terminal());
        }
        for (i, wf) in w.workflows.iter().enumerate() {
            for (set, count) in wf.by_status.iter().zip(per_wf[i]) {
                assert_eq!(set.len(), count);
            }
            assert_eq!(wf.all.len() as u64, wf.execution_count);
        }
        for (l, list) in w.live.iter().enumerate() {
            for (pos, &ix) in list.iter().enumerate() {
                let e = &w.executions[ix as usize];
                assert_eq!(e.status.live_index(), Some(l));
                assert_eq!(e.live_pos as usize, pos);
            }
        }
        assert_eq!(w.conv_all.len(), w.conversations.len());
        assert_eq!(
            w.conv_by_status[0].len() + w.conv_by_status[1].len(),
            w.conversations.len()
        );
    }

    #[test]
    fn population_is_deterministic_and_consistent() {
        let a = World::populated(&config(300), NOW);
        let b = World::populated(&config(300), NOW);
        assert_eq!(a.executions.len(), 350);
        assert_eq!(
            a.executions.iter().map(|e| e.id).collect::<Vec<_>>(),
            b.executions.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        check_indexes(&a);
        let starts: Vec<i64> = a.executions.iter().map(|e| e.started_us).collect();
        assert!(
            starts.windows(2).all(|p| p[0] < p[1]),
            "started_at strictly increasing"
        );
    }

    #[test]
    fn tick_keeps_population_near_target_and_indexes_consistent() {
        let mut w = World::populated(&config(300), NOW);
        let mut now = NOW;
        for _ in 0..120 {
            now += 15_000_000;
            w.tick(now, Duration::from_secs(15));
        }
        check_indexes(&w);
        let live: usize = w.live.iter().map(Vec::len).sum();
        assert!((150..=450).contains(&live), "live = {live}");
        let truth = w.ground_truth();
        assert!(truth.started.values().sum::<u64>() > 0);
        assert!(truth.finished.values().sum::<u64>() > 0);
        // A long step is split, not applied as one huge burst.
        w.tick(now + DAY_US, Duration::from_secs(86_400));
        check_indexes(&w);
    }

    #[test]
    fn scripted_changes_update_counters() {
        let mut w = World::empty(1);
        let wf = w.add_workflow("Support", "active", NOW);
        let wfi = w.workflow_index(wf).expect("known");
        let c = w.add_conversation(NOW);
        let ci = w.conversation_index(c).expect("known");
        let a = w.start_execution(wfi, Some(ci), ExecStatus::Running, NOW);
        let b = w.start_execution(wfi, None, ExecStatus::Handoff, NOW);
        assert_eq!(w.execution(b).map(|e| e.started_us), Some(NOW + 1));
        assert!(w.set_status(a, ExecStatus::Handoff, NOW + 5));
        assert!(w.set_status(a, ExecStatus::Failed, NOW + 6));
        assert!(!w.set_status(7, ExecStatus::Failed, NOW + 6));
        let t = w.ground_truth();
        let id = Uid(wf).to_string();
        assert_eq!(t.started[&id], 2);
        assert_eq!(t.handoffs[&id], 2);
        assert_eq!(t.finished[&(id.clone(), ExecStatus::Failed)], 1);
        assert_eq!(t.live[&(id.clone(), ExecStatus::Handoff)], 1);
        assert_eq!(t.live[&(id.clone(), ExecStatus::Running)], 0);
        assert_eq!(w.conversations[0].last_active_us, NOW + 6);
        check_indexes(&w);
        w.mark();
        assert_eq!(w.ground_truth().started[&id], 0);
    }
}
