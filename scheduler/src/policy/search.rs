//! The host search: find the best host for one task of a job, through the
//! feasibility checkers and scorers, assembled in one place.
//!
//! ```text
//!  candidates (host index, from the task's dominant dimension)
//!      │  tightest-first or loosest-first, only hosts with enough room in it,
//!      │  passing over (and counting) hosts short in another fixed dimension
//!      ▼
//!  feasibility checkers ──reject──▶ reason counted (e.g. "insufficient memory")
//!      │ feasible
//!      ▼
//!  weighted scorers (one [0,1] scale) ──▶ keep the best; stop early when a host is
//!                                         "good enough", enough hosts were scored, or
//!                                         the walk reaches an empty host after enough
//!                                         used ones (`TierPolicy::empty_host_gate`)
//! ```

use crate::model::index::{Fit, IndexDim, NO_FLEX, pool_of_part};
use crate::model::job::Job;
use crate::model::overlay::View;
use crate::policy::check::{
    AttributeChecker, FeasibilityChecker, GpuModelChecker, HostStateChecker, PoolSupplyChecker,
    ResourceFitChecker, UniqueHostChecker, ZoneBalanceChecker,
};
use crate::policy::score::score;
use crate::spec::config::{SearchOrder, TierPolicy};
use crate::spec::job::Tier;
use crate::spec::reason::{PendingReasons, Reason};
use crate::units::ids::HostIdx;

/// The feasibility stages, assembled in one place.
#[derive(Debug)]
pub(crate) struct Pipeline {
    checkers: Vec<Box<dyn FeasibilityChecker>>,
    /// The same stages less those that check hard constraints alone
    /// (`checks_hard_constraints_only`): all a job without any needs, and
    /// most jobs have none.
    unconstrained: Vec<Box<dyn FeasibilityChecker>>,
}

impl Default for Pipeline {
    fn default() -> Self {
        let unconstrained = Pipeline::stages()
            .into_iter()
            .filter(|c| !c.checks_hard_constraints_only())
            .collect();
        Pipeline {
            checkers: Pipeline::stages(),
            unconstrained,
        }
    }
}

impl Pipeline {
    /// The feasibility stages. Ordering rule: cheapest and most selective
    /// first, so most rejections cost one comparison; the first failing
    /// stage names the host's reason.
    fn stages() -> Vec<Box<dyn FeasibilityChecker>> {
        vec![
            // Draining hosts are not in the index, but commit re-validates any host.
            Box::new(HostStateChecker),
            // Every resource dimension; the index already guaranteed the dominant one.
            Box::new(ResourceFitChecker),
            // GPU model before attributes: GPU jobs are few and picky.
            Box::new(GpuModelChecker),
            // Attribute equals / in-set.
            Box::new(AttributeChecker),
            // Needs the job's per-host counts.
            Box::new(UniqueHostChecker),
            // Needs a scan over zones.
            Box::new(ZoneBalanceChecker),
            // Market: flex work leases a new host only within its pool's supply.
            Box::new(PoolSupplyChecker),
        ]
    }
}

/// What a host search found.
#[derive(Debug)]
pub(crate) enum SearchOutcome {
    /// The best host seen.
    Found {
        host_idx: HostIdx,
        score: f64,
        n_examined: u32,
    },
    /// No feasible host; reasons counted over every host.
    NotFound {
        reasons: PendingReasons,
        n_examined: u32,
    },
}

impl Pipeline {
    /// Runs every checker (but those of hard constraints for a job without
    /// any, which would accept); the first rejection wins.
    pub(crate) fn check(&self, view: &View<'_>, job: &Job, h: HostIdx) -> Result<(), Reason> {
        let host = view.host(h);
        let checkers = if job.spec.hard_constraints.is_empty() {
            &self.unconstrained
        } else {
            &self.checkers
        };
        checkers
            .iter()
            .try_for_each(|c| c.check(view, job, h, host))
    }

    /// [`Pipeline::check`] for one more task of `job` on host `h`, for a job
    /// without hard constraints, when `check` accepted `h` for the job's
    /// previous task with an earlier task of the job already on `h` (class
    /// steps after the first, `Planner::place_class`): only the resource
    /// fit can have changed since.
    ///
    /// Why: the previous task changed `h`'s allocation, its flex count (not
    /// whether it is zero: for a flex job the earlier task had made it
    /// positive already), the team's and the job's counts, and nothing
    /// else. Of the checkers, only `ResourceFitChecker` reads the
    /// allocation. `HostStateChecker` and `GpuModelChecker` read the host's
    /// state and spec; the attribute, unique-host and zone-balance checkers
    /// read the job's counts only through its hard constraints, and it has
    /// none; `PoolSupplyChecker` reads `h`'s reclaim mark and lease end,
    /// whether it carries flex work, and its pool's leased total and
    /// supply, none of which changed (`h` was leased already, so the total
    /// did not move). A new checker that reads anything such a placement
    /// changes must be run here too.
    pub(crate) fn recheck_equal_task(
        &self,
        view: &View<'_>,
        job: &Job,
        h: HostIdx,
    ) -> Result<(), Reason> {
        debug_assert!(job.spec.hard_constraints.is_empty());
        ResourceFitChecker.check(view, job, h, view.host(h))
    }

    /// Runs only the placement constraints (not resource fit or supply):
    /// "could this host take the task if room were made?", for preemption.
    pub(crate) fn check_placement_constraints(
        &self,
        view: &View<'_>,
        job: &Job,
        h: HostIdx,
    ) -> Result<(), Reason> {
        let host = view.host(h);
        self.checkers
            .iter()
            .filter(|c| !c.is_capacity_check())
            .try_for_each(|c| c.check(view, job, h, host))
    }

    /// The policy's weighted score for one feasible host, in `[0, 1]`.
    pub(crate) fn score(&self, policy: &TierPolicy, view: &View<'_>, job: &Job, h: HostIdx) -> f64 {
        let host = view.host(h);
        let (mut sum, mut total_weight) = (0.0, 0.0);
        for &(scorer, weight) in &policy.scorers {
            sum += weight * score(scorer, view, job, h, host);
            total_weight += weight;
        }
        if total_weight > 0.0 {
            sum / total_weight
        } else {
            0.0
        }
    }

    /// Searches the active hosts for the best place for one task of `job`.
    pub(crate) fn search(&self, view: &View<'_>, job: &Job) -> SearchOutcome {
        let state = view.state;
        let policy = state.config.policy(job.spec.tier);
        let request = &job.spec.request;
        let dim = index_dim(state, request);
        let min_free = dim.amount(request);
        let loosest_first = policy.search_order == SearchOrder::LoosestFirst;
        let max_scored = policy.max_hosts_scored.map_or(u32::MAX, |m| m.max(1));
        // How many used hosts must have been scored before the walk stops
        // at an empty one (`TierPolicy::empty_host_gate`).
        let gate = (policy.empty_host_gate > 0 && !loosest_first)
            .then(|| (state.index.len() as u32 / policy.empty_host_gate).clamp(1, max_scored));

        let mut best: Option<(f64, HostIdx)> = None;
        let mut n_feasible = 0u32;
        let mut n_examined = 0u32;
        let mut rejected: Vec<(Reason, u32)> = Vec::new();
        // Flex work goes only to hosts already carrying flex work in a pool
        // that cannot lease another host: skip that pool's other hosts wholesale.
        let skips = |part: usize| {
            job.spec.tier == Tier::Flex
                && part % 2 == NO_FLEX
                && !view.can_lease_in(pool_of_part(part))
        };
        // Hosts short of room in another fixed dimension are passed over
        // inside the walk and counted by dimension, as ResourceFitChecker
        // would have rejected them (see `Fit`).
        let fit = Some(Fit::new(request));
        let mut walk = view.candidates(dim, min_free, loosest_first, |p| !skips(p), fit);
        for host_idx in walk.by_ref() {
            n_examined += 1;
            match self.check(view, job, host_idx) {
                Ok(()) => {
                    if gate.is_some_and(|k| n_feasible >= k) && view.allocated(host_idx).is_zero() {
                        break;
                    }
                    let score = self.score(policy, view, job, host_idx);
                    n_feasible += 1;
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, host_idx));
                    }
                    if score >= policy.good_enough || n_feasible >= max_scored {
                        break;
                    }
                }
                Err(reason) => match rejected.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n += 1,
                    None => rejected.push((reason, 1)),
                },
            }
        }
        let fit = walk.fit().expect("searches filter by fit");
        let n_passed_over = fit.n_passed_over();
        if let Some((score, host_idx)) = best {
            return SearchOutcome::Found {
                host_idx,
                score,
                n_examined,
            };
        }
        // Nothing fit: every active host outside the walked range lacked room
        // in the index dimension; draining hosts accept nothing.
        rejected.extend(fit.passed_over().map(|(d, n)| (Reason::Insufficient(d), n)));
        let mut n_skipped = n_passed_over;
        for p in (0..view.n_parts()).filter(|&p| skips(p)) {
            let n = view.len_part(p) as u32;
            if n > 0 {
                let pool = pool_of_part(p);
                let id = state.market.pools[pool.get()].id.clone();
                let reason = if state.market.is_evacuated(pool)
                    && !state.market.config.lease_in_evacuated_regions
                {
                    Reason::RegionEvacuated(id)
                } else {
                    Reason::PoolSupply(id)
                };
                rejected.push((reason, n));
                n_skipped += n;
            }
        }
        let n_outside = state.index.len() as u32 - n_skipped - n_examined;
        if n_outside > 0 {
            rejected.push((Reason::Insufficient(dim.dim()), n_outside));
        }
        if state.n_draining > 0 {
            rejected.push((Reason::HostNotActive, state.n_draining));
        }
        if rejected.is_empty() {
            rejected.push((Reason::NoHosts, 0));
        }
        SearchOutcome::NotFound {
            reasons: PendingReasons::from_counts(rejected),
            n_examined,
        }
    }
}

/// The index a search walks: GPUs for GPU tasks (only GPU hosts are in it),
/// otherwise whichever of CPU and memory the request needs the larger share
/// of, measured against the active fleet, so the range skips the most hosts.
fn index_dim(
    state: &crate::model::State,
    request: &crate::units::resources::Resources,
) -> IndexDim {
    if request.gpus > 0 {
        return IndexDim::Gpu;
    }
    let cap = &state.active_capacity;
    let cpu_share = request.cpu_millis as u128 * cap.memory_mib.max(1) as u128;
    let mem_share = request.memory_mib as u128 * cap.cpu_millis.max(1) as u128;
    if mem_share > cpu_share {
        IndexDim::Memory
    } else {
        IndexDim::Cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::overlay::Overlay;
    use crate::policy::testkit::{Fleet, Rng, host_spec, job_spec};
    use crate::spec::host::HostState;
    use crate::spec::job::Tier;
    use crate::units::resources::Resources;

    /// The stages a search skips for a job without hard constraints
    /// (`checks_hard_constraints_only`) accept every host for such a job,
    /// full, draining or with GPUs; every other stage runs for all jobs.
    #[test]
    fn stages_of_hard_constraints_alone_accept_unconstrained_jobs() {
        let mut fleet = Fleet::new();
        let mut hosts = vec![
            fleet.host(host_spec("a", "z1", 8, 32)),
            fleet.host_in_state(host_spec("b", "z2", 8, 32), HostState::Draining),
        ];
        let mut gpu = host_spec("c", "z1", 8, 32);
        gpu.capacity.gpus = 2;
        gpu.gpu_model = Some("t4".into());
        hosts.push(fleet.host(gpu));
        let filler = fleet.job(job_spec(9, Resources::cpu_mem(8_000, 1024), vec![]));
        fleet.place(filler, hosts[0]);
        let job = fleet.job(job_spec(1, Resources::cpu_mem(1_000, 1024), vec![]));
        let overlay = Overlay::default();
        let view = View::new(&fleet.state, &overlay);
        let job = fleet.job_ref(job);
        let skipped: Vec<_> = Pipeline::stages()
            .into_iter()
            .filter(|c| c.checks_hard_constraints_only())
            .collect();
        assert_eq!(
            skipped.len(),
            4,
            "attribute, GPU model, unique host, zone balance"
        );
        for c in &skipped {
            for &h in &hosts {
                assert_eq!(c.check(&view, job, h, view.host(h)), Ok(()), "{c:?}");
            }
        }
        let pipeline = Pipeline::default();
        assert_eq!(pipeline.unconstrained.len() + 4, pipeline.checkers.len());
    }

    /// The search's answer against every host run through every checker:
    /// a found host is one the checkers accept and no host scores higher
    /// among those the search could stop at; when none is found, the
    /// reasons are exactly the checkers' first rejection per host (the
    /// hosts a walk passes over by their figures included). Requests lean
    /// on CPU so the walk's index is CPU's, whose bulk count outside the
    /// walked range is what the checker would say first too.
    #[test]
    fn reasons_match_every_host_through_the_checkers() {
        let mut rng = Rng(7);
        let (mut n_found, mut n_not_found) = (0, 0);
        for case in 0..300 {
            let mut fleet = Fleet::new();
            let n_hosts = 1 + rng.below(30);
            let mut hosts = Vec::new();
            for i in 0..n_hosts {
                let mut spec = host_spec(&format!("h{i}"), "z", 8, 32);
                spec.capacity.disk_mib = 100 * 1024;
                spec.capacity.network_mbps = 10_000;
                let state = if rng.below(10) == 0 {
                    HostState::Draining
                } else {
                    HostState::Active
                };
                hosts.push(fleet.host_in_state(spec, state));
            }
            // Load: tasks of random shapes where they fit.
            for j in 0..(3 * n_hosts) {
                let load = Resources {
                    disk_mib: rng.below(60) * 1024,
                    network_mbps: rng.below(6_000),
                    ..Resources::cpu_mem(rng.below(4_000), rng.below(16 * 1024))
                };
                let mut spec = job_spec(100 + j, load.clone(), vec![]);
                spec.tier = Tier::Critical;
                let job = fleet.job(spec);
                let h = hosts[rng.below(n_hosts) as usize];
                if fleet.host_ref(h).state() == HostState::Active
                    && load.fits_in(&fleet.host_ref(h).free())
                {
                    fleet.place(job, h);
                }
            }
            // A CPU-leaning request, often too big for every host in some
            // dimension.
            let cpu = 1_000 + rng.below(7_000);
            let request = Resources {
                disk_mib: rng.below(100) * 1024,
                network_mbps: rng.below(10_000),
                ..Resources::cpu_mem(cpu, rng.below(cpu * 4 * 1024 / 1_000))
            };
            let mut spec = job_spec(1, request, vec![]);
            spec.tier = Tier::Critical;
            let job = fleet.job(spec);
            let state = &fleet.state;
            let overlay = Overlay::default();
            let view = View::new(state, &overlay);
            let pipeline = Pipeline::default();
            let job = &state.jobs[&job];
            let mut brute: Vec<(Reason, u32)> = Vec::new();
            let mut feasible = Vec::new();
            for &h in &hosts {
                match pipeline.check(&view, job, h) {
                    Ok(()) => feasible.push(h),
                    Err(r) => brute.push((r, 1)),
                }
            }
            match pipeline.search(&view, job) {
                SearchOutcome::Found { host_idx, .. } => {
                    n_found += 1;
                    assert!(feasible.contains(&host_idx), "case {case}: infeasible host");
                }
                SearchOutcome::NotFound { reasons, .. } => {
                    n_not_found += 1;
                    assert!(feasible.is_empty(), "case {case}: missed a feasible host");
                    assert_eq!(reasons, PendingReasons::from_counts(brute), "case {case}");
                }
            }
        }
        assert!(
            n_found > 50 && n_not_found > 50,
            "{n_found} found, {n_not_found} not"
        );
    }

    /// The search's answer on a fleet of `n_used` hosts each holding a
    /// 6 vCPU / 4 GiB task and `n_empty` empty ones (8 vCPU, 32 GiB), for
    /// a balanced 1 vCPU / 4 GiB request under dot product. By hand: a used
    /// host's free fractions are (0.25, 0.875), cosine
    /// (0.125·0.25 + 0.125·0.875) / (0.177 · 0.910) = 0.874; an empty
    /// host's are (1, 1), cosine 1.0. So every empty host outscores every
    /// used one, and which kind wins says whether the search scored an
    /// empty host at all.
    fn takes_an_empty_host(n_used: u64, n_empty: u64, gate: u32, order: SearchOrder) -> bool {
        let mut fleet = Fleet::new();
        fleet.state.config.critical = TierPolicy {
            empty_host_gate: gate,
            search_order: order,
            ..TierPolicy::single(crate::spec::config::ScorerKind::DotProduct)
        };
        let mut empty = Vec::new();
        for i in 0..n_used + n_empty {
            let h = fleet.host(host_spec(&format!("h{i}"), "z", 8, 32));
            if i < n_used {
                let mut load = job_spec(100 + i, Resources::cpu_mem(6_000, 4_096), vec![]);
                load.tier = Tier::Critical;
                let load = fleet.job(load);
                fleet.place(load, h);
            } else {
                empty.push(h);
            }
        }
        let mut spec = job_spec(1, Resources::cpu_mem(1_000, 4_096), vec![]);
        spec.tier = Tier::Critical;
        let job = fleet.job(spec);
        let overlay = Overlay::default();
        let view = View::new(&fleet.state, &overlay);
        match Pipeline::default().search(&view, &fleet.state.jobs[&job]) {
            SearchOutcome::Found { host_idx, .. } => empty.contains(&host_idx),
            SearchOutcome::NotFound { reasons, .. } => panic!("nothing found: {reasons:?}"),
        }
    }

    /// `TierPolicy::empty_host_gate`: k = clamp(active hosts / gate, 1,
    /// max_hosts_scored) used hosts must be scored before the walk stops at
    /// an empty one.
    #[test]
    fn the_empty_host_gate_keeps_small_fleets_on_used_hosts() {
        use SearchOrder::{LoosestFirst, TightestFirst};
        // 5 hosts: k = 1, so the one used host that fits wins.
        assert!(!takes_an_empty_host(1, 4, 32, TightestFirst));
        // Without the gate dot product opens a host, as it used to.
        assert!(takes_an_empty_host(1, 4, 0, TightestFirst));
        // 64 hosts: k = 2. One used host is not enough choice...
        assert!(takes_an_empty_host(1, 63, 32, TightestFirst));
        // ...two are.
        assert!(!takes_an_empty_host(2, 62, 32, TightestFirst));
        // 128 hosts: k = 4.
        assert!(takes_an_empty_host(3, 125, 32, TightestFirst));
        assert!(!takes_an_empty_host(4, 124, 32, TightestFirst));
        // 320 hosts: k = 10 capped at max_hosts_scored (8), so on a large
        // fleet the search scores as many hosts as without the gate.
        assert!(takes_an_empty_host(7, 313, 32, TightestFirst));
        // A loosest-first search spreads on purpose: the gate does not apply.
        assert!(takes_an_empty_host(1, 4, 32, LoosestFirst));
    }
}
