//! Market benchmarks (figures in docs/BENCHMARKS.md):
//! - `reclaim/<policy>`: choose victims to reclaim 10% of a 10,000-host
//!   pool carrying 100,000 flex tasks (one `plan_round`, which changes nothing,
//!   so it can be repeated on the same state). Goal ≤ 5 ms.
//! - `round_overhead/{plain,market}`: fill Fenzo's fleet shape (10,000 ×
//!   8 vCPU hosts, 1-vCPU tasks in batches of 200 per round) without and with
//!   market accounting (a configured pool with ample supply). Goal: market ≤ 1.2× plain.
//!
//! Run: `cargo bench -p ebb-scheduler --bench market`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ebb_scheduler::*;

const N_HOSTS: u32 = 10_000;

fn host(i: u32, instance_type: &str, capacity: Resources) -> HostSpec {
    HostSpec {
        id: HostId::from(format!("h{i:05}")),
        pool: PoolId::from("use1"),
        instance_type: instance_type.into(),
        zone: "us-east-1a".into(),
        region: "us-east-1".into(),
        attributes: Default::default(),
        capacity,
        gpu_model: None,
    }
}

fn flex_job(id: u64, n_tasks: u32, cpu_millis: u64, bid: f64, priority: i32) -> JobSpec {
    JobSpec {
        id: JobId(id),
        name: String::new(),
        team: TeamId::from(["enc", "ml", "batch"][id as usize % 3]),
        tier: Tier::Flex,
        priority,
        bid: Price::new(bid),
        request: Resources::cpu_mem(cpu_millis, 1024),
        n_tasks,
        hard_constraints: vec![],
        soft_constraints: vec![],
        gang: false,
        retry: RetryPolicy::default(),
        disruption_budget: None,
        checkpoint_interval: Some(DurationMs::from_mins(10)),
        request_key: None,
        expected_runtime: None,
    }
}

fn configure_pool(s: &mut Scheduler, reserved_type: &str, count: u32) {
    let pool = PoolId::from("use1");
    let headroom = HeadroomPolicy {
        daily_scaling_fraction: 0.0,
        ..HeadroomPolicy::default()
    };
    s.handle_pool_configured(
        Timestamp::ZERO,
        PoolSpec {
            id: pool.clone(),
            region: "us-east-1".into(),
            headroom,
        },
    )
    .unwrap();
    let reservations = vec![Reservation::new(reserved_type, count)];
    s.handle_reservations(Timestamp::ZERO, &pool, reservations)
        .unwrap();
}

/// 10,000 m5.4xlarge hosts (0.25 IE each) full of 100,000 flex tasks of
/// 1.6 vCPU from 1,000 jobs with varied bids and priorities; then streaming
/// demand takes 10% of the reservation back.
fn reclaim_fixture(policy: VictimPolicy) -> Scheduler {
    let mut config = SchedulerConfig::default();
    config.market.victim_policy = policy;
    let mut s = Scheduler::new(config);
    configure_pool(&mut s, "m5.4xlarge", N_HOSTS);
    let cap = s.catalog().get("m5.4xlarge").unwrap().capacity();
    for i in 0..N_HOSTS {
        s.handle_host_added(Timestamp::ZERO, host(i, "m5.4xlarge", cap.clone()))
            .unwrap();
    }
    for j in 0..1_000u64 {
        let job = flex_job(j, 100, 1_600, (j % 7) as f64, (j % 5) as i32);
        s.handle_job_submitted(Timestamp::ZERO, job).unwrap();
    }
    let mut now = 0;
    while s.totals().n_jobs_queued.iter().sum::<u32>() > 0 {
        now += 1_000;
        s.run_round(Timestamp::from_millis(now)).unwrap();
    }
    while s.poll_action().is_some() {}
    assert_eq!(
        s.pool(&PoolId::from("use1")).unwrap().n_leased_hosts,
        N_HOSTS
    );
    let tenth = Ie::from_whole(u64::from(N_HOSTS) / 4 / 10);
    s.handle_streaming_demand(
        Timestamp::from_millis(now + 3_600_000),
        &PoolId::from("use1"),
        tenth,
    )
    .unwrap();
    s
}

fn reclaim(c: &mut Criterion) {
    let mut group = c.benchmark_group("reclaim");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for policy in VictimPolicy::ALL {
        let s = reclaim_fixture(policy);
        let now = Timestamp::from_millis(10_000_000);
        let plan = s.plan_round(now).unwrap();
        assert_eq!(plan.preemptions.len(), 10_000, "1,000 hosts × 10 tasks");
        group.bench_function(format!("{policy:?}"), |b| {
            b.iter(|| black_box(s.plan_round(now).unwrap()))
        });
    }
    group.finish();
}

/// Fenzo's fleet shape: 10,000 hosts of 8 vCPU, optionally in a market pool with ample supply.
fn fleet(market: bool) -> Scheduler {
    let config = SchedulerConfig {
        flex: TierPolicy::single(ScorerKind::CpuBinPack),
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(config);
    if market {
        configure_pool(&mut s, "m5.2xlarge", N_HOSTS);
    }
    let cap = Resources::cpu_mem(8_000, 32 * 1024);
    for i in 0..N_HOSTS {
        s.handle_host_added(Timestamp::ZERO, host(i, "m5.2xlarge", cap.clone()))
            .unwrap();
    }
    s
}

/// Fills the fleet with 200 one-vCPU tasks per round; returns the number of rounds.
fn fill(mut s: Scheduler) -> u64 {
    let mut round = 0u64;
    loop {
        round += 1;
        let now = Timestamp::from_millis(round * 1_000);
        s.handle_job_submitted(now, flex_job(round, 200, 1_000, 0.0, 0))
            .unwrap();
        let (plan, _) = s.run_round(now).unwrap();
        while s.poll_action().is_some() {}
        if plan.assignments.len() < 200 {
            return round;
        }
    }
}

fn round_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_overhead");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for (name, market) in [("plain", false), ("market", true)] {
        let n_rounds = fill(fleet(market));
        println!(
            "round_overhead/{name}: {n_rounds} rounds to fill the fleet (divide the time by this)"
        );
        group.bench_function(name, |b| {
            b.iter_batched(
                || fleet(market),
                |s| black_box(fill(s)),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, reclaim, round_overhead);
criterion_main!(benches);
