//! [`Scheduler`]: the sans-IO state machine the server and the simulator
//! drive. Its methods are split by role: `inputs.rs` (`handle_*`),
//! `commit.rs` (plan and commit), `queries.rs`, `snapshot.rs`,
//! `validate.rs`, and `events.rs` (the event feed).

mod commit;
pub mod events;
mod inputs;
mod queries;
pub mod snapshot;
mod validate;

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::State;
use crate::model::job::{Phase, StopCause};
use crate::model::queue::JobRank;
use crate::policy::search::Pipeline;
use crate::scheduler::events::{Event, EventFeed, EventKind};
use crate::spec::config::SchedulerConfig;
use crate::spec::error::InputError;
use crate::spec::reason::{PendingReasons, Reason};
use crate::units::ids::{HostId, JobId, RunId, TaskId};
use crate::units::resources::Resources;
use crate::units::time::{DurationMs, Timestamp};

pub use commit::{CommitReport, PreemptRefusal};
pub use queries::{JobCounts, JobFilter, JobView, Page, Totals};
pub use validate::MAX_TASKS_PER_JOB;

/// A decision for the shell to carry out, drained with [`Scheduler::poll_action`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Start the run on the host.
    Launch {
        /// The run: the task and its attempt number.
        run: RunId,
        /// Where.
        host: HostId,
        /// What it was given.
        request: Resources,
    },
    /// Send SIGTERM, wait `grace`, then SIGKILL; report with
    /// [`Scheduler::handle_task_stopped`] naming the same run.
    Stop {
        /// The run.
        run: RunId,
        /// Where it runs.
        host: HostId,
        /// Time between SIGTERM and SIGKILL.
        grace: DurationMs,
        /// Why.
        cause: StopCause,
    },
}

/// A task's state as shells see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting in the queue (or out a retry back-off).
    Pending,
    /// Placed; the executor has not reported it started.
    Assigned {
        /// The host.
        host: HostId,
    },
    /// Running.
    Running {
        /// The host.
        host: HostId,
    },
    /// Asked to stop; still holding its resources.
    Stopping {
        /// The host.
        host: HostId,
        /// Why it is stopping.
        cause: StopCause,
    },
    /// Exited successfully.
    Completed,
    /// Failed more often than its retry policy allows.
    Failed,
    /// Killed by its owner.
    Killed,
}

impl TaskState {
    /// The state's name, e.g. `running`.
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned { .. } => "assigned",
            TaskState::Running { .. } => "running",
            TaskState::Stopping { .. } => "stopping",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
        }
    }

    /// The host the task is placed on (assigned, running or stopping).
    pub fn host(&self) -> Option<&HostId> {
        match self {
            TaskState::Assigned { host }
            | TaskState::Running { host }
            | TaskState::Stopping { host, .. } => Some(host),
            _ => None,
        }
    }

    /// True for completed, failed and killed.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Killed
        )
    }
}

/// How a job stands as a whole.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Live, with no task holding a host.
    Queued,
    /// Live, with at least one task on a host.
    Running,
    /// Every task completed.
    Succeeded,
    /// Every task ended, at least one failed (and none was killed).
    Failed,
    /// Every task ended, at least one killed by its owner.
    Killed,
}

impl JobPhase {
    /// True once every task has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobPhase::Succeeded | JobPhase::Failed | JobPhase::Killed
        )
    }
}

/// A snapshot of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// Its current (or, if it is not placed now, its last) run; attempt 0
    /// before the first placement.
    pub run: RunId,
    /// Its state.
    pub state: TaskState,
    /// Failures so far (preemptions and host losses do not count).
    pub n_failures: u32,
    /// Times it was preempted.
    pub n_preemptions: u32,
    /// When its job was submitted.
    pub submitted_at: Timestamp,
    /// Not schedulable before this (retry back-off).
    pub ready_at: Timestamp,
    /// When its current or last run was placed.
    pub assigned_at: Option<Timestamp>,
    /// When its current or last run was reported started.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub ended_at: Option<Timestamp>,
    /// For a ready pending task: why the last round did not place it.
    pub pending_reasons: Option<Arc<PendingReasons>>,
}

/// The scheduler core.
///
/// # Call contract
/// The core is fed inputs and drained for decisions; it never reads a clock.
///
/// - **Inputs** (`handle_*`) carry the shell's `now`. Time never goes
///   backwards: an input earlier than the latest one seen is refused with
///   [`InputError::TimeWentBackwards`]. A refused input changes nothing.
/// - **Time-driven transitions** (retry back-offs ending, reservations
///   starting or ending) happen only in [`Scheduler::handle_tick`].
///   [`Scheduler::poll_timeout`] says when the next one (or a disruption
///   budget that held reclaim back) is due; the shell ticks then.
/// - **Rounds**: [`Scheduler::plan_round`] takes `&self` and changes
///   nothing. The shell may persist the [`Plan`](crate::Plan) (it
///   serializes), then calls [`Scheduler::commit`] with the commit-time
///   `now`. Commit re-validates every assignment and preemption against the
///   state at commit time (inputs may have arrived in between) unless the
///   state is exactly the plan's basis. A plan that is not committed is
///   simply dropped. [`Scheduler::run_round`] ticks, plans and commits.
/// - **Runs**: each placement is a run ([`RunId`]: task + attempt). Actions
///   name the run; every executor report (`handle_task_started`, `_finished`,
///   `_failed`, `_stopped`) must name it back, and a report for a run that
///   is not the task's current run is refused ([`InputError::StaleRun`]).
/// - **Outputs**: drain [`Scheduler::poll_action`] (launch/stop for
///   executors) and [`Scheduler::poll_event`] (the ordered change feed)
///   after inputs and commits.
/// - **Persistence**: [`Scheduler::snapshot`] and [`Scheduler::restore`]
///   give a core indistinguishable from the original.
///
/// # Example
/// ```
/// use ebb_scheduler::*;
///
/// # fn main() -> Result<(), InputError> {
/// let mut s = Scheduler::new(SchedulerConfig::default());
/// let now = Timestamp::from_millis(0);
/// s.handle_host_added(now, HostSpec {
///     id: HostId::from("h1"),
///     pool: PoolId::from("pool-a"),
///     instance_type: "m5.2xlarge".into(),
///     zone: "us-east-1a".into(),
///     region: "us-east-1".into(),
///     attributes: Default::default(),
///     capacity: Resources::cpu_mem(8_000, 32 * 1024),
///     gpu_model: None,
/// })?;
/// let job = s.handle_job_submitted(now, JobSpec {
///     id: JobId(1),
///     request_key: Some("encode-ep1".into()),
///     name: "encode".into(),
///     team: TeamId::from("encoding"),
///     tier: Tier::Flex,
///     priority: 0,
///     bid: None,
///     request: Resources::cpu_mem(2_000, 4 * 1024),
///     n_tasks: 3,
///     hard_constraints: vec![],
///     soft_constraints: vec![],
///     gang: false,
///     retry: RetryPolicy::default(),
///     disruption_budget: None,
///     checkpoint_interval: None,
///     expected_runtime: None,
/// })?;
/// s.handle_tick(now)?;
/// let plan = s.plan_round(now)?; // changes nothing
/// let json = serde_json::to_string(&plan).unwrap(); // a shell persists it here
/// let plan: Plan = serde_json::from_str(&json).unwrap();
/// let report = s.commit(now, plan)?; // re-validated: the plan went through serde
/// assert_eq!(report.n_applied, 3);
/// let mut runs = Vec::new();
/// while let Some(action) = s.poll_action() {
///     if let Action::Launch { run, .. } = action {
///         runs.push(run);
///     }
/// }
/// let later = Timestamp::from_millis(1_000);
/// s.handle_task_started(later, runs[0])?;
/// s.handle_task_finished(later, runs[0])?;
/// // A second report for the same run is refused and changes nothing.
/// assert!(s.handle_task_finished(later, runs[0]).is_err());
/// let copy = Scheduler::restore(s.snapshot())?;
/// assert_eq!(copy.job_counts(job), s.job_counts(job));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Scheduler {
    state: State,
    pipeline: Arc<Pipeline>,
    actions: VecDeque<Action>,
    events: EventFeed,
    n_rounds: u64,
}

impl Scheduler {
    /// A scheduler with no hosts and no jobs.
    ///
    /// # Panics
    /// If the configuration is invalid; shells reading user configuration
    /// use [`Scheduler::try_new`].
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler::try_new(config).expect("invalid scheduler configuration")
    }

    /// A scheduler with no hosts and no jobs, or the configuration's first error.
    pub fn try_new(config: SchedulerConfig) -> Result<Self, InputError> {
        config.validate()?;
        Ok(Scheduler {
            state: State::new(config)?,
            pipeline: Arc::new(Pipeline::default()),
            actions: VecDeque::new(),
            events: EventFeed {
                enabled: true,
                ..EventFeed::default()
            },
            n_rounds: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.state.config
    }

    /// Turns the event feed on (the default) or off. Off, no event is built
    /// or queued and sequence numbers do not advance; shells that never poll
    /// events (the simulator) turn it off.
    pub fn set_event_feed(&mut self, enabled: bool) {
        self.events.enabled = enabled;
        if !enabled {
            self.events.queue.clear();
        }
    }

    /// The next queued action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event of the change feed.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.queue.pop_front()
    }

    /// The sequence number of the last event emitted (0 if none).
    pub fn last_event_seq(&self) -> u64 {
        self.events.last_seq
    }

    /// The next instant at which the core has time-driven work — a retry
    /// back-off ends, a reservation starts or ends, or a disruption budget
    /// that held reclaim back gains room — if any. The shell should call
    /// [`Scheduler::handle_tick`] and run a round then.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let last = self.state.last_now;
        [
            self.state.queue.next_ready_at(),
            self.state
                .market
                .next_reservation_change(self.state.market.reserved_at),
            self.state.budget_wakeup,
        ]
        .into_iter()
        .flatten()
        .map(|t| t.max(last))
        .min()
    }

    /// Rounds committed so far.
    pub fn n_rounds(&self) -> u64 {
        self.n_rounds
    }

    /// The latest `now` the core has seen.
    pub fn now(&self) -> Timestamp {
        self.state.last_now
    }

    /// The state generation: it changes with every input and commit. A plan
    /// made at the current generation commits without re-validation.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    /// Recounts every derived account (host allocations, leases, team
    /// totals) from the tasks on each host and reports the first mismatch.
    /// O(hosts + tasks): for tests and debugging, not for every round.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.state.check_accounts()
    }

    // -------------------------------------------------------------- internals

    /// Runs an input: refuses it if time went backwards, applies it, and on
    /// success records `now` and bumps the generation. `f` must validate
    /// before it changes anything, so an error leaves the state as it was.
    fn input<T>(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self) -> Result<T, InputError>,
    ) -> Result<T, InputError> {
        self.check_time(now)?;
        let out = f(self)?;
        self.state.last_now = now;
        self.state.generation += 1;
        Ok(out)
    }

    fn check_time(&self, now: Timestamp) -> Result<(), InputError> {
        if now < self.state.last_now {
            return Err(InputError::TimeWentBackwards {
                now,
                last: self.state.last_now,
            });
        }
        Ok(())
    }

    fn emit(&mut self, at: Timestamp, kind: impl FnOnce() -> EventKind) {
        self.events.emit(at, kind);
    }

    /// The public state of a task.
    fn task_state(&self, phase: Phase) -> TaskState {
        let host_id = |h| self.state.hosts[h].spec.id.clone();
        match phase {
            Phase::Pending => TaskState::Pending,
            Phase::Assigned(h) => TaskState::Assigned { host: host_id(h) },
            Phase::Running(h) => TaskState::Running { host: host_id(h) },
            Phase::Stopping { host, cause, .. } => TaskState::Stopping {
                host: host_id(host),
                cause,
            },
            Phase::Completed => TaskState::Completed,
            Phase::Failed => TaskState::Failed,
            Phase::Killed => TaskState::Killed,
        }
    }

    /// Sets a task's phase, keeping the job's live count, finish time and
    /// the event feed in step.
    fn set_phase(&mut self, task: TaskId, phase: Phase, now: Timestamp) {
        let job = self.state.jobs.get_mut(&task.job).expect("task exists");
        let t = &mut job.tasks[task.index as usize];
        let was_terminal = t.phase.is_terminal();
        t.phase = phase;
        if phase.is_terminal() {
            t.ended_at = Some(now);
        }
        let run = task.run(t.attempt);
        let finished = phase.is_terminal() && !was_terminal && {
            job.n_live = job.n_live.checked_sub(1).expect("live count");
            job.n_live == 0
        };
        if finished {
            job.finished_at = Some(now);
            self.state.finished.insert((now, task.job));
        }
        if self.events.enabled {
            let state = self.task_state(phase);
            self.emit(now, || EventKind::TaskChanged { run, state });
            if finished {
                let phase = self.job_phase(task.job).expect("job exists");
                self.emit(now, || EventKind::JobFinished {
                    job: task.job,
                    phase,
                });
            }
        }
    }

    fn make_ready(&mut self, task: TaskId) {
        let job = self.state.jobs.get_mut(&task.job).expect("task exists");
        let was_empty = job.ready.is_empty();
        job.ready.insert(task.index);
        if was_empty {
            let (tier, team, rank) = (
                job.spec.tier,
                job.team,
                JobRank::of(&job.spec, job.submit_time),
            );
            self.state.queue.insert_job(tier, team, rank);
        }
    }

    /// Takes a pending task out of the ready set or the back-off queue.
    fn unready(&mut self, task: TaskId) {
        let job = self.state.jobs.get_mut(&task.job).expect("task exists");
        if job.ready.remove(&task.index) {
            self.dequeue_if_not_ready(task.job);
        } else {
            self.state.queue.cancel_delay(&task);
        }
    }

    /// Takes a job off the queue once it has no ready task left.
    fn dequeue_if_not_ready(&mut self, job_id: JobId) {
        let job = &self.state.jobs[&job_id];
        if job.ready.is_empty() {
            let (tier, team, rank) = (
                job.spec.tier,
                job.team,
                JobRank::of(&job.spec, job.submit_time),
            );
            self.state.queue.remove_job(tier, team, &rank);
        }
    }

    /// Puts a task back in the queue: ready now, or after its `ready_at`.
    fn requeue(&mut self, task: TaskId, now: Timestamp) {
        self.set_phase(task, Phase::Pending, now);
        let ready_at = self.state.task(task).expect("task exists").ready_at;
        if ready_at <= now {
            self.make_ready(task);
        } else {
            self.state.queue.delay(task, ready_at);
        }
    }

    /// Frees a placed task's resources on its host.
    fn release(&mut self, task: TaskId, now: Timestamp) {
        self.state.forget_failed_shapes();
        let h = self
            .state
            .task(task)
            .and_then(|t| t.phase.host())
            .expect("released task is placed");
        self.state.charge(h, &[task], false, now);
        self.emit_holding(task, h, now);
    }

    /// Emits the team's new holding in the host's pool after a flex task moved.
    fn emit_holding(&mut self, task: TaskId, h: crate::units::ids::HostIdx, now: Timestamp) {
        if !self.events.enabled {
            return;
        }
        let job = &self.state.jobs[&task.job];
        if job.spec.tier != crate::spec::job::Tier::Flex {
            return;
        }
        let (team, pool) = (job.team, self.state.hosts[h].pool);
        let held: crate::units::ie::Ie = self
            .state
            .market
            .ledger
            .accounts
            .iter()
            .filter(|((t, p, _), _)| *t == team && *p == pool)
            .map(|(_, a)| a.held())
            .sum();
        let team = self.state.teams[team.get()].id.clone();
        let pool = self.state.market.pools[pool.get()].id.clone();
        self.emit(now, || EventKind::HoldingChanged { team, pool, held });
    }

    /// Asks the executor to stop a placed task; it keeps its resources until it stops.
    fn begin_stop(
        &mut self,
        task: TaskId,
        cause: StopCause,
        over_budget: bool,
        grace: DurationMs,
        now: Timestamp,
    ) {
        let t = self.state.task(task).expect("stopped task exists");
        let host_idx = t.phase.host().expect("stopped task is placed");
        let run = task.run(t.attempt);
        self.set_phase(
            task,
            Phase::Stopping {
                host: host_idx,
                cause,
                over_budget,
            },
            now,
        );
        let host = self.state.hosts[host_idx].spec.id.clone();
        self.actions.push_back(Action::Stop {
            run,
            host,
            grace,
            cause,
        });
    }

    /// The job's pending reasons after a commit refused a planned placement.
    fn refused_reasons(reason: Reason) -> Arc<PendingReasons> {
        Arc::new(PendingReasons::from_counts(vec![(reason, 1)]))
    }
}
