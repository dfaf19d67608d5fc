//! Property tests of the core's safety invariants over random fleets, jobs
//! and event sequences, driven through the public API only.
//!
//! Each case builds a fleet (hosts of varied shapes, zones, racks and GPU
//! models, some draining), a list of jobs (both tiers, three teams with a
//! weight, a cap and a guarantee, bids, priorities, hard and soft
//! constraints, gangs) and a sequence of events (submissions, rounds, task
//! starts, finishes, failures and kills, hosts draining, coming back and
//! being lost, time passing). The invariants are checked after every event
//! or every round, as each one states.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{cases, t};
use ebb_scheduler::*;
use proptest::prelude::*;

/// Cases per property. Each case runs up to 60 events on up to 14 hosts, so
/// 96 cases keep every property well under a second in a debug build.
const N_CASES: u32 = 96;

// ------------------------------------------------------------- generators

fn arb_host(idx: usize) -> impl Strategy<Value = (HostSpec, bool)> {
    (
        prop::sample::select(vec![2u64, 4, 8, 16]),
        prop::sample::select(vec![4u64, 8, 16, 64]),
        0..3usize,
        prop::bool::weighted(0.5),
        prop::option::weighted(0.25, (1u64..=4, prop::bool::ANY)),
        prop::bool::weighted(0.15),
    )
        .prop_map(move |(cpus, mem_gib, zone, rack1, gpus, draining)| {
            let mut attributes = BTreeMap::new();
            attributes.insert("rack".to_string(), if rack1 { "r1" } else { "r2" }.into());
            let mut capacity = Resources::cpu_mem(cpus * 1000, mem_gib * 1024);
            capacity.disk_mib = 200 * 1024;
            let gpu_model = gpus.map(|(n, t4)| {
                capacity.gpus = n;
                if t4 { "t4" } else { "a10g" }.to_string()
            });
            let spec = HostSpec {
                id: HostId::from(format!("h{idx:02}")),
                pool: PoolId::from("pool-a"),
                instance_type: "m5.4xlarge".into(),
                zone: ["za", "zb", "zc"][zone].into(),
                region: "us-east-1".into(),
                attributes,
                capacity,
                gpu_model,
            };
            (spec, draining)
        })
}

fn arb_constraint() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        Just(Constraint::UniqueHost { group: None }),
        Just(Constraint::UniqueHost {
            group: Some("ps".into())
        }),
        (1u32..=2).prop_map(|max_skew| Constraint::ZoneBalance { max_skew }),
        Just(Constraint::AttributeEquals {
            key: "rack".into(),
            value: "r1".into()
        }),
        Just(Constraint::AttributeIn {
            key: "zone".into(),
            values: vec!["za".into(), "zb".into()]
        }),
        prop::sample::select(vec!["t4", "a10g"]).prop_map(|m| Constraint::GpuModel(m.into())),
    ]
}

fn arb_job(id: u64) -> impl Strategy<Value = JobSpec> {
    (
        (0..3usize, prop::bool::weighted(0.3), -2i32..=2),
        prop::option::weighted(0.4, 0u32..4),
        prop::sample::select(vec![250u64, 500, 1000, 2000, 4000]),
        prop::sample::select(vec![256u64, 1024, 2048, 8192]),
        prop::option::weighted(0.15, 1u64..=2),
        1u32..=6,
        (
            prop::collection::vec(arb_constraint(), 0..=2),
            prop::collection::vec(arb_constraint(), 0..=1),
        ),
        prop::bool::weighted(0.2),
        0u64..3_000,
    )
        .prop_map(
            move |(
                (team, critical, priority),
                bid,
                cpu,
                mem,
                gpus,
                n_tasks,
                (mut hard, soft),
                gang,
                backoff_ms,
            )| {
                let mut request = Resources::cpu_mem(cpu, mem);
                if let Some(g) = gpus {
                    request.gpus = g;
                } else {
                    // A GPU-model constraint on a task that asks for no GPU
                    // is legal but rare; keep it so the checker is exercised.
                    hard.retain(|c| !matches!(c, Constraint::GpuModel(_)) || id.is_multiple_of(2));
                }
                JobSpec {
                    id: JobId(id),
                    name: format!("job-{id}"),
                    team: TeamId::from(["t0", "t1", "t2"][team]),
                    tier: if critical { Tier::Critical } else { Tier::Flex },
                    priority,
                    bid: bid.and_then(|b| Price::new(f64::from(b) * 0.5)),
                    request,
                    n_tasks,
                    hard_constraints: hard,
                    soft_constraints: soft,
                    gang,
                    retry: RetryPolicy {
                        max_retries: 2,
                        initial_backoff: DurationMs::from_millis(backoff_ms),
                        max_backoff: DurationMs::from_millis(backoff_ms * 4),
                    },
                    disruption_budget: None,
                    checkpoint_interval: None,
                    request_key: None,
                    expected_runtime: None,
                }
            },
        )
}

/// An event. Selectors pick among the eligible tasks or hosts at the time
/// the event runs (modulo their number), so every generated event applies.
#[derive(Clone, Debug)]
enum Op {
    Round,
    SubmitNext,
    Advance(u64),
    Start(usize),
    Finish(usize),
    Fail(usize),
    Stopped(usize),
    KillTask(usize),
    KillJob(usize),
    HostLost(usize),
    HostDraining(usize),
    HostActivated(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let sel = || any::<usize>();
    prop_oneof![
        6 => Just(Op::Round),
        3 => Just(Op::SubmitNext),
        2 => (1u64..5_000).prop_map(Op::Advance),
        4 => sel().prop_map(Op::Start),
        3 => sel().prop_map(Op::Finish),
        2 => sel().prop_map(Op::Fail),
        2 => sel().prop_map(Op::Stopped),
        1 => sel().prop_map(Op::KillTask),
        1 => sel().prop_map(Op::KillJob),
        1 => sel().prop_map(Op::HostLost),
        1 => sel().prop_map(Op::HostDraining),
        1 => sel().prop_map(Op::HostActivated),
    ]
}

fn arb_policy() -> impl Strategy<Value = TierPolicy> {
    (
        prop::sample::select(ScorerKind::ALL.to_vec()),
        prop::option::of(prop::sample::select(ScorerKind::ALL.to_vec())),
        prop::sample::select(vec![0.5, 0.95, 1.0]),
        prop::option::of(1u32..=4),
        prop::bool::ANY,
        prop::sample::select(vec![0u32, 1, 32]),
    )
        .prop_map(|(a, b, good_enough, max_hosts_scored, repack, gate)| {
            let mut policy = TierPolicy::single(a);
            if let Some(b) = b {
                policy.scorers.push((b, 0.5));
            }
            policy.good_enough = good_enough;
            policy.max_hosts_scored = max_hosts_scored;
            policy.repack = repack;
            policy.empty_host_gate = gate;
            policy
        })
}

#[derive(Clone, Debug)]
struct Case {
    config: SchedulerConfig,
    hosts: Vec<(HostSpec, bool)>,
    jobs: Vec<JobSpec>,
    /// Jobs submitted before the first event.
    n_initial_jobs: usize,
    ops: Vec<Op>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    let hosts = (1usize..=14).prop_flat_map(|n| (0..n).map(arb_host).collect::<Vec<_>>());
    let jobs = (1u64..=12).prop_flat_map(|n| (1..=n).map(arb_job).collect::<Vec<_>>());
    (
        hosts,
        jobs,
        0usize..=6,
        prop::collection::vec(arb_op(), 5..60),
        any::<u64>(),
        (arb_policy(), arb_policy()),
    )
        .prop_map(|(hosts, jobs, n_initial, ops, seed, (critical, flex))| {
            let mut teams = BTreeMap::new();
            teams.insert(
                TeamId::from("t1"),
                TeamConfig {
                    weight: 2,
                    ..TeamConfig::default()
                },
            );
            let mut t2 = TeamConfig::default();
            t2.cap
                .insert(Tier::Flex, ResourceCap::cpu_mem(6000, 64 * 1024));
            teams.insert(TeamId::from("t2"), t2);
            let mut t0 = TeamConfig::default();
            t0.guarantee
                .insert(Tier::Flex, Resources::cpu_mem(2000, 4 * 1024));
            teams.insert(TeamId::from("t0"), t0);
            let config = SchedulerConfig {
                critical,
                flex,
                tie_break: TieBreak::Seeded(seed),
                teams,
                ..SchedulerConfig::default()
            };
            let n_initial_jobs = n_initial.min(jobs.len());
            Case {
                config,
                hosts,
                jobs,
                n_initial_jobs,
                ops,
            }
        })
}

// ----------------------------------------------------------------- driver

/// What a property sees after each event.
enum Step<'a> {
    /// Any event other than a round was applied.
    Event,
    /// A round was planned and committed; `before` is the world as the
    /// round found it.
    Round {
        plan: &'a Plan,
        report: &'a CommitReport,
        before: &'a Snapshot,
    },
}

/// What a property needs to know about the world just before a round.
struct Snapshot {
    /// Pending tasks whose back-off is over at the round's `now`.
    ready: BTreeSet<TaskId>,
    /// Allocation per (not lost) host.
    allocated: BTreeMap<HostId, Resources>,
}

/// Every task of every job, in id order.
fn all_tasks(s: &Scheduler) -> Vec<TaskView> {
    let mut out = Vec::new();
    for job in s.job_ids() {
        let n = s.job_spec(job).expect("listed job exists").n_tasks;
        for index in 0..n {
            out.push(s.task(TaskId::new(job, index)).expect("task exists"));
        }
    }
    out
}

fn snapshot(s: &Scheduler, now: Timestamp) -> Snapshot {
    Snapshot {
        ready: all_tasks(s)
            .into_iter()
            .filter(|v| v.state == TaskState::Pending && v.ready_at <= now)
            .map(|v| v.id)
            .collect(),
        allocated: s
            .hosts()
            .map(|h| (h.spec().id.clone(), h.allocated().clone()))
            .collect(),
    }
}

fn pick<T: Clone>(items: &[T], sel: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[sel % items.len()].clone())
}

/// Runs a case and calls `check` after every step. Returns every plan, for
/// the determinism property. Inputs the core refuses (it may refuse, e.g.,
/// a start for a task that is no longer assigned) must leave it unchanged,
/// which the invariants then check.
fn run(case: &Case, mut check: impl FnMut(&Scheduler, Timestamp, Step<'_>)) -> Vec<Plan> {
    let mut s = Scheduler::new(case.config.clone());
    let mut now = 0u64;
    for (spec, draining) in &case.hosts {
        s.handle_host_added(t(now), spec.clone()).unwrap();
        if *draining {
            s.handle_host_draining(t(now), &spec.id).unwrap();
        }
    }
    let mut jobs = case.jobs.iter();
    for spec in jobs.by_ref().take(case.n_initial_jobs) {
        s.handle_job_submitted(t(now), spec.clone()).unwrap();
    }
    let mut plans = Vec::new();
    for op in &case.ops {
        now += 1;
        let tasks = all_tasks(&s);
        let in_state = |f: fn(&TaskState) -> bool| -> Vec<TaskId> {
            tasks.iter().filter(|v| f(&v.state)).map(|v| v.id).collect()
        };
        let hosts: Vec<HostId> = s.hosts().map(|h| h.spec().id.clone()).collect();
        let at = t(now);
        match op {
            Op::Round => {
                let before = snapshot(&s, at);
                s.handle_tick(at).unwrap();
                let plan = s.plan_round(at).unwrap();
                let report = s.commit(at, plan.clone()).unwrap();
                check(
                    &s,
                    at,
                    Step::Round {
                        plan: &plan,
                        report: &report,
                        before: &before,
                    },
                );
                plans.push(plan);
                while s.poll_action().is_some() {}
                s.check_invariants()
                    .unwrap_or_else(|e| panic!("after a round: {e}"));
                continue;
            }
            Op::SubmitNext => {
                if let Some(spec) = jobs.next() {
                    s.handle_job_submitted(at, spec.clone()).unwrap();
                }
            }
            Op::Advance(ms) => now += ms,
            Op::Start(i) => {
                if let Some(task) = pick(&in_state(|s| matches!(s, TaskState::Assigned { .. })), *i)
                {
                    s.handle_task_started(at, s.task(task).unwrap().run)
                        .unwrap();
                }
            }
            Op::Finish(i) => {
                let placed = in_state(|s| {
                    matches!(s, TaskState::Assigned { .. } | TaskState::Running { .. })
                });
                if let Some(task) = pick(&placed, *i) {
                    s.handle_task_finished(at, s.task(task).unwrap().run)
                        .unwrap();
                }
            }
            Op::Fail(i) => {
                if let Some(task) = pick(&in_state(|s| matches!(s, TaskState::Running { .. })), *i)
                {
                    s.handle_task_failed(at, s.task(task).unwrap().run).unwrap();
                }
            }
            Op::Stopped(i) => {
                if let Some(task) = pick(&in_state(|s| matches!(s, TaskState::Stopping { .. })), *i)
                {
                    s.handle_task_stopped(at, s.task(task).unwrap().run)
                        .unwrap();
                }
            }
            Op::KillTask(i) => {
                let live = in_state(|s| {
                    !matches!(
                        s,
                        TaskState::Completed | TaskState::Failed | TaskState::Killed
                    )
                });
                if let Some(task) = pick(&live, *i) {
                    s.handle_task_killed(at, task).unwrap();
                }
            }
            Op::KillJob(i) => {
                if let Some(job) = pick(&s.job_ids(), *i) {
                    s.handle_job_killed(at, job).unwrap();
                }
            }
            Op::HostLost(i) => {
                if let Some(h) = pick(&hosts, *i) {
                    s.handle_host_lost(at, &h).unwrap();
                }
            }
            Op::HostDraining(i) => {
                if let Some(h) = pick(&hosts, *i) {
                    s.handle_host_draining(at, &h).unwrap();
                }
            }
            Op::HostActivated(i) => {
                if let Some(h) = pick(&hosts, *i) {
                    s.handle_host_activated(at, &h).unwrap();
                }
            }
        }
        while s.poll_action().is_some() {}
        s.check_invariants()
            .unwrap_or_else(|e| panic!("after {op:?}: {e}"));
        check(&s, t(now), Step::Event);
    }
    plans
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(N_CASES),
        // Failures are reproduced from the printed minimal case; no
        // regression files are written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config())]

    /// (a) No host is ever over-committed in any dimension, and every
    /// host's allocation is exactly the sum of its tasks' requests (so the
    /// capacity check is checking the real load). The fleet total agrees.
    #[test]
    fn no_host_is_over_committed(case in arb_case()) {
        run(&case, |s, _, _| {
            let mut fleet_total = Resources::default();
            for h in s.hosts() {
                let shortfall = h.allocated().first_shortfall(&h.spec().capacity);
                assert_eq!(shortfall, None, "host {} over-committed: {} of {}",
                    h.spec().id, h.allocated(), h.spec().capacity);
                let mut sum = Resources::default();
                for task in h.tasks() {
                    let spec = s.job_spec(task.job).expect("hosted task's job exists");
                    sum.checked_add_assign(&spec.request).unwrap();
                }
                assert_eq!(&sum, h.allocated(), "host {} allocation drifted", h.spec().id);
                fleet_total.checked_add_assign(h.allocated()).unwrap();
            }
            assert_eq!(fleet_total, s.totals().allocated);
        });
    }

    /// (b) A task is never on two hosts, and the hosts' task lists agree
    /// with every task's state in both directions.
    #[test]
    fn a_task_is_never_placed_twice(case in arb_case()) {
        run(&case, |s, _, _| {
            let mut on_host: BTreeMap<TaskId, HostId> = BTreeMap::new();
            for h in s.hosts() {
                for task in h.tasks() {
                    let before = on_host.insert(*task, h.spec().id.clone());
                    assert!(before.is_none(), "{task} is on {before:?} and {}", h.spec().id);
                }
            }
            for v in all_tasks(s) {
                let host = match &v.state {
                    TaskState::Assigned { host }
                    | TaskState::Running { host }
                    | TaskState::Stopping { host, .. } => Some(host),
                    _ => None,
                };
                assert_eq!(on_host.get(&v.id), host, "{} is {:?}", v.id, v.state);
            }
        });
    }

    /// (c) After each committed round, every ready task left pending has at
    /// least one reason, and the round reported it unplaced.
    #[test]
    fn every_ready_unplaced_task_has_a_reason(case in arb_case()) {
        run(&case, |s, now, step| {
            let Step::Round { plan, report, .. } = step else { return };
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
            let unplaced: BTreeSet<JobId> = plan.unplaced.iter().map(|u| u.job).collect();
            for v in all_tasks(s) {
                if v.state == TaskState::Pending && v.ready_at <= now {
                    let reasons = v.pending_reasons.as_ref().unwrap_or_else(|| {
                        panic!("ready task {} has no pending reason", v.id)
                    });
                    assert!(!reasons.is_empty(), "ready task {} has an empty reason", v.id);
                    assert!(unplaced.contains(&v.id.job), "{} not reported unplaced", v.id);
                }
            }
        });
    }

    /// (d) Critical tasks are considered before flex ones. In a plan no
    /// critical assignment follows a flex one; and no flex task is placed on
    /// a host where a critical task the round left unplaced would have fit
    /// once the round's critical placements were made. The second half is
    /// checked for critical jobs whose outcome on a host depends only on the
    /// host (no unique-host or zone-balance constraint, not a gang, not
    /// stopped by a team cap).
    #[test]
    fn critical_tasks_are_considered_before_flex(case in arb_case()) {
        run(&case, |s, _, step| {
            let Step::Round { plan, before, .. } = step else { return };
            let tier = |job: JobId| s.job_spec(job).expect("planned job exists").tier;
            let tiers: Vec<Tier> = plan.assignments.iter().map(|a| tier(a.run.task.job)).collect();
            let mut sorted = tiers.clone();
            sorted.sort();
            assert_eq!(tiers, sorted, "a flex assignment precedes a critical one");

            // Each host's allocation once the critical tier was planned.
            let mut after_critical = before.allocated.clone();
            for a in &plan.assignments {
                if tier(a.run.task.job) == Tier::Critical {
                    let request = &s.job_spec(a.run.task.job).unwrap().request;
                    after_critical.get_mut(&a.host).unwrap().checked_add_assign(request).unwrap();
                }
            }
            for u in &plan.unplaced {
                let spec = s.job_spec(u.job).unwrap();
                let host_independent = spec.hard_constraints.iter().all(|c| !c.is_job_dependent());
                let capped = u.reasons.counts.iter().any(|c| c.reason == Reason::TeamCapReached);
                if spec.tier != Tier::Critical || spec.gang || !host_independent || capped {
                    continue;
                }
                for a in plan.assignments.iter().filter(|a| tier(a.run.task.job) == Tier::Flex) {
                    let host = s.host(&a.host).expect("host of a fresh plan exists").spec();
                    let meets_constraints = spec.hard_constraints.iter().all(|c| match c {
                        Constraint::AttributeEquals { key, value } => {
                            host.attribute(key) == Some(value.as_str())
                        }
                        Constraint::AttributeIn { key, values } => {
                            host.attribute(key).is_some_and(|v| values.iter().any(|w| w == v))
                        }
                        Constraint::GpuModel(m) => host.gpu_model.as_deref() == Some(m.as_str()),
                        _ => unreachable!("job-dependent constraints were skipped"),
                    });
                    let fits = after_critical[&a.host]
                        .shortfall_after_adding(&spec.request, &host.capacity)
                        .is_none();
                    assert!(!(meets_constraints && fits),
                        "flex {} placed on {} where unplaced critical {} fit ({})",
                        a.run.task, a.host, u.job, u.reasons);
                }
            }
        });
    }

    /// (e) The same inputs and the same seed give the identical plans.
    #[test]
    fn same_inputs_and_seed_give_the_same_plans(case in arb_case()) {
        let first = run(&case, |_, _, _| {});
        let second = run(&case, |_, _, _| {});
        prop_assert_eq!(first, second);
    }

    /// (f) A gang is placed whole or not at all: a gang job's assignments in
    /// a plan are contiguous and cover every one of its ready tasks, or it
    /// has none and is reported unplaced with all its ready tasks.
    #[test]
    fn a_gang_is_placed_whole_or_not_at_all(case in arb_case()) {
        run(&case, |s, _, step| {
            let Step::Round { plan, before, .. } = step else { return };
            let mut n_ready: BTreeMap<JobId, u32> = BTreeMap::new();
            for task in &before.ready {
                *n_ready.entry(task.job).or_default() += 1;
            }
            for (&job, &n) in &n_ready {
                if !s.job_spec(job).unwrap().gang {
                    continue;
                }
                let positions: Vec<usize> = plan.assignments.iter().enumerate()
                    .filter(|(_, a)| a.run.task.job == job).map(|(i, _)| i).collect();
                let unplaced = plan.unplaced.iter().find(|u| u.job == job);
                match (positions.len() as u32, unplaced) {
                    (0, Some(u)) => assert_eq!(u.n_tasks, n, "gang {job} unplaced count"),
                    (placed, None) => {
                        assert_eq!(placed, n, "gang {job} placed partly");
                        assert_eq!(positions.last().unwrap() - positions[0] + 1, positions.len(),
                            "gang {job} assignments are not contiguous");
                    }
                    (placed, Some(u)) => panic!("gang {job} placed {placed} and left {} unplaced", u.n_tasks),
                }
            }
        });
    }
}
