//! Preemption: choosing victims when the market reclaims supply, or when a
//! critical task cannot fit anywhere. Victims are only ever flex tasks.
//!
//! **Reclaim frees whole hosts.** A host stops counting as leased only when
//! all its flex work has stopped, so reclaim chooses *hosts* and preempts
//! every flex task on each. Hosts are ordered by the [`VictimPolicy`]'s key
//! over the host's victims; the default, [`VictimPolicy::Cost`], is
//! `(highest bid, highest priority, work lost since last checkpoint, number
//! of victims)`, smallest first: cheap, low-value, fresh work goes first and
//! high bids are preempted last.
//!
//! **Budgets.** Ordinary reclaim only takes a host if every job with
//! victims on it stays within its disruption budget. If that leaves the pool
//! over supply, the deficit eats headroom until the next round — unless it
//! is an *emergency*: a region is failed over, or leases exceed what
//! streaming leaves (`reserved − streaming`). Then reclaim continues past
//! budgets, and each excess is recorded (`over_budget`) in the plan and ledger.

use std::cmp::Reverse;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::ids::{HostId, JobId, PoolId, TaskId};
use crate::job::{BudgetLimit, Price, Tier};
use crate::market::{Ie, PoolIdx};
use crate::place::Pipeline;
use crate::place::index::HostIdx;
use crate::resources::Resources;
use crate::state::{Job, Phase, State};
use crate::time::{DurationMs, Timestamp};

/// How victims are ranked. Every policy frees whole hosts for reclaim and
/// never touches critical tasks; they differ in which hosts (and, for a
/// critical placement, which tasks) go first.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VictimPolicy {
    /// `(highest bid, highest priority, lost work, victims)`: the market's default.
    #[default]
    Cost,
    /// `(highest priority, highest bid, victims)`: plain priority order.
    LowestPriorityFirst,
    /// `(lost work, victims)`: protect long-running, uncheckpointed work.
    LeastLostWork,
    /// `(victims, lost work)`: disturb as few tasks as possible.
    FewestVictims,
    /// Kubernetes' node order: lowest highest-priority victim, then smallest
    /// priority sum, then fewest victims, then latest-started victims first.
    Kubernetes,
}

impl VictimPolicy {
    /// Every policy, for sweeps.
    pub const ALL: [VictimPolicy; 5] = [
        VictimPolicy::Cost,
        VictimPolicy::LowestPriorityFirst,
        VictimPolicy::LeastLostWork,
        VictimPolicy::FewestVictims,
        VictimPolicy::Kubernetes,
    ];
}

/// Why a task is preempted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreemptCause {
    /// The pool's supply fell below what is leased.
    Reclaim {
        /// The pool.
        pool: PoolId,
    },
    /// A critical job needed the room.
    Critical {
        /// The critical job.
        job: JobId,
    },
}

/// A planned preemption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preemption {
    /// The victim.
    pub task: TaskId,
    /// Where it runs.
    pub host: HostId,
    /// SIGTERM-to-SIGKILL grace.
    pub grace: DurationMs,
    /// Why.
    pub cause: PreemptCause,
    /// Part of an emergency reclaim (failover, or streaming itself short).
    pub emergency: bool,
    /// This preemption exceeds the job's disruption budget.
    pub over_budget: bool,
    #[serde(skip)]
    pub(crate) host_idx: HostIdx,
}

/// A victim set's rank under a policy; smaller is preempted first.
type VictimKey = (i64, i64, u64, u64, Reverse<Timestamp>);

/// Ranking facts about a set of victims.
#[derive(Clone, Debug, Default)]
struct VictimSet {
    tasks: Vec<TaskId>,
    n: u64,
    max_bid: Price,
    max_priority: i32,
    sum_priority: i64,
    lost_work_ms: u64,
    latest_start: Timestamp,
}

impl VictimSet {
    fn add(&mut self, state: &State, task: TaskId, now: Timestamp) {
        self.tasks.push(task);
        self.count(&state.jobs[&task.job], task, now);
    }

    /// Adds a victim to the ranking facts only (no allocation): enough to sort hosts.
    fn count(&mut self, job: &Job, task: TaskId, now: Timestamp) {
        let t = &job.tasks[task.index as usize];
        if self.n == 0 {
            self.max_priority = job.spec.priority;
        }
        self.n += 1;
        self.max_bid = self.max_bid.max(job.spec.bid.unwrap_or(Price::ZERO));
        self.max_priority = self.max_priority.max(job.spec.priority);
        self.sum_priority += i64::from(job.spec.priority);
        self.lost_work_ms += lost_work(job, t.started_at, now).as_millis();
        self.latest_start = self.latest_start.max(t.started_at.unwrap_or_default());
    }

    /// The policy's sort key: smaller is preempted first.
    fn key(&self, policy: VictimPolicy) -> VictimKey {
        let bid_micros = (self.max_bid.per_ie_hour() * 1e6) as i64;
        let n = self.n;
        let prio = i64::from(self.max_priority);
        match policy {
            VictimPolicy::Cost => (
                bid_micros,
                prio,
                self.lost_work_ms,
                n,
                Reverse(Timestamp::ZERO),
            ),
            VictimPolicy::LowestPriorityFirst => (prio, bid_micros, n, 0, Reverse(Timestamp::ZERO)),
            VictimPolicy::LeastLostWork => (0, 0, self.lost_work_ms, n, Reverse(Timestamp::ZERO)),
            VictimPolicy::FewestVictims => (0, 0, n, self.lost_work_ms, Reverse(Timestamp::ZERO)),
            VictimPolicy::Kubernetes => (prio, self.sum_priority, n, 0, Reverse(self.latest_start)),
        }
    }
}

/// Work a task would lose if stopped now: time since its last checkpoint,
/// or since it started if it does not checkpoint.
pub(crate) fn lost_work(job: &Job, started_at: Option<Timestamp>, now: Timestamp) -> DurationMs {
    let ran = now.saturating_since(started_at.unwrap_or(now)).as_millis();
    match job.spec.checkpoint_interval {
        Some(interval) if interval.as_millis() > 0 => {
            DurationMs::from_millis(ran % interval.as_millis())
        }
        _ => DurationMs::from_millis(ran),
    }
}

/// How many more of `job`'s tasks ordinary reclaim may preempt now
/// (`None`: no budget), given `used` preemptions already planned this round.
fn budget_room(job: &Job, now: Timestamp, used: u32) -> Option<u32> {
    let budget = job.spec.disruption_budget.as_ref()?;
    let since = Timestamp::from_millis(now.as_millis().saturating_sub(budget.window.as_millis()));
    let recent = job.preempted_at.iter().filter(|t| **t > since).count() as u32;
    let limit = match budget.limit {
        BudgetLimit::MaxTasks(k) => k,
        BudgetLimit::MaxPercent(p) => (job.spec.n_tasks.saturating_mul(p) / 100).max(1),
    };
    Some(limit.saturating_sub(recent + used))
}

/// A flex task that is assigned or running (not already stopping).
fn is_preemptible(job: &Job, task: TaskId) -> bool {
    job.spec.tier == Tier::Flex
        && matches!(
            job.tasks[task.index as usize].phase,
            Phase::Assigned(_) | Phase::Running(_)
        )
}

/// Flex tasks on a host that are not already stopping.
fn preemptible_tasks(state: &State, host_idx: HostIdx) -> impl Iterator<Item = TaskId> + '_ {
    state.hosts[host_idx as usize]
        .tasks
        .iter()
        .copied()
        .filter(move |t| is_preemptible(&state.jobs[&t.job], *t))
}

/// Victims planned so far in a round.
#[derive(Debug, Default)]
pub(crate) struct RoundVictims {
    /// Per job, how many of its tasks were chosen.
    per_job: FxHashMap<JobId, u32>,
    chosen: rustc_hash::FxHashSet<TaskId>,
    /// Per host, resources its chosen victims will give back.
    freed: FxHashMap<HostIdx, Resources>,
    /// Per host, resources critical tasks are counting on getting there.
    claimed: FxHashMap<HostIdx, Resources>,
}

impl RoundVictims {
    fn within_budget(&self, state: &State, set: &VictimSet, now: Timestamp) -> bool {
        // Most jobs have no budget: answer those without building a map.
        let budgeted = |t: &&TaskId| state.jobs[&t.job].spec.disruption_budget.is_some();
        if !set.tasks.iter().any(|t| budgeted(&t)) {
            return true;
        }
        let mut per_job: FxHashMap<JobId, u32> = FxHashMap::default();
        for t in set.tasks.iter().filter(budgeted) {
            *per_job.entry(t.job).or_default() += 1;
        }
        per_job.iter().all(|(job, n)| {
            let used = self.per_job.get(job).copied().unwrap_or(0);
            budget_room(&state.jobs[job], now, used).is_none_or(|room| *n <= room)
        })
    }

    fn take(
        &mut self,
        state: &State,
        set: &VictimSet,
        host_idx: HostIdx,
        now: Timestamp,
        cause: &PreemptCause,
        emergency: bool,
    ) -> Vec<Preemption> {
        let host = &state.hosts[host_idx as usize];
        let grace = state.market.config.preempt_grace;
        let mut out = Vec::with_capacity(set.tasks.len());
        for &task in &set.tasks {
            let job = &state.jobs[&task.job];
            let used = self.per_job.get(&task.job).copied().unwrap_or(0);
            let over_budget = budget_room(job, now, used) == Some(0);
            *self.per_job.entry(task.job).or_default() += 1;
            self.chosen.insert(task);
            let freed = self.freed.entry(host_idx).or_default();
            freed
                .checked_add_assign(&job.spec.request)
                .expect("freed fits the host");
            out.push(Preemption {
                task,
                host: host.spec.id.clone(),
                grace,
                cause: cause.clone(),
                emergency,
                over_budget,
                host_idx,
            });
        }
        out
    }
}

/// Chooses hosts to release so that `pool`'s leases fit its supply.
pub(crate) fn plan_reclaim(
    state: &State,
    now: Timestamp,
    pool_idx: PoolIdx,
    round: &mut RoundVictims,
) -> Vec<Preemption> {
    let market = &state.market;
    let pool = &market.pools[pool_idx as usize];
    let Some(supply) = pool.supply else {
        return Vec::new();
    };
    if pool.leased <= supply {
        return Vec::new();
    }
    // Leases already on their way out (every flex task stopping) do not need reclaiming again.
    let mut projected = pool.leased;
    let policy = market.config.victim_policy;
    // Rank hosts by their victims' facts alone (one pass, no allocation);
    // victim lists are built only for the hosts the greedy pass looks at.
    let mut ranked: Vec<(VictimKey, u64, HostIdx)> = Vec::new();
    for &h in &pool.hosts {
        let host = &state.hosts[h as usize];
        if host.n_flex_tasks == 0 {
            continue;
        }
        let mut facts = VictimSet::default();
        if !host.reclaiming {
            for &t in &host.tasks {
                let job = &state.jobs[&t.job];
                if is_preemptible(job, t) {
                    facts.count(job, t, now);
                }
            }
        }
        if facts.n == 0 {
            projected = projected.saturating_sub(host.ie);
        } else {
            ranked.push((facts.key(policy), host.rank, h));
        }
    }
    if projected <= supply {
        return Vec::new();
    }
    ranked.sort_unstable();
    let candidates = ranked.iter().map(|&(_, _, h)| {
        let mut set = VictimSet::default();
        for t in preemptible_tasks(state, h) {
            set.add(state, t, now);
        }
        (h, set)
    });
    let cause = PreemptCause::Reclaim {
        pool: pool.id.clone(),
    };
    let mut out = Vec::new();
    let mut passed_over = Vec::new();
    for (h, set) in candidates {
        if projected <= supply {
            break;
        }
        if round.within_budget(state, &set, now) {
            out.extend(round.take(state, &set, h, now, &cause, false));
            projected = projected.saturating_sub(state.hosts[h as usize].ie);
        } else {
            passed_over.push((h, set));
        }
    }
    let hard_limit = pool.reserved.saturating_sub(pool.streaming_now);
    let emergency = !market.failed_over.is_empty() || projected > hard_limit;
    if projected > supply && emergency {
        // Phase 1 ran out of candidates, so what it passed over is all that is left.
        for (h, set) in passed_over {
            if projected <= supply {
                break;
            }
            out.extend(round.take(state, &set, h, now, &cause, true));
            projected = projected.saturating_sub(state.hosts[h as usize].ie);
        }
    }
    out
}

/// Frees room for up to `n_tasks` tasks of a critical job by preempting flex
/// tasks, host by host: on each host the cheapest victims that make the task
/// fit, and the host whose victim set ranks cheapest. A host that will fit
/// the task once tasks already stopping have stopped needs no new victims.
pub(crate) fn plan_critical(
    state: &State,
    pipeline: &Pipeline,
    now: Timestamp,
    job_id: JobId,
    n_tasks: u32,
    round: &mut RoundVictims,
) -> Vec<Preemption> {
    let job = &state.jobs[&job_id];
    let request = &job.spec.request;
    let policy = state.market.config.victim_policy;
    let mut out = Vec::new();
    for _ in 0..n_tasks {
        let mut best: Option<(VictimKey, HostIdx, VictimSet)> = None;
        let mut waits_for: Option<HostIdx> = None;
        for h in state
            .index
            .candidates(crate::place::index::IndexDim::Cpu, 0, false, |_| true)
        {
            if pipeline.check_placement_constraints(state, job, h).is_err() {
                continue;
            }
            let host = &state.hosts[h as usize];
            // What the host will have free once stopping tasks and victims already chosen are gone.
            let mut free = host.free();
            for t in &host.tasks {
                let tj = &state.jobs[&t.job];
                if matches!(tj.tasks[t.index as usize].phase, Phase::Stopping(..)) {
                    free.checked_add_assign(&tj.spec.request)
                        .expect("stopping tasks fit their host");
                }
            }
            if let Some(freed) = round.freed.get(&h) {
                free.checked_add_assign(freed).expect("freed fits the host");
            }
            if let Some(claimed) = round.claimed.get(&h) {
                free = free.saturating_sub(claimed);
            }
            if request.fits_in(&free) {
                waits_for = Some(h);
                break;
            }
            let mut victims: Vec<(TaskId, VictimSet)> = preemptible_tasks(state, h)
                .filter(|t| !round.chosen.contains(t))
                .map(|t| {
                    let mut one = VictimSet::default();
                    one.add(state, t, now);
                    (t, one)
                })
                .collect();
            victims.sort_by_cached_key(|(t, one)| (one.key(policy), *t));
            let mut set = VictimSet::default();
            for (t, _) in victims {
                if request.fits_in(&free) {
                    break;
                }
                set.add(state, t, now);
                free.checked_add_assign(&state.jobs[&t.job].spec.request)
                    .expect("victims fit their host");
            }
            if !request.fits_in(&free) || set.tasks.is_empty() {
                continue;
            }
            let within = round.within_budget(state, &set, now);
            let key = set.key(policy);
            // Hosts whose victims respect budgets first, then the cheapest set.
            let better = match &best {
                None => true,
                Some((k, bh, bset)) => {
                    let b_within = round.within_budget(state, bset, now);
                    (Reverse(within), &key, state.hosts[h as usize].rank)
                        < (Reverse(b_within), k, state.hosts[*bh as usize].rank)
                }
            };
            if better {
                best = Some((key, h, set));
            }
        }
        let h = match (waits_for, best) {
            (Some(h), _) => h,
            (None, Some((_, h, set))) => {
                let cause = PreemptCause::Critical { job: job_id };
                out.extend(round.take(state, &set, h, now, &cause, false));
                h
            }
            (None, None) => break,
        };
        // Count the room as taken so the job's next task looks elsewhere.
        let claimed = round.claimed.entry(h).or_default();
        claimed
            .checked_add_assign(request)
            .expect("claims fit the host");
    }
    out
}

/// IE a task holds on a host: the host's IE times the task's dominant share
/// of the host's CPU and memory (see [`crate::ledger`]).
pub(crate) fn task_ie(host_ie: Ie, request: &Resources, capacity: &Resources) -> Ie {
    let share = |r: u64, c: u64| if c == 0 { 0.0 } else { r as f64 / c as f64 };
    let dominant = share(request.cpu_millis, capacity.cpu_millis)
        .max(share(request.memory_mib, capacity.memory_mib));
    host_ie.scale(dominant.min(1.0))
}
