//! The core's bookkeeping: hosts, jobs, tasks, teams and zones, and the one
//! pair of functions ([`State::charge`] / [`State::uncharge`]) that moves a
//! task's request onto or off a host. Planning charges tentatively and undoes;
//! commit charges for real; both go through the same code.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::{SchedulerConfig, TeamConfig, TieBreak};
use crate::error::InputError;
use crate::host::{HostSpec, HostState};
use crate::ids::{HostId, JobId, TaskId, TeamId};
use crate::job::{Constraint, JobSpec, Tier};
use crate::market::{Ie, Market, PoolIdx};
use crate::place::index::{HostIdx, HostIndex, part_of};
use crate::place::reason::PendingReasons;
use crate::preempt::task_ie;
use crate::queue::JobQueue;
use crate::resources::Resources;
use crate::round::ShapeKey;
use crate::time::Timestamp;

/// Index of a zone in the zone table.
pub(crate) type ZoneIdx = u32;
/// Index of a team in the team table.
pub(crate) type TeamIdx = u32;

/// A host as the core tracks it.
#[derive(Debug)]
pub struct Host {
    pub(crate) spec: HostSpec,
    pub(crate) state: HostState,
    pub(crate) allocated: Resources,
    pub(crate) tasks: Vec<TaskId>,
    /// Tie-break rank in the host index.
    pub(crate) rank: u64,
    pub(crate) zone: ZoneIdx,
    /// Tasks of the flex tier on this host (the market leases hosts that carry flex work).
    pub(crate) n_flex_tasks: u32,
    /// The host's size in instance equivalents (zero if its type is unknown
    /// and its pool is not market-managed).
    pub(crate) ie: Ie,
    pub(crate) pool: PoolIdx,
    /// Reclaim is emptying this host of flex work: no new flex tasks go here.
    pub(crate) reclaiming: bool,
}

impl Host {
    /// The spec the host was added (or last updated) with.
    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// Lifecycle state.
    pub fn state(&self) -> HostState {
        self.state
    }

    /// Resources held by assigned, running and stopping tasks.
    pub fn allocated(&self) -> &Resources {
        &self.allocated
    }

    /// Capacity not held by any task.
    pub fn free(&self) -> Resources {
        self.spec.capacity.saturating_sub(&self.allocated)
    }

    /// Tasks holding resources on this host.
    pub fn tasks(&self) -> &[TaskId] {
        &self.tasks
    }

    /// Number of flex-tier tasks on this host.
    pub fn n_flex_tasks(&self) -> u32 {
        self.n_flex_tasks
    }

    /// The host's size in instance equivalents.
    pub fn ie(&self) -> Ie {
        self.ie
    }

    /// True while the market is taking this host back from batch work.
    pub fn is_reclaiming(&self) -> bool {
        self.reclaiming
    }

    /// The host-index partition: its pool, with or without flex work.
    pub(crate) fn index_part(&self) -> usize {
        part_of(self.pool, self.n_flex_tasks > 0)
    }

    pub(crate) fn has_gpus(&self) -> bool {
        self.spec.capacity.gpus > 0
    }
}

/// Why a task is being stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StopCause {
    /// Its owner killed it: it ends as killed.
    Kill,
    /// The market reclaimed its capacity: it is requeued.
    Preempt,
}

/// Where a task is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Assigned(HostIdx),
    Running(HostIdx),
    Stopping(HostIdx, StopCause),
    Completed,
    Failed,
    Killed,
}

impl Phase {
    pub(crate) fn host(self) -> Option<HostIdx> {
        match self {
            Phase::Assigned(h) | Phase::Running(h) | Phase::Stopping(h, _) => Some(h),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Assigned(_) => "assigned",
            Phase::Running(_) => "running",
            Phase::Stopping(..) => "stopping",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Killed => "killed",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Killed)
    }
}

/// One task's mutable state. Everything shared by the job lives in [`Job`].
#[derive(Clone, Debug)]
pub(crate) struct Task {
    pub(crate) phase: Phase,
    pub(crate) n_failures: u32,
    pub(crate) n_preemptions: u32,
    /// Not schedulable before this instant (retry back-off).
    pub(crate) ready_at: Timestamp,
    /// When the current run started (set on assignment).
    pub(crate) started_at: Option<Timestamp>,
}

/// A job and its tasks.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) spec: Arc<JobSpec>,
    pub(crate) team: TeamIdx,
    pub(crate) submit_time: Timestamp,
    pub(crate) tasks: Vec<Task>,
    /// Indexes of pending tasks whose back-off has expired, lowest first.
    pub(crate) ready: BTreeSet<u32>,
    /// Tasks of this job per host, kept only for jobs with unique-host or
    /// zone-balance constraints.
    pub(crate) per_host: FxHashMap<HostIdx, u32>,
    /// Tasks of this job per zone (same condition), indexed by `ZoneIdx`.
    pub(crate) per_zone: Vec<u32>,
    /// Unique-host group name, if the job is in one.
    pub(crate) unique_group: Option<Arc<str>>,
    pub(crate) tracks_placement: bool,
    /// Why the ready tasks were not placed in the last committed round.
    pub(crate) pending_reasons: Option<Arc<PendingReasons>>,
    /// Tasks not yet completed, failed or killed.
    pub(crate) n_live: u32,
    /// When this job's tasks were preempted (for the disruption budget),
    /// pruned to the budget window.
    pub(crate) preempted_at: Vec<Timestamp>,
}

/// A team's fair-share state.
#[derive(Debug)]
pub(crate) struct Team {
    pub(crate) id: TeamId,
    pub(crate) config: TeamConfig,
    /// Resources held per tier (indexed by [`Tier::index`]).
    pub(crate) allocated: [Resources; 2],
}

/// All mutable state of the core except the queue's ordering structures.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: SchedulerConfig,
    pub(crate) hosts: Vec<Host>,
    pub(crate) host_by_id: FxHashMap<HostId, HostIdx>,
    pub(crate) index: HostIndex,
    pub(crate) zones: Vec<Arc<str>>,
    /// Active hosts per zone.
    pub(crate) zone_active_hosts: Vec<u32>,
    pub(crate) jobs: FxHashMap<JobId, Job>,
    pub(crate) teams: Vec<Team>,
    pub(crate) team_by_id: FxHashMap<TeamId, TeamIdx>,
    /// Per unique-host group: tasks per host.
    pub(crate) unique_groups: FxHashMap<Arc<str>, FxHashMap<HostIdx, u32>>,
    pub(crate) queue: JobQueue,
    /// Capacity of active hosts.
    pub(crate) active_capacity: Resources,
    /// Allocation on all hosts that still hold tasks.
    pub(crate) allocated: Resources,
    pub(crate) n_draining: u32,
    pub(crate) n_hosts_added: u64,
    pub(crate) market: Market,
    /// Shapes that found no host, kept across rounds: allocations only make
    /// them less likely to fit, so an entry stays true until something frees
    /// room — a task releasing resources, a host activating or growing, a
    /// market input, a gang rolling back, or a plan that was not committed
    /// whole. Those call [`State::forget_failed_shapes`].
    pub(crate) failed_shapes: FxHashMap<ShapeKey, Arc<PendingReasons>>,
}

impl State {
    pub(crate) fn new(config: SchedulerConfig) -> Result<Self, InputError> {
        let market = Market::new(config.market.clone())?;
        Ok(State {
            config,
            hosts: Vec::new(),
            host_by_id: FxHashMap::default(),
            index: HostIndex::default(),
            zones: Vec::new(),
            zone_active_hosts: Vec::new(),
            jobs: FxHashMap::default(),
            teams: Vec::new(),
            team_by_id: FxHashMap::default(),
            unique_groups: FxHashMap::default(),
            queue: JobQueue::default(),
            active_capacity: Resources::default(),
            allocated: Resources::default(),
            n_draining: 0,
            n_hosts_added: 0,
            market,
            failed_shapes: FxHashMap::default(),
        })
    }

    /// The team's index, creating the team with its configured (or default) policy.
    pub(crate) fn team_idx(&mut self, id: &TeamId) -> TeamIdx {
        if let Some(&t) = self.team_by_id.get(id) {
            return t;
        }
        let idx = self.teams.len() as TeamIdx;
        let config = self.config.teams.get(id).cloned().unwrap_or_default();
        self.teams.push(Team {
            id: id.clone(),
            config,
            allocated: Default::default(),
        });
        self.team_by_id.insert(id.clone(), idx);
        idx
    }

    pub(crate) fn zone_idx(&mut self, zone: &str) -> ZoneIdx {
        if let Some(i) = self.zones.iter().position(|z| &**z == zone) {
            return i as ZoneIdx;
        }
        self.zones.push(zone.into());
        self.zone_active_hosts.push(0);
        (self.zones.len() - 1) as ZoneIdx
    }

    /// Something freed room: cached shape failures may no longer hold.
    pub(crate) fn forget_failed_shapes(&mut self) {
        if !self.failed_shapes.is_empty() {
            self.failed_shapes.clear();
        }
    }

    pub(crate) fn next_rank(&mut self) -> u64 {
        let seq = self.n_hosts_added;
        self.n_hosts_added += 1;
        match self.config.tie_break {
            TieBreak::HostOrder => seq,
            TieBreak::Seeded(seed) => splitmix64(seed ^ splitmix64(seq)),
        }
    }

    pub(crate) fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub(crate) fn task(&self, id: TaskId) -> Option<&Task> {
        self.jobs.get(&id.job)?.tasks.get(id.index as usize)
    }

    /// Adds a task's request to a host and every account that depends on it:
    /// host allocation and index position, cluster and team totals,
    /// per-job placement counts and unique-host groups.
    ///
    /// For flex tasks also the market's lease of the host and the ledger's
    /// holding; `now` dates the ledger change.
    ///
    /// The caller has checked feasibility; an overflow here is a bug, so it panics.
    pub(crate) fn charge(&mut self, job_id: JobId, host_idx: HostIdx, now: Timestamp) {
        self.apply(job_id, host_idx, true, now);
    }

    /// Exactly reverses [`State::charge`].
    pub(crate) fn uncharge(&mut self, job_id: JobId, host_idx: HostIdx, now: Timestamp) {
        self.apply(job_id, host_idx, false, now);
    }

    fn apply(&mut self, job_id: JobId, host_idx: HostIdx, add: bool, now: Timestamp) {
        let job = self.jobs.get_mut(&job_id).expect("charged job exists");
        let request = &job.spec.request;
        let tier = job.spec.tier;
        let host = &mut self.hosts[host_idx as usize];
        let old_free = host.free();
        let old_part = host.index_part();
        let indexed = host.state == HostState::Active;
        if add {
            host.allocated
                .checked_add_assign(request)
                .expect("host over-committed: feasibility not checked");
            self.allocated
                .checked_add_assign(request)
                .expect("cluster allocation overflow");
            self.teams[job.team as usize].allocated[tier.index()]
                .checked_add_assign(request)
                .expect("team allocation overflow");
        } else {
            host.allocated
                .checked_sub_assign(request)
                .expect("released more than allocated on host");
            self.allocated
                .checked_sub_assign(request)
                .expect("released more than allocated");
            self.teams[job.team as usize].allocated[tier.index()]
                .checked_sub_assign(request)
                .expect("released more than team holds");
        }
        if tier == Tier::Flex {
            let was_leased = host.n_flex_tasks > 0;
            if add {
                host.n_flex_tasks += 1;
            } else {
                host.n_flex_tasks -= 1;
            }
            let is_leased = host.n_flex_tasks > 0;
            if !is_leased {
                host.reclaiming = false;
            }
            if was_leased != is_leased {
                self.market.set_leased(now, host.pool, host.ie, is_leased);
            }
            let held = task_ie(host.ie, request, &host.spec.capacity);
            let price = self.market.pools[host.pool as usize].clearing_price;
            self.market
                .ledger
                .hold(now, job.team, host.pool, price, held, add);
        }
        if indexed {
            let new_free = host.free();
            let new_part = host.index_part();
            self.index.update(
                host_idx,
                host.rank,
                old_part,
                &old_free,
                new_part,
                &new_free,
                host.has_gpus(),
            );
        }
        if job.tracks_placement {
            let zone = host.zone as usize;
            if job.per_zone.len() <= zone {
                job.per_zone.resize(zone + 1, 0);
            }
            let n = job.per_host.entry(host_idx).or_insert(0);
            if add {
                *n += 1;
                job.per_zone[zone] += 1;
            } else {
                *n -= 1;
                job.per_zone[zone] -= 1;
                if *n == 0 {
                    job.per_host.remove(&host_idx);
                }
            }
        }
        if let Some(group) = &job.unique_group {
            let counts = self.unique_groups.entry(group.clone()).or_default();
            let n = counts.entry(host_idx).or_insert(0);
            if add {
                *n += 1;
            } else {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&host_idx);
                }
            }
        }
    }
}

/// Builds the per-job placement bookkeeping flags from its constraints.
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

/// SplitMix64, a tiny bijective mixer: turns (seed, sequence) into a
/// well-spread tie-break rank. Deterministic and allocation-free.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
