//! One scheduling round: plan placements for every ready task, tier by
//! tier, team by team (DRF), job by job; then undo every tentative charge so
//! the round leaves the state exactly as it found it. [`crate::Scheduler::commit`]
//! applies the plan.

use std::cmp::Reverse;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::ids::{HostId, JobId, PoolId, TaskId};
use crate::job::{Constraint, Price, Tier};
use crate::market::PoolIdx;
use crate::place::index::HostIdx;
use crate::place::reason::{PendingReasons, Reason};
use crate::place::{Pipeline, SearchOutcome};
use crate::preempt::{Preemption, RoundVictims, plan_critical, plan_reclaim};
use crate::queue::{JobRank, TeamOrder, TeamRank};
use crate::resources::Resources;
use crate::state::{State, TeamIdx};
use crate::time::Timestamp;

/// A planned placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub task: TaskId,
    /// The chosen host.
    pub host: HostId,
    /// The host's policy score in `[0, 1]` when it was chosen.
    pub score: f64,
    #[serde(skip)]
    pub(crate) host_idx: HostIdx,
}

/// Ready tasks of one job that the round could not place, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The job.
    pub job: JobId,
    /// How many of its ready tasks were left unplaced.
    pub n_tasks: u32,
    /// Why, counted over hosts.
    pub reasons: Arc<PendingReasons>,
}

/// Counters for one round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStats {
    /// Jobs whose tasks the round tried to place.
    pub n_jobs_considered: u32,
    /// Tasks placed.
    pub n_placed: u32,
    /// Ready tasks left unplaced.
    pub n_unplaced: u32,
    /// Hosts run through the feasibility checkers.
    pub n_hosts_examined: u64,
    /// Jobs answered from the round's failed-shape cache without a host search.
    pub n_shape_cache_hits: u32,
    /// Tasks chosen for preemption.
    pub n_preempted: u32,
}

/// The outcome of [`crate::Scheduler::plan_round`]: nothing has changed yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Round sequence number.
    pub round: u64,
    /// The `now` the round was planned at.
    pub now: Timestamp,
    /// Placements, in the order they were decided. Tasks of a gang job are contiguous.
    pub assignments: Vec<Assignment>,
    /// Jobs with ready tasks left unplaced.
    pub unplaced: Vec<Unplaced>,
    /// Flex tasks to stop: market reclaim first, then room for critical tasks.
    pub preemptions: Vec<Preemption>,
    /// The clearing price of every market-managed pool for this round.
    pub prices: Vec<(PoolId, Price)>,
    /// Counters.
    pub stats: RoundStats,
}

/// Where a team's walk through its jobs stands within a round.
#[derive(Default)]
struct TeamCursor {
    /// Jobs ranked at or before this are done for the round.
    done_through: Option<JobRank>,
    current: Option<JobCursor>,
}

struct JobCursor {
    rank: JobRank,
    last_index: Option<u32>,
    n_placed: u32,
}

/// Key of the failed-shape cache: jobs of one tier with the same request and
/// the same job-independent hard constraints meet the same hosts.
pub(crate) type ShapeKey = (Tier, Resources, Vec<Constraint>);

/// Scratch state of a round being planned.
pub(crate) struct Planner<'a> {
    state: &'a mut State,
    pipeline: &'a Pipeline,
    now: Timestamp,
    assignments: Vec<Assignment>,
    unplaced: Vec<Unplaced>,
    stats: RoundStats,
}

impl<'a> Planner<'a> {
    pub(crate) fn new(state: &'a mut State, pipeline: &'a Pipeline, now: Timestamp) -> Self {
        Planner {
            state,
            pipeline,
            now,
            assignments: Vec::new(),
            unplaced: Vec::new(),
            stats: RoundStats::default(),
        }
    }

    /// Plans reclaim, every tier's placements, room for critical tasks and
    /// prices, then undoes every tentative change.
    pub(crate) fn run(mut self, round: u64) -> Plan {
        let now = self.now;
        // 1. Market reclaim: leases over supply give hosts back. Reclaimed
        //    hosts take no new flex work this round.
        let mut victims = RoundVictims::default();
        let mut preemptions = Vec::new();
        for pool in 0..self.state.market.pools.len() as PoolIdx {
            preemptions.extend(plan_reclaim(self.state, now, pool, &mut victims));
        }
        let mut marked: Vec<HostIdx> = Vec::new();
        for p in &preemptions {
            let host = &mut self.state.hosts[p.host_idx as usize];
            if !host.reclaiming {
                host.reclaiming = true;
                marked.push(p.host_idx);
            }
        }
        // 2. Placement, critical tier first.
        for tier in Tier::ALL {
            self.plan_tier(tier);
        }
        // 3. Critical tasks that only lack room: preempt flex work for them.
        for u in &self.unplaced {
            let job = &self.state.jobs[&u.job];
            if job.spec.tier == Tier::Critical && u.reasons.resolvable_by_preemption() {
                preemptions.extend(plan_critical(
                    self.state,
                    self.pipeline,
                    now,
                    u.job,
                    u.n_tasks,
                    &mut victims,
                ));
            }
        }
        // 4. Prices, from the bids that lost for lack of supply.
        let prices = self.clearing_prices();
        for a in self.assignments.iter().rev() {
            self.state.uncharge(a.task.job, a.host_idx, now);
        }
        for h in marked {
            self.state.hosts[h as usize].reclaiming = false;
        }
        self.stats.n_preempted = preemptions.len() as u32;
        Plan {
            round,
            now,
            assignments: self.assignments,
            unplaced: self.unplaced,
            preemptions,
            prices,
            stats: self.stats,
        }
    }

    /// Per managed pool: the floor, or the highest losing bid when the pool
    /// is contended (a flex job lost for lack of supply and the pool cannot
    /// lease another host). See [`crate::market`].
    fn clearing_prices(&self) -> Vec<(PoolId, Price)> {
        let market = &self.state.market;
        let floor = market.config.floor_price;
        let highest_losing_bid = self
            .unplaced
            .iter()
            .filter(|u| {
                u.reasons
                    .counts
                    .iter()
                    .any(|c| c.reason == Reason::PoolSupply)
            })
            .map(|u| &self.state.jobs[&u.job].spec)
            .filter(|spec| spec.tier == Tier::Flex)
            .map(|spec| spec.bid.unwrap_or(Price::ZERO))
            .max();
        let mut prices = Vec::new();
        for pool in &market.pools {
            let Some(supply) = pool.supply else { continue };
            let price = match highest_losing_bid {
                Some(bid) => {
                    let cheapest_new_lease = pool
                        .hosts
                        .iter()
                        .map(|&h| &self.state.hosts[h as usize])
                        .filter(|h| {
                            h.n_flex_tasks == 0 && h.state == crate::host::HostState::Active
                        })
                        .map(|h| h.ie)
                        .min();
                    let contended = cheapest_new_lease.is_none_or(|ie| pool.leased + ie > supply);
                    if contended { bid.max(floor) } else { floor }
                }
                None => floor,
            };
            prices.push((pool.id.clone(), price));
        }
        prices
    }

    fn team_rank(&self, team: TeamIdx, tier: Tier) -> TeamRank {
        let t = &self.state.teams[team as usize];
        let used = &t.allocated[tier.index()];
        // Below guarantee: under it in the dimension it is most used in.
        let at_or_above_guarantee = t
            .config
            .guarantee
            .get(&tier)
            .is_none_or(|g| used.dominant_share_ppm(g) >= 1_000_000);
        let share = used.dominant_share_ppm(&self.state.active_capacity);
        TeamRank {
            at_or_above_guarantee,
            weighted_share: share.saturating_mul(1000) / u64::from(t.config.weight.max(1)),
            team,
        }
    }

    fn plan_tier(&mut self, tier: Tier) {
        let teams: Vec<TeamIdx> = self.state.queue.teams(tier).collect();
        let mut order = TeamOrder::default();
        let mut cursors: FxHashMap<TeamIdx, TeamCursor> = FxHashMap::default();
        for team in teams {
            order.push(team, Reverse(self.team_rank(team, tier)));
            cursors.insert(team, TeamCursor::default());
        }
        while let Some((team, _)) = order.pop() {
            let cursor = cursors
                .get_mut(&team)
                .expect("every queued team has a cursor");
            let Some((rank, index)) = next_task(self.state, tier, team, cursor) else {
                continue; // the team has nothing left this round
            };
            let job_id = rank.job;
            let job = &self.state.jobs[&job_id];
            let is_new_job = cursor
                .current
                .as_ref()
                .is_some_and(|c| c.last_index.is_none());
            if is_new_job {
                self.stats.n_jobs_considered += 1;
            }
            let n_left = job.ready.len() as u32 - cursor.current.as_ref().map_or(0, |c| c.n_placed);
            let t = &self.state.teams[team as usize];
            let over_cap = t.config.cap.get(&tier).is_some_and(|cap| {
                t.allocated[tier.index()]
                    .shortfall_after_adding(&job.spec.request, cap)
                    .is_some()
            });
            if over_cap {
                self.give_up(
                    job_id,
                    n_left,
                    Arc::new(PendingReasons::task_level(Reason::TeamCapReached)),
                );
                finish_job(cursor);
            } else if job.spec.gang {
                self.place_gang(job_id);
                finish_job(cursor);
            } else {
                match self.place_one(TaskId::new(job_id, index)) {
                    Ok(()) => {
                        let c = cursor.current.as_mut().expect("cursor is on this job");
                        c.last_index = Some(index);
                        c.n_placed += 1;
                    }
                    Err(reasons) => {
                        self.give_up(job_id, n_left, reasons);
                        finish_job(cursor);
                    }
                }
            }
            order.push(team, Reverse(self.team_rank(team, tier)));
        }
    }

    fn give_up(&mut self, job: JobId, n_tasks: u32, reasons: Arc<PendingReasons>) {
        self.stats.n_unplaced += n_tasks;
        self.unplaced.push(Unplaced {
            job,
            n_tasks,
            reasons,
        });
    }

    /// Searches a host for one task and charges it tentatively.
    fn place_one(&mut self, task: TaskId) -> Result<(), Arc<PendingReasons>> {
        let job = &self.state.jobs[&task.job];
        let shape = (!job
            .spec
            .hard_constraints
            .iter()
            .any(Constraint::is_job_dependent))
        .then(|| {
            (
                job.spec.tier,
                job.spec.request.clone(),
                job.spec.hard_constraints.clone(),
            )
        });
        if let Some(reasons) = shape.as_ref().and_then(|s| self.state.failed_shapes.get(s)) {
            self.stats.n_shape_cache_hits += 1;
            return Err(reasons.clone());
        }
        match self.pipeline.search(self.state, job) {
            SearchOutcome::Found {
                host_idx,
                score,
                n_examined,
            } => {
                self.stats.n_hosts_examined += u64::from(n_examined);
                self.stats.n_placed += 1;
                let host = self.state.hosts[host_idx as usize].spec.id.clone();
                self.state.charge(task.job, host_idx, self.now);
                self.assignments.push(Assignment {
                    task,
                    host,
                    score,
                    host_idx,
                });
                Ok(())
            }
            SearchOutcome::NotFound {
                reasons,
                n_examined,
            } => {
                self.stats.n_hosts_examined += u64::from(n_examined);
                let reasons = Arc::new(reasons);
                if let Some(shape) = shape {
                    self.state.failed_shapes.insert(shape, reasons.clone());
                }
                Err(reasons)
            }
        }
    }

    /// Places every ready task of a gang job, or none of them.
    fn place_gang(&mut self, job_id: JobId) {
        let job = &self.state.jobs[&job_id];
        let ready: Vec<u32> = job.ready.iter().copied().collect();
        let n_needed = ready.len() as u32;
        let checkpoint = self.assignments.len();
        let placed_before = self.stats.n_placed;
        for index in ready {
            if let Err(reasons) = self.place_one(TaskId::new(job_id, index)) {
                let n_placed = (self.assignments.len() - checkpoint) as u32;
                for a in self.assignments.drain(checkpoint..).rev() {
                    self.state.uncharge(a.task.job, a.host_idx, self.now);
                }
                self.stats.n_placed = placed_before;
                // The failure just cached for the gang's shape was seen with
                // the gang's own tasks charged; with them rolled back it no
                // longer holds, and a later job of that shape could fit.
                // (Charges only ever grow otherwise, which is what makes the
                // cache sound.)
                self.state.forget_failed_shapes();
                let mut counts = vec![(Reason::GangIncomplete { n_placed, n_needed }, 0)];
                counts.extend(reasons.counts.iter().map(|c| (c.reason.clone(), c.n_hosts)));
                self.give_up(
                    job_id,
                    n_needed,
                    Arc::new(PendingReasons::from_counts(counts)),
                );
                return;
            }
        }
    }
}

fn finish_job(cursor: &mut TeamCursor) {
    if let Some(c) = cursor.current.take() {
        cursor.done_through = Some(c.rank);
    }
}

/// The team's next (job, ready task index) this round, advancing past jobs
/// whose ready tasks were all tried.
fn next_task(
    state: &State,
    tier: Tier,
    team: TeamIdx,
    cursor: &mut TeamCursor,
) -> Option<(JobRank, u32)> {
    loop {
        if cursor.current.is_none() {
            let rank = state
                .queue
                .next_job(tier, team, cursor.done_through.as_ref())?;
            cursor.current = Some(JobCursor {
                rank,
                last_index: None,
                n_placed: 0,
            });
        }
        let c = cursor.current.as_ref().expect("set above");
        let job = &state.jobs[&c.rank.job];
        let next = match c.last_index {
            None => job.ready.first().copied(),
            Some(last) => job.ready.range(last + 1..).next().copied(),
        };
        match next {
            Some(index) => return Some((c.rank, index)),
            None => finish_job(cursor),
        }
    }
}
