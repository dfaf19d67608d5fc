//! The overlay's searches against a recount from scratch: random sequences
//! of tentative changes (placements, partition moves both ways, reclaim
//! marks, nested checkpoints kept or rolled back) across the promotion
//! threshold, each followed by every kind of search and `len_part`, compared
//! with a brute-force filter and sort of all active hosts at the figures a
//! plain model of the same changes predicts. At the end the overlay is
//! applied through `State::charge`, as commit does, and the committed index
//! must answer the same.

use proptest::prelude::*;

use super::*;
use crate::model::index::{Fit, NO_FLEX, part_of};
use crate::policy::testkit::{Fleet, host_spec, job_spec};
use crate::spec::host::HostState;
use crate::units::ids::PoolId;
use crate::units::resources::Dim;

/// A host to build: pool (0 or 1), vCPUs, GiB, GPUs, active or draining,
/// and the flex and critical tasks it carries when the round starts.
#[derive(Clone, Debug)]
struct HostPlan {
    pool: u8,
    cpus: u64,
    mem_gib: u64,
    gpus: u64,
    active: bool,
    n_flex: u8,
    n_critical: u8,
}

/// Hosts spread over both pools, most of them active, some loaded.
fn host_plan() -> impl Strategy<Value = HostPlan> {
    host_plan_weighted(0.5, vec![0, 1, 2])
}

/// Hosts in pool 0 with probability `in_pool_0`, with one of `n_flex`
/// flex tasks committed.
fn host_plan_weighted(in_pool_0: f64, n_flex: Vec<u8>) -> impl Strategy<Value = HostPlan> {
    (
        prop::bool::weighted(in_pool_0).prop_map(|p0| u8::from(!p0)),
        prop::sample::select(vec![2u64, 4, 8]),
        prop::sample::select(vec![4u64, 8, 16]),
        prop::sample::select(vec![0u64, 0, 2]),
        prop::bool::weighted(0.9),
        prop::sample::select(n_flex),
        0..2u8,
    )
        .prop_map(
            |(pool, cpus, mem_gib, gpus, active, n_flex, n_critical)| HostPlan {
                pool,
                cpus,
                mem_gib,
                gpus,
                active,
                n_flex,
                n_critical,
            },
        )
}

/// One tentative change.
#[derive(Clone, Debug)]
enum Op {
    /// A task of job `job` (see [`jobs`]) on the `host`-th host, if it fits.
    Place {
        job: usize,
        host: usize,
    },
    /// Takes the `pick`-th still-present committed task off its host (as
    /// compaction's what-ifs do): may move a host back to `NO_FLEX`.
    TakeOff {
        pick: usize,
    },
    /// Marks a host reclaiming: touched, same free capacity.
    Reclaim {
        host: usize,
    },
    Checkpoint,
    Rollback,
    Keep,
}

/// Changes with `place` times the weight of each other kind on placements.
fn op(place: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        place => (0..4usize, any::<usize>()).prop_map(|(job, host)| Op::Place { job, host }),
        1 => any::<usize>().prop_map(|pick| Op::TakeOff { pick }),
        1 => any::<usize>().prop_map(|host| Op::Reclaim { host }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Rollback),
        1 => Just(Op::Keep),
    ]
}

/// The jobs: three flex shapes (one with a GPU) and one critical.
fn jobs() -> Vec<(Tier, Resources)> {
    let gpu = Resources {
        gpus: 1,
        ..Resources::cpu_mem(1_000, 2 * 1024)
    };
    vec![
        (Tier::Flex, Resources::cpu_mem(1_000, 1024)),
        (Tier::Flex, Resources::cpu_mem(2_000, 4 * 1024)),
        (Tier::Flex, gpu),
        (Tier::Critical, Resources::cpu_mem(1_000, 1024)),
    ]
}

/// What the test itself predicts for a host: its allocation and flex count.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    allocated: Resources,
    n_flex: u32,
}

/// The fleet, its jobs, and the committed tasks (task, host) in order.
struct World {
    state: State,
    hosts: Vec<HostIdx>,
    jobs: Vec<JobId>,
    committed: Vec<(TaskId, HostIdx)>,
}

fn build(plans: &[HostPlan]) -> World {
    let mut fleet = Fleet::new();
    let jobs: Vec<JobId> = jobs()
        .into_iter()
        .enumerate()
        .map(|(i, (tier, request))| {
            let mut spec = job_spec(i as u64 + 1, request, vec![]);
            spec.tier = tier;
            fleet.job(spec)
        })
        .collect();
    let mut hosts = Vec::new();
    let mut committed = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let mut spec = host_spec(&format!("h{i}"), "z", p.cpus, p.mem_gib);
        spec.pool = PoolId::from(if p.pool == 0 { "pool-a" } else { "pool-b" });
        spec.capacity.gpus = p.gpus;
        let state = if p.active {
            HostState::Active
        } else {
            HostState::Draining
        };
        let h = fleet.host_in_state(spec, state);
        hosts.push(h);
        let loads = std::iter::repeat_n(jobs[0], p.n_flex as usize)
            .chain(std::iter::repeat_n(jobs[3], p.n_critical as usize));
        for job in loads {
            let request = &fleet.job_ref(job).spec.request;
            if request.fits_in(&fleet.host_ref(h).free()) {
                fleet.place(job, h);
                let index = fleet.job_ref(job).tasks.len() as u32 - 1;
                committed.push((TaskId::new(job, index), h));
            }
        }
    }
    World {
        state: fleet.state,
        hosts,
        jobs,
        committed,
    }
}

/// A search to compare.
#[derive(Clone, Copy, Debug)]
struct Query {
    dim: IndexDim,
    min_free: u64,
    loosest_first: bool,
    /// Bit `p` set: partition `p` is included (partitions 0 to 3 exist).
    include: u8,
    /// A request (vCPU millis, MiB, GPUs) whose [`Fit`] filters the walk.
    fit: Option<(u64, u64, u64)>,
}

/// Every dimension and order, from nothing to a lot (`all_mins`) or from
/// nothing and from the middle, over all partitions, without `NO_FLEX`
/// partitions (a flex search in full pools), and without pool 0.
fn queries(all_mins: bool) -> Vec<Query> {
    let mut out = Vec::new();
    for dim in [IndexDim::Cpu, IndexDim::Memory, IndexDim::Gpu] {
        let mins = match dim {
            IndexDim::Cpu => [0, 1_000, 3_000],
            IndexDim::Memory => [0, 2 * 1024, 6 * 1024],
            IndexDim::Gpu => [0, 1, 2],
        };
        for loosest_first in [false, true] {
            let query = |min_free, include, fit| Query {
                dim,
                min_free,
                loosest_first,
                include,
                fit,
            };
            let mins = if all_mins { &mins[..] } else { &mins[..2] };
            for &min_free in mins {
                for include in [0b1111, 0b1010, 0b1100] {
                    out.push(query(min_free, include, None));
                }
            }
            // Requests short in another dimension on many hosts (the walk's
            // range is covered above).
            for fit in [(1_000, 6 * 1024, 0), (3_000, 1024, 0), (1_000, 2048, 2)] {
                out.push(query(mins[1], 0b1111, Some(fit)));
            }
        }
    }
    out
}

/// The brute-force answer: every active host at the model's figures.
fn recount(state: &State, model: &[Model], hosts: &[HostIdx], q: Query) -> Vec<HostIdx> {
    let mut keys: Vec<(u64, u64, HostIdx)> = hosts
        .iter()
        .zip(model)
        .filter_map(|(&h, m)| {
            let host = &state.hosts[h];
            let free = host.spec.capacity.saturating_sub(&m.allocated);
            let part = part_of(host.pool, m.n_flex > 0);
            let amount = q.dim.amount(&free);
            let indexed =
                host.state == HostState::Active && (q.dim != IndexDim::Gpu || host.has_gpus());
            (indexed && amount >= q.min_free && q.include & (1 << part) != 0)
                .then_some((amount, host.rank, h))
        })
        .collect();
    keys.sort_unstable();
    if q.loosest_first {
        keys.reverse();
    }
    keys.into_iter().map(|(_, _, h)| h).collect()
}

fn recount_len_part(state: &State, model: &[Model], hosts: &[HostIdx], part: usize) -> usize {
    hosts
        .iter()
        .zip(model)
        .filter(|&(&h, m)| {
            let host = &state.hosts[h];
            host.state == HostState::Active && part_of(host.pool, m.n_flex > 0) == part
        })
        .count()
}

/// Checks `queries` and every partition size of `view` against the recount.
fn check(
    view: &View<'_>,
    model: &[Model],
    hosts: &[HostIdx],
    queries: &[Query],
) -> Result<(), TestCaseError> {
    let state = view.state;
    for (&h, m) in hosts.iter().zip(model) {
        prop_assert_eq!(view.allocated(h), &m.allocated, "host {:?}", h);
        prop_assert_eq!(view.n_flex(h), m.n_flex, "host {:?}", h);
    }
    for &q in queries {
        let fit = q.fit.map(|(cpu, mem, gpus)| Resources {
            gpus,
            ..Resources::cpu_mem(cpu, mem)
        });
        let mut walk = view.candidates(
            q.dim,
            q.min_free,
            q.loosest_first,
            |p| q.include & (1 << p) != 0,
            fit.as_ref().map(Fit::new),
        );
        let got: Vec<HostIdx> = walk.by_ref().collect();
        let all = recount(state, model, hosts, q);
        let Some(request) = fit else {
            prop_assert_eq!(got, all, "{:?}", q);
            continue;
        };
        // With a filter: the same order, every host the resource check
        // accepts, and the ones left out counted under the dimension that
        // check names.
        let kept: Vec<HostIdx> = all.iter().copied().filter(|h| got.contains(h)).collect();
        prop_assert_eq!(&kept, &got, "{:?}: not a sub-walk in order", q);
        let mut left_out: Vec<(Dim, u32)> = Vec::new();
        for &h in &all {
            let i = hosts.iter().position(|&x| x == h).unwrap();
            let short = model[i]
                .allocated
                .shortfall_after_adding(&request, &state.hosts[h].spec.capacity);
            if got.contains(&h) {
                continue;
            }
            let Some(dim) = short else {
                return Err(TestCaseError::fail(format!(
                    "{q:?}: fitting {h:?} left out"
                )));
            };
            match left_out.iter_mut().find(|(d, _)| *d == dim) {
                Some((_, n)) => *n += 1,
                None => left_out.push((dim, 1)),
            }
        }
        let mut counted: Vec<(Dim, u32)> = walk.fit().unwrap().passed_over().collect();
        left_out.sort();
        counted.sort();
        prop_assert_eq!(counted, left_out, "{:?}: reasons", q);
    }
    for part in 0..6 {
        prop_assert_eq!(
            view.len_part(part),
            recount_len_part(state, model, hosts, part),
            "len_part({})",
            part
        );
    }
    Ok(())
}

/// Runs `ops` on an overlay over a fleet built from `plans`, checking
/// `queries` after every step, then applies the overlay as commit does and
/// checks the committed index. Returns the partitions that ended up promoted.
fn run(
    plans: &[HostPlan],
    ops: &[Op],
    overlay: Overlay,
    queries: &[Query],
) -> Result<Vec<usize>, TestCaseError> {
    let World {
        state,
        hosts,
        jobs: job_ids,
        committed,
    } = build(plans);
    let shapes = jobs();
    let mut overlay = overlay;
    let mut model: Vec<Model> = hosts
        .iter()
        .map(|&h| Model {
            allocated: state.hosts[h].allocated.clone(),
            n_flex: state.hosts[h].n_flex_tasks,
        })
        .collect();
    // Committed tasks not taken off yet, and the ones taken off, in order.
    let mut present: Vec<(TaskId, HostIdx)> = committed;
    let mut taken_off: Vec<(TaskId, HostIdx)> = Vec::new();
    // Per open checkpoint: its mark and what the model was when it opened.
    type Saved = (Vec<Model>, Vec<(TaskId, HostIdx)>, Vec<(TaskId, HostIdx)>);
    let mut marks: Vec<(Mark, Saved)> = Vec::new();
    let mut next_index = 1_000u32;
    check(&View::new(&state, &overlay), &model, &hosts, queries)?;
    for op in ops {
        match *op {
            Op::Place { job, host } => {
                let i = host % hosts.len();
                let (h, (tier, request)) = (hosts[i], &shapes[job]);
                let free = state.hosts[h]
                    .spec
                    .capacity
                    .saturating_sub(&model[i].allocated);
                if request.fits_in(&free) {
                    let task = TaskId::new(job_ids[job], next_index);
                    next_index += 1;
                    overlay.charge(&state, task, h, true);
                    model[i].allocated.checked_add_assign(request).unwrap();
                    model[i].n_flex += u32::from(*tier == Tier::Flex);
                }
            }
            Op::TakeOff { pick } => {
                if !present.is_empty() {
                    let (task, h) = present.remove(pick % present.len());
                    overlay.charge(&state, task, h, false);
                    let i = hosts.iter().position(|&x| x == h).unwrap();
                    let job = &state.jobs[&task.job];
                    model[i]
                        .allocated
                        .checked_sub_assign(&job.spec.request)
                        .unwrap();
                    model[i].n_flex -= u32::from(job.spec.tier == Tier::Flex);
                    taken_off.push((task, h));
                }
            }
            Op::Reclaim { host } => overlay.mark_reclaiming(&state, hosts[host % hosts.len()]),
            Op::Checkpoint => {
                let saved = (model.clone(), present.clone(), taken_off.clone());
                marks.push((overlay.checkpoint(), saved));
            }
            Op::Rollback => {
                if let Some((mark, (m, p, t))) = marks.pop() {
                    overlay.rollback(&state, mark);
                    (model, present, taken_off) = (m, p, t);
                }
            }
            Op::Keep => {
                if let Some((mark, _)) = marks.pop() {
                    overlay.keep(mark);
                }
            }
        }
        check(&View::new(&state, &overlay), &model, &hosts, queries)?;
    }
    while let Some((mark, _)) = marks.pop() {
        overlay.keep(mark);
    }

    // Commit's path: take off first (never over-commits), then place.
    let mut after = state.clone();
    for &(task, h) in &taken_off {
        after.charge(h, &[task], false, Timestamp::ZERO);
    }
    for &(task, h) in overlay.placements() {
        after.charge(h, &[task], true, Timestamp::ZERO);
    }
    let empty = Overlay::default();
    let committed_view = View::new(&after, &empty);
    check(&committed_view, &model, &hosts, queries)?;
    prop_assert_eq!(after.index.len(), view_len(&View::new(&state, &overlay)));

    Ok((0..overlay.shadows.len())
        .filter(|&p| overlay.shadow(p) == PartShadow::Promoted)
        .collect())
}

/// Active hosts through an overlay, summed over partitions.
fn view_len(view: &View<'_>) -> usize {
    (0..view.n_parts()).map(|p| view.len_part(p)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Small fleets with a lowered threshold (0 promotes at the first touch),
    /// so promotions happen early, late, inside checkpoints that roll back,
    /// and on both sides of partition moves.
    #[test]
    fn candidates_match_a_recount_across_promotions(
        plans in prop::collection::vec(host_plan(), 1..40),
        ops in prop::collection::vec(op(8), 0..80),
        min_promotion in 0..8usize,
    ) {
        run(&plans, &ops, Overlay::with_min_promotion(min_promotion), &queries(true))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The real threshold: enough hosts, most of them empty in pool 0, and
    /// placements to cross 64 stale entries in that partition (or not),
    /// with the default overlay.
    #[test]
    fn candidates_match_a_recount_at_the_real_threshold(
        plans in prop::collection::vec(host_plan_weighted(0.9, vec![0, 0, 0, 1]), 100..160),
        ops in prop::collection::vec(op(40), 300..450),
    ) {
        run(&plans, &ops, Overlay::default(), &queries(false))?;
    }
}

/// A round that touches more than 64 hosts of one partition promotes it,
/// and a rollback past the promotion keeps it promoted and exact.
#[test]
fn a_big_round_promotes_and_rolls_back_exactly() {
    let plans: Vec<HostPlan> = (0..100)
        .map(|i| HostPlan {
            pool: 0,
            cpus: 8,
            mem_gib: 16,
            gpus: 0,
            active: true,
            n_flex: 0,
            n_critical: u8::from(i % 7 == 0),
        })
        .collect();
    // Flex tasks on hosts 0..50, a checkpoint, then 50..100 (the 65th
    // first touch promotes NO_FLEX), then the checkpoint rolls back.
    let mut ops: Vec<Op> = (0..50).map(|host| Op::Place { job: 1, host }).collect();
    ops.push(Op::Checkpoint);
    ops.extend((50..100).map(|host| Op::Place { job: 0, host }));
    let promoted = run(&plans, &ops, Overlay::default(), &queries(true)).unwrap();
    assert_eq!(promoted, vec![NO_FLEX]);
    ops.push(Op::Rollback);
    let promoted = run(&plans, &ops, Overlay::default(), &queries(true)).unwrap();
    assert_eq!(promoted, vec![NO_FLEX], "promotion outlives the rollback");
    // Only 50 first touches: below the threshold, nothing is copied.
    let promoted = run(&plans, &ops[..50], Overlay::default(), &queries(true)).unwrap();
    assert!(promoted.is_empty());
    // Critical work does not move hosts: they stay in NO_FLEX, promoted.
    let ops: Vec<Op> = (0..100).map(|host| Op::Place { job: 3, host }).collect();
    let promoted = run(&plans, &ops, Overlay::default(), &queries(true)).unwrap();
    assert_eq!(promoted, vec![NO_FLEX]);
}

/// A class run (`open_run`, `add_to_run` per task, `close_run`) leaves
/// every figure, the index and the undo log as the same tasks charged one
/// by one would, for jobs that keep per-host, per-zone and group counts and
/// for critical work too: the same searches, and a rollback past either
/// returns to the committed state.
#[test]
fn a_class_run_leaves_what_charging_task_by_task_leaves() {
    use crate::spec::job::Constraint;
    for (tier, hard) in [
        (Tier::Flex, vec![]),
        (
            Tier::Flex,
            vec![Constraint::UniqueHost {
                group: Some("g".into()),
            }],
        ),
        (
            Tier::Critical,
            vec![Constraint::ZoneBalance { max_skew: 9 }],
        ),
    ] {
        let mut fleet = Fleet::new();
        let hosts: Vec<HostIdx> = (0..3)
            .map(|i| fleet.host(host_spec(&format!("h{i}"), "z", 8, 32)))
            .collect();
        let mut spec = job_spec(1, Resources::cpu_mem(1_000, 2 * 1024), hard);
        spec.tier = tier;
        let job = fleet.job(spec);
        let state = &fleet.state;
        let h = hosts[1];
        let tasks: Vec<TaskId> = (0..6).map(|i| TaskId::new(job, i)).collect();
        let (mut one_by_one, mut run) = (Overlay::default(), Overlay::default());
        let marks = [one_by_one.checkpoint(), run.checkpoint()];
        for t in &tasks {
            one_by_one.charge(state, *t, h, true);
        }
        run.charge(state, tasks[0], h, true);
        run.open_run(h, job);
        for t in &tasks[1..] {
            run.add_to_run(state, *t);
        }
        run.close_run(state);
        let same = |a: &Overlay, b: &Overlay| {
            assert_eq!(a.hosts, b.hosts, "{tier:?}");
            assert_eq!(a.teams, b.teams, "{tier:?}");
            assert_eq!(a.pools, b.pools, "{tier:?}");
            assert_eq!(a.job_hosts, b.job_hosts, "{tier:?}");
            assert_eq!(a.job_zones, b.job_zones, "{tier:?}");
            assert_eq!(a.groups, b.groups, "{tier:?}");
            assert_eq!(a.placements, b.placements, "{tier:?}");
            for q in queries(true) {
                let walk = |o: &Overlay| {
                    let view = View::new(state, o);
                    view.candidates(q.dim, q.min_free, q.loosest_first, |_| true, None)
                        .collect::<Vec<_>>()
                };
                assert_eq!(walk(a), walk(b), "{tier:?}, {q:?}");
            }
        };
        same(&one_by_one, &run);
        let [m1, m2] = marks;
        one_by_one.rollback(state, m1);
        run.rollback(state, m2);
        same(&one_by_one, &run);
        same(&run, &Overlay::default());
    }
}
