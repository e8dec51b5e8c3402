//! The simulated project: workflows, conversations and executions, their indexes, the seeded
//! evolution in [`World::tick`], and the ground truth that tests compare the exporter against.
//!
//! Every execution is indexed by (started_at µs, id) in four ordered sets: its workflow's
//! `all` and `by_status`, and its conversation's `all` and `by_status`. Conversations are
//! indexed by (last_active_at µs, id). Status changes move keys between sets, so a page is
//! O(log n + limit) and nothing scans the whole world per request.
//!
//! The world also holds the [`Variance`] settings that change how it evolves: an execution in
//! a status outside the spec's enum is in `all` but in no `by_status` set; one still listed
//! under a live status it left (the stale-lists variance) is in that status's `stale` set; a
//! deleted one is in no set and no lookup, but its record stays so indexes remain stable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::codec::{Key, Uid, datetime, derived_uuid, new_uuid};
use super::variance::{StartOverride, Variance};
use super::{ExecStatus, GroundTruth, SimulatorConfig, StepTruth, WorkflowTruth};

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
    pub role: Role,
    pub x: f64,
    pub y: f64,
}

/// What an execution does at a step, which decides the statuses it can have there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The trigger: `running`.
    Start,
    /// An agent, action or decision step: `running`.
    Work,
    /// Waits for the customer: `waiting`.
    Wait,
    /// Hands the conversation to a person: `handoff`.
    Handoff,
    /// The last step: `ended`.
    End,
}

use Role::{End, Handoff, Start, Wait, Work};

/// A node of a graph template: identifier, Ruby class (`current_step.stepable_type`;
/// docs/kapso-api.md §5), role.
type Node = (&'static str, &'static str, Role);

/// The graphs simulated workflows follow, chosen by workflow index. The first `Work` step
/// that calls out (a `FlowActionStep`) is where most failures happen.
const GRAPHS: [&[Node]; 3] = [
    // A support bot.
    &[
        ("start", "FlowActionStep", Start),
        ("agent_reply", "FlowAgentStep", Work),
        ("route_intent", "FlowDecideStep", Work),
        ("wait_response", "FlowWaitStep", Wait),
        ("lookup_order", "FlowActionStep", Work),
        ("handoff_to_agent", "FlowActionStep", Handoff),
        ("send_goodbye", "FlowActionStep", End),
    ],
    // Booking an appointment.
    &[
        ("start", "FlowActionStep", Start),
        ("ask_date", "FlowWaitStep", Wait),
        ("check_availability", "FlowActionStep", Work),
        ("confirm_slot", "FlowAgentStep", Work),
        ("wait_confirmation", "FlowWaitStep", Wait),
        ("escalate_to_staff", "FlowActionStep", Handoff),
        ("send_confirmation", "FlowActionStep", End),
    ],
    // A feedback survey.
    &[
        ("start", "FlowActionStep", Start),
        ("ask_rating", "FlowWaitStep", Wait),
        ("score_branch", "FlowDecideStep", Work),
        ("ask_comment", "FlowWaitStep", Wait),
        ("summarise_feedback", "FlowAgentStep", Work),
        ("sync_crm", "FlowActionStep", Work),
        ("handoff_detractor", "FlowActionStep", Handoff),
        ("thank_you", "FlowActionStep", End),
    ],
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
    /// Executions still listed under a live status they left (stale-lists variance).
    pub stale: [BTreeSet<Key>; 5],
    /// Start times of its deleted executions, ascending, for counts that lag or shrink.
    pub deleted_starts: Vec<i64>,
    /// Gone from every listing and lookup (its executions were deleted with it).
    pub deleted: bool,
    /// `GET /workflows` listings that will still leave it out.
    pub hidden_listings: u32,
    /// Rendered without `created_at`.
    pub omit_created_at: bool,
    /// The status `GET /workflows/{id}/executions` answers with until cleared.
    pub executions_error: Option<u16>,
}

impl Workflow {
    /// The step an execution sits on (its last step once finished).
    pub fn step_for(&self, exec: &Execution) -> &Step {
        self.steps
            .get(usize::from(exec.step))
            .or(self.steps.first())
            .unwrap_or(&FALLBACK_STEP)
    }

    /// Where an execution entering `status` goes, `salt` choosing among equal candidates:
    /// running at a start or work step, waiting at a wait step, in handoff at the handoff
    /// step, ended at the last step; a failure happens at the fragile step two times in
    /// three, else where the execution was.
    fn place(&self, status: ExecStatus, current: u8, salt: u64) -> u8 {
        let pick = |roles: &[Role]| -> Option<u8> {
            let candidates: Vec<u8> = (0..self.steps.len())
                .filter(|&i| roles.contains(&self.steps[i].role))
                .map(|i| i as u8)
                .collect();
            (!candidates.is_empty()).then(|| candidates[(salt % candidates.len() as u64) as usize])
        };
        let fragile = || {
            self.steps
                .iter()
                .position(|s| s.role == Work && s.stepable_type == "FlowActionStep")
                .map(|i| i as u8)
        };
        let step = match status {
            ExecStatus::Running => pick(&[Start, Work]),
            ExecStatus::Waiting => pick(&[Wait]),
            ExecStatus::Handoff => pick(&[Handoff]),
            ExecStatus::Ended => pick(&[End]),
            ExecStatus::Failed if salt % 3 != 0 => fragile(),
            ExecStatus::Failed => None,
        };
        step.unwrap_or(current)
    }
}

static FALLBACK_STEP: Step = Step {
    id: 0,
    identifier: "start",
    stepable_type: "FlowActionStep",
    role: Start,
    x: 0.0,
    y: 0.0,
};

/// A salt for [`Workflow::place`] that draws nothing from the world's rng (so the evolution
/// is the same whatever the steps do).
fn salt(id: u128, at_us: i64) -> u64 {
    (derived_uuid(id, at_us as u64) >> 64) as u64
}

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
    /// Executions still listed under a live status they left (stale-lists variance).
    pub stale: [BTreeSet<Key>; 5],
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
    /// Index of its current step in its workflow's `steps`.
    pub step: u8,
    /// A status outside the spec's enum, as an index into `World::unknown_names`. While set,
    /// `status` keeps the status it left and the execution is in no `by_status` set.
    pub unknown: Option<u32>,
    /// The live status whose lists still show it (stale-lists variance).
    stale: Option<ExecStatus>,
    /// Deleted: in no index and no lookup.
    deleted: bool,
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
    /// Failures by (workflow index, step index).
    step_failures: BTreeMap<(u32, u8), u64>,
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
    /// The API variance in force (see [`Variance`]).
    pub variance: Variance,
    /// Status strings outside the spec's enum, interned for `Execution::unknown`.
    unknown_names: Vec<String>,
    /// Executions in an unknown status, for random picks in `tick`.
    paused: Vec<u32>,
    /// Rendering overrides of `started_at`, by execution id.
    pub start_overrides: HashMap<u128, StartOverride>,
    /// `GET /workflows` listings that will still answer with no workflows.
    empty_listings: u32,
    /// Transitions into `failed` and `handoff`, recorded for webhooks while `Some` (set when
    /// a webhook is registered); drained by [`World::take_transitions`].
    transitions: Option<Vec<Transition>>,
}

/// One counted entry into `failed` or `handoff`, for a webhook event: exactly one per
/// increment of the `finished[failed]` and `handoffs` counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// `failed` (else `handoff`).
    pub failed: bool,
    /// The world instant of the transition (the execution's `last_event_at` after it).
    pub at_us: i64,
    pub workflow_id: u128,
    pub execution_id: u128,
    pub conversation_id: Option<u128>,
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
    /// Into `paused` (the unknown-statuses variance).
    Pause,
    /// Out of `paused`.
    Unpause,
    /// The oldest terminal execution is deleted (the deletions variance).
    Purge,
    /// A live execution is deleted.
    DeleteLive,
    /// A workflow left out of some listings, or an empty listing (flaky-workflow-list).
    Flake,
}

/// The status string of the unknown-statuses variance.
const PAUSED: &str = "paused";

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
            variance: Variance::default(),
            unknown_names: Vec::new(),
            paused: Vec::new(),
            start_overrides: HashMap::new(),
            empty_listings: 0,
            transitions: None,
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
            step_failures: BTreeMap::new(),
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

    /// The status string an execution shows: its unknown status if it has one.
    pub fn status_str(&self, e: &Execution) -> &str {
        e.unknown
            .and_then(|u| self.unknown_names.get(u as usize))
            .map_or(e.status.as_str(), String::as_str)
    }

    /// The `execution_count` a workflow shows: executions ever created (or, when
    /// `shrinking`, still existing) that started at or before `cutoff_us` if set.
    pub fn shown_execution_count(
        &self,
        w: &Workflow,
        cutoff_us: Option<i64>,
        shrinking: bool,
    ) -> u64 {
        let (existing_after, deleted_after) = match cutoff_us {
            // Only executions started within the lag are counted one by one.
            Some(c) => (
                w.all.range((c.saturating_add(1), 0)..).count() as u64,
                (w.deleted_starts.len() - w.deleted_starts.partition_point(|&s| s <= c)) as u64,
            ),
            None => (0, 0),
        };
        if shrinking {
            (w.all.len() as u64).saturating_sub(existing_after)
        } else {
            w.execution_count
                .saturating_sub(existing_after)
                .saturating_sub(deleted_after)
        }
    }

    /// The `last_executed_at` a workflow shows: the latest start of any execution ever
    /// created (deleting executions does not move it), at or before `cutoff_us` if set.
    pub fn shown_last_executed(&self, w: &Workflow, cutoff_us: Option<i64>) -> Option<i64> {
        let Some(c) = cutoff_us else {
            return w.last_executed_us;
        };
        let existing = w
            .all
            .range(..(c.saturating_add(1), 0))
            .next_back()
            .map(|k| k.0);
        let deleted = w.deleted_starts[..w.deleted_starts.partition_point(|&s| s <= c)]
            .last()
            .copied();
        existing.max(deleted)
    }

    /// Counts one `GET /workflows` listing down: whether it is answered empty, and which
    /// workflows it leaves out.
    pub fn take_listing(&mut self) -> (bool, Vec<u32>) {
        let empty = self.empty_listings > 0;
        self.empty_listings = self.empty_listings.saturating_sub(1);
        let mut hidden = Vec::new();
        for (i, w) in self.workflows.iter_mut().enumerate() {
            if w.hidden_listings > 0 {
                w.hidden_listings -= 1;
                hidden.push(i as u32);
            }
        }
        (empty, hidden)
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
        self.count_start(ix, status);
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

    /// Moves an execution to the step `identifier` of its workflow at `now_us`; `false` if
    /// the execution or the step is unknown.
    pub fn set_step(&mut self, id: u128, identifier: &str, now_us: i64) -> bool {
        let Some(&ix) = self.execution_ix.get(&id) else {
            return false;
        };
        let e = &self.executions[ix as usize];
        let steps = &self.workflows[e.workflow as usize].steps;
        let Some(step) = steps.iter().position(|s| s.identifier == identifier) else {
            return false;
        };
        self.executions[ix as usize].step = step as u8;
        self.record_event(ix, now_us);
        true
    }

    /// Moves an execution to a status string at `now_us`; a spec status is a plain
    /// [`World::set_status`], anything else an unknown status. `false` if the id is unknown.
    pub fn set_unknown_status(&mut self, id: u128, status: &str, now_us: i64) -> bool {
        if let Some(known) = ExecStatus::parse(status) {
            return self.set_status(id, known, now_us);
        }
        let Some(&ix) = self.execution_ix.get(&id) else {
            return false;
        };
        let name = self.intern(status);
        self.enter_unknown(ix, name, now_us);
        true
    }

    /// Deletes an execution: out of every index and lookup. `false` if the id is unknown.
    pub fn delete_execution(&mut self, id: u128) -> bool {
        match self.execution_ix.get(&id) {
            Some(&ix) => {
                self.delete_at(ix);
                true
            }
            None => false,
        }
    }

    /// Deletes a workflow and its executions. `false` if the id is unknown.
    pub fn delete_workflow(&mut self, id: u128) -> bool {
        let Some(wi) = self.workflow_ix.remove(&id) else {
            return false;
        };
        let keys: Vec<Key> = self.workflows[wi as usize].all.iter().copied().collect();
        for key in keys {
            if let Some(&ix) = self.execution_ix.get(&key.1) {
                self.delete_at(ix);
            }
        }
        self.workflows[wi as usize].deleted = true;
        true
    }

    /// Adds a workflow created at exactly `created_us`; returns its id.
    pub fn add_workflow_at(&mut self, name: &str, status: &str, created_us: i64) -> u128 {
        let i = self.insert_workflow(name, status, created_us);
        self.workflows[i as usize].id
    }

    /// Answers the next `listings` `GET /workflows` requests with no workflows.
    pub fn empty_workflow_lists(&mut self, listings: u32) {
        self.empty_listings = listings;
    }

    /// A workflow, for its scripted settings (the error of its executions list, whether its
    /// `created_at` is rendered).
    pub fn workflow_mut(&mut self, workflow: u32) -> &mut Workflow {
        &mut self.workflows[workflow as usize]
    }

    /// Resets the since-mark counters to zero.
    pub fn mark(&mut self) {
        let n = self.workflows.len();
        self.counters = Counters {
            started: vec![0; n],
            finished: vec![[0; 2]; n],
            handoffs: vec![0; n],
            step_failures: BTreeMap::new(),
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

    fn intern(&mut self, name: &str) -> u32 {
        match self.unknown_names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.unknown_names.push(name.to_owned());
                (self.unknown_names.len() - 1) as u32
            }
        }
    }

    fn next_start(&mut self, at_us: i64) -> i64 {
        let t = at_us.max(self.last_started_us.saturating_add(1));
        self.last_started_us = t;
        t
    }

    fn insert_workflow(&mut self, name: &str, status: &str, created_us: i64) -> u32 {
        let id = new_uuid(&mut self.rng);
        let slug = self.unique_slug(name);
        let steps = GRAPHS[self.workflows.len() % GRAPHS.len()]
            .iter()
            .enumerate()
            .map(|(i, &(identifier, stepable_type, role))| Step {
                id: derived_uuid(id, i as u64),
                identifier,
                stepable_type,
                role,
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
            stale: Default::default(),
            deleted_starts: Vec::new(),
            deleted: false,
            hidden_listings: 0,
            omit_created_at: false,
            executions_error: None,
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
            stale: Default::default(),
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
        let step = self.workflows[workflow as usize].place(status, 0, salt(id, started_us));
        self.executions.push(Execution {
            id,
            workflow,
            conversation,
            tracking_id,
            status,
            started_us,
            last_event_us,
            ended_us,
            step,
            unknown: None,
            stale: None,
            deleted: false,
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

    /// Counts a new execution as started, and as a handoff or finish when it starts in one.
    fn count_start(&mut self, ix: u32, status: ExecStatus) {
        let e = &self.executions[ix as usize];
        let (w, at_us) = (e.workflow as usize, e.started_us);
        self.counters.started[w] += 1;
        match status {
            ExecStatus::Handoff => {
                self.counters.handoffs[w] += 1;
                self.record_transition(ix, false, at_us);
            }
            ExecStatus::Ended => self.counters.finished[w][0] += 1,
            ExecStatus::Failed => {
                self.counters.finished[w][1] += 1;
                self.count_step_failure(ix);
                self.record_transition(ix, true, at_us);
            }
            ExecStatus::Running | ExecStatus::Waiting => {}
        }
    }

    fn count_step_failure(&mut self, ix: u32) {
        let e = &self.executions[ix as usize];
        *self
            .counters
            .step_failures
            .entry((e.workflow, e.step))
            .or_default() += 1;
    }

    /// Records a counted entry into `failed` (or `handoff`) while webhooks listen. Draws
    /// nothing from the world's rng, so the evolution is the same with or without webhooks.
    fn record_transition(&mut self, ix: u32, failed: bool, at_us: i64) {
        let Some(list) = self.transitions.as_mut() else {
            return;
        };
        let e = &self.executions[ix as usize];
        list.push(Transition {
            failed,
            at_us,
            workflow_id: self.workflows[e.workflow as usize].id,
            execution_id: e.id,
            conversation_id: e.conversation.map(|c| self.conversations[c as usize].id),
        });
    }

    /// Starts recording transitions for webhooks (idempotent).
    pub fn record_transitions(&mut self) {
        self.transitions.get_or_insert_with(Vec::new);
    }

    /// The transitions recorded since the last call, in the order they happened.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        self.transitions
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Moves an execution to a spec status. From an unknown status, `old` is the status it
    /// had before, so `paused` → `ended` is a finish only if it was live before the pause,
    /// and `paused` → `handoff` is a handoff; entering or leaving the unknown status is
    /// neither a start nor a finish.
    fn change_status(&mut self, ix: u32, status: ExecStatus, at_us: i64) {
        let (old, was_unknown) = {
            let e = &self.executions[ix as usize];
            (e.status, e.unknown.is_some())
        };
        if old == status && !was_unknown {
            self.touch_at(ix, at_us);
            return;
        }
        self.live_remove(ix);
        self.clear_stale(ix);
        if was_unknown {
            self.paused_remove(ix);
        }
        let stale =
            self.variance.stale_live_lists && !was_unknown && old.is_live() && status.is_live();
        let e = &mut self.executions[ix as usize];
        let key = e.key();
        let at_us = at_us.max(e.started_us).max(e.last_event_us);
        e.status = status;
        e.unknown = None;
        e.last_event_us = at_us;
        e.ended_us = status.is_terminal().then_some(at_us);
        let (workflow, conversation) = (e.workflow, e.conversation);
        let (id, current) = (e.id, e.step);
        e.step = self.workflows[workflow as usize].place(status, current, salt(id, at_us));
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
        if stale {
            self.add_stale(ix, old);
        }
        let w = workflow as usize;
        if status == ExecStatus::Handoff {
            self.counters.handoffs[w] += 1;
            self.record_transition(ix, false, at_us);
        }
        if status.is_terminal() && !old.is_terminal() {
            let failed = status == ExecStatus::Failed;
            self.counters.finished[w][usize::from(failed)] += 1;
            if failed {
                self.count_step_failure(ix);
                self.record_transition(ix, true, at_us);
            }
        }
    }

    /// Moves an execution into the unknown status `name` (an index into `unknown_names`).
    fn enter_unknown(&mut self, ix: u32, name: u32, at_us: i64) {
        let was_unknown = self.executions[ix as usize].unknown.is_some();
        if self.executions[ix as usize].unknown == Some(name) {
            self.touch_at(ix, at_us);
            return;
        }
        self.live_remove(ix);
        self.clear_stale(ix);
        let e = &mut self.executions[ix as usize];
        let key = e.key();
        let at_us = at_us.max(e.started_us).max(e.last_event_us);
        e.unknown = Some(name);
        e.last_event_us = at_us;
        let (status, workflow, conversation) = (e.status, e.workflow, e.conversation);
        self.workflows[workflow as usize].by_status[status.index()].remove(&key);
        if let Some(ci) = conversation {
            self.conversations[ci as usize].by_status[status.index()].remove(&key);
            self.bump_conversation(ci, at_us);
        }
        if !was_unknown {
            self.paused.push(ix);
        }
    }

    fn paused_remove(&mut self, ix: u32) {
        if let Some(pos) = self.paused.iter().position(|&p| p == ix) {
            self.paused.swap_remove(pos);
        }
    }

    /// Lists an execution under `status` too, until its next status change.
    fn add_stale(&mut self, ix: u32, status: ExecStatus) {
        let e = &mut self.executions[ix as usize];
        e.stale = Some(status);
        let key = e.key();
        self.workflows[e.workflow as usize].stale[status.index()].insert(key);
        if let Some(ci) = e.conversation {
            self.conversations[ci as usize].stale[status.index()].insert(key);
        }
    }

    fn clear_stale(&mut self, ix: u32) {
        let e = &mut self.executions[ix as usize];
        let Some(status) = e.stale.take() else {
            return;
        };
        let key = e.key();
        self.workflows[e.workflow as usize].stale[status.index()].remove(&key);
        if let Some(ci) = e.conversation {
            self.conversations[ci as usize].stale[status.index()].remove(&key);
        }
    }

    /// Removes an execution from every index and lookup; its start stays in its workflow's
    /// `deleted_starts` for counts. Its record stays in `executions` so indexes stay valid.
    fn delete_at(&mut self, ix: u32) {
        self.live_remove(ix);
        self.clear_stale(ix);
        if self.executions[ix as usize].unknown.is_some() {
            self.paused_remove(ix);
        }
        let e = &mut self.executions[ix as usize];
        e.deleted = true;
        let key = e.key();
        let (status, workflow, conversation) = (e.status, e.workflow, e.conversation);
        let wf = &mut self.workflows[workflow as usize];
        wf.all.remove(&key);
        wf.by_status[status.index()].remove(&key);
        let pos = wf.deleted_starts.partition_point(|&s| s <= key.0);
        wf.deleted_starts.insert(pos, key.0);
        if let Some(ci) = conversation {
            let c = &mut self.conversations[ci as usize];
            c.all.remove(&key);
            c.by_status[status.index()].remove(&key);
        }
        self.execution_ix.remove(&key.1);
        self.start_overrides.remove(&key.1);
    }

    /// A new event; a running execution moves on to another step.
    fn touch_at(&mut self, ix: u32, at_us: i64) {
        let e = &mut self.executions[ix as usize];
        if e.status == ExecStatus::Running && e.unknown.is_none() {
            let wf = &self.workflows[e.workflow as usize];
            e.step = wf.place(e.status, e.step, salt(e.id, at_us));
        }
        self.record_event(ix, at_us);
    }

    /// An event at `at_us`: the execution's `last_event_at` and its conversation's activity.
    fn record_event(&mut self, ix: u32, at_us: i64) {
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
        let mut plan = vec![
            (Event::Start, start * minutes),
            (Event::End, finish * 0.88 * minutes),
            (Event::Fail, finish * 0.12 * minutes),
            (Event::Wait, per(r, 0.5)),
            (Event::Resume, per(w, 0.15)),
            (Event::Handoff, per(r + w, 0.01)),
            (Event::Unhandoff, per(h, 0.05)),
            (Event::Touch, per(r, 0.5)),
        ];
        // Variance events come last and only when enabled, so without them the random
        // sequence, and so the whole evolution, is exactly what it always was.
        if self.variance.unknown_statuses {
            let paused = self.paused.len() as f64;
            plan.push((Event::Pause, per(live, 0.01)));
            plan.push((Event::Unpause, per(paused, 0.2)));
        }
        if self.variance.deletions {
            plan.push((Event::Purge, finish * 0.5 * minutes));
            plan.push((Event::DeleteLive, per(live, 0.002)));
        }
        if self.variance.flaky_workflow_list {
            plan.push((Event::Flake, 0.5 * minutes));
        }
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
                    .filter(|&i| {
                        let w = &self.workflows[i as usize];
                        w.status == "active" && !w.deleted
                    })
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
                let ix = self.insert_execution(wf, conv, status, started, started, None, tracking);
                self.count_start(ix, status);
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
            Event::Pause => {
                let from = if self.rng.random_bool(0.5) {
                    [Waiting, Running, Handoff]
                } else {
                    [Running, Waiting, Handoff]
                };
                if let Some(ix) = self.random_live(&from) {
                    let name = self.intern(PAUSED);
                    self.enter_unknown(ix, name, t);
                }
            }
            Event::Unpause => {
                if self.paused.is_empty() {
                    return;
                }
                let ix = self.paused[self.rng.random_range(0..self.paused.len())];
                let to = match self.rng.random_range(0..100) {
                    0..60 => Waiting,
                    60..85 => Running,
                    85..95 => Ended,
                    _ => Failed,
                };
                self.change_status(ix, to, t);
            }
            Event::Purge => {
                // A retention job: the oldest terminal execution of the project goes first.
                let oldest = self
                    .workflows
                    .iter()
                    .flat_map(|w| [Ended, Failed].map(|s| w.by_status[s.index()].first()))
                    .flatten()
                    .min()
                    .copied();
                if let Some(&ix) = oldest.and_then(|k| self.execution_ix.get(&k.1)) {
                    self.delete_at(ix);
                }
            }
            Event::DeleteLive => {
                if let Some(ix) = self.random_live(&[Waiting, Running, Handoff]) {
                    self.delete_at(ix);
                }
            }
            Event::Flake => {
                let present: Vec<u32> = (0..self.workflows.len() as u32)
                    .filter(|&i| !self.workflows[i as usize].deleted)
                    .collect();
                if present.is_empty() {
                    return;
                }
                if self.rng.random_bool(0.2) {
                    self.empty_listings = self.empty_listings.max(1);
                } else {
                    let wi = present[self.rng.random_range(0..present.len())];
                    let listings = self.rng.random_range(1..=3);
                    let w = &mut self.workflows[wi as usize];
                    w.hidden_listings = w.hidden_listings.max(listings);
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
        // A deleted workflow is in no listing, so it is in no part of the truth either.
        for (i, w) in self
            .workflows
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.deleted)
        {
            truth.workflows.push(WorkflowTruth {
                id: wf_ids[i].clone(),
                name: w.name.clone(),
                status: w.status.clone(),
                execution_count: w.execution_count,
                existing_executions: w.all.len() as u64,
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
        let step_truth = |wi: u32, step: u8| {
            let w = &self.workflows[wi as usize];
            let s = &w.steps[usize::from(step).min(w.steps.len() - 1)];
            StepTruth {
                workflow_id: wf_ids[wi as usize].clone(),
                step: s.identifier.to_owned(),
                step_type: s.stepable_type.to_owned(),
            }
        };
        for (&(wi, step), &n) in &self.counters.step_failures {
            if n > 0 && !self.workflows[wi as usize].deleted {
                *truth.step_failures.entry(step_truth(wi, step)).or_default() += n;
            }
        }
        let mut last_events: BTreeMap<(String, ExecStatus), Vec<i64>> = BTreeMap::new();
        for list in &self.live {
            for &ix in list {
                let e = &self.executions[ix as usize];
                let wf = &wf_ids[e.workflow as usize];
                let key = (step_truth(e.workflow, e.step), e.status);
                let at = datetime(e.last_event_us);
                truth
                    .step_oldest_last_event
                    .entry(key.clone())
                    .and_modify(|t| *t = (*t).min(at))
                    .or_insert(at);
                *truth.steps.entry(key).or_default() += 1;
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
        for &ix in &self.paused {
            let e = &self.executions[ix as usize];
            let key = (
                wf_ids[e.workflow as usize].clone(),
                self.status_str(e).to_owned(),
            );
            *truth.unknown_status.entry(key).or_default() += 1;
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
        let mut stale = vec![[0usize; 5]; w.workflows.len()];
        for e in &w.executions {
            let wf = &w.workflows[e.workflow as usize];
            if e.deleted {
                assert!(w.execution(e.id).is_none());
                assert!(!wf.all.contains(&e.key()));
                assert!(wf.stale.iter().all(|s| !s.contains(&e.key())));
                continue;
            }
            assert!(wf.all.contains(&e.key()));
            if let Some(s) = e.stale {
                assert!(s.is_live() && e.status.is_live() && s != e.status);
                assert!(wf.stale[s.index()].contains(&e.key()));
                stale[e.workflow as usize][s.index()] += 1;
            }
            if e.unknown.is_some() {
                assert!(w.paused.contains(&(w.execution_ix[&e.id])));
                assert!(wf.by_status.iter().all(|s| !s.contains(&e.key())));
                assert_eq!(e.live_pos, NOT_LIVE);
                continue;
            }
            per_wf[e.workflow as usize][e.status.index()] += 1;
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
            for (set, count) in wf.stale.iter().zip(stale[i]) {
                assert_eq!(set.len(), count);
            }
            assert_eq!(
                wf.all.len() as u64 + wf.deleted_starts.len() as u64,
                wf.execution_count
            );
            assert!(wf.deleted_starts.is_sorted());
        }
        assert_eq!(
            w.paused.len(),
            w.executions
                .iter()
                .filter(|e| !e.deleted && e.unknown.is_some())
                .count()
        );
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

    #[test]
    fn variance_off_keeps_the_evolution_identical() {
        // Setting a rendering-only variance must not change a single random draw.
        let mut a = World::populated(&config(200), NOW);
        let mut b = World::populated(&config(200), NOW);
        b.variance = Variance {
            bad_start_rate: 0.5,
            duplicate_workflows: true,
            ..Variance::default()
        };
        let mut now = NOW;
        for _ in 0..40 {
            now += 15_000_000;
            a.tick(now, Duration::from_secs(15));
            b.tick(now, Duration::from_secs(15));
        }
        let state = |w: &World| {
            w.executions
                .iter()
                .map(|e| (e.id, e.status, e.last_event_us))
                .collect::<Vec<_>>()
        };
        assert_eq!(state(&a), state(&b));
    }

    #[test]
    fn tick_variances_keep_indexes_and_truth_consistent() {
        let mut w = World::populated(&config(300), NOW);
        w.variance = Variance {
            unknown_statuses: true,
            deletions: true,
            flaky_workflow_list: true,
            stale_live_lists: true,
            ..Variance::default()
        };
        let mut now = NOW;
        let (mut paused_seen, mut hidden_seen) = (0, 0);
        for _ in 0..240 {
            now += 15_000_000;
            w.tick(now, Duration::from_secs(15));
            check_indexes(&w);
            paused_seen += w.paused.len();
            hidden_seen += w.workflows.iter().filter(|w| w.hidden_listings > 0).count();
            let _ = w.take_listing();
        }
        assert!(paused_seen > 0 && hidden_seen > 0);
        let deleted = w.executions.iter().filter(|e| e.deleted).count();
        assert!(deleted > 0, "the retention job deleted nothing");
        let truth = w.ground_truth();
        let live: u64 = truth.live.values().sum();
        assert_eq!(live as usize, w.live.iter().map(Vec::len).sum::<usize>());
        let unknown: u64 = truth.unknown_status.values().sum();
        assert_eq!(unknown as usize, w.paused.len());
        for t in &truth.workflows {
            assert!(t.existing_executions <= t.execution_count);
        }
    }

    #[test]
    fn unknown_status_and_deletion_are_neither_start_nor_finish() {
        let mut w = World::empty(1);
        let wf = w.add_workflow("Support", "active", NOW);
        let wfi = w.workflow_index(wf).expect("known");
        let c = w.add_conversation(NOW);
        let ci = w.conversation_index(c).expect("known");
        let a = w.start_execution(wfi, Some(ci), ExecStatus::Waiting, NOW);
        let b = w.start_execution(wfi, None, ExecStatus::Running, NOW);
        w.mark();
        let id = Uid(wf).to_string();
        assert!(w.set_unknown_status(a, "paused", NOW + 10));
        assert!(w.set_unknown_status(a, "paused", NOW + 11));
        let t = w.ground_truth();
        assert_eq!(t.live_count(&id, ExecStatus::Waiting), 0);
        assert_eq!(t.unknown_status[&(id.clone(), "paused".to_owned())], 1);
        assert_eq!(t.per_conversation.len(), 0);
        assert_eq!(w.status_str(w.execution(a).expect("exists")), "paused");
        check_indexes(&w);
        // Back to a live status: no start; then to ended: one finish.
        assert!(w.set_status(a, ExecStatus::Waiting, NOW + 20));
        assert!(w.set_unknown_status(a, "paused", NOW + 21));
        assert!(w.set_status(a, ExecStatus::Ended, NOW + 30));
        // A spec status given as a string is a plain status change.
        assert!(w.set_unknown_status(b, "waiting", NOW + 31));
        assert!(w.delete_execution(b));
        assert!(!w.delete_execution(b));
        check_indexes(&w);
        let t = w.ground_truth();
        assert_eq!(t.started[&id], 0);
        assert_eq!(t.finished[&(id.clone(), ExecStatus::Ended)], 1);
        assert_eq!(t.finished[&(id.clone(), ExecStatus::Failed)], 0);
        assert_eq!(t.live_total(), 0);
        assert_eq!(t.workflows[0].execution_count, 2);
        assert_eq!(t.workflows[0].existing_executions, 1);
        assert!(w.execution(b).is_none());
    }

    #[test]
    fn stale_lists_follow_moves_between_live_statuses() {
        let mut w = World::empty(1);
        w.variance.stale_live_lists = true;
        let wf = w.add_workflow("Support", "active", NOW);
        let wfi = w.workflow_index(wf).expect("known");
        let a = w.start_execution(wfi, None, ExecStatus::Waiting, NOW);
        let key = w.execution(a).expect("exists").key();
        w.set_status(a, ExecStatus::Handoff, NOW + 1);
        assert!(w.workflows[0].stale[ExecStatus::Waiting.index()].contains(&key));
        check_indexes(&w);
        // Back to waiting: listed there for real, and now stale under handoff only.
        w.set_status(a, ExecStatus::Waiting, NOW + 2);
        let stale: Vec<usize> = w.workflows[0].stale.iter().map(BTreeSet::len).collect();
        assert_eq!(stale, vec![0, 0, 1, 0, 0]);
        w.set_status(a, ExecStatus::Running, NOW + 3);
        w.set_status(a, ExecStatus::Ended, NOW + 4);
        assert!(w.workflows[0].stale.iter().all(BTreeSet::is_empty));
        check_indexes(&w);
        assert_eq!(w.ground_truth().live_total(), 0);
    }

    #[test]
    fn counts_lag_and_shrink() {
        let mut w = World::empty(1);
        let wf = w.add_workflow("Support", "active", NOW);
        let wfi = w.workflow_index(wf).expect("known");
        let ids: Vec<u128> = (0..5)
            .map(|i| w.start_execution(wfi, None, ExecStatus::Ended, NOW + i * 10 * 1_000_000))
            .collect();
        let wfr = &w.workflows[0];
        assert_eq!(w.shown_execution_count(wfr, None, false), 5);
        // Started at NOW, +10 s, +20 s, +30 s, +40 s; a cutoff at +25 s sees three.
        let cutoff = Some(NOW + 25_000_000);
        assert_eq!(w.shown_execution_count(wfr, cutoff, false), 3);
        assert_eq!(w.shown_last_executed(wfr, cutoff), Some(NOW + 20_000_000));
        assert_eq!(w.shown_last_executed(wfr, Some(NOW - 1)), None);
        w.delete_execution(ids[0]);
        w.delete_execution(ids[4]);
        let wfr = &w.workflows[0];
        assert_eq!(w.shown_execution_count(wfr, None, false), 5);
        assert_eq!(w.shown_execution_count(wfr, None, true), 3);
        assert_eq!(w.shown_execution_count(wfr, cutoff, false), 3);
        assert_eq!(w.shown_execution_count(wfr, cutoff, true), 2);
        // Deleting the newest execution does not move last_executed_at back.
        assert_eq!(w.shown_last_executed(wfr, None), Some(NOW + 40_000_000));
        assert_eq!(
            w.shown_last_executed(wfr, Some(NOW + 45_000_000)),
            Some(NOW + 40_000_000)
        );
        check_indexes(&w);
    }

    #[test]
    fn transitions_are_recorded_once_per_counted_failure_and_handoff() {
        let mut w = World::populated(&config(200), NOW);
        w.variance.unknown_statuses = true;
        let mut now = NOW;
        w.tick(now + 15_000_000, Duration::from_secs(15));
        assert!(w.take_transitions().is_empty(), "not recording yet");
        w.record_transitions();
        w.mark();
        let mut transitions = Vec::new();
        for _ in 0..80 {
            now += 15_000_000;
            w.tick(now, Duration::from_secs(15));
            transitions.extend(w.take_transitions());
        }
        let wfi = w.workflow_index(w.workflows[0].id).expect("known");
        let a = w.start_execution(wfi, None, ExecStatus::Failed, now);
        let b = w.start_execution(wfi, None, ExecStatus::Waiting, now);
        w.set_status(b, ExecStatus::Handoff, now + 1);
        w.set_unknown_status(b, "paused", now + 2);
        w.set_status(b, ExecStatus::Handoff, now + 3);
        w.set_status(a, ExecStatus::Failed, now + 4);
        let scripted = w.take_transitions();
        assert_eq!(
            scripted.iter().map(|t| t.failed).collect::<Vec<_>>(),
            [true, false, false]
        );
        transitions.extend(scripted);
        let truth = w.ground_truth();
        for (i, wf) in w.workflows.iter().enumerate() {
            let id = Uid(wf.id).to_string();
            let of = |failed: bool| {
                transitions
                    .iter()
                    .filter(|t| t.workflow_id == wf.id && t.failed == failed)
                    .count() as u64
            };
            assert_eq!(
                of(true),
                truth.finished[&(id.clone(), ExecStatus::Failed)],
                "{i}"
            );
            assert_eq!(of(false), truth.handoffs[&id], "{i}");
        }
    }

    #[test]
    fn deleting_a_workflow_deletes_its_executions() {
        let mut w = World::populated(&config(100), NOW);
        let victim = w.workflows[0].id;
        let before = w.ground_truth();
        assert!(w.delete_workflow(victim));
        assert!(!w.delete_workflow(victim));
        assert!(w.workflow_index(victim).is_none());
        check_indexes(&w);
        let truth = w.ground_truth();
        let id = Uid(victim).to_string();
        assert_eq!(truth.workflows.len(), before.workflows.len() - 1);
        assert!(truth.live.keys().all(|(wf, _)| *wf != id));
        assert!(
            w.executions
                .iter()
                .filter(|e| e.workflow == 0)
                .all(|e| e.deleted)
        );
    }
}
