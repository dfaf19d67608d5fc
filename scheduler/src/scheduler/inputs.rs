//! Inputs: hosts, jobs, executor reports, market figures and ticks. Each
//! validates first and changes nothing when it refuses.

use crate::model::host::Host;
use crate::model::job::{Job, Phase, StopCause};
use crate::policy::preempt::lost_work;
use crate::scheduler::events::{EventKind, MarketInput};
use crate::scheduler::validate::{validate_host, validate_job, validate_pool};
use crate::scheduler::{Scheduler, validate};
use crate::spec::error::InputError;
use crate::spec::host::{HostSpec, HostState};
use crate::spec::job::JobSpec;
use crate::spec::market::{PoolSpec, Reservation};
use crate::units::ids::{HostId, HostIdx, JobId, PoolId, PoolIdx, RunId, TaskId};
use crate::units::ie::Ie;
use crate::units::resources::Resources;
use crate::units::time::Timestamp;

impl Scheduler {
    // ------------------------------------------------------------------ hosts

    /// A host joined the fleet, active.
    pub fn handle_host_added(&mut self, now: Timestamp, spec: HostSpec) -> Result<(), InputError> {
        self.input(now, |s| {
            validate_host(&spec)?;
            if s.state.hosts.idx(&spec.id).is_some() {
                return Err(InputError::DuplicateHost(spec.id));
            }
            let ie = s.host_ie(&spec)?;
            let st = &mut s.state;
            let pool = st.market.pool_idx(&spec.pool);
            let rank = st.rank_of(st.n_hosts_added);
            st.n_hosts_added += 1;
            let zone = st.zone_idx(&spec.zone);
            let h = st.hosts.insert(Host {
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
                returning: None,
                flex_shares: Vec::new(),
                flex_share_total: 0,
            });
            let p = &mut st.market.pools[pool.get()];
            p.hosts.insert(h);
            p.n_hosts += 1;
            p.min_host_ie = Some(p.min_host_ie.map_or(ie, |m| m.min(ie)));
            st.n_draining += 1;
            s.set_host_state(h, HostState::Active, now);
            Ok(())
        })
    }

    /// A host's capacity, attributes or GPU model changed. Its pool and zone cannot change.
    pub fn handle_host_updated(
        &mut self,
        now: Timestamp,
        spec: HostSpec,
    ) -> Result<(), InputError> {
        self.input(now, |s| {
            validate_host(&spec)?;
            let h = s.host_idx(&spec.id)?;
            let host = &s.state.hosts[h];
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
            let ie = s.host_ie(&spec)?;
            // Take every task off, swap the spec, put them back: the index, the
            // market lease and the ledger holdings then follow the new capacity.
            let host = &s.state.hosts[h];
            let state = host.state;
            let tasks = host.tasks.clone();
            s.state.forget_failed_shapes();
            s.set_host_state(h, HostState::Draining, now);
            s.state.charge(h, &tasks, false, now);
            let host = &mut s.state.hosts[h];
            host.spec = spec;
            host.ie = ie;
            let pool = &mut s.state.market.pools[host.pool.get()];
            pool.min_host_ie = Some(pool.min_host_ie.map_or(ie, |m| m.min(ie)));
            s.state.charge(h, &tasks, true, now);
            s.set_host_state(h, state, now);
            Ok(())
        })
    }

    /// A host stops accepting new work; its tasks keep running.
    pub fn handle_host_draining(&mut self, now: Timestamp, id: &HostId) -> Result<(), InputError> {
        self.input(now, |s| {
            let h = s.host_idx(id)?;
            s.set_host_state(h, HostState::Draining, now);
            Ok(())
        })
    }

    /// A draining host accepts work again.
    pub fn handle_host_activated(&mut self, now: Timestamp, id: &HostId) -> Result<(), InputError> {
        self.input(now, |s| {
            let h = s.host_idx(id)?;
            s.set_host_state(h, HostState::Active, now);
            Ok(())
        })
    }

    /// A host is gone. Its tasks return to the queue as lost (not failed: no
    /// retry is used up); tasks that were being killed end killed; tasks that
    /// were being preempted count as preempted. The host's slot is freed.
    /// Returns the requeued tasks.
    pub fn handle_host_lost(
        &mut self,
        now: Timestamp,
        id: &HostId,
    ) -> Result<Vec<TaskId>, InputError> {
        self.input(now, |s| {
            let h = s.host_idx(id)?;
            let tasks = s.state.hosts[h].tasks.clone();
            let mut requeued = Vec::new();
            for task in tasks {
                let phase = s.state.task(task).expect("hosted task exists").phase;
                match phase {
                    Phase::Stopping {
                        cause: StopCause::Kill,
                        ..
                    } => {
                        s.release(task, now);
                        s.set_phase(task, Phase::Killed, now);
                    }
                    Phase::Stopping { .. } => {
                        s.stopped(task, now);
                        requeued.push(task);
                    }
                    _ => {
                        s.release(task, now);
                        s.requeue(task, now);
                        requeued.push(task);
                        s.restart_gang(task, now);
                    }
                }
            }
            s.set_host_state(h, HostState::Lost, now);
            let host = s.state.hosts.remove(h);
            let pool = &mut s.state.market.pools[host.pool.get()];
            pool.hosts.remove(&h);
            pool.n_hosts = pool.n_hosts.checked_sub(1).expect("pool host count");
            Ok(requeued)
        })
    }

    /// Moves a host between lifecycle states, keeping the index, zone counts
    /// and active capacity in step.
    pub(super) fn set_host_state(&mut self, h: HostIdx, to: HostState, now: Timestamp) {
        let st = &mut self.state;
        let host = &st.hosts[h];
        let from = host.state;
        if from == to {
            return;
        }
        // A host joining frees room; one leaving changes every reason count.
        st.forget_failed_shapes();
        let host = &st.hosts[h];
        let (free, rank, has_gpus, zone, part, cap) = (
            host.free(),
            host.rank,
            host.has_gpus(),
            host.zone.get(),
            host.index_part(),
            host.spec.capacity.clone(),
        );
        st.hosts[h].state = to;
        if from == HostState::Active {
            st.index.remove(h, rank, &free, has_gpus, part);
            st.zone_active_hosts[zone] -= 1;
            st.active_capacity
                .checked_sub_assign(&cap)
                .expect("active capacity accounted");
        }
        if from == HostState::Draining {
            st.n_draining = st.n_draining.checked_sub(1).expect("draining count");
        }
        if to == HostState::Active {
            st.index.insert(h, rank, &free, has_gpus, part);
            st.zone_active_hosts[zone] += 1;
            st.active_capacity
                .checked_add_assign(&cap)
                .expect("active capacity overflow");
        }
        if to == HostState::Draining {
            st.n_draining += 1;
        }
        let id = st.hosts[h].spec.id.clone();
        self.emit(now, || EventKind::HostChanged {
            host: id,
            state: to,
        });
    }

    // ------------------------------------------------------------------- jobs

    /// A job was submitted; all its tasks are ready now. Returns the job's
    /// id: `spec.id`, or, for a resubmission with a request key the team
    /// already used for an identical spec, the id of that existing job.
    pub fn handle_job_submitted(
        &mut self,
        now: Timestamp,
        spec: JobSpec,
    ) -> Result<JobId, InputError> {
        self.input(now, |s| {
            validate_job(&spec)?;
            if let Some(key) = &spec.request_key {
                let team = s.state.team_by_id.get(&spec.team).copied();
                if let Some(existing) =
                    team.and_then(|t| s.state.request_keys.get(&(t, key.clone())).copied())
                {
                    let old = &s.state.jobs[&existing].spec;
                    if old.same_request_as(&spec) {
                        return Ok(existing);
                    }
                    return Err(InputError::RequestKeyConflict {
                        team: spec.team.clone(),
                        key: key.clone(),
                        existing,
                    });
                }
            }
            if s.state.jobs.contains_key(&spec.id) {
                return Err(InputError::DuplicateJob(spec.id));
            }
            let st = &mut s.state;
            let team = st.team_idx(&spec.team);
            let id = spec.id;
            if let Some(key) = &spec.request_key {
                st.request_keys.insert((team, key.clone()), id);
            }
            let (tier, rank, n_tasks, team_id) = (
                spec.tier,
                crate::model::queue::JobRank::of(&spec, now),
                spec.n_tasks,
                spec.team.clone(),
            );
            st.jobs.insert(id, Job::new(spec, team, now));
            st.job_order.insert(id);
            st.teams[team.get()].jobs.insert(id);
            st.queue.insert_job(tier, team, rank);
            s.emit(now, || EventKind::JobAccepted {
                job: id,
                team: team_id,
                n_tasks,
            });
            Ok(id)
        })
    }

    /// The owner killed the whole job: pending tasks end now, placed ones get
    /// a `Stop` action with the configured kill grace.
    pub fn handle_job_killed(&mut self, now: Timestamp, id: JobId) -> Result<(), InputError> {
        self.input(now, |s| {
            let job = s.state.job(id).ok_or(InputError::UnknownJob(id))?;
            for index in 0..job.tasks.len() as u32 {
                s.kill_task(TaskId::new(id, index), now);
            }
            Ok(())
        })
    }

    /// The owner killed one task.
    pub fn handle_task_killed(&mut self, now: Timestamp, task: TaskId) -> Result<(), InputError> {
        self.input(now, |s| {
            let phase = s.phase(task)?;
            if phase.is_terminal() {
                return Err(wrong_state(task, phase, "kill"));
            }
            s.kill_task(task, now);
            Ok(())
        })
    }

    fn kill_task(&mut self, task: TaskId, now: Timestamp) {
        let phase = self.state.task(task).expect("task exists").phase;
        match phase {
            Phase::Pending => {
                self.unready(task);
                self.set_phase(task, Phase::Killed, now);
            }
            Phase::Assigned(_)
            | Phase::Running(_)
            | Phase::Stopping {
                cause: StopCause::Preempt | StopCause::Restart,
                ..
            } => {
                let grace = self.state.config.kill_grace;
                self.begin_stop(task, StopCause::Kill, false, grace, now);
            }
            _ => {} // already being killed, or ended
        }
    }

    /// The executor started the run.
    pub fn handle_task_started(&mut self, now: Timestamp, run: RunId) -> Result<(), InputError> {
        self.input(now, |s| match s.current_phase(run, "started")? {
            Phase::Assigned(h) => {
                s.state.task_mut(run.task).started_at = Some(now);
                s.set_phase(run.task, Phase::Running(h), now);
                Ok(())
            }
            // A duplicate report, or a start racing a stop request: the run is
            // already past it. The start time still counts for lost work.
            Phase::Running(_) => Ok(()),
            Phase::Stopping { .. } => {
                let t = s.state.task_mut(run.task);
                t.started_at.get_or_insert(now);
                Ok(())
            }
            phase => Err(wrong_state(run.task, phase, "started")),
        })
    }

    /// The run exited successfully.
    pub fn handle_task_finished(&mut self, now: Timestamp, run: RunId) -> Result<(), InputError> {
        self.input(now, |s| match s.current_phase(run, "finished")? {
            Phase::Assigned(_) | Phase::Running(_) | Phase::Stopping { .. } => {
                // A victim that finishes within its grace period lost nothing.
                s.release(run.task, now);
                s.set_phase(run.task, Phase::Completed, now);
                Ok(())
            }
            phase => Err(wrong_state(run.task, phase, "finished")),
        })
    }

    /// The run exited with an error. The task is retried after a back-off
    /// unless it used up its retries. A run that was asked to stop is
    /// treated as stopped.
    pub fn handle_task_failed(&mut self, now: Timestamp, run: RunId) -> Result<(), InputError> {
        self.input(now, |s| match s.current_phase(run, "failed")? {
            Phase::Assigned(_) | Phase::Running(_) => {
                let task = run.task;
                s.release(task, now);
                let retry = s.state.jobs[&task.job].spec.retry.clone();
                let t = s.state.task_mut(task);
                t.n_failures += 1;
                if t.n_failures > retry.max_retries {
                    s.set_phase(task, Phase::Failed, now);
                } else {
                    t.ready_at = now.saturating_add(retry.backoff(t.n_failures));
                    s.requeue(task, now);
                }
                s.restart_gang(task, now);
                Ok(())
            }
            Phase::Stopping { .. } => {
                s.stopped(run.task, now);
                Ok(())
            }
            phase => Err(wrong_state(run.task, phase, "failed")),
        })
    }

    /// A run that was asked to stop has stopped: killed tasks end, preempted
    /// ones return to the queue with their preemption count raised, and the
    /// work they lost since their last checkpoint is booked to their team.
    pub fn handle_task_stopped(&mut self, now: Timestamp, run: RunId) -> Result<(), InputError> {
        self.input(now, |s| match s.current_phase(run, "stopped")? {
            Phase::Stopping { .. } => {
                s.stopped(run.task, now);
                Ok(())
            }
            phase => Err(wrong_state(run.task, phase, "stopped")),
        })
    }

    /// The executor no longer has the run (it never started it, or lost it
    /// across a restart, or reconciliation found no container for it). The
    /// task returns to the queue like a task of a lost host: no retry is used
    /// up; a run being killed ends killed, one being preempted counts as
    /// preempted.
    pub fn handle_task_lost(&mut self, now: Timestamp, run: RunId) -> Result<(), InputError> {
        self.input(now, |s| {
            let phase = s.current_phase(run, "lost")?;
            let task = run.task;
            match phase {
                Phase::Stopping { .. } => s.stopped(task, now),
                _ => {
                    s.release(task, now);
                    s.requeue(task, now);
                    s.restart_gang(task, now);
                }
            }
            Ok(())
        })
    }

    fn stopped(&mut self, task: TaskId, now: Timestamp) {
        let Phase::Stopping {
            host,
            cause,
            over_budget,
        } = self.state.task(task).expect("task exists").phase
        else {
            unreachable!("only stopping tasks stop");
        };
        match cause {
            StopCause::Kill => {
                self.release(task, now);
                self.set_phase(task, Phase::Killed, now);
            }
            StopCause::Preempt => {
                self.book_preemption(task, host, over_budget, now);
                self.release(task, now);
                self.state.task_mut(task).n_preemptions += 1;
                self.requeue(task, now);
            }
            StopCause::Restart => {
                self.release(task, now);
                self.requeue(task, now);
            }
        }
    }

    /// A member of a gang job left its host without finishing (lost,
    /// failed): the gang runs whole or not at all, so every other member
    /// still running is stopped too, to be requeued with it.
    pub(super) fn restart_gang(&mut self, task: TaskId, now: Timestamp) {
        self.stop_gang(task, StopCause::Restart, false, now);
    }

    /// Stops every other live member of `task`'s gang with `cause`; returns them.
    pub(super) fn stop_gang(
        &mut self,
        task: TaskId,
        cause: StopCause,
        over_budget: bool,
        now: Timestamp,
    ) -> Vec<TaskId> {
        let job = &self.state.jobs[&task.job];
        if !job.spec.gang {
            return Vec::new();
        }
        let others: Vec<TaskId> = (0..job.tasks.len() as u32)
            .filter(|&i| i != task.index && job.tasks[i as usize].phase.is_live_run())
            .map(|i| TaskId::new(task.job, i))
            .collect();
        let grace = self.state.market.config.preempt_grace;
        for &t in &others {
            self.begin_stop(t, cause, over_budget, grace, now);
        }
        others
    }

    /// Books a preempted run's lost work (since its last checkpoint, up to
    /// `now`, when it actually stopped) to its team's account.
    fn book_preemption(&mut self, task: TaskId, h: HostIdx, over_budget: bool, now: Timestamp) {
        let st = &mut self.state;
        let job = &st.jobs[&task.job];
        let host = &st.hosts[h];
        let share = crate::model::ledger::dominant_ppm(&job.spec.request, &host.spec.capacity);
        let held = crate::model::ledger::held_ie(host.ie, share, host.flex_share_total);
        let lost_ms = lost_work(job, job.tasks[task.index as usize].started_at, now).as_millis();
        let key = (job.team, host.pool, job.spec.bid);
        st.market.ledger.preempted(key, held, lost_ms, over_budget);
    }

    /// The phase of the run's task, if `run` is its current run.
    fn current_phase(&self, run: RunId, event: &'static str) -> Result<Phase, InputError> {
        let t = self
            .state
            .task(run.task)
            .ok_or(InputError::UnknownTask(run.task))?;
        if t.attempt != run.attempt || t.phase.host().is_none() {
            if t.attempt == run.attempt && t.phase.is_terminal() {
                return Err(wrong_state(run.task, t.phase, event));
            }
            return Err(InputError::StaleRun {
                run,
                task: run.task,
                state: t.phase.name(),
                current: run.task.run(t.attempt),
            });
        }
        Ok(t.phase)
    }

    /// Forgets jobs that finished before `finished_before` (a retention the
    /// shell chooses), so that memory stays flat while jobs come and go.
    /// Returns the forgotten jobs.
    pub fn handle_forget_finished(
        &mut self,
        now: Timestamp,
        finished_before: Timestamp,
    ) -> Result<Vec<JobId>, InputError> {
        self.input(now, |s| {
            let st = &mut s.state;
            let due: Vec<(Timestamp, JobId)> = st
                .finished
                .range(..(finished_before, JobId(0)))
                .copied()
                .collect();
            let mut out = Vec::with_capacity(due.len());
            for key in due {
                st.finished.remove(&key);
                let id = key.1;
                let job = st.jobs.remove(&id).expect("finished job exists");
                debug_assert_eq!(job.n_placed, 0, "a finished job holds no host");
                st.job_order.remove(&id);
                st.teams[job.team.get()].jobs.remove(&id);
                if let Some(k) = &job.spec.request_key {
                    st.request_keys.remove(&(job.team, k.clone()));
                }
                out.push(id);
            }
            for &job in &out {
                s.emit(now, || EventKind::JobForgotten { job });
            }
            Ok(out)
        })
    }

    // ------------------------------------------------------------------- time

    /// Applies the time-driven transitions due by `now`: retry back-offs that
    /// ended make their tasks ready, and reservations that started or ended
    /// change their pools' supply (accrued exactly at their boundary).
    /// Returns true if anything changed.
    pub fn handle_tick(&mut self, now: Timestamp) -> Result<bool, InputError> {
        self.check_time(now)?;
        let mut changed = false;
        while let Some(task) = self.state.queue.pop_due(now) {
            self.make_ready(task);
            changed = true;
        }
        while let Some(b) = self
            .state
            .market
            .next_reservation_change(self.state.market.reserved_at)
            .filter(|b| *b <= now)
        {
            self.state.forget_failed_shapes();
            let before: Vec<Ie> = self.state.market.pools.iter().map(|p| p.reserved).collect();
            self.state.market.refresh_reservations(b);
            for (i, old) in before.into_iter().enumerate() {
                let p = &self.state.market.pools[i];
                if p.reserved != old {
                    let (pool, reserved) = (p.id.clone(), p.reserved);
                    self.emit(b, || EventKind::MarketInput {
                        input: MarketInput::Reserved { pool, reserved },
                    });
                }
            }
            changed = true;
        }
        self.state.market.reserved_at = self.state.market.reserved_at.max(now);
        // Forecast checks look ahead from `now`: a shape that failed against
        // an earlier window may fit in a later one.
        let any_forecast = (0..self.state.market.pools.len())
            .any(|p| self.state.market.has_forecast(PoolIdx::from_usize(p), now));
        if any_forecast {
            self.state.forget_failed_shapes();
        }
        if self.state.budget_wakeup.is_some_and(|w| w <= now) {
            self.state.budget_wakeup = None;
            changed = true;
        }
        self.state.last_now = now;
        if changed {
            self.state.generation += 1;
        }
        Ok(changed)
    }

    // ----------------------------------------------------------------- market

    /// Configures (or reconfigures) a market-managed pool. From now on flex
    /// work may lease its hosts only within its supply.
    pub fn handle_pool_configured(
        &mut self,
        now: Timestamp,
        spec: PoolSpec,
    ) -> Result<(), InputError> {
        self.input(now, |s| {
            validate_pool(&spec)?;
            let market = &s.state.market;
            if let Some(&idx) = market.pool_by_id.get(&spec.id) {
                let unknown = market.pools[idx.get()]
                    .hosts
                    .iter()
                    .map(|&h| &s.state.hosts[h].spec)
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
            s.accrue_market(now);
            let pool = spec.id.clone();
            let idx = s.state.market.pool_idx(&spec.id);
            s.state.market.pools[idx.get()].spec = Some(spec);
            s.state.market.recompute();
            s.emit(now, || EventKind::MarketInput {
                input: MarketInput::PoolConfigured { pool },
            });
            Ok(())
        })
    }

    /// Adds instance types the catalog lacks (e.g. described by EC2), so
    /// hosts and reservations of those types can be counted in IE. A type the
    /// catalog already has with other facts is refused, naming it: changing
    /// a known type's IE would silently revalue hosts and reservations
    /// already counted. Returns how many types were new.
    pub fn handle_instance_types(
        &mut self,
        now: Timestamp,
        types: Vec<crate::spec::catalog::InstanceType>,
    ) -> Result<usize, InputError> {
        self.input(now, |s| {
            let catalog = &s.state.market.catalog;
            let mut new = Vec::new();
            for t in types {
                match catalog.get(&t.name) {
                    Some(known) if *known == t => {}
                    Some(_) => {
                        return Err(InputError::field(
                            "instance_types",
                            format!("`{}` is already in the catalog with other facts", t.name),
                        ));
                    }
                    None if new
                        .iter()
                        .any(|n: &crate::spec::catalog::InstanceType| n.name == t.name) => {}
                    None => new.push(t),
                }
            }
            if new.is_empty() {
                return Ok(0);
            }
            let mut overrides = s.state.config.market.catalog_overrides.clone();
            overrides.extend(new.iter().cloned());
            let reference = &s.state.config.market.reference_instance_type;
            let catalog = s.state.market.catalog.with_overrides(&new, reference)?;
            s.state.market.catalog = catalog;
            s.state.config.market.catalog_overrides = overrides;
            s.state.market.config.catalog_overrides =
                s.state.config.market.catalog_overrides.clone();
            Ok(new.len())
        })
    }

    /// Replaces a configured pool's reservations. Each counts from its
    /// `start` to its `end` (see [`Reservation`]).
    pub fn handle_reservations(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        reservations: Vec<Reservation>,
    ) -> Result<(), InputError> {
        self.input(now, |s| {
            let idx = s.configured_pool(pool)?;
            validate::validate_reservations(&s.state.market.catalog, &reservations)?;
            s.accrue_market(now);
            s.state.market.set_reservations(idx, reservations);
            let reserved = s.state.market.active_reserved(idx, now);
            s.state.market.pools[idx.get()].reserved = reserved;
            s.state.market.recompute();
            let pool = pool.clone();
            s.emit(now, || EventKind::MarketInput {
                input: MarketInput::Reserved { pool, reserved },
            });
            Ok(())
        })
    }

    /// The IE that streaming services use in a pool now.
    pub fn handle_streaming_demand(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        demand: Ie,
    ) -> Result<(), InputError> {
        self.input(now, |s| {
            let idx = s.configured_pool(pool)?;
            s.accrue_market(now);
            s.state.market.pools[idx.get()].streaming = demand;
            s.state.market.recompute();
            let pool = pool.clone();
            s.emit(now, || EventKind::MarketInput {
                input: MarketInput::StreamingDemand { pool, demand },
            });
            Ok(())
        })
    }

    /// A forecast of a pool's streaming demand: points `(time, demand)`, as a
    /// streaming autoscaler publishes them, replacing the previous forecast.
    /// The market then keeps work that would outlast its capacity off it,
    /// and returns hosts ahead of the demand (see `MarketConfig::forecast_drain_lead`).
    /// An empty list withdraws the forecast. Points must be in time order.
    pub fn handle_demand_forecast(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        points: Vec<(Timestamp, Ie)>,
    ) -> Result<(), InputError> {
        self.input(now, |s| {
            let idx = s.configured_pool(pool)?;
            if points.windows(2).any(|w| w[1].0 <= w[0].0) {
                return Err(InputError::field(
                    "forecast.points",
                    "must be in strictly increasing time order",
                ));
            }
            /// More points than any hourly-to-minutely forecast of a few days.
            const MAX_POINTS: usize = 10_000;
            if points.len() > MAX_POINTS {
                return Err(InputError::field(
                    "forecast.points",
                    format!("at most {MAX_POINTS} points"),
                ));
            }
            s.state.forget_failed_shapes();
            let n_points = points.len() as u32;
            let p = &mut s.state.market.pools[idx.get()];
            p.forecast = points;
            p.forecast_at = now;
            s.state.market.recompute();
            let pool = pool.clone();
            s.emit(now, || EventKind::MarketInput {
                input: MarketInput::Forecast { pool, n_points },
            });
            Ok(())
        })
    }

    /// A region's traffic was failed over to the other regions (`active`), or
    /// came back. While any region is failed over, reclaim is an emergency.
    pub fn handle_failover(
        &mut self,
        now: Timestamp,
        region: &str,
        active: bool,
    ) -> Result<(), InputError> {
        self.input(now, |s| {
            let known = s
                .state
                .market
                .pools
                .iter()
                .any(|p| p.spec.as_ref().is_some_and(|sp| sp.region == region));
            if !known {
                return Err(InputError::field(
                    "region",
                    format!("no configured pool is in region `{region}`"),
                ));
            }
            s.accrue_market(now);
            if active {
                s.state.market.failed_over.insert(region.to_owned());
            } else {
                s.state.market.failed_over.remove(region);
            }
            s.state.market.recompute();
            let region = region.to_owned();
            s.emit(now, || EventKind::MarketInput {
                input: MarketInput::Failover { region, active },
            });
            Ok(())
        })
    }

    // -------------------------------------------------------------- internals

    /// A host's IE from the catalog. An unknown instance type is an error in
    /// a market-managed pool and counts as zero elsewhere.
    fn host_ie(&self, spec: &HostSpec) -> Result<Ie, InputError> {
        let managed = self
            .state
            .market
            .pool_by_id
            .get(&spec.pool)
            .is_some_and(|p| self.state.market.pools[p.get()].spec.is_some());
        match self.state.market.catalog.ie_of(&spec.instance_type) {
            Ok(ie) => Ok(ie),
            Err(e) if managed => Err(e),
            Err(_) => Ok(Ie::ZERO),
        }
    }

    pub(super) fn host_idx(&self, id: &HostId) -> Result<HostIdx, InputError> {
        self.state
            .hosts
            .idx(id)
            .ok_or_else(|| InputError::UnknownHost(id.clone()))
    }

    fn phase(&self, task: TaskId) -> Result<Phase, InputError> {
        self.state
            .task(task)
            .map(|t| t.phase)
            .ok_or(InputError::UnknownTask(task))
    }

    fn configured_pool(&self, pool: &PoolId) -> Result<PoolIdx, InputError> {
        match self.state.market.pool_by_id.get(pool) {
            Some(&idx) if self.state.market.pools[idx.get()].spec.is_some() => Ok(idx),
            _ => Err(InputError::field(
                "pool",
                format!("unknown pool `{pool}`; configure it first"),
            )),
        }
    }

    /// Accrues every pool's capacity figures up to `now` before a market
    /// input changes them, and first lets reservations that started or ended
    /// before `now` take effect at their boundaries. Also forgets cached
    /// shape failures: supply may be about to grow.
    fn accrue_market(&mut self, now: Timestamp) {
        self.state.forget_failed_shapes();
        let market = &mut self.state.market;
        while let Some(b) = market
            .next_reservation_change(market.reserved_at)
            .filter(|b| *b <= now)
        {
            market.refresh_reservations(b);
        }
        market.reserved_at = market.reserved_at.max(now);
        for p in 0..market.pools.len() {
            let p = PoolIdx::from_usize(p);
            let snapshot = market.snapshot(p);
            market.ledger.accrue_pool(now, p, snapshot);
        }
    }
}

pub(super) fn wrong_state(task: TaskId, phase: Phase, event: &'static str) -> InputError {
    InputError::WrongTaskState {
        task,
        state: phase.name(),
        event,
    }
}
