//! One scheduling round, assembled in one place: reclaim, placement tier by
//! tier, room for critical tasks, prices. The round reads the committed
//! state through an overlay of its own tentative changes and returns a
//! [`Plan`]; nothing is written until [`crate::Scheduler::commit`].
//!
//! ```text
//!   1. reclaim (policy::preempt)      leases over supply → whole hosts back;
//!                                     their hosts take no new flex work
//!   2. placement, critical tier first  teams in weighted-DRF order, one task
//!      (model::queue, policy::search)  per pick, jobs by bid/priority/age;
//!                                     gangs all or none; then the tier's own
//!      (policy::repack)               placements repacked onto fewer hosts
//!                                     if every checker accepts the moves
//!                                     (over 512 tasks: placed again largest
//!                                     first, kept if it opens fewer hosts)
//!   3. room for critical tasks         flex victims for critical work that
//!      (policy::preempt)               only lacks room (gangs: all or none)
//!   4. clearing prices (policy::pricing)
//! ```
//!
//! Ordering rules: reclaim runs first so that hosts being taken back never
//! receive new flex work in the same round; critical placement runs before
//! flex so that flex work never takes room critical work could use;
//! critical preemption runs last because it needs to know what could not be
//! placed.

use std::cmp::Reverse;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::market::leased_hosts;
use crate::model::overlay::{LeaseEnds, Mark, Overlay, View};
use crate::model::queue::{JobRank, TeamOrder, TeamRank};
use crate::model::{ShapeKey, State};
use crate::policy::preempt::{
    PreemptCause, Preemption, RoomRequest, RoundVictims, plan_reclaim, plan_room,
};
use crate::policy::pricing::clearing_prices;
use crate::policy::repack::{Load, N_DIMS, RepackHost, repack};
use crate::policy::search::{Pipeline, SearchOutcome};
use crate::spec::config::SearchOrder;
use crate::spec::job::Tier;
use crate::spec::reason::{PendingReasons, Reason};
use crate::units::ids::{HostId, HostIdx, JobId, PoolId, PoolIdx, RunId, TaskId, TeamIdx};
use crate::units::ie::Ie;
use crate::units::price::Price;
use crate::units::resources::Resources;
use crate::units::time::Timestamp;
use crate::util::{FxMap, FxSet};

/// A planned placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The run the placement starts: the task and its next attempt number.
    pub run: RunId,
    /// The chosen host.
    pub host: HostId,
    /// The host's policy score in `[0, 1]` when it was chosen.
    pub score: f64,
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

/// A change to a host's *returning* mark: the forecast says its lease is
/// needed back at `due` (or, with `None`, no longer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// The host.
    pub host: HostId,
    /// When its capacity is due back; `None` clears the mark.
    pub due: Option<Timestamp>,
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
    /// Jobs answered from the failed-shape cache without a host search.
    pub n_shape_cache_hits: u32,
    /// Tasks placed by a class step: onto the host the search just chose
    /// for an equal task, without another search.
    #[serde(default)]
    pub n_class_steps: u32,
    /// Tasks chosen for preemption.
    pub n_preempted: u32,
}

/// The outcome of [`crate::Scheduler::plan_round`]: nothing has changed yet.
///
/// A plan serializes (for a shell that makes it durable before committing)
/// and commits the same after a round trip: [`crate::Scheduler::commit`]
/// re-validates every decision unless the core is still exactly at the
/// state the plan was made from (its `basis`), in which case it applies the
/// plan's tentative changes directly.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// When a disruption budget that held reclaim back gains room, if one did.
    pub budget_wakeup: Option<Timestamp>,
    /// Hosts to start or stop returning ahead of forecast demand.
    pub drains: Vec<Drain>,
    /// Counters.
    pub stats: RoundStats,
    /// The state generation the plan was made from.
    basis: u64,
    /// Shapes that found no host this round (valid if committed on its basis).
    learned_failures: Vec<(ShapeKey, Arc<PendingReasons>)>,
    /// The round's tentative changes, for committing on an unchanged basis
    /// without re-validation. Not serialized: a deserialized plan re-validates.
    #[serde(skip)]
    overlay: Option<Arc<Overlay>>,
}

impl PartialEq for Plan {
    /// Equal decisions; the in-memory overlay is a cache and does not count.
    fn eq(&self, o: &Plan) -> bool {
        self.round == o.round
            && self.now == o.now
            && self.assignments == o.assignments
            && self.unplaced == o.unplaced
            && self.preemptions == o.preemptions
            && self.prices == o.prices
            && self.budget_wakeup == o.budget_wakeup
            && self.drains == o.drains
            && self.stats == o.stats
            && self.basis == o.basis
            && self.learned_failures == o.learned_failures
    }
}

impl Plan {
    /// The state generation the plan was made from.
    pub fn basis(&self) -> u64 {
        self.basis
    }

    /// True if the plan still carries its tentative changes (it was not
    /// serialized in between).
    pub fn has_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    pub(crate) fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_deref()
    }

    pub(crate) fn learned_failures(&self) -> &[(ShapeKey, Arc<PendingReasons>)] {
        &self.learned_failures
    }
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

/// Scratch state of a round being planned.
pub(crate) struct Planner<'a> {
    state: &'a State,
    pipeline: &'a Pipeline,
    now: Timestamp,
    overlay: Overlay,
    assignments: Vec<Assignment>,
    unplaced: Vec<Unplaced>,
    stats: RoundStats,
    /// Failed shapes learned this round, and the order they were learned in
    /// (a gang rollback forgets the ones learned while its members were charged).
    learned: FxMap<ShapeKey, Arc<PendingReasons>>,
    learned_order: Vec<ShapeKey>,
    /// When each leased host's lease is expected to end, by the forecast
    /// (see [`predict_pool_lease_ends`]), per pool (indexed by pool); empty
    /// without forecasts. A pool's map is worked out the first time a check
    /// asks about one of its hosts (it depends only on the state, `now` and
    /// that pool, so when does not matter): a round that places nothing on
    /// a leased host (most rounds of a quiet fleet) never pays for it, and
    /// one that places on leased hosts of one pool pays for that pool only.
    lease_ends: Vec<std::cell::OnceCell<FxMap<HostIdx, Timestamp>>>,
    /// Searches that found no host (or were answered by the failed-shape
    /// cache) so far this round; a tier with any is not repacked.
    n_failed_searches: u32,
    /// Place equal tasks of a job on one host in one go where the search
    /// provably would ([`Planner::place_class`]); off only in tests that
    /// compare against one-by-one placement.
    class_steps: bool,
}

impl<'a> Planner<'a> {
    pub(crate) fn new(state: &'a State, pipeline: &'a Pipeline, now: Timestamp) -> Self {
        Planner {
            state,
            pipeline,
            now,
            overlay: Overlay::default(),
            assignments: Vec::new(),
            unplaced: Vec::new(),
            stats: RoundStats::default(),
            learned: FxMap::default(),
            learned_order: Vec::new(),
            lease_ends: vec![std::cell::OnceCell::new(); state.market.pools.len()],
            n_failed_searches: 0,
            class_steps: true,
        }
    }

    /// The same planner placing every task through a search of its own.
    #[cfg(test)]
    pub(crate) fn one_by_one(self) -> Self {
        Planner {
            class_steps: false,
            ..self
        }
    }

    fn view(&self) -> View<'_> {
        View::at(self.state, &self.overlay, self.now).with_lease_ends(LeaseEnds {
            cells: &self.lease_ends,
            now: self.now,
            predict: predict_pool_lease_ends,
        })
    }

    /// Plans reclaim, every tier's placements, room for critical tasks and prices.
    pub(crate) fn run(mut self, round: u64) -> Plan {
        let now = self.now;
        let state = self.state;
        // 1. Market reclaim: leases over supply give hosts back. Reclaimed
        //    hosts take no new flex work this round.
        let mut victims = RoundVictims::default();
        let mut preemptions = Vec::new();
        for pool in 0..state.market.pools.len() {
            let view = self.view();
            preemptions.extend(plan_reclaim(
                &view,
                now,
                PoolIdx::from_usize(pool),
                &mut victims,
            ));
        }
        for p in &preemptions {
            let h = state.hosts.idx(&p.host).expect("victim host exists");
            self.overlay.mark_reclaiming(state, h);
        }
        // 2. Placement, critical tier first.
        for tier in Tier::ALL {
            self.plan_tier(tier);
        }
        // 3. Critical tasks that only lack room: preempt flex work for them.
        let flex = |j: &crate::model::job::Job| j.spec.tier == Tier::Flex;
        for u in &self.unplaced {
            let job = &state.jobs[&u.job];
            if job.spec.tier == Tier::Critical && u.reasons.resolvable_by_preemption() {
                let view = View::at(state, &self.overlay, now);
                let req = RoomRequest {
                    job: u.job,
                    n_tasks: u.n_tasks,
                    all_or_nothing: job.spec.gang,
                    cause: PreemptCause::Critical { job: u.job },
                    may_displace: &flex,
                    budgets_strict: false,
                    hosts: None,
                };
                preemptions.extend(plan_room(&view, self.pipeline, now, &req, &mut victims));
            }
        }
        // 3b. Bids preempt: a flex job that lost for lack of a pool's supply
        //     and bids well above some leased host's flex work there may
        //     displace it, within budgets.
        if let Some(margin) = state.market.config.bid_preemption_margin {
            preemptions.extend(self.plan_outbids(margin, &mut victims));
        }
        // 4. Prices, per pool, from the bids that lost for lack of its supply.
        let mut lost: FxMap<PoolIdx, Price> = FxMap::default();
        for u in &self.unplaced {
            let spec = &state.jobs[&u.job].spec;
            if spec.tier != Tier::Flex {
                continue;
            }
            let bid = spec.bid.unwrap_or(Price::ZERO);
            for c in &u.reasons.counts {
                if let Reason::PoolSupply(pool) = &c.reason
                    && let Some(&p) = state.market.pool_by_id.get(pool)
                {
                    let e = lost.entry(p).or_insert(bid);
                    *e = (*e).max(bid);
                }
            }
        }
        // A pool's price never exceeds the bid of a job that won one of its
        // leases this round (the first flex task on a host without flex
        // work): with all-or-nothing gangs, a higher bid can lose while a
        // lower one wins, and the winner must not be priced above its bid.
        // (The overlay's placements are the assignments, by host index.)
        debug_assert_eq!(self.overlay.placements().len(), self.assignments.len());
        let mut won: FxMap<PoolIdx, Price> = FxMap::default();
        let mut new_leases: FxSet<HostIdx> = FxSet::default();
        for &(task, h) in self.overlay.placements() {
            let spec = &state.jobs[&task.job].spec;
            if spec.tier == Tier::Flex && state.hosts[h].n_flex_tasks == 0 && new_leases.insert(h) {
                let bid = spec.bid.unwrap_or(Price::ZERO);
                let e = won.entry(state.hosts[h].pool).or_insert(bid);
                *e = (*e).min(bid);
            }
        }
        let prices = clearing_prices(&self.view(), &lost, &won);
        // 5. Forecast: which leases to return ahead of demand.
        let drains = self.plan_drains();
        debug_assert!(
            {
                let mut runs: Vec<_> = preemptions.iter().map(|p| p.run).collect();
                runs.sort_unstable();
                runs.windows(2).all(|w| w[0] != w[1])
            },
            "a run preempted twice: {preemptions:?}"
        );
        self.stats.n_preempted = preemptions.len() as u32;
        let learned_failures = self
            .learned_order
            .iter()
            .map(|k| (k.clone(), self.learned[k].clone()))
            .collect();
        Plan {
            round,
            now,
            assignments: self.assignments,
            unplaced: self.unplaced,
            preemptions,
            prices,
            budget_wakeup: victims.budget_wakeup,
            drains,
            stats: self.stats,
            basis: state.generation,
            learned_failures,
            overlay: Some(Arc::new(self.overlay)),
        }
    }

    /// Returning hosts (step 5): per pool with a forecast, enough leased
    /// hosts to cover the drop the forecast predicts within the drain lead
    /// are marked due back, those with the least work left first; marks
    /// beyond the need (by more than one host) are cleared, the busiest first.
    ///
    /// Cheap when there is nothing to do, which is most rounds: it walks
    /// only the pools' marked hosts ([`PoolState::returning_hosts`]) and,
    /// when more must be marked, their leased hosts; the work left on a
    /// host (the costly part: every task's job is looked up) is worked out
    /// only when marks are set or cleared.
    ///
    /// [`PoolState::returning_hosts`]: crate::model::market::PoolState::returning_hosts
    fn plan_drains(&self) -> Vec<Drain> {
        let state = self.state;
        let market = &state.market;
        let now = self.now;
        let lead = now.saturating_add(market.config.forecast_drain_lead);
        let view = self.view();
        let mut out = Vec::new();
        for p in 0..market.pools.len() {
            let p = PoolIdx::from_usize(p);
            let pool = &market.pools[p.get()];
            // The marked hosts that still carry flex work, in host order.
            // (A marked host always does: commit marks only leased hosts,
            // and the last flex task leaving clears the mark.)
            let marked: Vec<HostIdx> = pool
                .returning_hosts
                .iter()
                .copied()
                .filter(|&h| view.n_flex(h) > 0)
                .collect();
            if !market.has_forecast(p, now) {
                // Without a forecast a pool only clears marks.
                out.extend(marked.iter().map(|&h| Drain {
                    host: state.hosts[h].spec.id.clone(),
                    due: None,
                }));
                continue;
            }
            let leased = view.leased(p);
            let need = leased.saturating_sub(market.min_forecast_supply(p, now, lead));
            let mut returning: Ie = marked.iter().map(|&h| state.hosts[h].ie).sum();
            let work_left = |h: HostIdx| work_left(state, h, now);
            if need > returning {
                let due = market
                    .forecast_shortfall_at(p, leased, now, lead)
                    .unwrap_or(lead);
                let mut candidates: Vec<(u64, u64, HostIdx)> = leased_hosts(&view, p)
                    .into_iter()
                    .filter(|&h| {
                        let host = &state.hosts[h];
                        host.returning.is_none() && !view.reclaiming(h)
                    })
                    .map(|h| (work_left(h), state.hosts[h].rank, h))
                    .collect();
                candidates.sort_unstable();
                for (_, _, h) in candidates {
                    if returning >= need {
                        break;
                    }
                    returning += state.hosts[h].ie;
                    out.push(Drain {
                        host: state.hosts[h].spec.id.clone(),
                        due: Some(due),
                    });
                }
            } else {
                // A mark is cleared (busiest host first) only while
                // `returning` less that host's IE still covers the need and
                // one host of slack (see below). If no marked host passes
                // that test now, the first in any order stops the loop:
                // nothing is cleared, and their work left is not needed.
                let slack = |ie: Ie| pool.min_host_ie.unwrap_or(ie);
                let clearable = |h: HostIdx| {
                    let ie = state.hosts[h].ie;
                    returning.saturating_sub(ie) >= need
                        && returning.saturating_sub(ie) >= need + slack(ie)
                };
                if !marked.iter().any(|&h| clearable(h)) {
                    continue;
                }
                let mut busiest: Vec<(u64, u64, HostIdx)> = marked
                    .iter()
                    .map(|&h| (work_left(h), state.hosts[h].rank, h))
                    .collect();
                busiest.sort_unstable_by(|a, b| b.cmp(a));
                for (_, _, h) in busiest {
                    let ie = state.hosts[h].ie;
                    if returning.saturating_sub(ie) < need {
                        break;
                    }
                    // Keep one host of slack: marks flapping each round would
                    // send work on and off a host the forecast still doubts.
                    if returning.saturating_sub(ie) < need + slack(ie) {
                        break;
                    }
                    returning -= ie;
                    out.push(Drain {
                        host: state.hosts[h].spec.id.clone(),
                        due: None,
                    });
                }
            }
        }
        out
    }

    /// Bid displacement (step 3b of [`Planner::run`]): highest bids first,
    /// each on the leased hosts of the pools it lost in for lack of supply,
    /// displacing only flex work whose bid is below `bid / (1 + margin)`.
    fn plan_outbids(&self, margin: f64, victims: &mut RoundVictims) -> Vec<Preemption> {
        let state = self.state;
        let mut losers: Vec<(Price, JobId, u32, Vec<PoolIdx>)> = Vec::new();
        for u in &self.unplaced {
            let spec = &state.jobs[&u.job].spec;
            let Some(bid) = spec.bid.filter(|b| *b > Price::ZERO) else {
                continue;
            };
            if spec.tier != Tier::Flex {
                continue;
            }
            let pools: Vec<PoolIdx> = u
                .reasons
                .counts
                .iter()
                .filter_map(|c| match &c.reason {
                    Reason::PoolSupply(p) => state.market.pool_by_id.get(p).copied(),
                    _ => None,
                })
                .collect();
            if !pools.is_empty() {
                losers.push((bid, u.job, u.n_tasks, pools));
            }
        }
        losers.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out = Vec::new();
        for (bid, job, n_tasks, pools) in losers {
            // Below bid / (1 + margin), in micro-units, rounded down.
            let threshold = (bid.as_micros() as f64 / (1.0 + margin)).floor() as u64;
            let may_displace = |j: &crate::model::job::Job| {
                j.spec.tier == Tier::Flex && j.spec.bid.map_or(0, |b| b.as_micros()) < threshold
            };
            let view = self.view();
            let hosts: Vec<HostIdx> = pools
                .iter()
                .flat_map(|&p| leased_hosts(&view, p))
                .filter(|&h| !view.reclaiming(h))
                .collect();
            let spec = &state.jobs[&job].spec;
            let req = RoomRequest {
                job,
                n_tasks,
                all_or_nothing: spec.gang,
                cause: PreemptCause::Outbid { job },
                may_displace: &may_displace,
                budgets_strict: true,
                hosts: Some(&hosts),
            };
            out.extend(plan_room(&view, self.pipeline, self.now, &req, victims));
        }
        out
    }

    /// A team's place in the tier's order for its next pick. In the flex
    /// tier the team's next job's bid comes first (the market: a higher bid
    /// is served first, whatever the team), and fair share orders teams
    /// bidding the same; the critical tier ignores bids.
    fn team_rank(&self, team: TeamIdx, tier: Tier, cursor: Option<&TeamCursor>) -> TeamRank {
        let bid = match tier {
            Tier::Critical => Price::ZERO,
            Tier::Flex => {
                let head = match cursor.and_then(|c| c.current.as_ref()) {
                    Some(c) => Some(c.rank),
                    None => self.state.queue.next_job(
                        tier,
                        team,
                        cursor.and_then(|c| c.done_through.as_ref()),
                    ),
                };
                head.map_or(Price::ZERO, |r| r.bid())
            }
        };
        let t = &self.state.teams[team.get()];
        let used = self.view().team_allocated(team, tier);
        // Below guarantee: under it in the dimension it is most used in.
        let at_or_above_guarantee = t
            .config
            .guarantee
            .get(&tier)
            .is_none_or(|g| used.dominant_share_ppm(g) >= 1_000_000);
        let share = used.dominant_share_ppm(&self.state.active_capacity);
        TeamRank {
            bid: Reverse(bid),
            at_or_above_guarantee,
            weighted_share: share.saturating_mul(1000) / u64::from(t.config.weight.max(1)),
            name: t.id.clone(),
        }
    }

    fn plan_tier(&mut self, tier: Tier) {
        // The repack (below) may take the tier's placements back: keep them
        // undoable until it has decided. Unless it cannot: it moves only a
        // mix of request shapes (see `repack_tier`), and if every job queued
        // in the tier asks the same, no admission can place a mix. Then the
        // overlay keeps no undo log (a copy of each figure a placement
        // changes), which is most of what a charge costs in a big round.
        let repack = self.state.config.policy(tier).repack && self.queue_mixes_requests(tier);
        let mark = repack.then(|| self.overlay.checkpoint());
        let first = self.assignments.len();
        let failures_before = self.n_failed_searches;
        self.admit_tier(tier);
        match mark {
            Some(mark) if self.n_failed_searches == failures_before => {
                self.repack_tier(tier, first, mark);
            }
            // Something found no host: its reason was learned against these
            // placements (and may be cached for later rounds), so they stay.
            Some(mark) => self.overlay.keep(mark),
            None => {}
        }
    }

    /// True unless every job queued in `tier` has the same request.
    fn queue_mixes_requests(&self, tier: Tier) -> bool {
        let jobs = &self.state.jobs;
        let mut requests = self.state.queue.jobs(tier).map(|j| &jobs[&j].spec.request);
        let first = requests.next();
        requests.any(|r| Some(r) != first)
    }

    /// The tier's admission: teams in weighted-DRF order, one task per pick,
    /// each placed by the host search as it is admitted.
    fn admit_tier(&mut self, tier: Tier) {
        let teams: Vec<TeamIdx> = self.state.queue.teams(tier).collect();
        let mut order = TeamOrder::default();
        let mut cursors: FxMap<TeamIdx, TeamCursor> = FxMap::default();
        for team in teams {
            order.push(team, Reverse(self.team_rank(team, tier, None)));
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
            // A gang is checked against the cap as a whole: it is placed all at once.
            let asking = if job.spec.gang {
                job.spec
                    .request
                    .checked_mul(u64::from(n_left))
                    .expect("a validated gang's total fits")
            } else {
                job.spec.request.clone()
            };
            let t = &self.state.teams[team.get()];
            let over_cap = t.config.cap.get(&tier).is_some_and(|cap| {
                cap.excess_after_adding(self.view().team_allocated(team, tier), &asking)
                    .is_some()
            });
            if over_cap {
                self.give_up(
                    job_id,
                    n_left,
                    Arc::new(PendingReasons::task_level(Reason::TeamCapReached)),
                );
                finish_job(cursor);
            } else if job.spec.gang && (job.ready.len() as u32) < job.n_live {
                // Members still running or stopping (a restart in progress)
                // or backing off: the gang starts only whole.
                let n_not_ready = job.n_live - job.ready.len() as u32;
                self.give_up(
                    job_id,
                    n_left,
                    Arc::new(PendingReasons::task_level(Reason::GangWaiting {
                        n_not_ready,
                    })),
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
                        // The only team left would be picked again at once:
                        // place the job's next equal tasks on the same host
                        // while the search provably would.
                        if order.is_empty() && self.class_steps {
                            self.place_class(tier, job_id, c);
                        }
                    }
                    Err(reasons) => {
                        self.give_up(job_id, n_left, reasons);
                        finish_job(cursor);
                    }
                }
            }
            let rank = self.team_rank(team, tier, cursors.get(&team));
            order.push(team, Reverse(rank));
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
        let state = self.state;
        let job = &state.jobs[&task.job];
        let shape = ShapeKey::of(job);
        if let Some(shape) = &shape {
            let cached = self
                .learned
                .get(shape)
                .or_else(|| state.failed_shapes.get(shape));
            if let Some(reasons) = cached {
                self.n_failed_searches += 1;
                self.stats.n_shape_cache_hits += 1;
                return Err(reasons.clone());
            }
        }
        let outcome = self.pipeline.search(&self.view(), job);
        match outcome {
            SearchOutcome::Found {
                host_idx,
                score,
                n_examined,
            } => {
                self.stats.n_hosts_examined += u64::from(n_examined);
                self.stats.n_placed += 1;
                let host = state.hosts[host_idx].spec.id.clone();
                self.overlay.charge(state, task, host_idx, true);
                let attempt = job.tasks[task.index as usize].attempt + 1;
                self.assignments.push(Assignment {
                    run: task.run(attempt),
                    host,
                    score,
                });
                Ok(())
            }
            SearchOutcome::NotFound {
                reasons,
                n_examined,
            } => {
                self.n_failed_searches += 1;
                self.stats.n_hosts_examined += u64::from(n_examined);
                let reasons = Arc::new(reasons);
                if let Some(shape) = shape
                    && !self.learned.contains_key(&shape)
                {
                    self.learned.insert(shape.clone(), reasons.clone());
                    self.learned_order.push(shape);
                }
                Err(reasons)
            }
        }
    }

    /// Class steps: after the search put a task of `job_id` on host h,
    /// places the job's next ready tasks on h too, one check and one score
    /// each instead of a search each, as long as the search would provably
    /// choose h again. The caller guarantees that no other team waits in the
    /// tier, so one-by-one placement would pick this job's next task next.
    ///
    /// Why the search would choose h again (tightest-first walk, job without
    /// hard or soft constraints, team without a cap, and h already leased
    /// before the last placement or in a pool without a supply, so no
    /// leased total that a check reads changed; h's move between index
    /// partitions does not reorder the walk, which merges them by key):
    /// placing a task changes only h. h moves *earlier* in the walk (less
    /// free room), so the hosts walked before it are a subset of those
    /// walked before it last time, untouched, with the same feasibility and
    /// scores, all below h's old score; the feasible hosts scored are the
    /// same set as before. So if h still passes every checker and its new
    /// score is at least its old one, it is still the first host with the
    /// highest score: the search would return h. Stops at the first task for
    /// which any of this fails; the next pick then searches.
    ///
    /// The check is the whole pipeline on the first step and the resource
    /// fit alone after it ([`Pipeline::recheck_equal_task`] says why). Each
    /// step counts one host examined (the search it replaces would have
    /// counted the hosts before h too). The steps of one call are charged to
    /// the overlay as one run ([`Overlay::open_run`]).
    fn place_class(&mut self, tier: Tier, job_id: JobId, cursor: &mut JobCursor) {
        let state = self.state;
        let job = &state.jobs[&job_id];
        let policy = state.config.policy(tier);
        let team = &state.teams[job.team.get()];
        if job.spec.gang
            || !job.spec.hard_constraints.is_empty()
            || !job.spec.soft_constraints.is_empty()
            || policy.search_order != SearchOrder::TightestFirst
            || team.config.cap.contains_key(&tier)
        {
            return;
        }
        let Some(&(_, h)) = self.overlay.placements().last() else {
            return;
        };
        let mut last_score = self.assignments.last().expect("just placed").score;
        // A flex task that leased h changed its pool's leased total, which
        // other hosts' supply checks read (and which partitions a flex
        // search walks): their feasibility may have changed. Not so in a
        // pool without a supply, where nothing reads that total; h's own
        // move to the leased partition does not change the walk's order,
        // which merges partitions by key.
        if tier == Tier::Flex
            && self.view().n_flex(h) < 2
            && state.market.limits_leases(state.hosts[h].pool)
        {
            return;
        }
        let host_id = &state.hosts[h].spec.id;
        // No search runs until the class ends, so h is charged as one run:
        // its own figures (all that the checks and scores of a job without
        // constraints read) step by step, the rest once, at the end.
        self.overlay.open_run(h, job_id);
        let mut first = true;
        for &index in job.ready.range(cursor.last_index.map_or(0, |l| l + 1)..) {
            let view = self.view();
            // The first step runs every checker (the search checked h before
            // its own placement, which may have leased h); after a step on a
            // host the job already had a task on, only the fit can change.
            let feasible = if first {
                self.pipeline.check(&view, job, h)
            } else {
                self.pipeline.recheck_equal_task(&view, job, h)
            };
            debug_assert_eq!(feasible, self.pipeline.check(&view, job, h));
            if feasible.is_err() {
                break;
            }
            first = false;
            let score = self.pipeline.score(policy, &view, job, h);
            if score < last_score {
                break;
            }
            let task = TaskId::new(job_id, index);
            self.overlay.add_to_run(state, task);
            let attempt = job.tasks[index as usize].attempt + 1;
            self.assignments.push(Assignment {
                run: task.run(attempt),
                host: host_id.clone(),
                score,
            });
            self.stats.n_placed += 1;
            self.stats.n_hosts_examined += 1;
            self.stats.n_class_steps += 1;
            cursor.last_index = Some(index);
            cursor.n_placed += 1;
            last_score = score;
        }
        self.overlay.close_run(state);
    }

    /// Places every ready task of a gang job, or none of them.
    fn place_gang(&mut self, job_id: JobId) {
        let job = &self.state.jobs[&job_id];
        let ready: Vec<u32> = job.ready.iter().copied().collect();
        let n_needed = ready.len() as u32;
        let mark = self.overlay.checkpoint();
        let n_assigned = self.assignments.len();
        let n_learned = self.learned_order.len();
        let placed_before = self.stats.n_placed;
        for index in ready {
            if let Err(reasons) = self.place_one(TaskId::new(job_id, index)) {
                let n_placed = (self.assignments.len() - n_assigned) as u32;
                self.overlay.rollback(self.state, mark);
                self.assignments.truncate(n_assigned);
                self.stats.n_placed = placed_before;
                // Failures learned while the gang's own members were charged
                // no longer hold once they are rolled back.
                for k in self.learned_order.drain(n_learned..) {
                    self.learned.remove(&k);
                }
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
        self.overlay.keep(mark);
    }
}

/// Largest tier round the repack looks at. Its search is quadratic in the
/// tasks on the hosts it compares; past a few hundred tasks a round is a
/// fill of many hosts, where one host more or less matters less than the
/// time, and each host's admission order already mixed shapes.
const REPACK_MAX_TASKS: usize = 512;

impl Planner<'_> {
    /// Round repacking (after a tier's admission, see [`repack`]): offers
    /// the tier's movable placements to the local search, replays its
    /// proposal through every checker in the original decision order, and
    /// keeps it only if every placement passes; otherwise the admission's
    /// own placements are restored. The tasks placed, their order and the
    /// accounting of teams, pools and gangs are the same either way: only
    /// hosts (and scores) change, and only when a host the tier opened ends
    /// up empty. Movable: tasks without hard or soft constraints, GPUs or
    /// named scalars; the rest stay where admission put them.
    ///
    /// Skipped, for speed, when every movable task has the same request (a
    /// job array, Fenzo's shape: the common large round): a bin-packing
    /// search fills each host it opens before it opens the next, so there
    /// is nothing to gain. With a spreading or aligning scorer there could
    /// be; that is the price of keeping such rounds free of the search.
    fn repack_tier(&mut self, tier: Tier, first: usize, mark: Mark) {
        let state = self.state;
        let n = self.assignments.len() - first;
        let placements = self.overlay.placements();
        if n < 2 || placements.len() < n {
            self.overlay.keep(mark);
            return;
        }
        let placed: Vec<(TaskId, HostIdx)> = placements[placements.len() - n..].to_vec();
        debug_assert!(
            placed
                .iter()
                .zip(&self.assignments[first..])
                .all(|(p, a)| p.0 == a.run.task),
            "the overlay's last placements are the tier's assignments"
        );
        let movable = |task: TaskId| movable(state, task);
        let mut requests = placed
            .iter()
            .filter(|&&(t, _)| movable(t))
            .map(|&(t, _)| &state.jobs[&t.job].spec.request);
        let first_request = requests.next();
        let mixed = requests.any(|r| Some(r) != first_request);
        if !mixed {
            self.overlay.keep(mark);
            return;
        }
        if n > REPACK_MAX_TASKS {
            self.replace_largest_first(tier, first, &placed, mark);
            return;
        }
        let load = |r: &Resources| -> Load {
            [
                r.cpu_millis,
                r.memory_mib,
                r.disk_mib,
                r.network_mbps,
                r.gpus,
            ]
        };
        // The touched hosts in first-touch order, and each movable task's slot.
        let mut slot_of: FxMap<HostIdx, usize> = FxMap::default();
        let mut host_idxs: Vec<HostIdx> = Vec::new();
        let mut items: Vec<Load> = Vec::new();
        let mut start: Vec<usize> = Vec::new();
        let mut moved_load: Vec<Load> = Vec::new();
        for &(task, h) in &placed {
            let slot = *slot_of.entry(h).or_insert_with(|| {
                host_idxs.push(h);
                moved_load.push([0; N_DIMS]);
                host_idxs.len() - 1
            });
            if movable(task) {
                let l = load(&state.jobs[&task.job].spec.request);
                for d in 0..N_DIMS {
                    moved_load[slot][d] += l[d];
                }
                items.push(l);
                start.push(slot);
            }
        }
        let view = self.view();
        let hosts: Vec<RepackHost> = host_idxs
            .iter()
            .zip(&moved_load)
            .map(|(&h, moved)| {
                let allocated = view.allocated(h);
                let all = load(allocated);
                let fixed: Load = std::array::from_fn(|d| all[d] - moved[d]);
                RepackHost {
                    capacity: load(&view.host(h).spec.capacity),
                    fixed,
                    may_empty: fixed == [0; N_DIMS] && allocated.scalars.values().all(|v| *v == 0),
                }
            })
            .collect();
        let Some(proposal) = repack(&hosts, &items, &start) else {
            self.overlay.keep(mark);
            return;
        };
        let mut proposal = proposal.into_iter();
        let new_hosts: Vec<HostIdx> = placed
            .iter()
            .map(|&(task, h_old)| {
                if movable(task) {
                    host_idxs[proposal.next().expect("one proposal per movable task")]
                } else {
                    h_old
                }
            })
            .collect();
        self.overlay.rollback(state, mark);
        self.adopt_hosts(tier, first, &placed, &new_hosts);
    }

    /// Replays the tier's placements (`placed`, in decision order) onto
    /// `new_hosts` through every checker, in decision order, and keeps the
    /// result only if every placement passes; otherwise puts every task
    /// back on its admission host. The overlay must be at the tier's start
    /// (its checkpoint rolled back).
    fn adopt_hosts(
        &mut self,
        tier: Tier,
        first: usize,
        placed: &[(TaskId, HostIdx)],
        new_hosts: &[HostIdx],
    ) {
        let state = self.state;
        let mark = self.overlay.checkpoint();
        let policy = state.config.policy(tier);
        let mut scores = Vec::with_capacity(placed.len());
        for (&(task, _), &h) in placed.iter().zip(new_hosts) {
            let job = &state.jobs[&task.job];
            let view = self.view();
            if self.pipeline.check(&view, job, h).is_err() {
                self.overlay.rollback(state, mark);
                self.restore(placed);
                return;
            }
            scores.push(self.pipeline.score(policy, &view, job, h));
            self.overlay.charge(state, task, h, true);
        }
        self.overlay.keep(mark);
        for ((a, &h), score) in self.assignments[first..]
            .iter_mut()
            .zip(new_hosts)
            .zip(scores)
        {
            a.host = state.hosts[h].spec.id.clone();
            a.score = score;
        }
    }

    /// Charges the tier's placements again on their admission hosts (the
    /// overlay at the tier's start); the assignments still say so.
    fn restore(&mut self, placed: &[(TaskId, HostIdx)]) {
        let mark = self.overlay.checkpoint();
        for &(task, h) in placed {
            self.overlay.charge(self.state, task, h, true);
        }
        self.overlay.keep(mark);
    }

    /// Round repacking for a tier round too big for the local search
    /// (over [`REPACK_MAX_TASKS`]): the admission placed tasks in
    /// weighted-DRF and priority order, which can interleave small and
    /// large requests; first-fit-decreasing's lesson is that large first
    /// packs better. So the tier's movable tasks are placed again, largest
    /// first: by the sum of their shares of the active fleet's capacity
    /// over every dimension (ties: larger dominant share, then decision
    /// order), each by the full host search, after
    /// the tier's other placements are put back where admission put them.
    /// Who is admitted does not change (the same tasks, so tier order,
    /// fair share and gangs are as admission decided); only hosts do, and
    /// only if the new layout opens fewer hosts (hosts that held nothing
    /// before the tier) and every placement then passes every checker again
    /// in decision order ([`Planner::adopt_hosts`]). A search that finds no
    /// host, or a layout no better, restores admission's. Skipped when the
    /// movable tasks were already admitted largest first. Like the local
    /// search's, its work is not counted in the round's stats (hosts
    /// examined count admission's searches only).
    fn replace_largest_first(
        &mut self,
        tier: Tier,
        first: usize,
        placed: &[(TaskId, HostIdx)],
        mark: Mark,
    ) {
        let state = self.state;
        let capacity = &state.active_capacity;
        let size = |k: usize| -> (f64, f64) {
            let f = state.jobs[&placed[k].0.job]
                .spec
                .request
                .fractions_of(capacity);
            (f.iter().sum(), f.iter().copied().fold(0.0, f64::max))
        };
        let mut order: Vec<(usize, (f64, f64))> = (0..placed.len())
            .filter(|&k| movable(state, placed[k].0))
            .map(|k| (k, size(k)))
            .collect();
        let larger = |a: &(f64, f64), b: &(f64, f64)| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1));
        // Already largest first (sums within rounding of each other count
        // as equal, so an order computed elsewhere from the same requests
        // is recognized): nothing to gain.
        if order
            .windows(2)
            .all(|w| w[1].1.0 <= w[0].1.0 * (1.0 + 1e-9))
        {
            self.overlay.keep(mark);
            return;
        }
        order.sort_by(|a, b| larger(&a.1, &b.1).then(a.0.cmp(&b.0)));
        // Trial: the fixed placements where admission put them, then the
        // movable ones by search, largest first.
        self.overlay.rollback(state, mark);
        let trial = self.overlay.checkpoint();
        let admission: Vec<HostIdx> = placed.iter().map(|&(_, h)| h).collect();
        let mut new_hosts = admission.clone();
        for &(task, h) in placed.iter().filter(|&&(t, _)| !movable(state, t)) {
            self.overlay.charge(state, task, h, true);
        }
        let mut ok = true;
        for &(k, _) in &order {
            let task = placed[k].0;
            match self.pipeline.search(&self.view(), &state.jobs[&task.job]) {
                SearchOutcome::Found { host_idx, .. } => {
                    self.overlay.charge(state, task, host_idx, true);
                    new_hosts[k] = host_idx;
                }
                SearchOutcome::NotFound { .. } => {
                    ok = false;
                    break;
                }
            }
        }
        self.overlay.rollback(state, trial);
        // Back at the tier's start: a host a layout opens is one that
        // holds nothing now.
        let fewer_opened = ok && {
            let view = self.view();
            let n_opened = |hosts: &[HostIdx]| {
                let empty = hosts.iter().filter(|&&h| view.allocated(h).is_zero());
                empty.collect::<FxSet<_>>().len()
            };
            n_opened(&new_hosts) < n_opened(&admission)
        };
        if fewer_opened {
            self.adopt_hosts(tier, first, placed, &new_hosts);
        } else {
            self.restore(placed);
        }
    }
}

/// Whether round repacking may move `task`: no hard or soft constraints,
/// GPUs or named scalars (the rest stay where admission put them).
fn movable(state: &State, task: TaskId) -> bool {
    let spec = &state.jobs[&task.job].spec;
    spec.hard_constraints.is_empty()
        && spec.soft_constraints.is_empty()
        && spec.request.gpus == 0
        && spec.request.scalars.is_empty()
}

#[cfg(test)]
mod tests;

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

/// Work left on a host (ms), by its tasks' declared runtimes; unknown
/// runtimes count as a whole drain lead.
fn work_left(state: &State, h: HostIdx, now: Timestamp) -> u64 {
    let lead = state.market.config.forecast_drain_lead.as_millis();
    state.hosts[h]
        .tasks
        .iter()
        .map(|t| {
            let job = &state.jobs[&t.job];
            let task = &job.tasks[t.index as usize];
            let ran = task
                .started_at
                .map_or(0, |s| now.saturating_since(s).as_millis());
            match job.spec.expected_runtime {
                Some(d) => d.as_millis().saturating_sub(ran),
                None => lead,
            }
        })
        .sum()
}

/// When each leased host of pool `p` is expected to end, by the demand
/// forecast (nothing without one): leased hosts are put in the order they
/// would be given back — hosts already marked returning by their due time,
/// then the rest by least work left (the order drains pick them in) — and
/// host k of that order ends when the forecast supply first falls below the
/// pool's leased IE less the hosts before it. Placement keeps work off a
/// host whose lease ends before the work would, so the host predicted to go
/// first keeps the shortest work and stays first: the order is stable.
///
/// A pool's answer reads only that pool's leases and forecast, so pools
/// can be worked out one at a time, each when first asked.
pub(crate) fn predict_pool_lease_ends(
    state: &State,
    now: Timestamp,
    p: PoolIdx,
) -> FxMap<HostIdx, Timestamp> {
    let market = &state.market;
    let mut out = FxMap::default();
    if !market.has_forecast(p, now) {
        return out;
    }
    let pool = &market.pools[p.get()];
    let mut order: Vec<(bool, Option<Timestamp>, u64, u64, HostIdx)> = pool
        .leased_hosts
        .iter()
        .copied()
        .map(|h| {
            let host = &state.hosts[h];
            let not_returning = host.returning.is_none();
            (
                not_returning,
                host.returning,
                work_left(state, h, now),
                host.rank,
                h,
            )
        })
        .collect();
    if order.is_empty() {
        return out;
    }
    order.sort_unstable();
    let leased: Ie = order.iter().map(|o| state.hosts[o.4].ie).sum();
    let mut thresholds = Vec::with_capacity(order.len());
    let mut before = Ie::ZERO;
    for o in &order {
        thresholds.push(leased.saturating_sub(before));
        before += state.hosts[o.4].ie;
    }
    let ends = market.shortfall_times(p, now, &thresholds);
    for (o, end) in order.iter().zip(ends) {
        if let Some(end) = end {
            out.insert(o.4, end);
        }
    }
    out
}
