//! Jobs and tasks as the core tracks them: each task's phase, run number and
//! state timestamps, and the per-job counts placement constraints need.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::spec::job::{Constraint, JobSpec};
use crate::spec::reason::PendingReasons;
use crate::units::ids::{HostIdx, TeamIdx};
use crate::units::time::Timestamp;
use crate::util::FxMap;

/// Why a task is being stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// Its owner killed it: it ends as killed.
    Kill,
    /// The market reclaimed its capacity, a critical task needed the room,
    /// or a higher bid displaced it: it is requeued, counted as preempted.
    Preempt,
    /// Another member of its gang was preempted, lost or failed: the gang
    /// runs whole or not at all, so this member stops and the gang is
    /// requeued together (not counted as a preemption of this member).
    Restart,
}

/// Where a task is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    /// In the queue, or waiting out a retry back-off.
    Pending,
    /// Placed; the executor has not reported it started.
    Assigned(HostIdx),
    /// Running.
    Running(HostIdx),
    /// Asked to stop; it holds its resources until the executor says it stopped.
    Stopping {
        host: HostIdx,
        cause: StopCause,
        /// The preemption exceeded the job's disruption budget (an emergency).
        over_budget: bool,
    },
    Completed,
    Failed,
    Killed,
}

impl Phase {
    pub(crate) fn host(self) -> Option<HostIdx> {
        match self {
            Phase::Assigned(h) | Phase::Running(h) | Phase::Stopping { host: h, .. } => Some(h),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Assigned(_) => "assigned",
            Phase::Running(_) => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Killed => "killed",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Killed)
    }

    /// Assigned or running: a run that may be preempted or killed.
    pub(crate) fn is_live_run(self) -> bool {
        matches!(self, Phase::Assigned(_) | Phase::Running(_))
    }
}

/// One task's mutable state. Everything shared by the job lives in [`Job`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) phase: Phase,
    /// The current (or last) run's number; 0 before the first placement.
    pub(crate) attempt: u32,
    pub(crate) n_failures: u32,
    pub(crate) n_preemptions: u32,
    /// Not schedulable before this instant (retry back-off).
    pub(crate) ready_at: Timestamp,
    /// When the current run was placed (the commit's `now`).
    pub(crate) assigned_at: Option<Timestamp>,
    /// When the executor reported the current run started.
    pub(crate) started_at: Option<Timestamp>,
    /// When the task reached a terminal state.
    pub(crate) ended_at: Option<Timestamp>,
}

impl Task {
    pub(crate) fn new(now: Timestamp) -> Self {
        Task {
            phase: Phase::Pending,
            attempt: 0,
            n_failures: 0,
            n_preemptions: 0,
            ready_at: now,
            assigned_at: None,
            started_at: None,
            ended_at: None,
        }
    }
}

/// A job and its tasks.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) spec: Arc<JobSpec>,
    pub(crate) team: TeamIdx,
    pub(crate) submit_time: Timestamp,
    pub(crate) tasks: Vec<Task>,
    /// Indexes of pending tasks whose back-off has expired, lowest first.
    pub(crate) ready: BTreeSet<u32>,
    /// Tasks of this job per host, kept only for jobs with unique-host or
    /// zone-balance constraints.
    pub(crate) per_host: FxMap<HostIdx, u32>,
    /// Tasks of this job per zone (same condition), indexed by `ZoneIdx`.
    pub(crate) per_zone: Vec<u32>,
    /// Unique-host group name, if the job is in one.
    pub(crate) unique_group: Option<Arc<str>>,
    pub(crate) tracks_placement: bool,
    /// Why the ready tasks were not placed in the last committed round.
    pub(crate) pending_reasons: Option<Arc<PendingReasons>>,
    /// Tasks not yet completed, failed or killed.
    pub(crate) n_live: u32,
    /// Tasks holding resources on a host (assigned, running or stopping).
    pub(crate) n_placed: u32,
    /// When this job's tasks were preempted (for the disruption budget),
    /// oldest first, pruned to the budget window.
    pub(crate) preempted_at: Vec<Timestamp>,
    /// When the last task reached a terminal state.
    pub(crate) finished_at: Option<Timestamp>,
}

impl Job {
    pub(crate) fn new(spec: JobSpec, team: TeamIdx, now: Timestamp) -> Self {
        let (tracks_placement, unique_group) = placement_tracking(&spec);
        let n = spec.n_tasks;
        Job {
            team,
            submit_time: now,
            tasks: vec![Task::new(now); n as usize],
            ready: (0..n).collect(),
            per_host: FxMap::default(),
            per_zone: Vec::new(),
            unique_group,
            tracks_placement,
            pending_reasons: None,
            n_live: n,
            n_placed: 0,
            preempted_at: Vec::new(),
            finished_at: None,
            spec: Arc::new(spec),
        }
    }

    /// Tasks of this job on `host`.
    pub(crate) fn on_host(&self, host: HostIdx) -> u32 {
        self.per_host.get(&host).copied().unwrap_or(0)
    }
}

/// Which per-job placement bookkeeping a job's constraints need: per-host and
/// per-zone counts (unique host per job, zone balance), and its unique-host group.
pub(crate) fn placement_tracking(spec: &JobSpec) -> (bool, Option<Arc<str>>) {
    let mut tracks = false;
    let mut group = None;
    for c in spec.hard_constraints.iter().chain(&spec.soft_constraints) {
        match c {
            Constraint::UniqueHost { group: Some(g) } => group = Some(Arc::from(g.as_str())),
            Constraint::UniqueHost { group: None } | Constraint::ZoneBalance { .. } => {
                tracks = true
            }
            _ => {}
        }
    }
    (tracks, group)
}
