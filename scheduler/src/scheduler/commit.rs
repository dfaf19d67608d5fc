//! Rounds: `plan_round(&self)` decides, `commit(now, plan)` re-validates
//! against the state at commit time and applies.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::job::{Phase, StopCause};
use crate::model::overlay::{Overlay, View};
use crate::policy::preempt::{PreemptCause, Preemption, projected_leases};
use crate::round::{Assignment, Plan, Planner};
use crate::scheduler::events::EventKind;
use crate::scheduler::{Action, Scheduler};
use crate::spec::error::InputError;
use crate::spec::reason::{PendingReasons, Reason};
use crate::units::ids::{HostIdx, JobId, PoolIdx, RunId, TaskId};
use crate::units::ie::Ie;
use crate::units::time::Timestamp;
use crate::util::{FxMap, FxSet};

/// Why commit refused a planned preemption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptRefusal {
    /// The victim's run is no longer live on that host (it ended, was
    /// stopped, or the host is gone).
    VictimGone,
    /// The pool is no longer over its supply once the preemptions already
    /// applied are counted: the capacity came back another way.
    NoLongerOverSupply,
    /// The critical job the room was for no longer waits for it.
    NoLongerNeeded,
}

/// What [`Scheduler::commit`] did with a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitReport {
    /// Assignments applied (a `Launch` action was queued for each).
    pub n_applied: u32,
    /// Preemptions started (a `Stop` action was queued for each).
    pub n_preempted: u32,
    /// Assignments refused because the state changed since planning, with the
    /// reason; the task stays pending with that reason.
    pub rejected: Vec<(TaskId, Reason)>,
    /// Preemptions refused because they were no longer needed or possible.
    pub rejected_preemptions: Vec<(RunId, PreemptRefusal)>,
    /// True if the plan was applied without re-validation (the state was
    /// still exactly the plan's basis).
    pub fast_path: bool,
}

/// Why an assignment could not be applied at commit.
enum Refusal {
    /// The task no longer waits for a placement (gone, killed, already placed).
    NotPending,
    /// The task waits, but the planned host no longer takes it.
    Reason(Reason),
}

impl Scheduler {
    /// Plans a round at `now` against the committed state. Changes nothing:
    /// call [`Scheduler::handle_tick`] first so that back-offs due by `now`
    /// are ready. Refused only if `now` is earlier than an input already seen.
    pub fn plan_round(&self, now: Timestamp) -> Result<Plan, InputError> {
        self.check_time(now)?;
        let round = self.n_rounds + 1;
        let span = tracing::debug_span!("round", round, now = now.as_millis()).entered();
        let plan = Planner::new(&self.state, &self.pipeline, now).run(round);
        tracing::debug!(
            parent: &span,
            n_placed = plan.stats.n_placed,
            n_unplaced = plan.stats.n_unplaced,
            n_jobs = plan.stats.n_jobs_considered,
            n_hosts_examined = plan.stats.n_hosts_examined,
            n_preempted = plan.stats.n_preempted,
            "round planned"
        );
        Ok(plan)
    }

    /// [`Scheduler::plan_round`] with every task placed through a search of
    /// its own (no class steps): the reference the class-step tests compare with.
    #[cfg(test)]
    pub(crate) fn plan_round_one_by_one(&self, now: Timestamp) -> Plan {
        Planner::new(&self.state, &self.pipeline, now)
            .one_by_one()
            .run(self.n_rounds + 1)
    }

    /// Applies a plan at `now` (the commit time, not earlier than the plan's).
    ///
    /// If the state is still exactly the plan's basis and the plan carries
    /// its tentative changes, they are applied as they are. Otherwise every
    /// decision is re-checked against the current state: a preemption only
    /// if its victim's run is still live there and, for reclaim, the pool is
    /// still over its supply, or, for a critical job, that job still waits;
    /// an assignment only if its task is still pending and its host still
    /// passes every checker and the team's cap, a gang's members all or none.
    /// Refused assignments leave their tasks pending with the reason.
    /// Queues `Stop` actions first, then `Launch` actions.
    pub fn commit(&mut self, now: Timestamp, plan: Plan) -> Result<CommitReport, InputError> {
        self.check_time(now)?;
        if now < plan.now {
            return Err(InputError::TimeWentBackwards {
                now,
                last: plan.now,
            });
        }
        let same_basis = plan.basis() == self.state.generation;
        let mut report = CommitReport {
            fast_path: same_basis && plan.has_overlay(),
            ..CommitReport::default()
        };
        // Preemptions first: a reclaimed host must not take the plan's new flex work.
        let mut over_supply: FxMap<PoolIdx, Ie> = FxMap::default();
        let mut accepted: FxSet<HostIdx> = FxSet::default();
        // Gang members already stopped with a preempted member of their gang.
        let mut stopped_with_gang: FxSet<TaskId> = FxSet::default();
        for p in &plan.preemptions {
            if stopped_with_gang.contains(&p.run.task) {
                report.n_preempted += 1;
                continue;
            }
            let verdict = if report.fast_path {
                Ok(self.host_idx(&p.host).expect("plan basis has the host"))
            } else {
                self.check_preemption(p, &mut over_supply, &mut accepted)
            };
            match verdict {
                Ok(h) => {
                    stopped_with_gang.extend(self.apply_preemption(p, h, now));
                    report.n_preempted += 1;
                }
                Err(why) => report.rejected_preemptions.push((p.run, why)),
            }
        }
        // Then assignments: the plan's own overlay, or one rebuilt by re-validation.
        let mut refused_jobs: Vec<(JobId, u32, Arc<PendingReasons>)> = Vec::new();
        let rebuilt;
        let overlay: &Overlay = match plan.overlay() {
            Some(o) if report.fast_path => o,
            _ => {
                rebuilt = self.revalidate(&plan.assignments, &mut report, &mut refused_jobs);
                &rebuilt
            }
        };
        report.n_applied = overlay.placements().len() as u32;
        self.apply_overlay(overlay, now);
        // Pending reasons: placed jobs have none until a round fails them again.
        for a in &plan.assignments {
            if let Some(job) = self.state.jobs.get_mut(&a.run.task.job) {
                job.pending_reasons = None;
            }
        }
        for u in &plan.unplaced {
            if let Some(job) = self.state.jobs.get_mut(&u.job)
                && !job.ready.is_empty()
            {
                job.pending_reasons = Some(u.reasons.clone());
                let (job, n_tasks, reasons) = (u.job, u.n_tasks, u.reasons.clone());
                self.emit(now, || EventKind::JobUnplaced {
                    job,
                    n_tasks,
                    reasons,
                });
            }
        }
        for (job_id, n_tasks, reasons) in refused_jobs {
            if let Some(job) = self.state.jobs.get_mut(&job_id) {
                job.pending_reasons = Some(reasons.clone());
            }
            self.emit(now, || EventKind::JobUnplaced {
                job: job_id,
                n_tasks,
                reasons,
            });
        }
        // Prices, accruing every account at the old price first.
        for (pool, price) in &plan.prices {
            if let Some(&idx) = self.state.market.pool_by_id.get(pool) {
                let market = &mut self.state.market;
                let old = market.pools[idx.get()].clearing_price;
                if old != *price {
                    market.ledger.accrue_pool_accounts(now, idx, old);
                    market.pools[idx.get()].clearing_price = *price;
                    let (pool, price) = (pool.clone(), *price);
                    self.emit(now, || EventKind::PriceChanged { pool, price });
                }
            }
        }
        // Failures the round learned hold after its own placements, but only
        // on the state it planned against.
        if same_basis {
            for (shape, reasons) in plan.learned_failures() {
                self.state
                    .failed_shapes
                    .entry(shape.clone())
                    .or_insert_with(|| reasons.clone());
            }
        }
        // Returning marks: only on hosts still leased; clearing always holds.
        for d in &plan.drains {
            if let Some(h) = self.state.hosts.idx(&d.host)
                && (d.due.is_none() || self.state.hosts[h].n_flex_tasks > 0)
            {
                self.state.set_returning(h, d.due);
            }
        }
        self.state.budget_wakeup = plan.budget_wakeup;
        self.n_rounds += 1;
        self.state.last_now = now;
        self.state.generation += 1;
        Ok(report)
    }

    /// Ticks, plans and commits a round in one step, for shells that persist
    /// nothing in between (the simulator, tests).
    pub fn run_round(&mut self, now: Timestamp) -> Result<(Plan, CommitReport), InputError> {
        self.handle_tick(now)?;
        let plan = self.plan_round(now)?;
        let report = self.commit(now, plan.clone())?;
        Ok((plan, report))
    }

    /// Re-checks a planned preemption against the current state.
    fn check_preemption(
        &self,
        p: &Preemption,
        over_supply: &mut FxMap<PoolIdx, Ie>,
        accepted: &mut FxSet<HostIdx>,
    ) -> Result<HostIdx, PreemptRefusal> {
        let st = &self.state;
        let h = st.hosts.idx(&p.host).ok_or(PreemptRefusal::VictimGone)?;
        let task = st.task(p.run.task).ok_or(PreemptRefusal::VictimGone)?;
        let job = &st.jobs[&p.run.task.job];
        if task.attempt != p.run.attempt
            || !task.phase.is_live_run()
            || task.phase.host() != Some(h)
            || job.spec.tier != crate::spec::job::Tier::Flex
        {
            return Err(PreemptRefusal::VictimGone);
        }
        match &p.cause {
            PreemptCause::Reclaim { pool } => {
                if accepted.contains(&h) {
                    return Ok(h);
                }
                let idx = *st
                    .market
                    .pool_by_id
                    .get(pool)
                    .ok_or(PreemptRefusal::NoLongerOverSupply)?;
                let supply = st.market.pools[idx.get()]
                    .supply
                    .ok_or(PreemptRefusal::NoLongerOverSupply)?;
                let overlay = Overlay::default();
                let projected = over_supply
                    .entry(idx)
                    .or_insert_with(|| projected_leases(&View::new(st, &overlay), idx));
                if *projected <= supply {
                    return Err(PreemptRefusal::NoLongerOverSupply);
                }
                *projected = projected.saturating_sub(st.hosts[h].ie);
                accepted.insert(h);
                Ok(h)
            }
            PreemptCause::Critical { job } | PreemptCause::Outbid { job } => {
                let waits = st.job(*job).is_some_and(|j| !j.ready.is_empty());
                if waits {
                    Ok(h)
                } else {
                    Err(PreemptRefusal::NoLongerNeeded)
                }
            }
        }
    }

    /// Starts a preemption; the victim keeps its room until it stops, and its
    /// lost work is booked then.
    fn apply_preemption(&mut self, p: &Preemption, h: HostIdx, now: Timestamp) -> Vec<TaskId> {
        let task = p.run.task;
        self.note_disruption(task.job, now);
        let (run, host, cause, emergency, over_budget) = (
            p.run,
            p.host.clone(),
            p.cause.clone(),
            p.emergency,
            p.over_budget,
        );
        self.emit(now, || EventKind::PreemptionStarted {
            run,
            host,
            cause,
            emergency,
            over_budget,
        });
        self.begin_stop(task, StopCause::Preempt, p.over_budget, p.grace, now);
        // A gang is preempted whole (the round ranks it as one victim set).
        let with_gang = self.stop_gang(task, StopCause::Preempt, p.over_budget, now);
        // Every task stopped counts against its job's disruption budget.
        for t in &with_gang {
            self.note_disruption(t.job, now);
        }
        // A reclaimed host takes no new flex work until it is empty — but
        // only a host reclaim is emptying: a gang member stopped here with
        // its gang elsewhere leaves the host's other work, and its lease,
        // in place (marking it would hide that lease from the next reclaim).
        if let PreemptCause::Reclaim { .. } = p.cause {
            let hosts: Vec<HostIdx> = std::iter::once(h)
                .chain(with_gang.iter().filter_map(|t| {
                    let job = &self.state.jobs[&t.job];
                    job.tasks[t.index as usize].phase.host()
                }))
                .collect();
            for x in hosts {
                let emptied = !self.state.hosts[x].tasks.iter().any(|t| {
                    let job = &self.state.jobs[&t.job];
                    job.spec.tier == crate::spec::job::Tier::Flex
                        && job.tasks[t.index as usize].phase.is_live_run()
                });
                if emptied {
                    self.state.hosts[x].reclaiming = true;
                }
            }
        }
        with_gang
    }

    /// Records a preemption of one of `job`'s tasks at `now` for its
    /// disruption budget (forgetting those older than the budget's window).
    fn note_disruption(&mut self, job: JobId, now: Timestamp) {
        let job = self.state.jobs.get_mut(&job).expect("victim's job exists");
        if let Some(budget) = &job.spec.disruption_budget {
            let horizon = now.as_millis().saturating_sub(budget.window.as_millis());
            job.preempted_at.retain(|t| t.as_millis() > horizon);
            job.preempted_at.push(now);
        }
    }

    /// Rebuilds a round's placements against the current state, refusing
    /// what no longer holds; a gang's run of assignments goes all or none.
    fn revalidate(
        &self,
        assignments: &[Assignment],
        report: &mut CommitReport,
        refused_jobs: &mut Vec<(JobId, u32, Arc<PendingReasons>)>,
    ) -> Overlay {
        let mut overlay = Overlay::default();
        // Tasks accepted so far: a plan that names a task twice (a corrupted
        // or hand-made one) gets the second refused.
        let mut placed: FxSet<TaskId> = FxSet::default();
        let mut i = 0;
        while i < assignments.len() {
            let job_id = assignments[i].run.task.job;
            let is_gang = self.state.job(job_id).is_some_and(|j| j.spec.gang);
            let end = if is_gang {
                i + assignments[i..]
                    .iter()
                    .take_while(|a| a.run.task.job == job_id)
                    .count()
            } else {
                i + 1
            };
            let run = &assignments[i..end];
            let mark = overlay.checkpoint();
            let mut refusal = None;
            for a in run {
                match self.check_assignment(&overlay, &placed, a) {
                    Ok(h) => {
                        overlay.charge(&self.state, a.run.task, h, true);
                        placed.insert(a.run.task);
                    }
                    Err(why) => {
                        refusal = Some((a.run.task, why));
                        break;
                    }
                }
            }
            match refusal {
                None => overlay.keep(mark),
                Some((task, why)) => {
                    let n_placed = overlay.placements().len();
                    overlay.rollback(&self.state, mark);
                    let n_placed = (n_placed - overlay.placements().len()) as u32;
                    for a in &run[..n_placed as usize] {
                        placed.remove(&a.run.task);
                    }
                    let reason = match why {
                        Refusal::Reason(r) => Some(r),
                        Refusal::NotPending => None,
                    };
                    if is_gang {
                        let gang = Reason::GangIncomplete {
                            n_placed,
                            n_needed: run.len() as u32,
                        };
                        // Members that no longer wait (ended, killed) are not
                        // refused: they are simply no longer part of the plan.
                        for a in run {
                            let waits = self
                                .state
                                .job(a.run.task.job)
                                .is_some_and(|j| j.ready.contains(&a.run.task.index));
                            if waits {
                                report.rejected.push((a.run.task, gang.clone()));
                            }
                        }
                        let mut counts = vec![(gang, 0)];
                        counts.extend(reason.map(|r| (r, 1)));
                        refused_jobs.push((
                            job_id,
                            run.len() as u32,
                            Arc::new(PendingReasons::from_counts(counts)),
                        ));
                    } else if let Some(r) = reason {
                        report.rejected.push((task, r.clone()));
                        match refused_jobs.last_mut() {
                            Some((j, n, _)) if *j == job_id => *n += 1,
                            _ => refused_jobs.push((job_id, 1, Self::refused_reasons(r))),
                        }
                    }
                }
            }
            i = end;
        }
        overlay
    }

    fn check_assignment(
        &self,
        overlay: &Overlay,
        placed: &FxSet<TaskId>,
        a: &Assignment,
    ) -> Result<HostIdx, Refusal> {
        let st = &self.state;
        let task_id = a.run.task;
        let job = st.job(task_id.job).ok_or(Refusal::NotPending)?;
        let task = job
            .tasks
            .get(task_id.index as usize)
            .ok_or(Refusal::NotPending)?;
        let view = View::new(st, overlay);
        if task.phase != Phase::Pending
            || !job.ready.contains(&task_id.index)
            || placed.contains(&task_id)
            || task.attempt + 1 != a.run.attempt
        {
            return Err(Refusal::NotPending);
        }
        let h = st
            .hosts
            .idx(&a.host)
            .ok_or(Refusal::Reason(Reason::HostGone))?;
        let tier = job.spec.tier;
        let team = &st.teams[job.team.get()];
        if let Some(cap) = team.config.cap.get(&tier)
            && cap
                .excess_after_adding(view.team_allocated(job.team, tier), &job.spec.request)
                .is_some()
        {
            return Err(Refusal::Reason(Reason::TeamCapReached));
        }
        self.pipeline
            .check(&view, job, h)
            .map_err(Refusal::Reason)?;
        Ok(h)
    }

    /// [`Scheduler::unready`] for placed tasks of one job, in decision
    /// order. A round takes a job's ready tasks in index order, so on the
    /// plan's basis they are the job's first ready ones: then the ready set
    /// is split once after the last of them, instead of losing them one at
    /// a time (each a B-tree removal). Anything else goes task by task.
    fn unready_placed(&mut self, run: &[(TaskId, HostIdx)]) {
        let job_id = run[0].0.job;
        let job = self.state.jobs.get_mut(&job_id).expect("task exists");
        let first_ready = run.len() > 1
            && job.ready.len() >= run.len()
            && job.ready.iter().zip(run).all(|(&i, (t, _))| i == t.index);
        if !first_ready {
            for &(task, _) in run {
                self.unready(task);
            }
            return;
        }
        let after_last = run[run.len() - 1].0.index + 1;
        job.ready = job.ready.split_off(&after_last);
        self.dequeue_if_not_ready(job_id);
    }

    /// Applies an overlay's placements through the one charge path, host by
    /// host, then moves each task to `Assigned` and queues its `Launch`.
    fn apply_overlay(&mut self, overlay: &Overlay, now: Timestamp) {
        let placements = overlay.placements();
        if placements.is_empty() {
            return;
        }
        // The placements grouped by host (hosts in first-touch order, tasks
        // in decision order): a stable sort by the host's first-touch slot,
        // which leaves a round's usual runs (a host filled at once) as they
        // are, and keeps a job's tasks on a host together for
        // `State::charge` to add as one.
        let mut hosts: Vec<HostIdx> = Vec::new();
        let mut slot_of: FxMap<HostIdx, u32> = FxMap::default();
        let mut grouped: Vec<(u32, TaskId)> = Vec::with_capacity(placements.len());
        for run in placements.chunk_by(|a, b| a.1 == b.1) {
            let slot = *slot_of.entry(run[0].1).or_insert_with(|| {
                hosts.push(run[0].1);
                hosts.len() as u32 - 1
            });
            grouped.extend(run.iter().map(|&(task, _)| (slot, task)));
        }
        grouped.sort_by_key(|&(slot, _)| slot);
        let tasks: Vec<TaskId> = grouped.iter().map(|&(_, task)| task).collect();
        let mut start = 0;
        for run in grouped.chunk_by(|a, b| a.0 == b.0) {
            let end = start + run.len();
            self.state
                .charge(hosts[run[0].0 as usize], &tasks[start..end], true, now);
            start = end;
        }
        debug_assert_eq!(overlay.check_applied(&self.state), Ok(()));
        for run in placements.chunk_by(|a, b| a.0.job == b.0.job) {
            self.unready_placed(run);
        }
        for &(task, h) in placements {
            let t = self.state.task_mut(task);
            t.attempt += 1;
            t.assigned_at = Some(now);
            t.started_at = None;
            let run = task.run(t.attempt);
            self.set_phase(task, Phase::Assigned(h), now);
            let host = self.state.hosts[h].spec.id.clone();
            let request = self.state.jobs[&task.job].spec.request.clone();
            self.actions
                .push_back(Action::Launch { run, host, request });
        }
        if self.events.enabled {
            // One holding event per (team, pool) the commit changed.
            let mut seen = FxSet::default();
            for &(task, h) in placements {
                let key = (self.state.jobs[&task.job].team, self.state.hosts[h].pool);
                if seen.insert(key) {
                    self.emit_holding(task, h, now);
                }
            }
        }
    }
}
