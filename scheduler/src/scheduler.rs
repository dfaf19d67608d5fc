//! [`Scheduler`]: the sans-IO state machine the server and the simulator drive.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::config::SchedulerConfig;
use crate::error::InputError;
use crate::host::{HostSpec, HostState};
use crate::ids::PoolId;
use crate::ids::{HostId, JobId, TaskId, TeamId};
use crate::job::{Constraint, JobSpec, Tier};
use crate::ledger::{LedgerEntry, PoolTotals};
use crate::market::{Catalog, Compaction, Ie, PoolIdx, PoolSpec, PoolStatus, Reservation};
use crate::place::Pipeline;
use crate::place::index::HostIdx;
use crate::place::reason::{PendingReasons, Reason};
use crate::preempt::{PreemptCause, Preemption, lost_work, task_ie};
use crate::queue::JobRank;
use crate::resources::Resources;
use crate::round::{Plan, Planner};
use crate::state::{Host, Job, Phase, State, StopCause, Task, placement_tracking};
use crate::time::{DurationMs, Timestamp};

/// Largest job the core accepts. A bigger array is almost always a mistake
/// (a unit error in a generator), and one job's tasks share one `Vec`.
pub const MAX_TASKS_PER_JOB: u32 = 1_000_000;

/// A decision for the shell to carry out, drained with [`Scheduler::poll_action`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Start the task on the host.
    Launch {
        /// The task.
        task: TaskId,
        /// Where.
        host: HostId,
        /// What it was given.
        request: Resources,
    },
    /// Send SIGTERM, wait `grace`, then SIGKILL; report with `handle_task_stopped`.
    Stop {
        /// The task.
        task: TaskId,
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

/// A snapshot of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// Its state.
    pub state: TaskState,
    /// Failures so far (preemptions and host losses do not count).
    pub n_failures: u32,
    /// Times it was preempted.
    pub n_preemptions: u32,
    /// Not schedulable before this (retry back-off).
    pub ready_at: Timestamp,
    /// When its current or last run was assigned.
    pub started_at: Option<Timestamp>,
    /// For a ready pending task: why the last round did not place it.
    pub pending_reasons: Option<Arc<PendingReasons>>,
}

/// Task counts of a job by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Pending.
    pub pending: u32,
    /// Assigned or running.
    pub running: u32,
    /// Stopping.
    pub stopping: u32,
    /// Completed.
    pub completed: u32,
    /// Failed.
    pub failed: u32,
    /// Killed.
    pub killed: u32,
}

/// Fleet-wide totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Active hosts.
    pub n_hosts_active: u32,
    /// Draining hosts.
    pub n_hosts_draining: u32,
    /// Capacity of active hosts.
    pub active_capacity: Resources,
    /// Resources held by tasks on any host.
    pub allocated: Resources,
    /// Jobs with at least one ready task.
    pub n_jobs_queued: u32,
    /// Tasks waiting out a retry back-off.
    pub n_tasks_backing_off: u32,
}

/// What [`Scheduler::commit`] did with a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitReport {
    /// Assignments applied (a `Launch` action was queued for each).
    pub n_applied: u32,
    /// Preemptions started (a `Stop` action was queued for each).
    pub n_preempted: u32,
    /// Assignments refused because the state changed since planning, with the reason.
    pub rejected: Vec<(TaskId, String)>,
}

/// The scheduler core.
///
/// # Call order
/// Feed inputs with `handle_*` as they happen, each with the current time.
/// To schedule, call [`Scheduler::plan_round`], persist the plan if the shell
/// needs it to survive a crash, then [`Scheduler::commit`] it; the plan
/// changes nothing until it is committed, so an unpersisted plan is simply
/// dropped. After inputs and commits, drain [`Scheduler::poll_action`] and
/// carry the actions out. [`Scheduler::poll_timeout`] says when the core next
/// needs a round even if no input arrives. Time must not go backwards.
#[derive(Debug)]
pub struct Scheduler {
    state: State,
    pipeline: Pipeline,
    actions: VecDeque<Action>,
    n_rounds: u64,
    /// A plan was made and not yet committed.
    plan_outstanding: bool,
}

impl Scheduler {
    /// A scheduler with no hosts and no jobs.
    ///
    /// # Panics
    /// If the configuration is invalid (an unknown reference instance type or
    /// a bad catalog override); shells reading user configuration use
    /// [`Scheduler::try_new`].
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler::try_new(config).expect("invalid scheduler configuration")
    }

    /// A scheduler with no hosts and no jobs, or the configuration's first error.
    pub fn try_new(config: SchedulerConfig) -> Result<Self, InputError> {
        Ok(Scheduler {
            state: State::new(config)?,
            pipeline: Pipeline::default(),
            actions: VecDeque::new(),
            n_rounds: 0,
            plan_outstanding: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.state.config
    }

    // ------------------------------------------------------------------ hosts

    /// A host joined the fleet, active.
    pub fn handle_host_added(&mut self, _now: Timestamp, spec: HostSpec) -> Result<(), InputError> {
        validate_host(&spec)?;
        if self.state.host_by_id.contains_key(&spec.id) {
            return Err(InputError::DuplicateHost(spec.id));
        }
        let pool = self.state.market.pool_idx(&spec.pool);
        let ie = self.host_ie(&spec, pool)?;
        let host_idx = self.state.hosts.len() as HostIdx;
        let rank = self.state.next_rank();
        let zone = self.state.zone_idx(&spec.zone);
        let p = &mut self.state.market.pools[pool as usize];
        p.hosts.insert(host_idx);
        p.n_hosts += 1;
        p.min_host_ie = Some(p.min_host_ie.map_or(ie, |m| m.min(ie)));
        self.state.host_by_id.insert(spec.id.clone(), host_idx);
        self.state.hosts.push(Host {
            spec,
            state: HostState::Draining, // activated below, through the one code path
            allocated: Resources::default(),
            tasks: Vec::new(),
            rank,
            zone,
            n_flex_tasks: 0,
            ie,
            pool,
            reclaiming: false,
        });
        self.state.n_draining += 1;
        self.set_host_state(host_idx, HostState::Active);
        Ok(())
    }

    /// A host's capacity, attributes or GPU model changed. Its pool and zone cannot change.
    pub fn handle_host_updated(
        &mut self,
        now: Timestamp,
        spec: HostSpec,
    ) -> Result<(), InputError> {
        validate_host(&spec)?;
        let host_idx = self.host_idx(&spec.id)?;
        let host = &self.state.hosts[host_idx as usize];
        if host.spec.zone != spec.zone {
            return Err(InputError::field(
                "zone",
                "cannot change; drain the host and add it again",
            ));
        }
        if host.spec.pool != spec.pool {
            return Err(InputError::field(
                "pool",
                "cannot change; drain the host and add it again",
            ));
        }
        if let Some(dim) = host.allocated.first_shortfall(&spec.capacity) {
            return Err(InputError::CapacityBelowAllocation { host: spec.id, dim });
        }
        let ie = self.host_ie(&spec, host.pool)?;
        // Take every task off, swap the spec, put them back: the index, the
        // market lease and the ledger holdings then follow the new capacity.
        let state = host.state;
        let tasks = host.tasks.clone();
        self.state.forget_failed_shapes();
        self.set_host_state(host_idx, HostState::Draining);
        for t in &tasks {
            self.state.uncharge(t.job, host_idx, now);
        }
        let host = &mut self.state.hosts[host_idx as usize];
        host.spec = spec;
        host.ie = ie;
        let pool = &mut self.state.market.pools[host.pool as usize];
        pool.min_host_ie = Some(pool.min_host_ie.map_or(ie, |m| m.min(ie)));
        for t in &tasks {
            self.state.charge(t.job, host_idx, now);
        }
        self.set_host_state(host_idx, state);
        Ok(())
    }

    /// A host stops accepting new work; its tasks keep running.
    pub fn handle_host_draining(&mut self, _now: Timestamp, id: &HostId) -> Result<(), InputError> {
        let host_idx = self.host_idx(id)?;
        self.set_host_state(host_idx, HostState::Draining);
        Ok(())
    }

    /// A draining host accepts work again.
    pub fn handle_host_activated(
        &mut self,
        _now: Timestamp,
        id: &HostId,
    ) -> Result<(), InputError> {
        let host_idx = self.host_idx(id)?;
        self.set_host_state(host_idx, HostState::Active);
        Ok(())
    }

    /// A host is gone. Its tasks return to the queue as lost (not failed: no
    /// retry is used up); tasks that were being killed end killed. Returns
    /// the requeued tasks.
    pub fn handle_host_lost(
        &mut self,
        now: Timestamp,
        id: &HostId,
    ) -> Result<Vec<TaskId>, InputError> {
        let host_idx = self.host_idx(id)?;
        let tasks = self.state.hosts[host_idx as usize].tasks.clone();
        let mut requeued = Vec::new();
        for task in tasks {
            let phase = self.state.task(task).expect("hosted task exists").phase;
            self.release(task, now);
            match phase {
                Phase::Stopping(_, StopCause::Kill) => self.set_phase(task, Phase::Killed),
                Phase::Stopping(_, StopCause::Preempt) => {
                    self.task_mut(task).n_preemptions += 1;
                    self.requeue(task, now);
                    requeued.push(task);
                }
                _ => {
                    self.requeue(task, now);
                    requeued.push(task);
                }
            }
        }
        self.set_host_state(host_idx, HostState::Lost);
        self.state.host_by_id.remove(id);
        let host = &mut self.state.hosts[host_idx as usize];
        host.reclaiming = false;
        let pool = &mut self.state.market.pools[host.pool as usize];
        pool.hosts.remove(&host_idx);
        pool.n_hosts -= 1;
        Ok(requeued)
    }

    fn set_host_state(&mut self, host_idx: HostIdx, to: HostState) {
        let host = &mut self.state.hosts[host_idx as usize];
        let from = host.state;
        if from == to {
            return;
        }
        let free = host.free();
        // A host joining frees room; one leaving changes every reason count.
        self.state.forget_failed_shapes();
        let host = &mut self.state.hosts[host_idx as usize];
        let (rank, has_gpus, zone, part) = (
            host.rank,
            host.has_gpus(),
            host.zone as usize,
            host.index_part(),
        );
        host.state = to;
        if from == HostState::Active {
            self.state
                .index
                .remove(host_idx, rank, &free, has_gpus, part);
            self.state.zone_active_hosts[zone] -= 1;
            let cap = self.state.hosts[host_idx as usize].spec.capacity.clone();
            self.state
                .active_capacity
                .checked_sub_assign(&cap)
                .expect("active capacity accounted");
        }
        if from == HostState::Draining {
            self.state.n_draining -= 1;
        }
        if to == HostState::Active {
            self.state
                .index
                .insert(host_idx, rank, &free, has_gpus, part);
            self.state.zone_active_hosts[zone] += 1;
            let cap = self.state.hosts[host_idx as usize].spec.capacity.clone();
            self.state
                .active_capacity
                .checked_add_assign(&cap)
                .expect("active capacity overflow");
        }
        if to == HostState::Draining {
            self.state.n_draining += 1;
        }
    }

    // ------------------------------------------------------------------- jobs

    /// A job was submitted; all its tasks are ready now.
    pub fn handle_job_submitted(
        &mut self,
        now: Timestamp,
        spec: JobSpec,
    ) -> Result<(), InputError> {
        validate_job(&spec)?;
        if self.state.jobs.contains_key(&spec.id) {
            return Err(InputError::DuplicateJob(spec.id));
        }
        let team = self.state.team_idx(&spec.team);
        let (tracks_placement, unique_group) = placement_tracking(&spec);
        let task = Task {
            phase: Phase::Pending,
            n_failures: 0,
            n_preemptions: 0,
            ready_at: now,
            started_at: None,
        };
        let n = spec.n_tasks;
        let (tier, rank) = (spec.tier, JobRank::of(&spec, now));
        let job = Job {
            spec: Arc::new(spec),
            team,
            submit_time: now,
            tasks: vec![task; n as usize],
            ready: (0..n).collect::<BTreeSet<u32>>(),
            per_host: FxHashMap::default(),
            per_zone: Vec::new(),
            unique_group,
            tracks_placement,
            pending_reasons: None,
            n_live: n,
            preempted_at: Vec::new(),
        };
        self.state.jobs.insert(rank.job, job);
        self.state.queue.insert_job(tier, team, rank);
        Ok(())
    }

    /// The owner killed the whole job: pending tasks end now, placed ones get
    /// a `Stop` action with the configured kill grace.
    pub fn handle_job_killed(&mut self, now: Timestamp, id: JobId) -> Result<(), InputError> {
        let job = self.state.job(id).ok_or(InputError::UnknownJob(id))?;
        for index in 0..job.tasks.len() as u32 {
            let task = TaskId::new(id, index);
            if !self
                .state
                .task(task)
                .expect("index in range")
                .phase
                .is_terminal()
            {
                self.handle_task_killed(now, task)?;
            }
        }
        Ok(())
    }

    /// The owner killed one task.
    pub fn handle_task_killed(&mut self, _now: Timestamp, task: TaskId) -> Result<(), InputError> {
        let phase = self.phase(task)?;
        match phase {
            Phase::Pending => {
                self.unready(task);
                self.set_phase(task, Phase::Killed);
            }
            Phase::Assigned(_) | Phase::Running(_) | Phase::Stopping(_, StopCause::Preempt) => {
                self.begin_stop(task, StopCause::Kill, self.state.config.kill_grace);
            }
            Phase::Stopping(_, StopCause::Kill) => {}
            _ => return Err(wrong_state(task, phase, "kill")),
        }
        Ok(())
    }

    /// The executor started the task.
    pub fn handle_task_started(&mut self, _now: Timestamp, task: TaskId) -> Result<(), InputError> {
        match self.phase(task)? {
            Phase::Assigned(h) => {
                self.set_phase(task, Phase::Running(h));
                Ok(())
            }
            // A start racing a stop request changes nothing.
            Phase::Running(_) | Phase::Stopping(..) => Ok(()),
            phase => Err(wrong_state(task, phase, "started")),
        }
    }

    /// The task exited successfully.
    pub fn handle_task_finished(&mut self, now: Timestamp, task: TaskId) -> Result<(), InputError> {
        match self.phase(task)? {
            Phase::Assigned(_) | Phase::Running(_) | Phase::Stopping(..) => {
                self.release(task, now);
                self.set_phase(task, Phase::Completed);
                Ok(())
            }
            phase => Err(wrong_state(task, phase, "finished")),
        }
    }

    /// The task exited with an error. It is retried after a back-off unless
    /// it used up its retries. A task that was asked to stop is treated as stopped.
    pub fn handle_task_failed(&mut self, now: Timestamp, task: TaskId) -> Result<(), InputError> {
        match self.phase(task)? {
            Phase::Assigned(_) | Phase::Running(_) => {
                self.release(task, now);
                let retry = self.state.jobs[&task.job].spec.retry.clone();
                let t = self.task_mut(task);
                t.n_failures += 1;
                let n_failures = t.n_failures;
                if n_failures > retry.max_retries {
                    self.set_phase(task, Phase::Failed);
                } else {
                    self.task_mut(task).ready_at = now.saturating_add(retry.backoff(n_failures));
                    self.requeue(task, now);
                }
                Ok(())
            }
            Phase::Stopping(..) => self.handle_task_stopped(now, task),
            phase => Err(wrong_state(task, phase, "failed")),
        }
    }

    /// A task that was asked to stop has stopped: killed tasks end, preempted
    /// ones return to the queue with their preemption count raised.
    pub fn handle_task_stopped(&mut self, now: Timestamp, task: TaskId) -> Result<(), InputError> {
        match self.phase(task)? {
            Phase::Stopping(_, StopCause::Kill) => {
                self.release(task, now);
                self.set_phase(task, Phase::Killed);
                Ok(())
            }
            Phase::Stopping(_, StopCause::Preempt) => {
                self.release(task, now);
                self.task_mut(task).n_preemptions += 1;
                self.requeue(task, now);
                Ok(())
            }
            phase => Err(wrong_state(task, phase, "stopped")),
        }
    }

    // ----------------------------------------------------------------- market

    /// Configures (or reconfigures) a market-managed pool. From now on flex
    /// work may lease its hosts only within its supply.
    pub fn handle_pool_configured(
        &mut self,
        now: Timestamp,
        spec: PoolSpec,
    ) -> Result<(), InputError> {
        if spec.id.as_str().trim().is_empty() {
            return Err(InputError::field("pool.id", "must not be empty"));
        }
        if spec.region.trim().is_empty() {
            return Err(InputError::field("pool.region", "must not be empty"));
        }
        let h = &spec.headroom;
        if !(h.daily_scaling_fraction.is_finite() && h.daily_scaling_fraction >= 0.0) {
            return Err(InputError::field(
                "pool.headroom.daily_scaling_fraction",
                "must be a finite, non-negative fraction",
            ));
        }
        if !(h.failover_multiplier.is_finite() && h.failover_multiplier >= 0.0) {
            return Err(InputError::field(
                "pool.headroom.failover_multiplier",
                "must be a finite, non-negative number",
            ));
        }
        let market = &self.state.market;
        if let Some(&idx) = market.pool_by_id.get(&spec.id) {
            let unknown = market.pools[idx as usize]
                .hosts
                .iter()
                .map(|&h| &self.state.hosts[h as usize].spec)
                .find(|h| market.catalog.get(&h.instance_type).is_none());
            if let Some(host) = unknown {
                return Err(InputError::field(
                    "pool.id",
                    format!(
                        "host {} in this pool has unknown instance type `{}`",
                        host.id, host.instance_type
                    ),
                ));
            }
        }
        self.accrue_market(now);
        let idx = self.state.market.pool_idx(&spec.id);
        self.state.market.pools[idx as usize].spec = Some(spec);
        self.state.market.recompute();
        Ok(())
    }

    /// Replaces a configured pool's reservations.
    pub fn handle_reservations(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        reservations: Vec<Reservation>,
    ) -> Result<(), InputError> {
        let idx = self.configured_pool(pool)?;
        let mut reserved = Ie::ZERO;
        for r in &reservations {
            let ie = self
                .state
                .market
                .catalog
                .ie_of(&r.instance_type)
                .map_err(|_| {
                    InputError::field(
                        "reservations.instance_type",
                        format!("unknown instance type `{}`", r.instance_type),
                    )
                })?;
            reserved += Ie::from_micro(ie.as_micro().saturating_mul(u64::from(r.count)));
        }
        self.accrue_market(now);
        let p = &mut self.state.market.pools[idx as usize];
        p.reservations = reservations;
        p.reserved = reserved;
        self.state.market.recompute();
        Ok(())
    }

    /// The IE that streaming services use in a pool now.
    pub fn handle_streaming_demand(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        demand: Ie,
    ) -> Result<(), InputError> {
        let idx = self.configured_pool(pool)?;
        self.accrue_market(now);
        self.state.market.pools[idx as usize].streaming = demand;
        self.state.market.recompute();
        Ok(())
    }

    /// A region's traffic was failed over to the other regions (`active`), or
    /// came back. While any region is failed over, reclaim is an emergency.
    pub fn handle_failover(
        &mut self,
        now: Timestamp,
        region: &str,
        active: bool,
    ) -> Result<(), InputError> {
        let known = self
            .state
            .market
            .pools
            .iter()
            .any(|p| p.spec.as_ref().is_some_and(|s| s.region == region));
        if !known {
            return Err(InputError::field(
                "region",
                format!("no configured pool is in region `{region}`"),
            ));
        }
        self.accrue_market(now);
        if active {
            self.state.market.failed_over.insert(region.to_owned());
        } else {
            self.state.market.failed_over.remove(region);
        }
        self.state.market.recompute();
        Ok(())
    }

    /// Every known pool's market figures, in pool id order.
    pub fn pools(&self) -> Vec<PoolStatus> {
        let market = &self.state.market;
        let mut out: Vec<PoolStatus> = (0..market.pools.len() as PoolIdx)
            .map(|p| market.status(p))
            .collect();
        out.sort_by(|a, b| a.pool.cmp(&b.pool));
        out
    }

    /// One pool's market figures.
    pub fn pool(&self, id: &PoolId) -> Option<PoolStatus> {
        self.state
            .market
            .pool_by_id
            .get(id)
            .map(|&p| self.state.market.status(p))
    }

    /// Per team and pool accounts, accrued up to `now`.
    pub fn ledger(&self, now: Timestamp) -> Vec<LedgerEntry> {
        let market = &self.state.market;
        market.ledger.entries(
            now,
            |t| self.state.teams[t as usize].id.clone(),
            |p| {
                (
                    market.pools[p as usize].id.clone(),
                    market.pools[p as usize].clearing_price,
                )
            },
        )
    }

    /// Per pool capacity integrated over time, accrued up to `now`.
    pub fn pool_totals(&self, now: Timestamp) -> Vec<PoolTotals> {
        let market = &self.state.market;
        let mut out: Vec<PoolTotals> = (0..market.pools.len() as PoolIdx)
            .map(|p| {
                market.ledger.pool_totals(
                    now,
                    p,
                    market.pools[p as usize].id.clone(),
                    market.snapshot(p),
                )
            })
            .collect();
        out.sort_by(|a, b| a.pool.cmp(&b.pool));
        out
    }

    /// Up to `max_hosts` suggestions of flex tasks to move so that whole
    /// leased hosts empty out (see [`crate::market::compact`]). Changes nothing;
    /// the shell may act on them or not.
    pub fn compaction_suggestions(&mut self, now: Timestamp, max_hosts: usize) -> Vec<Compaction> {
        crate::market::compact::suggest(&mut self.state, &self.pipeline, now, max_hosts)
    }

    /// The instance type catalog in use.
    pub fn catalog(&self) -> &Catalog {
        &self.state.market.catalog
    }

    fn configured_pool(&self, pool: &PoolId) -> Result<PoolIdx, InputError> {
        match self.state.market.pool_by_id.get(pool) {
            Some(&idx) if self.state.market.pools[idx as usize].spec.is_some() => Ok(idx),
            _ => Err(InputError::field(
                "pool",
                format!("unknown pool `{pool}`; configure it first"),
            )),
        }
    }

    /// Accrues every pool's capacity figures up to `now` before a market input changes them.
    /// Also forgets cached shape failures: supply may be about to grow.
    fn accrue_market(&mut self, now: Timestamp) {
        self.state.forget_failed_shapes();
        let market = &mut self.state.market;
        for p in 0..market.pools.len() as PoolIdx {
            let snapshot = market.snapshot(p);
            market.ledger.accrue_pool(now, p, snapshot);
        }
    }

    /// Starts a planned preemption if the victim is still running; records it.
    fn apply_preemption(&mut self, p: &Preemption, now: Timestamp) -> bool {
        let Some(job) = self.state.job(p.task.job) else {
            return false;
        };
        let Some(task) = job.tasks.get(p.task.index as usize) else {
            return false;
        };
        let on_host =
            matches!(task.phase, Phase::Assigned(h) | Phase::Running(h) if h == p.host_idx);
        if !on_host {
            return false;
        }
        let host = &self.state.hosts[p.host_idx as usize];
        let held = task_ie(host.ie, &job.spec.request, &host.spec.capacity);
        let lost_ms = lost_work(job, task.started_at, now).as_millis();
        let (team, pool) = (job.team, host.pool);
        self.state
            .market
            .ledger
            .preempted(team, pool, held, lost_ms, p.over_budget);
        if let PreemptCause::Reclaim { .. } = p.cause {
            self.state.hosts[p.host_idx as usize].reclaiming = true;
        }
        let job = self.state.jobs.get_mut(&p.task.job).expect("checked above");
        if let Some(budget) = &job.spec.disruption_budget {
            let horizon = now.as_millis().saturating_sub(budget.window.as_millis());
            job.preempted_at.retain(|t| t.as_millis() > horizon);
            job.preempted_at.push(now);
        }
        self.begin_stop(p.task, StopCause::Preempt, p.grace);
        true
    }

    // ----------------------------------------------------------------- rounds

    /// Plans a round at `now`. Time-driven transitions due by `now` (retry
    /// back-offs ending) are applied first; they do not depend on the plan.
    /// The plan itself changes nothing until [`Scheduler::commit`].
    pub fn plan_round(&mut self, now: Timestamp) -> Plan {
        if self.plan_outstanding {
            // The last plan was dropped: shape failures it cached assumed its placements.
            self.state.forget_failed_shapes();
        }
        self.plan_outstanding = true;
        self.advance(now);
        self.n_rounds += 1;
        let span =
            tracing::debug_span!("round", round = self.n_rounds, now = now.as_millis()).entered();
        let plan = Planner::new(&mut self.state, &self.pipeline, now).run(self.n_rounds);
        tracing::debug!(
            parent: &span,
            n_placed = plan.stats.n_placed,
            n_unplaced = plan.stats.n_unplaced,
            n_jobs = plan.stats.n_jobs_considered,
            n_hosts_examined = plan.stats.n_hosts_examined,
            "round planned"
        );
        plan
    }

    /// Applies a plan: each assignment is re-checked against the current
    /// state (inputs may have arrived since planning) and applied, or refused
    /// with a reason; a gang job's assignments are applied all or none.
    /// Unplaced jobs record their pending reasons. Queues `Launch` actions.
    pub fn commit(&mut self, plan: Plan) -> CommitReport {
        self.plan_outstanding = false;
        let mut report = CommitReport::default();
        // Preemptions first: a reclaimed host must not take the plan's new flex work.
        for p in &plan.preemptions {
            if self.apply_preemption(p, plan.now) {
                report.n_preempted += 1;
            }
        }
        let mut i = 0;
        while i < plan.assignments.len() {
            // A run of assignments of one gang job commits as a unit.
            let job = plan.assignments[i].task.job;
            let is_gang = self.state.job(job).is_some_and(|j| j.spec.gang);
            let end = if is_gang {
                i + plan.assignments[i..]
                    .iter()
                    .take_while(|a| a.task.job == job)
                    .count()
            } else {
                i + 1
            };
            let run = &plan.assignments[i..end];
            let mut applied = Vec::with_capacity(run.len());
            let mut refusal = None;
            for a in run {
                match self.validate(a) {
                    Ok(()) => {
                        self.assign(a.task, a.host_idx, plan.now);
                        applied.push(a.task);
                    }
                    Err(why) => {
                        refusal = Some((a.task, why));
                        break;
                    }
                }
            }
            match refusal {
                None => report.n_applied += applied.len() as u32,
                Some((task, why)) if is_gang => {
                    for t in applied {
                        self.unassign(t, plan.now);
                    }
                    for a in run {
                        report
                            .rejected
                            .push((a.task, format!("gang member {task} refused: {why}")));
                    }
                }
                Some((task, why)) => report.rejected.push((task, why)),
            }
            i = end;
        }
        for a in &plan.assignments {
            if let Some(job) = self.state.jobs.get_mut(&a.task.job) {
                job.pending_reasons = None;
            }
        }
        for u in &plan.unplaced {
            if let Some(job) = self.state.jobs.get_mut(&u.job) {
                job.pending_reasons = Some(u.reasons.clone());
            }
        }
        for (pool, price) in &plan.prices {
            if let Some(&idx) = self.state.market.pool_by_id.get(pool) {
                let market = &mut self.state.market;
                let old = market.pools[idx as usize].clearing_price;
                if old != *price {
                    market.ledger.accrue_pool_accounts(plan.now, idx, old);
                    market.pools[idx as usize].clearing_price = *price;
                }
            }
        }
        if !report.rejected.is_empty() || report.n_preempted as usize != plan.preemptions.len() {
            // The state is looser than the plan assumed.
            self.state.forget_failed_shapes();
        }
        report
    }

    /// Plans and commits a round in one step, for shells that persist nothing
    /// in between (the simulator, tests).
    pub fn run_round(&mut self, now: Timestamp) -> (Plan, CommitReport) {
        let plan = self.plan_round(now);
        let report = self.commit(plan.clone());
        (plan, report)
    }

    /// The next queued action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next instant at which the core has time-driven work (a retry
    /// back-off ends), if any: the shell should run a round then.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.state.queue.next_ready_at()
    }

    // ---------------------------------------------------------------- queries

    /// A task's snapshot.
    pub fn task(&self, id: TaskId) -> Option<TaskView> {
        let job = self.state.job(id.job)?;
        let t = job.tasks.get(id.index as usize)?;
        let host_id = |h: HostIdx| self.state.hosts[h as usize].spec.id.clone();
        let state = match t.phase {
            Phase::Pending => TaskState::Pending,
            Phase::Assigned(h) => TaskState::Assigned { host: host_id(h) },
            Phase::Running(h) => TaskState::Running { host: host_id(h) },
            Phase::Stopping(h, cause) => TaskState::Stopping {
                host: host_id(h),
                cause,
            },
            Phase::Completed => TaskState::Completed,
            Phase::Failed => TaskState::Failed,
            Phase::Killed => TaskState::Killed,
        };
        let pending_reasons = job
            .ready
            .contains(&id.index)
            .then(|| job.pending_reasons.clone())
            .flatten();
        Some(TaskView {
            id,
            state,
            n_failures: t.n_failures,
            n_preemptions: t.n_preemptions,
            ready_at: t.ready_at,
            started_at: t.started_at,
            pending_reasons,
        })
    }

    /// A job's spec, or `None` if unknown.
    pub fn job_spec(&self, id: JobId) -> Option<&Arc<JobSpec>> {
        self.state.job(id).map(|j| &j.spec)
    }

    /// A job's task counts by state.
    pub fn job_counts(&self, id: JobId) -> Option<JobCounts> {
        let job = self.state.job(id)?;
        let mut c = JobCounts::default();
        for t in &job.tasks {
            match t.phase {
                Phase::Pending => c.pending += 1,
                Phase::Assigned(_) | Phase::Running(_) => c.running += 1,
                Phase::Stopping(..) => c.stopping += 1,
                Phase::Completed => c.completed += 1,
                Phase::Failed => c.failed += 1,
                Phase::Killed => c.killed += 1,
            }
        }
        Some(c)
    }

    /// Why a job's ready tasks were not placed in the last committed round.
    pub fn job_pending_reasons(&self, id: JobId) -> Option<Arc<PendingReasons>> {
        self.state.job(id)?.pending_reasons.clone()
    }

    /// Ids of all known jobs, in id order.
    pub fn job_ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.state.jobs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// A host, if known and not lost.
    pub fn host(&self, id: &HostId) -> Option<&Host> {
        self.state
            .host_by_id
            .get(id)
            .map(|&h| &self.state.hosts[h as usize])
    }

    /// Every known host that is not lost, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.state
            .hosts
            .iter()
            .filter(|h| h.state != HostState::Lost)
    }

    /// Fleet-wide totals.
    pub fn totals(&self) -> Totals {
        Totals {
            n_hosts_active: self.state.index.len() as u32,
            n_hosts_draining: self.state.n_draining,
            active_capacity: self.state.active_capacity.clone(),
            allocated: self.state.allocated.clone(),
            n_jobs_queued: Tier::ALL
                .iter()
                .map(|t| self.state.queue.n_jobs(*t) as u32)
                .sum(),
            n_tasks_backing_off: self.state.queue.n_delayed() as u32,
        }
    }

    /// Per team and tier: resources its placed tasks hold (the DRF input).
    pub fn team_allocations(&self) -> Vec<(TeamId, Tier, Resources)> {
        let mut out = Vec::new();
        for team in &self.state.teams {
            for tier in Tier::ALL {
                out.push((team.id.clone(), tier, team.allocated[tier.index()].clone()));
            }
        }
        out.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
        out
    }

    /// Rounds planned so far.
    pub fn n_rounds(&self) -> u64 {
        self.n_rounds
    }

    // -------------------------------------------------------------- internals

    /// A host's IE from the catalog. An unknown instance type is an error in
    /// a market-managed pool and counts as zero elsewhere.
    fn host_ie(&self, spec: &HostSpec, pool: PoolIdx) -> Result<Ie, InputError> {
        match self.state.market.catalog.ie_of(&spec.instance_type) {
            Ok(ie) => Ok(ie),
            Err(e) if self.state.market.pools[pool as usize].spec.is_some() => Err(e),
            Err(_) => Ok(Ie::ZERO),
        }
    }

    fn host_idx(&self, id: &HostId) -> Result<HostIdx, InputError> {
        self.state
            .host_by_id
            .get(id)
            .copied()
            .ok_or_else(|| InputError::UnknownHost(id.clone()))
    }

    fn phase(&self, task: TaskId) -> Result<Phase, InputError> {
        self.state
            .task(task)
            .map(|t| t.phase)
            .ok_or(InputError::UnknownTask(task))
    }

    fn task_mut(&mut self, task: TaskId) -> &mut Task {
        &mut self
            .state
            .jobs
            .get_mut(&task.job)
            .expect("task exists")
            .tasks[task.index as usize]
    }

    fn set_phase(&mut self, task: TaskId, phase: Phase) {
        let job = self.state.jobs.get_mut(&task.job).expect("task exists");
        let was_terminal = job.tasks[task.index as usize].phase.is_terminal();
        job.tasks[task.index as usize].phase = phase;
        if phase.is_terminal() && !was_terminal {
            job.n_live -= 1;
        }
    }

    /// Promotes tasks whose back-off ended by `now`.
    fn advance(&mut self, now: Timestamp) {
        while let Some(task) = self.state.queue.pop_due(now) {
            self.make_ready(task);
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
            if job.ready.is_empty() {
                let (tier, team, rank) = (
                    job.spec.tier,
                    job.team,
                    JobRank::of(&job.spec, job.submit_time),
                );
                self.state.queue.remove_job(tier, team, &rank);
            }
        } else {
            self.state.queue.cancel_delay(&task);
        }
    }

    /// Puts a task back in the queue: ready now, or after its `ready_at`.
    fn requeue(&mut self, task: TaskId, now: Timestamp) {
        self.set_phase(task, Phase::Pending);
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
        let host_idx = self
            .state
            .task(task)
            .and_then(|t| t.phase.host())
            .expect("released task is placed");
        self.state.uncharge(task.job, host_idx, now);
        let tasks = &mut self.state.hosts[host_idx as usize].tasks;
        let pos = tasks
            .iter()
            .position(|t| *t == task)
            .expect("host lists its tasks");
        tasks.swap_remove(pos);
    }

    /// Asks the executor to stop a placed task; it keeps its resources until it stops.
    pub(crate) fn begin_stop(&mut self, task: TaskId, cause: StopCause, grace: DurationMs) {
        let host_idx = self
            .state
            .task(task)
            .and_then(|t| t.phase.host())
            .expect("stopped task is placed");
        self.set_phase(task, Phase::Stopping(host_idx, cause));
        let host = self.state.hosts[host_idx as usize].spec.id.clone();
        self.actions.push_back(Action::Stop {
            task,
            host,
            grace,
            cause,
        });
    }

    fn validate(&self, a: &crate::round::Assignment) -> Result<(), String> {
        let job = self.state.job(a.task.job).ok_or("job no longer exists")?;
        let task = job
            .tasks
            .get(a.task.index as usize)
            .ok_or("task no longer exists")?;
        if task.phase != Phase::Pending || !job.ready.contains(&a.task.index) {
            return Err(format!("task is {}, no longer ready", task.phase.name()));
        }
        let host = self
            .state
            .hosts
            .get(a.host_idx as usize)
            .ok_or("host no longer exists")?;
        if host.spec.id != a.host || host.state == HostState::Lost {
            return Err(format!("host {} is gone", a.host));
        }
        self.pipeline
            .check(&self.state, job, a.host_idx)
            .map_err(|r: Reason| r.to_string())
    }

    fn assign(&mut self, task: TaskId, host_idx: HostIdx, now: Timestamp) {
        self.unready(task);
        self.state.charge(task.job, host_idx, now);
        self.state.hosts[host_idx as usize].tasks.push(task);
        self.set_phase(task, Phase::Assigned(host_idx));
        self.task_mut(task).started_at = Some(now);
        let host = self.state.hosts[host_idx as usize].spec.id.clone();
        let request = self.state.jobs[&task.job].spec.request.clone();
        self.actions.push_back(Action::Launch {
            task,
            host,
            request,
        });
    }

    /// Reverses [`Scheduler::assign`] (a gang member's commit was refused).
    fn unassign(&mut self, task: TaskId, now: Timestamp) {
        self.release(task, now);
        self.task_mut(task).started_at = None;
        self.requeue(task, now);
        let launch_pos = self
            .actions
            .iter()
            .rposition(|a| matches!(a, Action::Launch { task: t, .. } if *t == task));
        if let Some(pos) = launch_pos {
            self.actions.remove(pos);
        }
    }
}

fn wrong_state(task: TaskId, phase: Phase, event: &'static str) -> InputError {
    InputError::WrongTaskState {
        task,
        state: phase.name(),
        event,
    }
}

fn validate_host(spec: &HostSpec) -> Result<(), InputError> {
    if spec.id.as_str().trim().is_empty() {
        return Err(InputError::field("id", "must not be empty"));
    }
    if spec.pool.as_str().trim().is_empty() {
        return Err(InputError::field("pool", "must not be empty"));
    }
    if spec.zone.trim().is_empty() {
        return Err(InputError::field("zone", "must not be empty"));
    }
    if spec.capacity.cpu_millis == 0 {
        return Err(InputError::field(
            "capacity.cpu_millis",
            "must be greater than zero",
        ));
    }
    if spec.capacity.memory_mib == 0 {
        return Err(InputError::field(
            "capacity.memory_mib",
            "must be greater than zero",
        ));
    }
    if spec.capacity.gpus > 0
        && spec
            .gpu_model
            .as_deref()
            .is_none_or(|m| m.trim().is_empty())
    {
        return Err(InputError::field(
            "gpu_model",
            "required when capacity.gpus > 0",
        ));
    }
    Ok(())
}

fn validate_job(spec: &JobSpec) -> Result<(), InputError> {
    if spec.team.as_str().trim().is_empty() {
        return Err(InputError::field("team", "must not be empty"));
    }
    if spec.n_tasks == 0 || spec.n_tasks > MAX_TASKS_PER_JOB {
        return Err(InputError::field(
            "n_tasks",
            format!("must be between 1 and {MAX_TASKS_PER_JOB}"),
        ));
    }
    if spec.request.cpu_millis == 0 && spec.request.memory_mib == 0 {
        return Err(InputError::field(
            "request",
            "must ask for some cpu_millis or memory_mib",
        ));
    }
    if let Some(bid) = spec.bid
        && !(bid.per_ie_hour().is_finite() && bid.per_ie_hour() >= 0.0)
    {
        return Err(InputError::field(
            "bid",
            "must be a finite, non-negative price per IE-hour",
        ));
    }
    for (field, list) in [
        ("hard_constraints", &spec.hard_constraints),
        ("soft_constraints", &spec.soft_constraints),
    ] {
        for c in list {
            validate_constraint(field, c)?;
        }
    }
    if spec.retry.initial_backoff > spec.retry.max_backoff {
        return Err(InputError::field(
            "retry.initial_backoff",
            "must not exceed retry.max_backoff",
        ));
    }
    if let Some(b) = &spec.disruption_budget {
        if b.window == DurationMs::ZERO {
            return Err(InputError::field(
                "disruption_budget.window",
                "must be greater than zero",
            ));
        }
        if let crate::job::BudgetLimit::MaxPercent(p) = b.limit
            && p > 100
        {
            return Err(InputError::field(
                "disruption_budget.limit",
                "a percentage must be at most 100",
            ));
        }
    }
    if spec.checkpoint_interval == Some(DurationMs::ZERO) {
        return Err(InputError::field(
            "checkpoint_interval",
            "must be greater than zero when set",
        ));
    }
    Ok(())
}

fn validate_constraint(field: &'static str, c: &Constraint) -> Result<(), InputError> {
    match c {
        Constraint::AttributeEquals { key, .. } | Constraint::AttributeIn { key, .. }
            if key.trim().is_empty() =>
        {
            Err(InputError::field(
                field,
                "attribute constraint with an empty key",
            ))
        }
        Constraint::AttributeIn { values, .. } if values.is_empty() => Err(InputError::field(
            field,
            "attribute_in constraint with no values",
        )),
        Constraint::UniqueHost { group: Some(g) } if g.trim().is_empty() => Err(InputError::field(
            field,
            "unique_host group must not be empty when set",
        )),
        Constraint::GpuModel(m) if m.trim().is_empty() => {
            Err(InputError::field(field, "gpu_model must not be empty"))
        }
        _ => Ok(()),
    }
}
