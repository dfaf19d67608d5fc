//! Builders shared by the scheduler's integration tests.
#![allow(dead_code)]

use ebb_scheduler::*;

pub fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// A host with `cpus` vCPUs and `mem_gib` GiB in pool `pool-a`, zone `zone`.
pub fn host(id: &str, zone: &str, cpus: u64, mem_gib: u64) -> HostSpec {
    HostSpec {
        id: HostId::from(id),
        pool: PoolId::from("pool-a"),
        instance_type: "m5.2xlarge".into(),
        zone: zone.into(),
        region: "us-east-1".into(),
        attributes: Default::default(),
        capacity: Resources::cpu_mem(cpus * 1000, mem_gib * 1024),
        gpu_model: None,
    }
}

/// A job of `n` tasks of `cpu_millis` / `mem_mib` each.
pub fn job(id: u64, team: &str, tier: Tier, n: u32, cpu_millis: u64, mem_mib: u64) -> JobSpec {
    JobSpec {
        id: JobId(id),
        request_key: None,
        name: format!("job-{id}"),
        team: TeamId::from(team),
        tier,
        priority: 0,
        bid: None,
        request: Resources::cpu_mem(cpu_millis, mem_mib),
        n_tasks: n,
        hard_constraints: vec![],
        soft_constraints: vec![],
        gang: false,
        retry: RetryPolicy::default(),
        disruption_budget: None,
        checkpoint_interval: None,
        expected_runtime: None,
    }
}

pub fn task(job: u64, index: u32) -> TaskId {
    TaskId::new(JobId(job), index)
}

/// Drains every queued action.
pub fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// The task's current run (the one an executor would report on).
pub fn run(s: &Scheduler, task: TaskId) -> RunId {
    s.task(task).expect("task exists").run
}

/// Ticks, plans and commits a round at `now`, returning the plan.
pub fn round(s: &mut Scheduler, now: Timestamp) -> Plan {
    s.run_round(now).expect("time moves forward").0
}

/// Proptest cases: `default`, or `PROPTEST_CASES` when set (for long runs:
/// `PROPTEST_CASES=5000 cargo test --release ...`). An explicit `cases` in a
/// config would otherwise ignore the variable.
#[allow(dead_code, clippy::disallowed_methods)] // a test knob, not configuration
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
