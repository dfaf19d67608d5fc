//! Property tests for the market's safety invariants over random fleets,
//! reservations, demand curves and failovers:
//! - after every reclaim, leases that are not already stopping fit supply,
//!   unless no emergency forces it and disruption budgets block it (and even
//!   then streaming itself is never short);
//! - critical tasks are never victims;
//! - disruption budgets hold, except for preemptions recorded as over budget;
//! - pool totals add up: streaming + headroom + leased + idle = reserved;
//! - no host is over-committed;
//! - with demand forecasts (hosts marked returning, lease-end predictions),
//!   the core's recount (`check_invariants`) agrees with every kept
//!   aggregate, the pools' sets of leased and of returning hosts included.

mod common;

use std::collections::BTreeMap;

use common::*;
use ebb_scheduler::*;
use proptest::prelude::*;

const TYPES: [&str; 4] = ["m5.4xlarge", "m5.16xlarge", "c5.9xlarge", "r5.8xlarge"];

#[derive(Clone, Debug)]
struct PoolGen {
    region: usize,
    reserved_m5_16xl: u32,
    hosts: Vec<usize>,
}

#[derive(Clone, Debug)]
struct JobGen {
    flex: bool,
    n: u32,
    vcpus: u64,
    bid: u8,
    priority: i32,
    budget: Option<u32>,
    checkpoint_mins: Option<u64>,
    /// Flex jobs of two or more tasks only: placed and preempted whole.
    gang: bool,
}

#[derive(Clone, Debug)]
enum Step {
    Submit(JobGen),
    Demand {
        pool: usize,
        ie_tenths: u64,
    },
    /// A forecast: the pool's demand reaches this in `mins` minutes.
    Forecast {
        pool: usize,
        ie_tenths: u64,
        mins: u64,
    },
    Failover {
        region: usize,
        active: bool,
    },
    Round,
    StopAll,
    FinishSome(u8),
}

fn pool_gen() -> impl Strategy<Value = PoolGen> {
    (
        0..3usize,
        0..20u32,
        prop::collection::vec(0..TYPES.len(), 1..6),
    )
        .prop_map(|(region, reserved_m5_16xl, hosts)| PoolGen {
            region,
            reserved_m5_16xl,
            hosts,
        })
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        any::<bool>(),
        1..6u32,
        1..40u64,
        0..4u8,
        0..3i32,
        prop::option::of(1..3u32),
        prop::option::of(1..30u64),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(flex, n, vcpus, bid, priority, budget, checkpoint_mins, gang)| {
                let flex = flex || n > 3; // mostly flex
                JobGen {
                    flex,
                    n,
                    vcpus,
                    bid,
                    priority,
                    budget,
                    checkpoint_mins,
                    gang: gang && flex && n >= 2,
                }
            },
        )
}

fn step_gen(n_pools: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => job_gen().prop_map(Step::Submit),
        3 => (0..n_pools, 0..250u64).prop_map(|(pool, ie_tenths)| Step::Demand { pool, ie_tenths }),
        2 => (0..n_pools, 0..250u64, 1..120u64)
            .prop_map(|(pool, ie_tenths, mins)| Step::Forecast { pool, ie_tenths, mins }),
        1 => (0..3usize, any::<bool>()).prop_map(|(region, active)| Step::Failover { region, active }),
        4 => Just(Step::Round),
        2 => Just(Step::StopAll),
        1 => any::<u8>().prop_map(Step::FinishSome),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<PoolGen>, Vec<Step>)> {
    prop::collection::vec(pool_gen(), 1..4).prop_flat_map(|pools| {
        let n = pools.len();
        (Just(pools), prop::collection::vec(step_gen(n), 1..40))
    })
}

fn region(i: usize) -> String {
    ["us-east-1", "us-west-2", "eu-west-1"][i].to_owned()
}

struct Run {
    s: Scheduler,
    now: u64,
    next_job: u64,
    /// Per job: (time, over budget) of each committed preemption.
    preempted: BTreeMap<JobId, Vec<(u64, bool)>>,
    failed_over: std::collections::BTreeSet<usize>,
    /// Per pool: reserved and supply (micro-IE × ms) integrated by the test.
    integrals: BTreeMap<PoolId, (u128, u128)>,
}

impl Run {
    fn new(pools: &[PoolGen]) -> Run {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let catalog = s.catalog().clone();
        let mut n_hosts = 0;
        for (p, g) in pools.iter().enumerate() {
            let id = PoolId::from(format!("pool-{p}"));
            let spec = PoolSpec {
                id: id.clone(),
                region: region(g.region),
                headroom: HeadroomPolicy::default(),
            };
            s.handle_pool_configured(t(0), spec).unwrap();
            let res = vec![Reservation::new("m5.16xlarge", g.reserved_m5_16xl)];
            s.handle_reservations(t(0), &id, res).unwrap();
            for &ty in &g.hosts {
                let ty = catalog.get(TYPES[ty]).unwrap();
                let spec = HostSpec {
                    id: HostId::from(format!("h{n_hosts}")),
                    pool: id.clone(),
                    instance_type: ty.name.clone(),
                    zone: format!("{}a", region(g.region)),
                    region: region(g.region),
                    attributes: Default::default(),
                    capacity: ty.capacity(),
                    gpu_model: None,
                };
                s.handle_host_added(t(0), spec).unwrap();
                n_hosts += 1;
            }
        }
        Run {
            s,
            now: 0,
            next_job: 1,
            preempted: BTreeMap::new(),
            failed_over: Default::default(),
            integrals: BTreeMap::new(),
        }
    }

    fn apply(&mut self, step: &Step, n_pools: usize) {
        self.integrate(60_000);
        self.now += 60_000;
        let now = t(self.now);
        match step {
            Step::Submit(g) => {
                let tier = if g.flex { Tier::Flex } else { Tier::Critical };
                let mut j = job(
                    self.next_job,
                    // One flex team per bid, so each team's charges can be
                    // checked against its one bid.
                    &if g.flex {
                        format!("bid{}", g.bid)
                    } else {
                        "streaming".to_owned()
                    },
                    tier,
                    g.n,
                    g.vcpus * 1000,
                    1024,
                );
                self.next_job += 1;
                j.bid = Price::new(f64::from(g.bid));
                j.priority = g.priority;
                j.disruption_budget = g.budget.map(|k| DisruptionBudget {
                    limit: BudgetLimit::MaxTasks(k),
                    window: DurationMs::from_mins(30),
                });
                j.checkpoint_interval = g.checkpoint_mins.map(DurationMs::from_mins);
                j.gang = g.gang;
                self.s.handle_job_submitted(now, j).unwrap();
            }
            Step::Demand { pool, ie_tenths } => {
                let id = PoolId::from(format!("pool-{}", pool % n_pools));
                self.s
                    .handle_streaming_demand(now, &id, Ie::from_f64(*ie_tenths as f64 / 10.0))
                    .unwrap();
            }
            Step::Forecast {
                pool,
                ie_tenths,
                mins,
            } => {
                let id = PoolId::from(format!("pool-{}", pool % n_pools));
                let at = t(self.now + mins * 60_000);
                let ie = Ie::from_f64(*ie_tenths as f64 / 10.0);
                self.s
                    .handle_demand_forecast(now, &id, vec![(at, ie)])
                    .unwrap();
            }
            Step::Failover { region: r, active } => {
                let before = self.s.pools();
                // Regions without pools are refused; that is fine here.
                if self.s.handle_failover(now, &region(*r), *active).is_ok() {
                    if *active {
                        // A failover never raises a surviving pool's supply.
                        for (b, a) in before.iter().zip(self.s.pools()) {
                            if b.region != region(*r) {
                                assert!(
                                    a.supply <= b.supply,
                                    "{} supply rose at the failover of {}: {} -> {}",
                                    a.pool,
                                    region(*r),
                                    b.supply,
                                    a.supply
                                );
                            }
                        }
                    }
                    if *active {
                        self.failed_over.insert(*r);
                    } else {
                        self.failed_over.remove(r);
                    }
                }
            }
            Step::Round => self.round(),
            Step::StopAll => {
                for (_, v) in self.tasks_where(|st| matches!(st, TaskState::Stopping { .. })) {
                    self.s.handle_task_stopped(now, v.run).unwrap();
                }
            }
            Step::FinishSome(seed) => {
                for (i, (_, v)) in self
                    .tasks_where(|st| {
                        matches!(st, TaskState::Running { .. } | TaskState::Assigned { .. })
                    })
                    .into_iter()
                    .enumerate()
                {
                    if (i as u8).wrapping_add(*seed) % 3 == 0 {
                        self.s.handle_task_finished(now, v.run).unwrap();
                    }
                }
            }
        }
    }

    fn tasks_where(&self, f: impl Fn(&TaskState) -> bool) -> Vec<(TaskId, TaskView)> {
        let mut out = Vec::new();
        for h in self.s.hosts() {
            for &task in h.tasks() {
                let v = self.s.task(task).unwrap();
                if f(&v.state) {
                    out.push((task, v));
                }
            }
        }
        out.sort_by_key(|(t, _)| *t);
        out
    }

    fn round(&mut self) {
        let now = self.now;
        self.s.handle_tick(t(now)).unwrap();
        let plan = self.s.plan_round(t(now)).unwrap();
        for p in &plan.preemptions {
            let spec = self.s.job_spec(p.run.task.job).unwrap();
            assert_eq!(
                spec.tier,
                Tier::Flex,
                "critical task {} chosen as a victim",
                p.run.task
            );
        }
        // Each pool's price is never above the bid of a job the round placed
        // there by taking a new lease (the first placement on a host without
        // flex work): the market serves higher bids first, so every job that
        // lost for lack of that pool's supply bid no more.
        let mut leased_now: std::collections::BTreeSet<HostId> = Default::default();
        for a in &plan.assignments {
            let spec = self.s.job_spec(a.run.task.job).unwrap();
            let host = self.s.host(&a.host).unwrap();
            if spec.tier != Tier::Flex
                || host.n_flex_tasks() > 0
                || !leased_now.insert(a.host.clone())
            {
                continue;
            }
            let pool = &host.spec().pool;
            // Where hosts differ in size, a loser can be refused a big host
            // that a smaller job's small host would not have served it
            // anyway; only in a pool of one host type does every loser
            // compete for the same leases.
            let types: std::collections::BTreeSet<&str> = self
                .s
                .hosts()
                .filter(|h| &h.spec().pool == pool)
                .map(|h| h.spec().instance_type.as_str())
                .collect();
            if types.len() > 1 {
                continue;
            }
            let price = plan.prices.iter().find(|(p, _)| p == pool).map(|(_, p)| *p);
            if let (Some(price), Tier::Flex) = (price, spec.tier) {
                assert!(
                    price
                        <= spec
                            .bid
                            .unwrap_or(Price::ZERO)
                            .max(self.s.config().market.floor_price),
                    "{pool} priced {price} above winner {}'s bid {:?}",
                    a.run.task,
                    spec.bid
                );
            }
        }
        let preemptions = plan.preemptions.clone();
        let report = self.s.commit(t(now), plan).unwrap();
        assert_eq!(
            report.n_preempted as usize,
            preemptions.len(),
            "fresh plans commit whole"
        );
        for p in &preemptions {
            self.preempted
                .entry(p.run.task.job)
                .or_default()
                .push((now, p.over_budget));
        }
        self.s.check_invariants().unwrap();
        self.check_reclaim();
        self.check_budgets();
        self.check_hosts();
        self.check_totals();
    }

    fn check_reclaim(&self) {
        let any_budgets = self
            .s
            .job_ids()
            .iter()
            .any(|j| self.s.job_spec(*j).unwrap().disruption_budget.is_some());
        for pool in self.s.pools() {
            // Leases not already on their way out.
            let mut projected = Ie::ZERO;
            for h in self.s.hosts().filter(|h| h.spec().pool == pool.pool) {
                let live_flex = h.tasks().iter().any(|t| {
                    self.s.job_spec(t.job).unwrap().tier == Tier::Flex
                        && !matches!(self.s.task(*t).unwrap().state, TaskState::Stopping { .. })
                });
                if live_flex {
                    projected += h.ie();
                }
            }
            let hard_limit = pool.reserved.saturating_sub(pool.streaming);
            assert!(
                projected <= hard_limit || projected <= pool.supply,
                "streaming short in {}: {projected} leased, {hard_limit} left by streaming: {pool:?}",
                pool.pool
            );
            if !any_budgets || !self.failed_over.is_empty() {
                assert!(
                    projected <= pool.supply,
                    "{}: {projected} leased > supply {}",
                    pool.pool,
                    pool.supply
                );
            }
        }
    }

    fn check_budgets(&self) {
        for (job, events) in &self.preempted {
            let Some(budget) = &self.s.job_spec(*job).unwrap().disruption_budget else {
                continue;
            };
            let BudgetLimit::MaxTasks(k) = budget.limit else {
                unreachable!("generator uses MaxTasks")
            };
            let window = budget.window.as_millis();
            for &(at, _) in events {
                let in_window = events
                    .iter()
                    .filter(|(t, over)| !over && *t <= at && *t + window > at)
                    .count();
                assert!(
                    in_window as u32 <= k,
                    "{job}: {in_window} preemptions within budget {k} at t={at}"
                );
            }
        }
    }

    fn check_hosts(&self) {
        for h in self.s.hosts() {
            assert!(
                h.allocated().fits_in(&h.spec().capacity),
                "host {} over-committed",
                h.spec().id
            );
        }
    }

    fn check_totals(&self) {
        // A lease is never charged more than its own bid: each flex team
        // bids one price, so its charges are at most its IE-hours at that bid.
        for e in self.s.ledger(t(self.now)) {
            if let Some(bid) = e.team.as_str().strip_prefix("bid") {
                let bid_micros: u128 = bid.parse::<u128>().unwrap() * 1_000_000;
                let cap = e.held.0 * bid_micros / (1_000_000 * 3_600_000);
                assert!(
                    u128::from(e.charges.as_micros()) <= cap,
                    "team {} charged {} for {} IE-h at bid {bid}",
                    e.team,
                    e.charges,
                    e.leased_ie_hours()
                );
            }
        }
        for p in self.s.pool_totals(t(self.now)) {
            let parts = p.streaming.0 + p.headroom.0 + p.leased.0 + p.idle.0;
            assert_eq!(parts, p.reserved.0, "the parts add up exactly: {p:?}");
            // Independently of the core's split: what the test saw reserved
            // and offered as supply, integrated step by step.
            let (reserved, supply) = self.integrals.get(&p.pool).copied().unwrap_or_default();
            assert_eq!(p.reserved.0, reserved, "{}: reserved integral", p.pool);
            assert_eq!(p.supply.0, supply, "{}: supply integral", p.pool);
        }
    }

    /// Adds the pools' reserved and supply IE, as reported now, times the
    /// time until the next step.
    fn integrate(&mut self, dt_ms: u64) {
        for p in self.s.pools() {
            let e = self.integrals.entry(p.pool.clone()).or_default();
            e.0 += u128::from(p.reserved.as_micro()) * u128::from(dt_ms);
            e.1 += u128::from(p.supply.as_micro()) * u128::from(dt_ms);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn market_invariants_hold((pools, steps) in scenario()) {
        let mut run = Run::new(&pools);
        for step in &steps {
            run.apply(step, pools.len());
        }
        run.round();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Over random regions, reservations, demands and headroom policies, and
    /// any order of failing regions over and back: no surviving pool's supply
    /// rises when a region fails over, and every figure returns at failback.
    #[test]
    fn a_failover_never_raises_a_survivors_supply(
        pools in prop::collection::vec((0..3usize, 0u32..30, 0u64..40, 0u32..30), 2..6),
        order in prop::collection::vec(0..3usize, 1..4),
    ) {
        let mut s = Scheduler::new(SchedulerConfig::default());
        for (i, (r, reserved, demand_tenths, daily_pct)) in pools.iter().enumerate() {
            let id = PoolId::from(format!("p{i}"));
            s.handle_pool_configured(t(0), PoolSpec {
                id: id.clone(),
                region: region(*r),
                headroom: HeadroomPolicy {
                    daily_scaling_fraction: f64::from(*daily_pct) / 100.0,
                    ..HeadroomPolicy::default()
                },
            }).unwrap();
            s.handle_reservations(t(0), &id, vec![Reservation::new("m5.16xlarge", *reserved)]).unwrap();
            s.handle_streaming_demand(t(0), &id, Ie::from_f64(*demand_tenths as f64 / 10.0)).unwrap();
        }
        let initial = s.pools();
        let mut failed = std::collections::BTreeSet::new();
        for (k, r) in order.iter().enumerate() {
            let before = s.pools();
            if s.handle_failover(t(1 + k as u64), &region(*r), true).is_err() {
                continue;
            }
            failed.insert(region(*r));
            for (b, a) in before.iter().zip(s.pools()) {
                if !failed.contains(&a.region) {
                    prop_assert!(a.supply <= b.supply, "{}: {} -> {} when {} failed", a.pool, b.supply, a.supply, region(*r));
                }
            }
        }
        for (k, r) in failed.iter().enumerate() {
            s.handle_failover(t(10 + k as u64), r, false).unwrap();
        }
        prop_assert_eq!(s.pools(), initial);
    }
}
