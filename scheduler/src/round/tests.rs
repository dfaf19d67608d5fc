//! Class steps ([`Planner::place_class`]) against their source of truth:
//! the same round planned with every task searched on its own.

use crate::policy::testkit::Rng;
use crate::spec::config::{SchedulerConfig, ScorerKind, SearchOrder, TeamConfig, TierPolicy};
use crate::spec::host::HostSpec;
use crate::spec::job::{Constraint, JobSpec, Tier};
use crate::units::ids::{HostId, JobId, PoolId, TeamId};
use crate::units::resources::{ResourceCap, Resources};
use crate::units::time::Timestamp;
use crate::{HeadroomPolicy, Ie, Plan, PoolSpec, Reservation, Scheduler};

fn host(i: u64, cpus: u64, mem_gib: u64) -> HostSpec {
    HostSpec {
        id: HostId::from(format!("h{i:03}")),
        pool: PoolId::from("pool-a"),
        instance_type: "m5.2xlarge".into(),
        zone: ["za", "zb"][(i % 2) as usize].into(),
        region: "us-east-1".into(),
        attributes: Default::default(),
        capacity: Resources::cpu_mem(cpus * 1000, mem_gib * 1024),
        gpu_model: None,
    }
}

fn job(id: u64, team: &str, tier: Tier, n_tasks: u32, cpu: u64, mem: u64) -> JobSpec {
    JobSpec {
        id: JobId(id),
        request_key: None,
        name: format!("job-{id}"),
        team: TeamId::from(team),
        tier,
        priority: 0,
        bid: None,
        request: Resources::cpu_mem(cpu, mem),
        n_tasks,
        hard_constraints: vec![],
        soft_constraints: vec![],
        gang: false,
        retry: Default::default(),
        disruption_budget: None,
        checkpoint_interval: None,
        expected_runtime: None,
    }
}

/// Everything but the hosts-examined and class-step counters, which class
/// steps count differently (one per step).
fn decisions(p: &Plan) -> impl PartialEq + std::fmt::Debug + '_ {
    let mut stats = p.stats.clone();
    stats.n_hosts_examined = 0;
    stats.n_class_steps = 0;
    (&p.assignments, &p.unplaced, &p.preemptions, stats)
}

/// Random fleets (some hosts part full from an earlier round, half of them
/// in a market pool whose supply leases only some hosts), random
/// array jobs of one to three teams, both tiers, sometimes a constraint or
/// a team cap, under every scorer, both search orders and assorted search
/// bounds: a round with class steps decides exactly what a round that
/// searches for every task decides, and class steps do happen.
#[test]
fn class_steps_decide_exactly_what_one_search_per_task_decides() {
    let mut rng = Rng(13);
    let (mut n_cases, mut n_with_class_steps) = (0, 0);
    for case in 0..400 {
        let mut policy = TierPolicy::single(rng.pick(&ScorerKind::ALL));
        if rng.below(3) == 0 {
            policy.scorers.push((rng.pick(&ScorerKind::ALL), 0.5));
        }
        policy.search_order = rng.pick(&[SearchOrder::TightestFirst, SearchOrder::LoosestFirst]);
        policy.good_enough = rng.pick(&[0.5, 0.95, 1.0]);
        policy.max_hosts_scored = rng.pick(&[None, Some(1), Some(3), Some(8)]);
        policy.repack = rng.below(2) == 0;
        policy.empty_host_gate = rng.pick(&[0, 1, 2, 32]);
        let mut config = SchedulerConfig {
            critical: policy.clone(),
            flex: policy,
            ..SchedulerConfig::default()
        };
        if rng.below(4) == 0 {
            let cap = ResourceCap {
                cpu_millis: Some(1000 * (4 + rng.below(40))),
                ..ResourceCap::default()
            };
            let team = TeamConfig {
                cap: [(Tier::Flex, cap.clone()), (Tier::Critical, cap)].into(),
                ..TeamConfig::default()
            };
            config.teams.insert(TeamId::from("t0"), team);
        }
        let mut s = Scheduler::new(config);
        s.set_event_feed(false);
        let n_hosts = 1 + rng.below(24);
        // Half the cases are market pools whose supply allows leasing only
        // some of the hosts: a flex task that leases a host changes which
        // other hosts are feasible.
        if rng.below(2) == 0 {
            let pool = PoolId::from("pool-a");
            let spec = PoolSpec {
                id: pool.clone(),
                region: "us-east-1".into(),
                headroom: HeadroomPolicy::default(),
            };
            s.handle_pool_configured(Timestamp::ZERO, spec).unwrap();
            let reservations = vec![Reservation::new("m5.2xlarge", n_hosts as u32)];
            s.handle_reservations(Timestamp::ZERO, &pool, reservations)
                .unwrap();
            // Up to all of it streaming, in micro-IE (an m5.2xlarge is 1/8 IE).
            let streaming = Ie::from_micro(rng.below(n_hosts * 125_000 + 1));
            s.handle_streaming_demand(Timestamp::ZERO, &pool, streaming)
                .unwrap();
        }
        for i in 0..n_hosts {
            let cpus = rng.pick(&[4, 8, 16]);
            let mem = rng.pick(&[8, 16, 32]);
            s.handle_host_added(Timestamp::ZERO, host(i, cpus, mem))
                .unwrap();
        }
        let n_teams = rng.pick(&[1, 1, 2, 3]);
        let mut id = 0;
        let mut submit = |s: &mut Scheduler, rng: &mut Rng, at: u64| {
            for _ in 0..1 + rng.below(5) {
                id += 1;
                let team = ["t0", "t1", "t2"][rng.below(n_teams) as usize];
                let tier = rng.pick(&[Tier::Flex, Tier::Flex, Tier::Critical]);
                let cpu = rng.pick(&[250, 500, 1000, 1500, 2000, 3000]);
                let mem = rng.pick(&[256, 1024, 2048, 4096]);
                let mut j = job(id, team, tier, 1 + rng.below(40) as u32, cpu, mem);
                j.priority = rng.below(3) as i32;
                match rng.below(8) {
                    0 => j
                        .hard_constraints
                        .push(Constraint::UniqueHost { group: None }),
                    1 => j
                        .soft_constraints
                        .push(Constraint::ZoneBalance { max_skew: 1 }),
                    2 => j.gang = true,
                    _ => {}
                }
                s.handle_job_submitted(Timestamp::from_millis(at), j)
                    .unwrap();
            }
        };
        // An earlier round leaves hosts part full.
        submit(&mut s, &mut rng, 0);
        s.run_round(Timestamp::from_millis(1)).unwrap();
        while s.poll_action().is_some() {}
        submit(&mut s, &mut rng, 2);
        let now = Timestamp::from_millis(3);
        let with = s.plan_round(now).unwrap();
        let without = s.plan_round_one_by_one(now);
        assert_eq!(decisions(&with), decisions(&without), "case {case}");
        n_cases += 1;
        assert_eq!(without.stats.n_class_steps, 0);
        n_with_class_steps += usize::from(with.stats.n_class_steps > 0);
    }
    assert_eq!(n_cases, 400);
    assert!(
        n_with_class_steps >= 40,
        "class steps happened in only {n_with_class_steps} cases"
    );
}

/// The lease guard of a class step, on a case built for it: pool supply
/// allows exactly one more lease; the first search (CPU bin-packing,
/// tightest first, two hosts scored) weighs unleased h against unleased u
/// and leases h, which exhausts supply. The next search may no longer
/// consider u, so its window reaches the leased host l, which scores higher
/// than h: one-by-one placement puts the second task on l. A class step
/// that ignored the lease would have put it on h.
#[test]
fn class_steps_stop_when_a_placement_leases_the_host() {
    let flex = TierPolicy {
        good_enough: 1.0,
        max_hosts_scored: Some(2),
        repack: false,
        ..TierPolicy::single(ScorerKind::CpuBinPack)
    };
    let mut s = Scheduler::new(SchedulerConfig {
        flex,
        ..SchedulerConfig::default()
    });
    s.set_event_feed(false);
    let pool = PoolId::from("pool-a");
    let spec = PoolSpec {
        id: pool.clone(),
        region: "us-east-1".into(),
        headroom: HeadroomPolicy {
            daily_scaling_fraction: 0.0,
            ..HeadroomPolicy::default()
        },
    };
    s.handle_pool_configured(Timestamp::ZERO, spec).unwrap();
    s.handle_reservations(
        Timestamp::ZERO,
        &pool,
        vec![Reservation::new("m5.2xlarge", 8)],
    )
    .unwrap();
    // 1 IE reserved, 0.75 streaming: 0.25 IE of supply, two m5.2xlarge leases.
    s.handle_streaming_demand(Timestamp::ZERO, &pool, Ie::from_micro(750_000))
        .unwrap();
    for (i, (name, cpus)) in [("h", 4), ("u", 4), ("l", 16)].into_iter().enumerate() {
        let mut spec = host(i as u64, cpus, 32);
        spec.id = HostId::from(name);
        spec.attributes.insert("name".into(), name.into());
        s.handle_host_added(Timestamp::ZERO, spec).unwrap();
    }
    let on = |name: &str| Constraint::AttributeEquals {
        key: "name".into(),
        value: name.into(),
    };
    // Round 1: critical work makes h (3 vCPU free) tighter than u (3.5
    // free); a flex task leases l and leaves it 4 vCPU free.
    for (id, tier, cpu, name) in [
        (1, Tier::Critical, 1000, "h"),
        (2, Tier::Critical, 500, "u"),
        (3, Tier::Flex, 12_000, "l"),
    ] {
        let mut j = job(id, "filler", tier, 1, cpu, 64);
        j.hard_constraints.push(on(name));
        s.handle_job_submitted(Timestamp::ZERO, j).unwrap();
    }
    let (_, report) = s.run_round(Timestamp::from_millis(1)).unwrap();
    assert_eq!(report.n_applied, 3);
    while s.poll_action().is_some() {}
    let status = s.pool(&pool).unwrap();
    assert_eq!(
        (status.supply, status.n_leased_hosts),
        (Ie::from_micro(250_000), 1),
        "the case needs room for exactly one more lease"
    );
    // Round 2: two equal flex tasks of one job, the only team waiting.
    s.handle_job_submitted(
        Timestamp::from_millis(2),
        job(4, "enc", Tier::Flex, 2, 1000, 64),
    )
    .unwrap();
    let now = Timestamp::from_millis(3);
    let with = s.plan_round(now).unwrap();
    let without = s.plan_round_one_by_one(now);
    let hosts = |p: &Plan| {
        p.assignments
            .iter()
            .map(|a| a.host.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        hosts(&without),
        ["h", "l"],
        "the case is not what it claims"
    );
    assert_eq!(decisions(&with), decisions(&without));
}

/// Fenzo's shape in small: in a pool without a supply a lease changes no
/// other host's check, so the search that leases a host is followed at once
/// by class steps that fill it (seven per 8-vCPU host), not by a second
/// search; the decisions are those of one search per task.
#[test]
fn class_steps_fill_a_newly_leased_host_in_a_pool_without_supply() {
    let mut s = Scheduler::new(SchedulerConfig {
        flex: TierPolicy::single(ScorerKind::CpuBinPack),
        ..SchedulerConfig::default()
    });
    s.set_event_feed(false);
    for i in 0..6 {
        s.handle_host_added(Timestamp::ZERO, host(i, 8, 32))
            .unwrap();
    }
    s.handle_job_submitted(Timestamp::ZERO, job(1, "enc", Tier::Flex, 40, 1000, 1024))
        .unwrap();
    let now = Timestamp::from_millis(1);
    let with = s.plan_round(now).unwrap();
    let without = s.plan_round_one_by_one(now);
    assert_eq!(decisions(&with), decisions(&without));
    assert_eq!(with.stats.n_placed, 40);
    // Five hosts filled: one search and seven class steps each.
    assert_eq!(with.stats.n_class_steps, 35);
}
