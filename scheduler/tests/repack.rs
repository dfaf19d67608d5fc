//! Round repacking (`TierPolicy::repack`), checked through the public API
//! against sources of truth of its own: the same scheduler with repacking
//! off (admission must not change), the commit path's re-validation of a
//! serialized plan (every moved placement must pass every checker again),
//! and a recount of host loads from the requests we submitted.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{cases, t};
use ebb_scheduler::*;
use proptest::prelude::*;

/// A 4-dimension host: 64 vCPU, 256 GiB, 1,600 GiB disk, 25 Gbps, in one of
/// two racks and three zones.
fn host(i: usize) -> HostSpec {
    let mut attributes = BTreeMap::new();
    attributes.insert("rack".to_string(), format!("r{}", i % 2));
    HostSpec {
        id: HostId::from(format!("h{i:02}")),
        pool: PoolId::from("pool-a"),
        instance_type: "m5.16xlarge".into(),
        zone: ["za", "zb", "zc"][i % 3].into(),
        region: "us-east-1".into(),
        attributes,
        capacity: Resources {
            cpu_millis: 64_000,
            memory_mib: 256 * 1024,
            disk_mib: 1_600 * 1024,
            network_mbps: 25_000,
            ..Resources::default()
        },
        gpu_model: None,
    }
}

#[derive(Clone, Debug)]
struct JobCase {
    request: Resources,
    n_tasks: u32,
    tier: Tier,
    team: usize,
    gang: bool,
    constraint: Option<Constraint>,
}

fn arb_job() -> impl Strategy<Value = JobCase> {
    (
        (2_000u64..=24_000, 1u64..=96, 8u64..=400, 250u64..=6_000),
        1u32..=6,
        prop::bool::weighted(0.2),
        0..3usize,
        prop::bool::weighted(0.15),
        prop::option::weighted(
            0.2,
            prop_oneof![
                Just(Constraint::UniqueHost { group: None }),
                Just(Constraint::ZoneBalance { max_skew: 1 }),
                Just(Constraint::AttributeEquals {
                    key: "rack".into(),
                    value: "r0".into()
                }),
            ],
        ),
    )
        .prop_map(
            |((cpu, mem_gib, disk_gib, net), n_tasks, critical, team, gang, constraint)| JobCase {
                request: Resources {
                    cpu_millis: cpu,
                    memory_mib: mem_gib * 1024,
                    disk_mib: disk_gib * 1024,
                    network_mbps: net,
                    ..Resources::default()
                },
                n_tasks,
                tier: if critical { Tier::Critical } else { Tier::Flex },
                team,
                gang,
                constraint,
            },
        )
}

fn spec(id: u64, c: &JobCase) -> JobSpec {
    JobSpec {
        id: JobId(id),
        request_key: None,
        name: format!("job-{id}"),
        team: TeamId::from(["a", "b", "c"][c.team]),
        tier: c.tier,
        priority: 0,
        bid: None,
        request: c.request.clone(),
        n_tasks: c.n_tasks,
        hard_constraints: c.constraint.iter().cloned().collect(),
        soft_constraints: vec![],
        gang: c.gang,
        retry: RetryPolicy::default(),
        disruption_budget: None,
        checkpoint_interval: None,
        expected_runtime: None,
    }
}

/// A scheduler with `n_hosts` hosts, `jobs` submitted, and one earlier
/// round's worth of work already running (so hosts start partly full).
fn scheduler(repack: bool, n_hosts: usize, before: &[JobCase], jobs: &[JobCase]) -> Scheduler {
    let policy = TierPolicy {
        repack,
        ..TierPolicy::default()
    };
    let mut s = Scheduler::new(SchedulerConfig {
        critical: policy.clone(),
        flex: policy,
        ..SchedulerConfig::default()
    });
    s.set_event_feed(false);
    for i in 0..n_hosts {
        s.handle_host_added(t(0), host(i)).unwrap();
    }
    for (j, c) in before.iter().enumerate() {
        s.handle_job_submitted(t(0), spec(1000 + j as u64, c))
            .unwrap();
    }
    s.run_round(t(1)).unwrap();
    while s.poll_action().is_some() {}
    for (j, c) in jobs.iter().enumerate() {
        s.handle_job_submitted(t(2), spec(j as u64 + 1, c)).unwrap();
    }
    s
}

/// Hosts with at least one task after committing `plan`, and per host the
/// load recounted from the submitted requests.
fn loads_after(s: &Scheduler) -> BTreeMap<HostId, Resources> {
    let mut loads: BTreeMap<HostId, Resources> = BTreeMap::new();
    for h in s.hosts() {
        for task in h.tasks() {
            let req = s.job(task.job).expect("job exists").spec.request.clone();
            loads
                .entry(h.spec().id.clone())
                .or_default()
                .checked_add_assign(&req)
                .unwrap();
        }
    }
    loads
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Repacking changes hosts only: within a tier, the same tasks are placed
/// in the same order with the same unplaced jobs and reasons, constrained
/// tasks keep the admission's host, and no more hosts are used than
/// without it. Always: every host's recounted load fits, the plan is
/// deterministic, and, serialized (so commit re-validates every assignment
/// through every checker), it is accepted whole.
fn repack_changes_hosts_only(
    n_hosts: usize,
    before: &[JobCase],
    jobs: Vec<JobCase>,
    all_flex: bool,
) -> Result<(), TestCaseError> {
    let jobs: Vec<JobCase> = jobs
        .into_iter()
        .map(|j| JobCase {
            tier: if all_flex { Tier::Flex } else { j.tier },
            ..j
        })
        .collect();
    // One history (the earlier round with repacking off), then the same
    // state with repacking on, through a snapshot.
    let off = scheduler(false, n_hosts, before, &jobs);
    let mut snap = serde_json::to_value(off.snapshot()).unwrap();
    for tier in ["critical", "flex"] {
        snap["config"][tier]["repack"] = serde_json::Value::Bool(true);
    }
    let on = Scheduler::restore(serde_json::from_value(snap).unwrap()).unwrap();
    let plan_off = off.plan_round(t(3)).unwrap();
    let plan_on = on.plan_round(t(3)).unwrap();
    prop_assert_eq!(&plan_on, &on.plan_round(t(3)).unwrap(), "not deterministic");

    // Admission is per tier: a critical tier's repack changes the hosts
    // the flex tier's admission then sees, so the comparisons with
    // repacking off hold when every job of the round is in one tier.
    let one_tier = jobs.iter().all(|j| j.tier == jobs[0].tier);
    let runs = |p: &Plan| p.assignments.iter().map(|a| a.run).collect::<Vec<_>>();
    if one_tier {
        prop_assert_eq!(runs(&plan_on), runs(&plan_off));
        prop_assert_eq!(&plan_on.unplaced, &plan_off.unplaced);
        prop_assert_eq!(&plan_on.stats, &plan_off.stats);
        for (a_on, a_off) in plan_on.assignments.iter().zip(&plan_off.assignments) {
            let j = a_on.run.task.job.0 as usize - 1;
            if jobs[j].constraint.is_some() {
                prop_assert_eq!(&a_on.host, &a_off.host, "a constrained task moved");
            }
        }
    }

    // Commit the repacked plan through re-validation: a plan that went
    // through serde carries no overlay, so every assignment is checked
    // against the state again.
    let mut on = on;
    let json = serde_json::to_string(&plan_on).unwrap();
    let replayed: Plan = serde_json::from_str(&json).unwrap();
    let report = on.commit(t(3), replayed).unwrap();
    prop_assert!(!report.fast_path);
    prop_assert!(
        report.rejected.is_empty(),
        "re-validation refused {:?}",
        report.rejected
    );
    prop_assert_eq!(report.n_applied as usize, plan_on.assignments.len());

    let mut off = off;
    off.commit(t(3), plan_off).unwrap();
    let (loads_on, loads_off) = (loads_after(&on), loads_after(&off));
    let cap = host(0).capacity;
    for (h, load) in &loads_on {
        prop_assert!(load.fits_in(&cap), "{} over capacity: {:?}", h, load);
    }
    prop_assert!(
        !one_tier || loads_on.len() <= loads_off.len(),
        "repack used {} hosts, admission alone {}",
        loads_on.len(),
        loads_off.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Rounds small enough for the local search (up to 512 tasks).
    #[test]
    fn repack_changes_hosts_only_and_every_move_is_valid(
        n_hosts in 3usize..=16,
        before in prop::collection::vec(arb_job(), 0..4),
        jobs in prop::collection::vec(arb_job(), 1..14),
        all_flex in prop::bool::weighted(0.6),
    ) {
        repack_changes_hosts_only(n_hosts, &before, jobs, all_flex)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(12), ..config() })]

    /// Rounds of about 360 to 1,200 tasks, mostly over 512: those are
    /// placed again largest first instead of searched locally.
    #[test]
    fn a_big_round_changes_hosts_only_and_every_move_is_valid(
        before in prop::collection::vec(arb_job(), 0..4),
        jobs in prop::collection::vec(
            (arb_job(), 60u32..=120).prop_map(|(j, n)| JobCase { n_tasks: n, ..j }),
            6..10,
        ),
        all_flex in prop::bool::weighted(0.6),
    ) {
        repack_changes_hosts_only(300, &before, jobs, all_flex)?;
    }
}

/// The greedy trap through the whole core: five flex tasks that first fit
/// in submit order spreads over three hosts, and two hosts hold (60/40 and
/// 40/60 pair with their complements). With repacking the round uses two.
#[test]
fn repack_closes_a_host_admission_opened() {
    let shape = |cpu: u64, mem_gib: u64| JobCase {
        request: Resources {
            cpu_millis: cpu * 640,
            memory_mib: mem_gib * 1024 * 256 / 100,
            disk_mib: 1024,
            network_mbps: 10,
            ..Resources::default()
        },
        n_tasks: 1,
        tier: Tier::Flex,
        team: 0,
        gang: false,
        constraint: None,
    };
    let jobs = [
        shape(60, 40),
        shape(30, 30),
        shape(40, 60),
        shape(40, 30),
        shape(30, 40),
    ];
    let used = |repack: bool| {
        let mut s = scheduler(repack, 4, &[], &jobs);
        let (plan, report) = s.run_round(t(3)).unwrap();
        assert_eq!(report.n_applied, 5, "{plan:?}");
        plan.assignments
            .iter()
            .map(|a| a.host.clone())
            .collect::<BTreeSet<_>>()
            .len()
    };
    assert_eq!(used(false), 3);
    assert_eq!(used(true), 2);
}

/// Rounds over 512 tasks are not searched locally but placed again largest
/// first (dominant share). Admission serves the team's jobs in submit
/// order: 300 tasks at 35% of a host's CPU first, then 300 at 65%. Bin
/// packing puts two small ones on a host (70%) and each large one on a
/// host of its own: 150 + 300 hosts. Largest first pairs each large task
/// with a small one, exactly full: 300 hosts.
#[test]
fn a_big_round_is_placed_again_largest_first() {
    let shape = |cpu_millis: u64| JobCase {
        request: Resources {
            disk_mib: 1024,
            network_mbps: 10,
            ..Resources::cpu_mem(cpu_millis, 1024)
        },
        n_tasks: 300,
        tier: Tier::Flex,
        team: 0,
        gang: false,
        constraint: None,
    };
    let jobs = [shape(22_400), shape(41_600)];
    let used = |repack: bool| {
        let mut s = scheduler(repack, 500, &[], &jobs);
        let (plan, report) = s.run_round(t(3)).unwrap();
        assert_eq!(report.n_applied, 600, "{:?}", plan.unplaced);
        loads_after(&s).len()
    };
    assert_eq!(used(false), 450);
    assert_eq!(used(true), 300);
}
