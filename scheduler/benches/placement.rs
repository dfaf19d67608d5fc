//! Placement speed on Fenzo's published benchmark shape: 10,000 hosts with
//! 8 vCPUs each, tasks of 1 vCPU arriving 200 per round, CPU bin-packing,
//! until the fleet is full. One criterion iteration is one round (submit
//! 200 tasks, untimed; plan and commit, timed); a full fleet is replaced by
//! an empty one, untimed, so the measured rounds sweep the whole fill.
//!
//! Fenzo reports 58 ms per round with "fitness good enough" and 246 ms
//! without. Run: `cargo bench -p ebb-scheduler --bench placement`.
//! Final utilization and per-round figures over complete fills are printed
//! by the `packing` bench (see docs/BENCHMARKS.md).

// A benchmark is a shell around the sans-IO core; criterion owns the clock,
// and `iter_custom` needs `Instant` to time only plan + commit.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ebb_scheduler::*;

/// Fenzo's fleet: 10,000 hosts of 8 vCPUs.
const N_HOSTS: u32 = 10_000;
/// Tasks arriving per round.
const BATCH: u32 = 200;

/// The fleet being filled, round after round.
struct Filler {
    policy: TierPolicy,
    s: Scheduler,
    next_job: u64,
    now: u64,
}

fn fleet(policy: &TierPolicy) -> Scheduler {
    let config = SchedulerConfig {
        flex: policy.clone(),
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(config);
    for i in 0..N_HOSTS {
        s.handle_host_added(
            Timestamp::ZERO,
            HostSpec {
                id: HostId::from(format!("h{i:05}")),
                pool: PoolId::from("bench"),
                instance_type: "m5.2xlarge".into(),
                zone: format!("z{}", i % 3),
                region: "us-east-1".into(),
                attributes: Default::default(),
                capacity: Resources::cpu_mem(8_000, 32 * 1024),
                gpu_model: None,
            },
        )
        .expect("valid host");
    }
    s
}

impl Filler {
    fn new(policy: TierPolicy) -> Self {
        let s = fleet(&policy);
        Filler {
            policy,
            s,
            next_job: 1,
            now: 0,
        }
    }

    /// One round; returns the time spent planning and committing it.
    fn round(&mut self) -> Duration {
        let totals = self.s.totals();
        if totals.allocated.cpu_millis + 1_000 > totals.active_capacity.cpu_millis {
            self.s = fleet(&self.policy);
        }
        self.now += 1;
        let now = Timestamp::from_millis(self.now);
        let job = JobSpec {
            id: JobId(self.next_job),
            name: String::new(),
            team: TeamId::from("encoding"),
            tier: Tier::Flex,
            priority: 0,
            bid: None,
            request: Resources::cpu_mem(1_000, 1_024),
            n_tasks: BATCH,
            hard_constraints: vec![],
            soft_constraints: vec![],
            gang: false,
            retry: RetryPolicy::default(),
            disruption_budget: None,
            checkpoint_interval: None,
            request_key: None,
            expected_runtime: None,
        };
        self.next_job += 1;
        self.s.handle_job_submitted(now, job).expect("valid job");
        let start = Instant::now();
        let plan = self.s.plan_round(now).unwrap();
        let report = self.s.commit(now, plan).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(
            report.n_applied, BATCH,
            "the fleet has room for every batch"
        );
        while self.s.poll_action().is_some() {}
        elapsed
    }
}

/// The policies compared, all CPU bin-packing.
pub fn policies() -> Vec<(&'static str, TierPolicy)> {
    let default = TierPolicy::single(ScorerKind::CpuBinPack);
    let first_fit = TierPolicy {
        max_hosts_scored: Some(1),
        ..default.clone()
    };
    let exhaustive = TierPolicy {
        good_enough: 1.0,
        max_hosts_scored: None,
        ..default.clone()
    };
    vec![
        ("default_short_circuit", default),
        ("first_feasible", first_fit),
        ("no_short_circuit", exhaustive),
    ]
}

fn fenzo_shape(c: &mut Criterion) {
    let mut group = c.benchmark_group("fenzo_10k_hosts_200_tasks_per_round");
    // Two shared cores: keep the run short; rounds are long enough (≥ 0.1 ms)
    // that ten samples give a stable mean.
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for (name, policy) in policies() {
        let mut filler = Filler::new(policy);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| filler.round()).sum());
        });
    }
    group.finish();
}

criterion_group!(benches, fenzo_shape);
criterion_main!(benches);
