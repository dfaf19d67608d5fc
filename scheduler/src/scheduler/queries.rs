//! Queries: tasks, jobs (with filters and stable-cursor pagination), hosts,
//! fleet totals, the market's pools and the ledger. None changes anything.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::Host;
use crate::model::job::{Job, Phase};
use crate::model::ledger::{LedgerEntry, PoolTotals};
use crate::policy::compact::{Compaction, suggest};
use crate::scheduler::{JobPhase, Scheduler, TaskView};
use crate::spec::catalog::Catalog;
use crate::spec::host::HostState;
use crate::spec::job::{JobSpec, Tier};
use crate::spec::market::PoolStatus;
use crate::spec::reason::PendingReasons;
use crate::units::ids::{HostId, JobId, PoolId, PoolIdx, TaskId, TeamId};
use crate::units::resources::Resources;
use crate::units::time::Timestamp;

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

/// A job's summary: counts, not every task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job.
    pub id: JobId,
    /// Its spec.
    pub spec: Arc<JobSpec>,
    /// How it stands as a whole.
    pub phase: JobPhase,
    /// Task counts by state.
    pub counts: JobCounts,
    /// When it was submitted.
    pub submitted_at: Timestamp,
    /// When its last task ended.
    pub finished_at: Option<Timestamp>,
    /// Why its ready tasks were not placed in the last committed round.
    pub pending_reasons: Option<Arc<PendingReasons>>,
}

/// Which jobs [`Scheduler::list_jobs`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// Only this team's jobs.
    pub team: Option<TeamId>,
    /// Only jobs in one of these phases (empty: any).
    pub phases: Vec<JobPhase>,
}

/// One page of a listing, and the cursor of the next page if there is one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T, C> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<C>,
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
    /// Jobs with at least one ready task, per tier (indexed by [`Tier::index`]).
    pub n_jobs_queued: [u32; 2],
    /// Tasks waiting out a retry back-off.
    pub n_tasks_backing_off: u32,
    /// Jobs the core knows (live and finished, until forgotten).
    pub n_jobs_known: u32,
}

impl Scheduler {
    /// A task's snapshot.
    pub fn task(&self, id: TaskId) -> Option<TaskView> {
        let job = self.state.job(id.job)?;
        let t = job.tasks.get(id.index as usize)?;
        let pending_reasons = job
            .ready
            .contains(&id.index)
            .then(|| job.pending_reasons.clone())
            .flatten();
        Some(TaskView {
            id,
            run: id.run(t.attempt),
            state: self.task_state(t.phase),
            n_failures: t.n_failures,
            n_preemptions: t.n_preemptions,
            submitted_at: job.submit_time,
            ready_at: t.ready_at,
            assigned_at: t.assigned_at,
            started_at: t.started_at,
            ended_at: t.ended_at,
            pending_reasons,
        })
    }

    /// A job's spec, or `None` if unknown.
    pub fn job_spec(&self, id: JobId) -> Option<&Arc<JobSpec>> {
        self.state.job(id).map(|j| &j.spec)
    }

    /// A job's task counts by state.
    pub fn job_counts(&self, id: JobId) -> Option<JobCounts> {
        Some(counts(self.state.job(id)?))
    }

    /// How a job stands as a whole.
    pub fn job_phase(&self, id: JobId) -> Option<JobPhase> {
        Some(phase_of(self.state.job(id)?))
    }

    /// A job's summary.
    pub fn job(&self, id: JobId) -> Option<JobView> {
        Some(view_of(id, self.state.job(id)?))
    }

    /// Why a job's ready tasks were not placed in the last committed round.
    pub fn job_pending_reasons(&self, id: JobId) -> Option<Arc<PendingReasons>> {
        self.state.job(id)?.pending_reasons.clone()
    }

    /// The job that holds a team's request key, if the core still knows it.
    pub fn job_by_request_key(&self, team: &TeamId, key: &str) -> Option<JobId> {
        let t = *self.state.team_by_id.get(team)?;
        self.state.request_keys.get(&(t, key.to_owned())).copied()
    }

    /// Up to `limit` jobs matching `filter` with ids after `after`, in id
    /// order. The cursor is the last id returned, so pages stay stable while
    /// jobs are added (new ids are larger) or forgotten.
    pub fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Page<JobView, JobId> {
        let st = &self.state;
        let ids: Box<dyn Iterator<Item = &JobId>> = match &filter.team {
            Some(team) => match st.team_by_id.get(team) {
                Some(t) => Box::new(st.teams[t.get()].jobs.iter()),
                None => Box::new(std::iter::empty()),
            },
            None => Box::new(st.job_order.iter()),
        };
        let mut items = Vec::new();
        let mut next = None;
        for &id in ids.skip_while(|id| after.is_some_and(|a| **id <= a)) {
            let job = &st.jobs[&id];
            if !filter.phases.is_empty() && !filter.phases.contains(&phase_of(job)) {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|v: &JobView| v.id);
                break;
            }
            items.push(view_of(id, job));
        }
        Page { items, next }
    }

    /// Up to `limit` tasks of a job with index after `after`, in index order,
    /// optionally only those whose state has the name `state` (e.g. `running`).
    pub fn list_tasks(
        &self,
        job: JobId,
        state: Option<&str>,
        after: Option<u32>,
        limit: usize,
    ) -> Option<Page<TaskView, u32>> {
        let j = self.state.job(job)?;
        let start = after.map_or(0, |a| a as usize + 1);
        let mut items = Vec::new();
        let mut next = None;
        for index in start..j.tasks.len() {
            let phase = j.tasks[index].phase;
            if state.is_some_and(|s| s != phase.name()) {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|v: &TaskView| v.id.index);
                break;
            }
            items.push(self.task(TaskId::new(job, index as u32)).expect("in range"));
        }
        Some(Page { items, next })
    }

    /// Jobs that finished before `before`, oldest first: what
    /// [`Scheduler::handle_forget_finished`] with that cutoff would forget.
    pub fn jobs_finished_before(&self, before: Timestamp) -> Vec<JobId> {
        self.state
            .finished
            .range(..(before, JobId(0)))
            .map(|(_, j)| *j)
            .collect()
    }

    /// Ids of all known jobs, in id order.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.state.job_order.iter().copied().collect()
    }

    /// A host, if known and not lost.
    pub fn host(&self, id: &HostId) -> Option<&Host> {
        self.state.hosts.idx(id).map(|h| &self.state.hosts[h])
    }

    /// Every known host that is not lost, in slot order.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.state
            .hosts
            .iter()
            .map(|(_, h)| h)
            .filter(|h| h.state != HostState::Lost)
    }

    /// Fleet-wide totals.
    pub fn totals(&self) -> Totals {
        let st = &self.state;
        Totals {
            n_hosts_active: st.index.len() as u32,
            n_hosts_draining: st.n_draining,
            active_capacity: st.active_capacity.clone(),
            allocated: st.allocated.clone(),
            n_jobs_queued: Tier::ALL.map(|t| st.queue.n_jobs(t) as u32),
            n_tasks_backing_off: st.queue.n_delayed() as u32,
            n_jobs_known: st.jobs.len() as u32,
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

    /// Every known pool's market figures, in pool id order.
    pub fn pools(&self) -> Vec<PoolStatus> {
        let market = &self.state.market;
        let mut out: Vec<PoolStatus> = (0..market.pools.len())
            .map(|p| market.status(PoolIdx::from_usize(p)))
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

    /// Per team and pool accounts, accrued up to `now` (or the latest input,
    /// if later). Changes nothing.
    pub fn ledger(&self, now: Timestamp) -> Vec<LedgerEntry> {
        let market = &self.state.market;
        market.ledger.entries(
            now.max(self.state.last_now),
            |t| self.state.teams[t.get()].id.clone(),
            |p| {
                (
                    market.pools[p.get()].id.clone(),
                    market.pools[p.get()].clearing_price,
                )
            },
        )
    }

    /// Per pool capacity integrated over time, accrued up to `now`. Changes nothing.
    pub fn pool_totals(&self, now: Timestamp) -> Vec<PoolTotals> {
        let market = &self.state.market;
        let now = now.max(self.state.last_now);
        let mut out: Vec<PoolTotals> = (0..market.pools.len())
            .map(|p| {
                let p = PoolIdx::from_usize(p);
                market.ledger.pool_totals(
                    now,
                    p,
                    market.pools[p.get()].id.clone(),
                    market.snapshot(p),
                )
            })
            .collect();
        out.sort_by(|a, b| a.pool.cmp(&b.pool));
        out
    }

    /// Up to `max_hosts` suggestions of flex tasks to move so that whole
    /// leased hosts empty out (see [`crate::policy::compact`]). Changes
    /// nothing; the shell may act on them or not.
    pub fn compaction_suggestions(&self, max_hosts: usize) -> Vec<Compaction> {
        suggest(&self.state, &self.pipeline, max_hosts)
    }

    /// The instance type catalog in use.
    pub fn catalog(&self) -> &Catalog {
        &self.state.market.catalog
    }
}

fn counts(job: &Job) -> JobCounts {
    let mut c = JobCounts::default();
    for t in &job.tasks {
        match t.phase {
            Phase::Pending => c.pending += 1,
            Phase::Assigned(_) | Phase::Running(_) => c.running += 1,
            Phase::Stopping { .. } => c.stopping += 1,
            Phase::Completed => c.completed += 1,
            Phase::Failed => c.failed += 1,
            Phase::Killed => c.killed += 1,
        }
    }
    c
}

fn phase_of(job: &Job) -> JobPhase {
    if job.n_live > 0 {
        return if job.n_placed > 0 {
            JobPhase::Running
        } else {
            JobPhase::Queued
        };
    }
    let c = counts(job);
    if c.killed > 0 {
        JobPhase::Killed
    } else if c.failed > 0 {
        JobPhase::Failed
    } else {
        JobPhase::Succeeded
    }
}

fn view_of(id: JobId, job: &Job) -> JobView {
    JobView {
        id,
        spec: job.spec.clone(),
        phase: phase_of(job),
        counts: counts(job),
        submitted_at: job.submit_time,
        finished_at: job.finished_at,
        pending_reasons: job.pending_reasons.clone(),
    }
}
