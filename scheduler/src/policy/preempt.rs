//! Preemption: choosing victims when the market reclaims supply, or when a
//! critical task cannot fit anywhere. Victims are only ever flex tasks.
//!
//! **Reclaim frees whole hosts.** A host stops counting as leased only when
//! all its flex work has stopped, so reclaim chooses *hosts* and preempts
//! every flex task on each. Hosts are ordered by the [`VictimPolicy`]'s
//! comparison of the host's victims; the default, [`VictimPolicy::Cost`],
//! compares `(highest bid, highest priority, work lost since last checkpoint,
//! number of victims)`, smallest first: cheap, low-value, fresh work goes
//! first and high bids are preempted last.
//!
//! **Budgets.** Ordinary reclaim only takes a host if every job with
//! victims on it stays within its disruption budget. If that leaves the pool
//! over supply, the deficit eats headroom until a budget window frees room
//! (the round reports when, and [`crate::Scheduler::poll_timeout`] includes
//! it) — unless it is an *emergency*: a region is failed over, or leases
//! exceed what streaming leaves (`reserved − streaming`). Then reclaim
//! continues past budgets, and each excess is recorded (`over_budget`) in the
//! plan and, when the victim stops, in the ledger.
//!
//! **Critical placements.** A critical task that lacks only room gets the
//! cheapest sufficient victim set on some host; a critical *gang* gets
//! victims only if room is found for every ready member, so an unplaceable
//! gang never preempts anything.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::model::job::{Job, Phase};
use crate::model::market::leased_hosts;
use crate::model::overlay::View;
use crate::policy::search::Pipeline;
use crate::spec::config::VictimPolicy;
use crate::spec::job::Tier;
use crate::units::ids::{HostId, HostIdx, JobId, PoolId, PoolIdx, RunId, TaskId};
use crate::units::price::Price;
use crate::units::resources::Resources;
use crate::units::time::{DurationMs, Timestamp};
use crate::util::{FxMap, FxSet};

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
    /// A flex job bidding well above the victims' bids needed the room in
    /// a pool whose supply ran out.
    Outbid {
        /// The higher-bidding job.
        job: JobId,
    },
}

/// A planned preemption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preemption {
    /// The victim's run.
    pub run: RunId,
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
}

/// Ranking facts about a set of victims.
#[derive(Clone, Debug, Default)]
pub(crate) struct VictimSet {
    pub(crate) tasks: Vec<TaskId>,
    n: u64,
    max_bid: Price,
    max_priority: i32,
    sum_priority: i64,
    lost_work_ms: u64,
    latest_start: Timestamp,
}

impl VictimSet {
    fn add(&mut self, job: &Job, task: TaskId, now: Timestamp) {
        self.tasks.push(task);
        self.count(job, task, now);
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
}

/// The policy's order over victim sets: `Less` is preempted first.
fn compare(policy: VictimPolicy, a: &VictimSet, b: &VictimSet) -> Ordering {
    match policy {
        VictimPolicy::Cost => a
            .max_bid
            .cmp(&b.max_bid)
            .then(a.max_priority.cmp(&b.max_priority))
            .then(a.lost_work_ms.cmp(&b.lost_work_ms))
            .then(a.n.cmp(&b.n)),
        VictimPolicy::LowestPriorityFirst => a
            .max_priority
            .cmp(&b.max_priority)
            .then(a.max_bid.cmp(&b.max_bid))
            .then(a.n.cmp(&b.n)),
        VictimPolicy::LeastLostWork => a.lost_work_ms.cmp(&b.lost_work_ms).then(a.n.cmp(&b.n)),
        VictimPolicy::FewestVictims => a.n.cmp(&b.n).then(a.lost_work_ms.cmp(&b.lost_work_ms)),
        // Kubernetes' node order for preemption: lowest highest-priority
        // victim, smallest priority sum, fewest victims, latest start first.
        VictimPolicy::Kubernetes => a
            .max_priority
            .cmp(&b.max_priority)
            .then(a.sum_priority.cmp(&b.sum_priority))
            .then(a.n.cmp(&b.n))
            .then(b.latest_start.cmp(&a.latest_start)),
    }
}

/// Work a task would lose if stopped at `now`: time since its last
/// checkpoint, or since it started if it does not checkpoint. A run that has
/// not started loses nothing.
pub(crate) fn lost_work(job: &Job, started_at: Option<Timestamp>, now: Timestamp) -> DurationMs {
    let Some(started) = started_at else {
        return DurationMs::ZERO;
    };
    let ran = now.saturating_since(started).as_millis();
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
    let limit = budget.limit.max_tasks(job.spec.n_tasks);
    Some(limit.saturating_sub(recent.saturating_add(used)))
}

/// When `job`'s budget next gains room: its oldest preemption in the window
/// leaves the window — counting `planned_now` preemptions this round, which
/// will be dated `now`. Never, for a budget that allows none.
fn budget_frees_at(job: &Job, now: Timestamp, planned_now: u32) -> Option<Timestamp> {
    let budget = job.spec.disruption_budget.as_ref()?;
    if budget.limit.max_tasks(job.spec.n_tasks) == 0 {
        return None;
    }
    let since = Timestamp::from_millis(now.as_millis().saturating_sub(budget.window.as_millis()));
    job.preempted_at
        .iter()
        .find(|t| **t > since)
        .copied()
        .or((planned_now > 0).then_some(now))
        .map(|t| t.saturating_add(budget.window))
}

/// A flex task that is assigned or running (not already stopping).
pub(crate) fn is_preemptible(job: &Job, task: TaskId) -> bool {
    job.spec.tier == Tier::Flex && job.tasks[task.index as usize].phase.is_live_run()
}

/// Flex tasks on a host that are not already stopping.
fn preemptible_tasks<'a>(view: &View<'a>, h: HostIdx) -> impl Iterator<Item = TaskId> + 'a {
    let state = view.state;
    state.hosts[h]
        .tasks
        .iter()
        .copied()
        .filter(move |t| is_preemptible(&state.jobs[&t.job], *t))
}

/// Victims planned so far in a round.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoundVictims {
    /// Per job, how many of its tasks were chosen.
    per_job: FxMap<JobId, u32>,
    chosen: FxSet<TaskId>,
    /// Per host, resources its chosen victims will give back.
    freed: FxMap<HostIdx, Resources>,
    /// Per host, resources critical tasks are counting on getting there.
    claimed: FxMap<HostIdx, Resources>,
    /// The earliest instant a disruption budget that blocked reclaim gains room.
    pub(crate) budget_wakeup: Option<Timestamp>,
}

impl RoundVictims {
    fn within_budget(&self, view: &View<'_>, set: &VictimSet, now: Timestamp) -> bool {
        let jobs = &view.state.jobs;
        // Most jobs have no budget: answer those without building a map.
        let budgeted = |t: &&TaskId| jobs[&t.job].spec.disruption_budget.is_some();
        if !set.tasks.iter().any(|t| budgeted(&t)) {
            return true;
        }
        let mut per_job: FxMap<JobId, u32> = FxMap::default();
        for t in set.tasks.iter().filter(budgeted) {
            *per_job.entry(t.job).or_default() += 1;
        }
        per_job.iter().all(|(job, n)| {
            let used = self.per_job.get(job).copied().unwrap_or(0);
            budget_room(&jobs[job], now, used).is_none_or(|room| *n <= room)
        })
    }

    /// Records when the budgets that block `set` next gain room.
    fn note_blocked(&mut self, view: &View<'_>, set: &VictimSet, now: Timestamp) {
        for t in &set.tasks {
            let planned = self.per_job.get(&t.job).copied().unwrap_or(0);
            if let Some(at) = budget_frees_at(&view.state.jobs[&t.job], now, planned) {
                self.budget_wakeup = Some(self.budget_wakeup.map_or(at, |w| w.min(at)));
            }
        }
    }

    /// Chooses every task of `set` (each on its own host) as a victim.
    fn take(
        &mut self,
        view: &View<'_>,
        set: &VictimSet,
        now: Timestamp,
        cause: &PreemptCause,
        emergency: bool,
    ) -> Vec<Preemption> {
        let state = view.state;
        let grace = state.market.config.preempt_grace;
        let mut out = Vec::with_capacity(set.tasks.len());
        for &task in &set.tasks {
            let job = &state.jobs[&task.job];
            let t = &job.tasks[task.index as usize];
            let h = t.phase.host().expect("a victim is placed");
            let used = self.per_job.get(&task.job).copied().unwrap_or(0);
            let over_budget = budget_room(job, now, used) == Some(0);
            *self.per_job.entry(task.job).or_default() += 1;
            self.chosen.insert(task);
            self.freed
                .entry(h)
                .or_default()
                .checked_add_assign(&job.spec.request)
                .expect("freed fits the host");
            out.push(Preemption {
                run: task.run(t.attempt),
                host: state.hosts[h].spec.id.clone(),
                grace,
                cause: cause.clone(),
                emergency,
                over_budget,
            });
        }
        out
    }
}

/// Leases of `pool` that reclaim still has to take back: leased IE minus
/// the hosts whose flex work is all stopping already.
pub(crate) fn projected_leases(view: &View<'_>, pool_idx: PoolIdx) -> crate::units::ie::Ie {
    let state = view.state;
    let mut projected = view.leased(pool_idx);
    for h in leased_hosts(view, pool_idx) {
        if preemptible_tasks(view, h).next().is_none() {
            projected = projected.saturating_sub(state.hosts[h].ie);
        }
    }
    projected
}

/// The victim set that preempting the flex tasks of `tasks` really stops:
/// each of them, and every other live member of the gangs among them (a
/// gang is preempted whole), each task once: `tasks` first, in the order
/// given, then the other members. The order matters to reclaim: commit's
/// re-validation checks the pool's supply at the first preemption on each
/// host and then counts that host's lease as released, so a set's first
/// preemption must be on the host the set empties, not on a gang member's
/// host that still keeps other work.
fn expand_gangs(view: &View<'_>, tasks: impl Iterator<Item = TaskId>, now: Timestamp) -> VictimSet {
    let state = view.state;
    let mut set = VictimSet::default();
    let mut seen: FxSet<TaskId> = FxSet::default();
    let tasks: Vec<TaskId> = tasks.collect();
    for &t in &tasks {
        if seen.insert(t) {
            set.add(&state.jobs[&t.job], t, now);
        }
    }
    for &t in &tasks {
        let job = &state.jobs[&t.job];
        if !job.spec.gang {
            continue;
        }
        for i in 0..job.tasks.len() as u32 {
            let m = TaskId::new(t.job, i);
            if is_preemptible(job, m) && seen.insert(m) {
                set.add(job, m, now);
            }
        }
    }
    set
}

/// Chooses hosts to release so that `pool`'s leases fit its supply. A gang
/// with a member on a chosen host is preempted whole, and counts as one
/// victim set with its other members; hosts that set empties are released too.
pub(crate) fn plan_reclaim(
    view: &View<'_>,
    now: Timestamp,
    pool_idx: PoolIdx,
    round: &mut RoundVictims,
) -> Vec<Preemption> {
    let state = view.state;
    let market = &state.market;
    let pool = &market.pools[pool_idx.get()];
    let Some(supply) = pool.supply else {
        return Vec::new();
    };
    if view.leased(pool_idx) <= supply {
        return Vec::new();
    }
    // Leases already on their way out (every flex task stopping, or the host
    // being reclaimed, or emptied by victims this round) need no reclaiming.
    let mut projected = view.leased(pool_idx);
    let policy = market.config.victim_policy;
    let emptied = |round: &RoundVictims, h: HostIdx| {
        preemptible_tasks(view, h).all(|t| round.chosen.contains(&t))
    };
    // Rank hosts by their victims' facts; victim lists with gangs expanded
    // are built only for the hosts the greedy pass looks at.
    let mut ranked: Vec<(VictimSet, u64, HostIdx)> = Vec::new();
    for h in leased_hosts(view, pool_idx) {
        let host = &state.hosts[h];
        // A host is on its way out only when none of its flex work still
        // runs: a reclaiming mark alone is not trusted.
        let mut facts = VictimSet::default();
        for &t in &host.tasks {
            let job = &state.jobs[&t.job];
            if is_preemptible(job, t) && !round.chosen.contains(&t) {
                facts.count(job, t, now);
            }
        }
        if facts.n == 0 {
            projected = projected.saturating_sub(host.ie);
        } else {
            ranked.push((facts, host.rank, h));
        }
    }
    if projected <= supply {
        return Vec::new();
    }
    // Hosts the forecast marked returning go first: they were kept from new
    // long work so that they would have the least left to lose now.
    let returning = |h: HostIdx| state.hosts[h].returning.is_none();
    ranked.sort_unstable_by(|a, b| {
        returning(a.2)
            .cmp(&returning(b.2))
            .then(compare(policy, &a.0, &b.0))
            .then(a.1.cmp(&b.1))
    });
    let cause = PreemptCause::Reclaim {
        pool: pool.id.clone(),
    };
    let mut out = Vec::new();
    let mut passed_over = Vec::new();
    let mut released: FxSet<HostIdx> = FxSet::default();
    // Takes a set and lowers the projection by every host of the pool it empties.
    let take = |round: &mut RoundVictims,
                released: &mut FxSet<HostIdx>,
                set: &VictimSet,
                h: HostIdx,
                emergency: bool,
                projected: &mut crate::units::ie::Ie,
                out: &mut Vec<Preemption>| {
        out.extend(round.take(view, set, now, &cause, emergency));
        let mut hosts: Vec<HostIdx> = vec![h];
        hosts.extend(
            set.tasks
                .iter()
                .filter_map(|t| state.jobs[&t.job].tasks[t.index as usize].phase.host()),
        );
        for x in hosts {
            let host = &state.hosts[x];
            if host.pool == pool_idx && !released.contains(&x) && emptied(round, x) {
                released.insert(x);
                *projected = projected.saturating_sub(host.ie);
            }
        }
    };
    for &(_, _, h) in &ranked {
        if projected <= supply {
            break;
        }
        if released.contains(&h) {
            continue;
        }
        let set = expand_gangs(
            view,
            preemptible_tasks(view, h).filter(|t| !round.chosen.contains(t)),
            now,
        );
        if round.within_budget(view, &set, now) {
            take(
                round,
                &mut released,
                &set,
                h,
                false,
                &mut projected,
                &mut out,
            );
        } else {
            passed_over.push((h, set));
        }
    }
    let hard_limit = pool.reserved.saturating_sub(pool.streaming_now);
    let emergency = !market.failed_over.is_empty() || projected > hard_limit;
    if projected > supply && emergency {
        // The first pass ran out of candidates, so what it passed over is all that is left.
        for (h, _) in passed_over {
            if projected <= supply {
                break;
            }
            if released.contains(&h) {
                continue;
            }
            // The set passed over was built before the takes that followed
            // it, which may have chosen some of its tasks already (members
            // of a gang taken with another host): build it again.
            let set = expand_gangs(
                view,
                preemptible_tasks(view, h).filter(|t| !round.chosen.contains(t)),
                now,
            );
            if set.tasks.is_empty() {
                continue;
            }
            take(
                round,
                &mut released,
                &set,
                h,
                true,
                &mut projected,
                &mut out,
            );
        }
    } else if projected > supply {
        for (_, set) in &passed_over {
            round.note_blocked(view, set, now);
        }
    }
    out
}

/// What [`plan_room`] makes room for, and whom it may displace.
pub(crate) struct RoomRequest<'a> {
    /// The job that needs room.
    pub(crate) job: JobId,
    /// How many of its tasks.
    pub(crate) n_tasks: u32,
    /// Gangs: no victims unless room is found for all `n_tasks`.
    pub(crate) all_or_nothing: bool,
    /// Why the victims are preempted.
    pub(crate) cause: PreemptCause,
    /// Which flex tasks may be victims (by their job).
    pub(crate) may_displace: &'a dyn Fn(&Job) -> bool,
    /// Only victim sets within every job's disruption budget (bid
    /// displacement); otherwise budget-respecting sets are merely preferred.
    pub(crate) budgets_strict: bool,
    /// Only these hosts (`None`: every active host).
    pub(crate) hosts: Option<&'a [HostIdx]>,
}

/// Frees room for a job's tasks by preempting flex tasks, host by host: on
/// each host the cheapest victims (whole gangs) that make one task fit, and
/// the host whose victim set ranks cheapest (budget-respecting sets first).
/// A host that will fit the task once tasks already stopping have stopped
/// needs no new victims. Room found is claimed, so the job's next task looks
/// elsewhere. With `all_or_nothing`, returns no victims unless room was found
/// for every task, and leaves `round` unchanged then.
pub(crate) fn plan_room(
    view: &View<'_>,
    pipeline: &Pipeline,
    now: Timestamp,
    req: &RoomRequest<'_>,
    round: &mut RoundVictims,
) -> Vec<Preemption> {
    let state = view.state;
    let job = &state.jobs[&req.job];
    let request = &job.spec.request;
    let policy = state.market.config.victim_policy;
    let mut trial = round.clone();
    let mut out = Vec::new();
    let mut n_found = 0;
    let all_hosts: Vec<HostIdx>;
    let hosts: &[HostIdx] = match req.hosts {
        Some(h) => h,
        None => {
            all_hosts = view
                .candidates(crate::model::index::IndexDim::Cpu, 0, false, |_| true, None)
                .collect();
            &all_hosts
        }
    };
    for _ in 0..req.n_tasks {
        let mut best: Option<(HostIdx, VictimSet, bool)> = None;
        let mut waits_for: Option<HostIdx> = None;
        for &h in hosts {
            if pipeline.check_placement_constraints(view, job, h).is_err() {
                continue;
            }
            let host = &state.hosts[h];
            // What the host will have free once stopping tasks and victims
            // already chosen are gone, and claims already made are honoured.
            let mut free = view.free(h);
            for t in &host.tasks {
                let tj = &state.jobs[&t.job];
                if matches!(tj.tasks[t.index as usize].phase, Phase::Stopping { .. }) {
                    free.checked_add_assign(&tj.spec.request)
                        .expect("stopping tasks fit their host");
                }
            }
            if let Some(freed) = trial.freed.get(&h) {
                free.checked_add_assign(freed).expect("freed fits the host");
            }
            if let Some(claimed) = trial.claimed.get(&h) {
                free = free.saturating_sub(claimed);
            }
            if request.fits_in(&free) {
                waits_for = Some(h);
                break;
            }
            let mut victims: Vec<(TaskId, VictimSet)> = preemptible_tasks(view, h)
                .filter(|t| !trial.chosen.contains(t) && (req.may_displace)(&state.jobs[&t.job]))
                .map(|t| (t, expand_gangs(view, std::iter::once(t), now)))
                .collect();
            victims.sort_by(|a, b| compare(policy, &a.1, &b.1).then(a.0.cmp(&b.0)));
            let mut chosen: Vec<TaskId> = Vec::new();
            for (t, _) in victims {
                if request.fits_in(&free) {
                    break;
                }
                if chosen.contains(&t) {
                    continue; // already in as a member of a gang chosen before
                }
                // The victim and its gang: only the members on this host free room here.
                let members = expand_gangs(view, std::iter::once(t), now);
                for m in &members.tasks {
                    if !chosen.contains(m) {
                        chosen.push(*m);
                        let mj = &state.jobs[&m.job];
                        if mj.tasks[m.index as usize].phase.host() == Some(h) {
                            free.checked_add_assign(&mj.spec.request)
                                .expect("victims fit their host");
                        }
                    }
                }
            }
            if !request.fits_in(&free) || chosen.is_empty() {
                continue;
            }
            let set = expand_gangs(view, chosen.into_iter(), now);
            if set
                .tasks
                .iter()
                .any(|t| !(req.may_displace)(&state.jobs[&t.job]))
            {
                continue; // a gang member elsewhere may not be displaced
            }
            let within = trial.within_budget(view, &set, now);
            if req.budgets_strict && !within {
                continue;
            }
            // Hosts whose victims respect budgets first, then the cheapest
            // set, then the host rank (unique, so the choice is deterministic).
            let better = match &best {
                None => true,
                Some((bh, bset, b_within)) => match (within, *b_within) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => compare(policy, &set, bset)
                        .then(host.rank.cmp(&state.hosts[*bh].rank))
                        .is_lt(),
                },
            };
            if better {
                best = Some((h, set, within));
            }
        }
        let h = match (waits_for, best) {
            (Some(h), _) => h,
            (None, Some((h, set, _))) => {
                out.extend(trial.take(view, &set, now, &req.cause, false));
                h
            }
            (None, None) => break,
        };
        n_found += 1;
        // Count the room as taken so the job's next task looks elsewhere.
        trial
            .claimed
            .entry(h)
            .or_default()
            .checked_add_assign(request)
            .expect("claims fit the host");
    }
    if req.all_or_nothing && n_found < req.n_tasks {
        return Vec::new();
    }
    *round = trial;
    out
}
