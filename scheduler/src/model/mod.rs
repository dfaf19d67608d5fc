//! The core's model: hosts and their index, jobs and tasks, teams, zones,
//! the queue, the market's pools and the ledger, and the one code path
//! ([`State::charge`]) that moves tasks onto or off a host and updates every
//! account that depends on it. Planning never writes here: it works on an
//! [`overlay::Overlay`] of tentative changes, which commit applies through
//! the same charge path.

pub(crate) mod host;
pub(crate) mod index;
pub(crate) mod job;
pub(crate) mod ledger;
pub(crate) mod market;
pub(crate) mod overlay;
pub(crate) mod queue;

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model::host::HostTable;
use crate::model::index::HostIndex;
use crate::model::job::Job;
use crate::model::ledger::dominant_ppm;
use crate::model::market::Market;
use crate::model::queue::JobQueue;
use crate::spec::config::{SchedulerConfig, TeamConfig, TieBreak};
use crate::spec::error::InputError;
use crate::spec::host::HostState;
use crate::spec::job::{Constraint, Tier};
use crate::spec::reason::PendingReasons;
use crate::units::ids::{HostIdx, JobId, TaskId, TeamId, TeamIdx, ZoneIdx};
use crate::units::resources::Resources;
use crate::units::time::Timestamp;
use crate::util::FxMap;

pub(crate) use host::Host;
pub(crate) use job::Task;

/// A team's fair-share state.
#[derive(Clone, Debug)]
pub(crate) struct Team {
    pub(crate) id: TeamId,
    pub(crate) config: TeamConfig,
    /// Resources held per tier (indexed by [`Tier::index`]).
    pub(crate) allocated: [Resources; 2],
    /// The team's known jobs, for listing by team.
    pub(crate) jobs: BTreeSet<JobId>,
}

/// Key of the failed-shape cache: jobs of one tier with the same request,
/// the same job-independent hard constraints and the same declared runtime
/// and checkpointing (which the forecast checks read) meet the same hosts.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub(crate) struct ShapeKey {
    pub(crate) tier: Tier,
    pub(crate) request: Resources,
    pub(crate) constraints: Vec<Constraint>,
    /// The forecast checks depend on these too.
    pub(crate) expected_runtime: Option<crate::units::time::DurationMs>,
    pub(crate) checkpoints: bool,
}

impl ShapeKey {
    /// The job's shape, or `None` if a job-dependent constraint (unique host,
    /// zone balance) makes its outcome depend on where its own tasks are.
    pub(crate) fn of(job: &Job) -> Option<ShapeKey> {
        let spec = &job.spec;
        (!spec
            .hard_constraints
            .iter()
            .any(Constraint::is_job_dependent))
        .then(|| ShapeKey {
            tier: spec.tier,
            request: spec.request.clone(),
            constraints: spec.hard_constraints.clone(),
            expected_runtime: spec.expected_runtime,
            checkpoints: spec.checkpoint_interval.is_some(),
        })
    }
}

/// All mutable state of the core.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub(crate) config: SchedulerConfig,
    pub(crate) hosts: HostTable,
    pub(crate) index: HostIndex,
    pub(crate) zones: Vec<Arc<str>>,
    /// Active hosts per zone.
    pub(crate) zone_active_hosts: Vec<u32>,
    pub(crate) jobs: FxMap<JobId, Job>,
    /// Every known job, for listing in id order.
    pub(crate) job_order: BTreeSet<JobId>,
    /// Finished jobs by the time they finished, for retention.
    pub(crate) finished: BTreeSet<(Timestamp, JobId)>,
    /// Idempotency keys of known jobs, per team.
    pub(crate) request_keys: FxMap<(TeamIdx, String), JobId>,
    pub(crate) teams: Vec<Team>,
    pub(crate) team_by_id: FxMap<TeamId, TeamIdx>,
    /// Per unique-host group: tasks per host.
    pub(crate) unique_groups: FxMap<Arc<str>, FxMap<HostIdx, u32>>,
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
    /// market input. Those call [`State::forget_failed_shapes`].
    pub(crate) failed_shapes: FxMap<ShapeKey, Arc<PendingReasons>>,
    /// When a disruption budget that blocked reclaim next gains room.
    pub(crate) budget_wakeup: Option<Timestamp>,
    /// Bumped by every change; a plan made at the current generation can be
    /// committed without re-validation.
    pub(crate) generation: u64,
    /// The latest `now` any input carried; time never goes backwards.
    pub(crate) last_now: Timestamp,
}

impl State {
    pub(crate) fn new(config: SchedulerConfig) -> Result<Self, InputError> {
        let market = Market::new(config.market.clone())?;
        Ok(State {
            config,
            hosts: HostTable::default(),
            index: HostIndex::default(),
            zones: Vec::new(),
            zone_active_hosts: Vec::new(),
            jobs: FxMap::default(),
            job_order: BTreeSet::new(),
            finished: BTreeSet::new(),
            request_keys: FxMap::default(),
            teams: Vec::new(),
            team_by_id: FxMap::default(),
            unique_groups: FxMap::default(),
            queue: JobQueue::default(),
            active_capacity: Resources::default(),
            allocated: Resources::default(),
            n_draining: 0,
            n_hosts_added: 0,
            market,
            failed_shapes: FxMap::default(),
            budget_wakeup: None,
            generation: 0,
            last_now: Timestamp::ZERO,
        })
    }

    /// The team's index, creating the team with its configured (or default) policy.
    pub(crate) fn team_idx(&mut self, id: &TeamId) -> TeamIdx {
        if let Some(&t) = self.team_by_id.get(id) {
            return t;
        }
        let idx = TeamIdx::from_usize(self.teams.len());
        let config = self.config.teams.get(id).cloned().unwrap_or_default();
        self.teams.push(Team {
            id: id.clone(),
            config,
            allocated: Default::default(),
            jobs: BTreeSet::new(),
        });
        self.team_by_id.insert(id.clone(), idx);
        idx
    }

    pub(crate) fn zone_idx(&mut self, zone: &str) -> ZoneIdx {
        if let Some(i) = self.zones.iter().position(|z| &**z == zone) {
            return ZoneIdx::from_usize(i);
        }
        self.zones.push(zone.into());
        self.zone_active_hosts.push(0);
        ZoneIdx::from_usize(self.zones.len() - 1)
    }

    /// Something freed room: cached shape failures may no longer hold.
    pub(crate) fn forget_failed_shapes(&mut self) {
        if !self.failed_shapes.is_empty() {
            self.failed_shapes.clear();
        }
    }

    /// A host's tie-break rank for its arrival number `seq`.
    pub(crate) fn rank_of(&self, seq: u64) -> u64 {
        match self.config.tie_break {
            TieBreak::HostOrder => seq,
            // SplitMix64 is a bijection, so distinct hosts get distinct ranks.
            TieBreak::Seeded(seed) => splitmix64(seed ^ splitmix64(seq)),
        }
    }

    pub(crate) fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub(crate) fn task(&self, id: TaskId) -> Option<&Task> {
        self.jobs.get(&id.job)?.tasks.get(id.index as usize)
    }

    pub(crate) fn task_mut(&mut self, id: TaskId) -> &mut Task {
        &mut self.jobs.get_mut(&id.job).expect("task exists").tasks[id.index as usize]
    }

    /// Moves `tasks` onto (`add`) or off a host, updating every account that
    /// depends on them: host allocation, task list and index position, cluster
    /// and team totals (DRF), per-job host/zone counts (unique host, zone
    /// balance), unique-host groups, and for flex tasks the market lease of
    /// the host and the ledger holdings (dated `now`). The index and the lease
    /// are updated once for the whole batch.
    ///
    /// The caller has checked feasibility; an overflow here is a bug, so it panics.
    pub(crate) fn charge(
        &mut self,
        host_idx: HostIdx,
        tasks: &[TaskId],
        add: bool,
        now: Timestamp,
    ) {
        if tasks.is_empty() {
            return;
        }
        let host = &self.hosts[host_idx];
        let old_free = host.free();
        let old_part = host.index_part();
        let indexed = host.state == HostState::Active;
        let was_leased = host.n_flex_tasks > 0;
        let held_before: Vec<(host::ShareKey, crate::units::ie::Ie)> = host.holdings().collect();
        self.hosts[host_idx]
            .tasks
            .reserve(if add { tasks.len() } else { 0 });
        // Tasks of one job come in runs (commit applies a round's placements
        // host by host, in decision order, and class steps place a job's
        // tasks together): each run is one change of n equal requests.
        for run in tasks.chunk_by(|a, b| a.job == b.job) {
            let job = self.jobs.get_mut(&run[0].job).expect("charged job exists");
            let n = run.len() as u32;
            let host = &mut self.hosts[host_idx];
            let request = job
                .spec
                .request
                .checked_mul(u64::from(n))
                .expect("charged tasks fit on one host");
            let tier = job.spec.tier;
            let team = &mut self.teams[job.team.get()].allocated[tier.index()];
            if add {
                host.allocated
                    .checked_add_assign(&request)
                    .expect("host over-committed: feasibility not checked");
                self.allocated
                    .checked_add_assign(&request)
                    .expect("cluster allocation overflow");
                team.checked_add_assign(&request)
                    .expect("team allocation overflow");
                host.tasks.extend_from_slice(run);
                job.n_placed += n;
            } else {
                host.allocated
                    .checked_sub_assign(&request)
                    .expect("released more than allocated on host");
                self.allocated
                    .checked_sub_assign(&request)
                    .expect("released more than allocated");
                team.checked_sub_assign(&request)
                    .expect("released more than team holds");
                for task in run {
                    let pos = host
                        .tasks
                        .iter()
                        .position(|t| t == task)
                        .expect("host lists its tasks");
                    host.tasks.remove(pos);
                }
                job.n_placed = job.n_placed.checked_sub(n).expect("placed count");
            }
            if tier == Tier::Flex {
                host.n_flex_tasks = if add {
                    host.n_flex_tasks + n
                } else {
                    host.n_flex_tasks.checked_sub(n).expect("flex count")
                };
                let share = dominant_ppm(&job.spec.request, &host.spec.capacity);
                host.add_share((job.team, job.spec.bid), share, n, add);
            }
            if job.tracks_placement {
                let zone = host.zone.get();
                if job.per_zone.len() <= zone {
                    job.per_zone.resize(zone + 1, 0);
                }
                bump(job.per_host.entry(host_idx).or_insert(0), n, add);
                bump(&mut job.per_zone[zone], n, add);
                if job.per_host[&host_idx] == 0 {
                    job.per_host.remove(&host_idx);
                }
            }
            if let Some(group) = &job.unique_group {
                let counts = self.unique_groups.entry(group.clone()).or_default();
                bump(counts.entry(host_idx).or_insert(0), n, add);
                if counts[&host_idx] == 0 {
                    counts.remove(&host_idx);
                }
            }
        }
        let is_leased = self.hosts[host_idx].n_flex_tasks > 0;
        if !is_leased {
            self.hosts[host_idx].reclaiming = false;
            self.set_returning(host_idx, None);
        }
        let host = &self.hosts[host_idx];
        // A task arriving or leaving changes the holdings of every team on
        // the host (they share it by dominant shares): move each by its change.
        let price = self.market.pools[host.pool.get()].clearing_price;
        let mut keys: Vec<host::ShareKey> = held_before.iter().map(|(k, _)| *k).collect();
        keys.extend(host.flex_shares.iter().map(|(k, _, _)| *k));
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let before = held_before
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(crate::units::ie::Ie::ZERO, |(_, ie)| *ie);
            let after = host.holding_of(key);
            if after != before {
                let (diff, add) = if after > before {
                    (after - before, true)
                } else {
                    (before - after, false)
                };
                let account = (key.0, host.pool, key.1);
                self.market.ledger.hold(now, account, price, diff, add);
            }
        }
        let (pool, ie, rank, has_gpus) = (host.pool, host.ie, host.rank, host.has_gpus());
        let (new_free, new_part) = (host.free(), host.index_part());
        if was_leased != is_leased {
            self.market.set_leased(now, pool, host_idx, ie, is_leased);
        }
        if indexed {
            self.index.update(
                host_idx, rank, old_part, &old_free, new_part, &new_free, has_gpus,
            );
        }
    }

    /// Marks host `h` as due back at `due` (or, with `None`, no longer),
    /// keeping its pool's set of returning hosts in step.
    pub(crate) fn set_returning(&mut self, h: HostIdx, due: Option<Timestamp>) {
        let host = &mut self.hosts[h];
        if host.returning.is_some() != due.is_some() {
            let marked = &mut self.market.pools[host.pool.get()].returning_hosts;
            if due.is_some() {
                marked.insert(h);
            } else {
                marked.remove(&h);
            }
        }
        host.returning = due;
    }

    /// Checks the derived accounts against a recount from the tasks on each
    /// host. Debug builds run it after every commit; tests call it directly.
    pub(crate) fn check_accounts(&self) -> Result<(), String> {
        let mut cluster = Resources::default();
        let mut leased = vec![crate::units::ie::Ie::ZERO; self.market.pools.len()];
        // The pools' sets of leased and of returning hosts, recounted.
        let mut with_flex: Vec<BTreeSet<HostIdx>> = vec![BTreeSet::new(); self.market.pools.len()];
        let mut marked: Vec<BTreeSet<HostIdx>> = vec![BTreeSet::new(); self.market.pools.len()];
        let mut team_alloc: Vec<[Resources; 2]> = vec![Default::default(); self.teams.len()];
        for (h, host) in self.hosts.iter() {
            let mut sum = Resources::default();
            let mut n_flex = 0;
            for t in &host.tasks {
                let job = self
                    .jobs
                    .get(&t.job)
                    .ok_or(format!("{t} on {h:?}: no job"))?;
                let phase = job.tasks[t.index as usize].phase;
                if phase.host() != Some(h) {
                    return Err(format!("{t} listed on host {:?} but {phase:?}", h));
                }
                sum.checked_add_assign(&job.spec.request)
                    .map_err(|e| e.to_string())?;
                team_alloc[job.team.get()][job.spec.tier.index()]
                    .checked_add_assign(&job.spec.request)
                    .map_err(|e| e.to_string())?;
                n_flex += u32::from(job.spec.tier == Tier::Flex);
            }
            if sum != host.allocated {
                return Err(format!(
                    "host {}: allocated {} but tasks hold {sum}",
                    host.spec.id, host.allocated
                ));
            }
            if !sum.fits_in(&host.spec.capacity) {
                return Err(format!("host {} over-committed: {sum}", host.spec.id));
            }
            if n_flex != host.n_flex_tasks {
                return Err(format!(
                    "host {}: flex count {} but {n_flex} flex tasks",
                    host.spec.id, host.n_flex_tasks
                ));
            }
            if n_flex > 0 {
                leased[host.pool.get()] += host.ie;
                with_flex[host.pool.get()].insert(h);
            }
            // Pricing and the flex search rely on no host being smaller
            // than its pool's `min_host_ie`.
            if let Some(min_ie) = self.market.pools[host.pool.get()].min_host_ie
                && host.ie < min_ie
            {
                return Err(format!(
                    "host {}: {}, below its pool's smallest host ({min_ie})",
                    host.spec.id, host.ie
                ));
            }
            if host.returning.is_some() {
                if n_flex == 0 {
                    return Err(format!(
                        "host {} marked returning without a lease",
                        host.spec.id
                    ));
                }
                marked[host.pool.get()].insert(h);
            }
            cluster
                .checked_add_assign(&sum)
                .map_err(|e| e.to_string())?;
        }
        if cluster != self.allocated {
            return Err(format!(
                "cluster allocated {} but hosts hold {cluster}",
                self.allocated
            ));
        }
        for (p, pool) in self.market.pools.iter().enumerate() {
            if pool.leased != leased[p] {
                return Err(format!(
                    "pool {}: leased {} but hosts with flex work add up to {}",
                    pool.id, pool.leased, leased[p]
                ));
            }
            if pool.leased_hosts != with_flex[p] {
                return Err(format!(
                    "pool {}: leased hosts {:?} but hosts with flex work {:?}",
                    pool.id, pool.leased_hosts, with_flex[p]
                ));
            }
            if pool.returning_hosts != marked[p] {
                return Err(format!(
                    "pool {}: returning hosts {:?} but hosts marked returning {:?}",
                    pool.id, pool.returning_hosts, marked[p]
                ));
            }
        }
        // Ledger holdings: each account holds what its team's tasks hold on
        // the pool's hosts, and no pool's holdings exceed its leases.
        let mut held: FxMap<ledger::AccountKey, crate::units::ie::Ie> = FxMap::default();
        let mut pool_held = vec![crate::units::ie::Ie::ZERO; self.market.pools.len()];
        for (_, host) in self.hosts.iter() {
            for ((team, bid), ie) in host.holdings() {
                *held.entry((team, host.pool, bid)).or_default() += ie;
                pool_held[host.pool.get()] += ie;
            }
        }
        for (key, account) in &self.market.ledger.accounts {
            let want = held.get(key).copied().unwrap_or_default();
            if account.held() != want {
                return Err(format!(
                    "ledger account {key:?} holds {} but its tasks hold {want}",
                    account.held()
                ));
            }
        }
        for (p, pool) in self.market.pools.iter().enumerate() {
            if pool_held[p] > pool.leased {
                return Err(format!(
                    "pool {}: teams hold {} of {} leased",
                    pool.id, pool_held[p], pool.leased
                ));
            }
        }
        for (t, team) in self.teams.iter().enumerate() {
            if team.allocated != team_alloc[t] {
                return Err(format!(
                    "team {}: allocation differs from its tasks",
                    team.id
                ));
            }
        }
        Ok(())
    }
}

/// Adds `by` to a count (`add`) or takes it off.
fn bump(n: &mut u32, by: u32, add: bool) {
    *n = if add {
        n.checked_add(by).expect("count overflow")
    } else {
        n.checked_sub(by).expect("count below zero")
    };
}

/// SplitMix64, a tiny bijective mixer: turns (seed, sequence) into a
/// well-spread tie-break rank. Deterministic and allocation-free.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
