//! Packing quality, full-fill figures and memory, printed as tables (not a
//! criterion harness: hosts used and bytes per task are counts, not timings).
//!
//! Run: `cargo bench -p ebb-scheduler --bench packing` (all sections, about
//! 10 minutes on 2 cores), or name sections after `--`: `memory`, `fenzo`,
//! `mixed`, `mixed-shuffled`, `mixed50k`, `sweep`. Every random draw comes from a fixed seed,
//! so the counts are the same on every machine; only the times vary.
//!
//! 1. Fenzo's shape (10,000 × 8 vCPU hosts, 1 vCPU tasks, 200 per round,
//!    CPU bin-packing) filled completely, per policy: mean and worst round
//!    time, placements per second and the final CPU utilization.
//! 2. Mixed shapes with four dimensions (cpu, memory, disk, network) at
//!    10,000 and 50,000 hosts: hosts used against the lower bound
//!    `max over dimensions of ceil(total demand / host capacity)`, and
//!    placements per second, per scorer, on uniformly random and on
//!    complementary (CPU-heavy with memory-heavy) request mixes.
//! 3. Memory: live heap bytes per host and per queued task, counted by a
//!    counting global allocator around the inputs that create them.

// A benchmark is a shell around the sans-IO core: it owns the clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::alloc::System;
use std::time::Instant;

use ebb_scheduler::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// SplitMix64: a tiny deterministic generator, enough for request mixes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn host(i: u32, capacity: &Resources) -> HostSpec {
    HostSpec {
        id: HostId::from(format!("h{i:06}")),
        pool: PoolId::from("bench"),
        instance_type: "m5.16xlarge".into(),
        zone: format!("z{}", i % 3),
        region: "us-east-1".into(),
        attributes: Default::default(),
        capacity: capacity.clone(),
        gpu_model: None,
    }
}

fn job(id: u64, request: Resources, n_tasks: u32, priority: i32) -> JobSpec {
    JobSpec {
        id: JobId(id),
        name: String::new(),
        team: TeamId::from("encoding"),
        tier: Tier::Flex,
        priority,
        bid: None,
        request,
        n_tasks,
        hard_constraints: vec![],
        soft_constraints: vec![],
        gang: false,
        retry: RetryPolicy::default(),
        disruption_budget: None,
        checkpoint_interval: None,
        request_key: None,
        expected_runtime: None,
    }
}

fn scheduler(policy: &TierPolicy, n_hosts: u32, capacity: &Resources) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig {
        flex: policy.clone(),
        ..SchedulerConfig::default()
    });
    for i in 0..n_hosts {
        s.handle_host_added(Timestamp::ZERO, host(i, capacity))
            .expect("valid host");
        drain(&mut s);
    }
    s
}

/// Consumes the core's queued actions and events, as a shell does after
/// every input, so that neither queue's growth counts as the inputs' cost.
fn drain(s: &mut Scheduler) {
    while s.poll_action().is_some() {}
    while s.poll_event().is_some() {}
}

// ------------------------------------------------------------- Fenzo shape

fn fenzo_policies() -> Vec<(&'static str, TierPolicy)> {
    let default = TierPolicy::single(ScorerKind::CpuBinPack);
    vec![
        ("default (short-circuit)", default.clone()),
        (
            "first feasible (max 1)",
            TierPolicy {
                max_hosts_scored: Some(1),
                ..default.clone()
            },
        ),
        (
            "no short-circuit",
            TierPolicy {
                good_enough: 1.0,
                max_hosts_scored: None,
                ..default
            },
        ),
    ]
}

fn fenzo_fill() {
    println!("## Fenzo shape: 10,000 hosts x 8 vCPU, 1 vCPU tasks, 200 per round, until full\n");
    println!(
        "| policy | rounds | placed | mean ms/round | worst ms/round | placements/s | final cpu utilization |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let capacity = Resources::cpu_mem(8_000, 32 * 1024);
    let mut baseline_ms = None;
    for (name, policy) in fenzo_policies() {
        let mut s = scheduler(&policy, 10_000, &capacity);
        let (mut n_rounds, mut n_placed, mut total, mut worst) = (0u32, 0u64, 0.0f64, 0.0f64);
        for round in 1.. {
            let now = Timestamp::from_millis(round);
            s.handle_job_submitted(now, job(round, Resources::cpu_mem(1_000, 1_024), 200, 0))
                .expect("valid job");
            let start = Instant::now();
            let plan = s.plan_round(now).unwrap();
            let report = s.commit(now, plan).unwrap();
            let ms = start.elapsed().as_secs_f64() * 1e3;
            while s.poll_action().is_some() {}
            if report.n_applied == 0 {
                break;
            }
            n_rounds += 1;
            n_placed += u64::from(report.n_applied);
            total += ms;
            worst = worst.max(ms);
        }
        let t = s.totals();
        let util = t.allocated.cpu_millis as f64 / t.active_capacity.cpu_millis as f64;
        let mean = total / f64::from(n_rounds);
        let ratio = match baseline_ms {
            None => {
                baseline_ms = Some(mean);
                String::new()
            }
            Some(b) => format!(" ({:.2}x default)", mean / b),
        };
        println!(
            "| {name} | {n_rounds} | {n_placed} | {mean:.3}{ratio} | {worst:.3} | {:.0} | {:.2}% |",
            n_placed as f64 / (total / 1e3),
            util * 100.0
        );
    }
    println!();
}

// ------------------------------------------------------------ mixed shapes

/// A host: 64 vCPU, 256 GiB, 1,600 GiB disk, 25 Gbps (an m5.16xlarge-like box).
fn mixed_capacity() -> Resources {
    Resources {
        cpu_millis: 64_000,
        memory_mib: 256 * 1024,
        disk_mib: 1_600 * 1024,
        network_mbps: 25_000,
        ..Resources::default()
    }
}

#[derive(Copy, Clone, Debug)]
enum Mix {
    /// Every dimension drawn independently and uniformly, 0.5 % to 12.5 % of a host.
    Uniform,
    /// Half CPU-heavy (4–16 vCPU, 1–16 GiB), half memory-heavy (0.5–2 vCPU,
    /// 32–96 GiB); disk and network small.
    Complementary,
}

fn request(mix: Mix, rng: &mut Rng) -> Resources {
    let cap = mixed_capacity();
    let frac = |rng: &mut Rng, c: u64| rng.range(c / 200, c / 8);
    match mix {
        Mix::Uniform => Resources {
            cpu_millis: frac(rng, cap.cpu_millis),
            memory_mib: frac(rng, cap.memory_mib),
            disk_mib: frac(rng, cap.disk_mib),
            network_mbps: frac(rng, cap.network_mbps),
            ..Resources::default()
        },
        Mix::Complementary => {
            let small = |rng: &mut Rng, c: u64| rng.range(c / 400, c / 40);
            let (cpu, mem) = if rng.next().is_multiple_of(2) {
                (rng.range(4_000, 16_000), rng.range(1_024, 16 * 1024))
            } else {
                (rng.range(500, 2_000), rng.range(32 * 1024, 96 * 1024))
            };
            Resources {
                cpu_millis: cpu,
                memory_mib: mem,
                disk_mib: small(rng, cap.disk_mib),
                network_mbps: small(rng, cap.network_mbps),
                ..Resources::default()
            }
        }
    }
}

/// Requests whose lower bound is `fill` of `n_hosts`, largest first (by the
/// sum of capacity fractions), as (request, priority) so the queue serves
/// them in that order under every scorer: first-fit-*decreasing*.
fn workload(mix: Mix, n_hosts: u32, fill: f64, seed: u64) -> (Vec<Resources>, u64) {
    let cap = mixed_capacity();
    let mut rng = Rng(seed);
    let mut total = Resources::default();
    let mut out = Vec::new();
    let target = (f64::from(n_hosts) * fill) as u64;
    while lower_bound(&total, &cap) < target {
        let r = request(mix, &mut rng);
        total.checked_add_assign(&r).unwrap();
        out.push(r);
    }
    let size = |r: &Resources| r.fractions_of(&cap).iter().sum::<f64>();
    out.sort_by(|a, b| size(b).total_cmp(&size(a)));
    (out, lower_bound(&total, &cap))
}

fn lower_bound(total: &Resources, cap: &Resources) -> u64 {
    [
        (total.cpu_millis, cap.cpu_millis),
        (total.memory_mib, cap.memory_mib),
        (total.disk_mib, cap.disk_mib),
        (total.network_mbps, cap.network_mbps),
    ]
    .iter()
    .map(|(t, c)| t.div_ceil(*c))
    .max()
    .unwrap()
}

fn mixed_policies() -> Vec<(&'static str, TierPolicy)> {
    let mut out: Vec<(&'static str, TierPolicy)> = [
        ("cpu_mem_bin_pack", ScorerKind::CpuMemBinPack),
        ("dot_product", ScorerKind::DotProduct),
        ("l2_best_fit", ScorerKind::L2BestFit),
        ("cpu_bin_pack", ScorerKind::CpuBinPack),
    ]
    .into_iter()
    .map(|(n, k)| (n, TierPolicy::single(k)))
    .collect();
    out.push((
        "blend: dot_product + cpu_mem_bin_pack",
        TierPolicy {
            scorers: vec![
                (ScorerKind::DotProduct, 1.0),
                (ScorerKind::CpuMemBinPack, 1.0),
            ],
            ..TierPolicy::default()
        },
    ));
    out.push((
        "dot_product, no empty-host gate",
        TierPolicy {
            empty_host_gate: 0,
            ..TierPolicy::single(ScorerKind::DotProduct)
        },
    ));
    out.push((
        "first feasible (max 1)",
        TierPolicy {
            max_hosts_scored: Some(1),
            ..TierPolicy::single(ScorerKind::CpuMemBinPack)
        },
    ));
    out
}

/// Places a whole workload (one job per task, all queued, then rounds
/// until one places nothing); returns (placed, unplaced, hosts used,
/// seconds, hosts examined per placement).
fn pack(policy: &TierPolicy, n_hosts: u32, work: &[Resources]) -> (u64, u64, u64, f64, f64) {
    let mut s = scheduler(policy, n_hosts, &mixed_capacity());
    let n = work.len();
    for (i, r) in work.iter().enumerate() {
        // Earlier (larger) requests get higher priority: decreasing order.
        let priority = (n - i) as i32;
        s.handle_job_submitted(Timestamp::ZERO, job(i as u64 + 1, r.clone(), 1, priority))
            .expect("valid job");
    }
    let (mut placed, mut secs, mut examined) = (0u64, 0.0, 0u64);
    for round in 1.. {
        let now = Timestamp::from_millis(round);
        let start = Instant::now();
        s.handle_tick(now).unwrap();
        let plan = s.plan_round(now).unwrap();
        examined += plan.stats.n_hosts_examined;
        let report = s.commit(now, plan).unwrap();
        secs += start.elapsed().as_secs_f64();
        while s.poll_action().is_some() {}
        placed += u64::from(report.n_applied);
        if report.n_applied == 0 {
            break;
        }
    }
    let used = s.hosts().filter(|h| !h.tasks().is_empty()).count() as u64;
    let per = examined as f64 / placed.max(1) as f64;
    (placed, n as u64 - placed, used, secs, per)
}

/// The submit order of a mixed workload.
#[derive(Copy, Clone, PartialEq)]
enum Order {
    /// Largest first by the sum of capacity fractions (`workload`'s order).
    LargestFirst,
    /// A seeded shuffle of the same requests: work as teams submit it.
    Shuffled,
}

fn mixed(n_hosts: u32, policies: &[(&'static str, TierPolicy)], order: Order) {
    if order == Order::LargestFirst {
        println!(
            "## Mixed shapes: 4 dimensions, lower bound at 60% of the fleet, largest request first\n"
        );
    } else {
        println!(
            "## Mixed shapes: 4 dimensions, lower bound at 60% of the fleet, shuffled submit order\n"
        );
    }
    println!(
        "| hosts | mix | policy | tasks | unplaced | hosts used | lower bound | used / bound | vs first feasible | placements/s | hosts examined/placement |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for mix in [Mix::Uniform, Mix::Complementary] {
        let (mut work, bound) = workload(mix, n_hosts, 0.6, 0xEBB0_0000 + u64::from(n_hosts));
        if order == Order::Shuffled {
            // Fisher-Yates from a fixed seed.
            let mut rng = Rng(0x5EED);
            for i in (1..work.len()).rev() {
                work.swap(i, rng.range(0, i as u64) as usize);
            }
        }
        let results: Vec<_> = policies
            .iter()
            .map(|(name, p)| (*name, pack(p, n_hosts, &work)))
            .collect();
        let ff_used = results.last().unwrap().1.2 as f64;
        for (name, (placed, unplaced, used, secs, per)) in results {
            println!(
                "| {n_hosts} | {mix:?} | {name} | {} | {unplaced} | {used} | {bound} | {:.3} | {:.3} | {:.0} | {per:.1} |",
                work.len(),
                used as f64 / bound as f64,
                used as f64 / ff_used,
                placed as f64 / secs,
            );
        }
    }
    println!();
}

/// The search bounds behind the `TierPolicy` defaults: packing and speed of
/// the two best scorers as `max_hosts_scored` and `good_enough` vary.
fn sweep() {
    println!("## Search bounds: 10,000 hosts, uniform mix\n");
    println!(
        "| scorer | good_enough | max_hosts_scored | hosts used | used / bound | placements/s | hosts examined/placement |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let n_hosts = 10_000;
    let (work, bound) = workload(Mix::Uniform, n_hosts, 0.6, 0xEBB0_0000 + u64::from(n_hosts));
    for kind in [ScorerKind::CpuMemBinPack, ScorerKind::DotProduct] {
        for (good_enough, max) in [
            (0.95, Some(1)),
            (0.95, Some(4)),
            (0.95, Some(8)),
            (0.95, Some(32)),
            (1.0, Some(8)),
            (1.0, None),
        ] {
            let policy = TierPolicy {
                good_enough,
                max_hosts_scored: max,
                ..TierPolicy::single(kind)
            };
            let (placed, _, used, secs, per) = pack(&policy, n_hosts, &work);
            let max = max.map_or("none".to_string(), |m| m.to_string());
            println!(
                "| {kind:?} | {good_enough} | {max} | {used} | {:.3} | {:.0} | {per:.1} |",
                used as f64 / bound as f64,
                placed as f64 / secs
            );
        }
    }
    println!();
}

// ------------------------------------------------------------------ memory

fn live(region: &Region<'_, System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

fn memory() {
    println!("## Memory (live heap bytes, counting allocator)\n");
    println!("| what | count | bytes | bytes each |");
    println!("|---|---:|---:|---:|");
    let cap = Resources::cpu_mem(8_000, 32 * 1024);
    let n_hosts = 10_000u32;
    let region = Region::new(GLOBAL);
    let mut s = scheduler(&TierPolicy::default(), n_hosts, &cap);
    let host_bytes = live(&region);
    println!(
        "| host (added, active, indexed) | {n_hosts} | {host_bytes} | {:.0} |",
        host_bytes as f64 / f64::from(n_hosts)
    );

    // One job of many tasks: the common case (an encoding job is an array).
    let n_tasks = 100_000u32;
    let region = Region::new(GLOBAL);
    s.handle_job_submitted(
        Timestamp::ZERO,
        job(1, Resources::cpu_mem(1_000, 1_024), n_tasks, 0),
    )
    .unwrap();
    drain(&mut s);
    let b = live(&region);
    println!(
        "| queued task, in one {n_tasks}-task job | {n_tasks} | {b} | {:.1} |",
        b as f64 / f64::from(n_tasks)
    );

    // Many one-task jobs: the worst case (every task carries a whole job).
    let n_jobs = 100_000u32;
    let region = Region::new(GLOBAL);
    for i in 0..n_jobs {
        s.handle_job_submitted(
            Timestamp::ZERO,
            job(2 + u64::from(i), Resources::cpu_mem(1_000, 1_024), 1, 0),
        )
        .unwrap();
        drain(&mut s);
    }
    let b = live(&region);
    println!(
        "| queued task, one job each | {n_jobs} | {b} | {:.1} |",
        b as f64 / f64::from(n_jobs)
    );
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments pick sections:
    // `memory`, `fenzo`, `mixed` (10,000 hosts), `mixed-shuffled`, `mixed50k`, `sweep`.
    // No section argument runs them all.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if run("memory") {
        memory();
    }
    if run("fenzo") {
        fenzo_fill();
    }
    if run("mixed") {
        mixed(10_000, &mixed_policies(), Order::LargestFirst);
    }
    if run("mixed-shuffled") {
        // The same requests submitted in a random order: what round
        // repacking's largest-first replay (rounds over 512 tasks) buys,
        // with and without it.
        let mut policies = Vec::new();
        for (name, p) in mixed_policies() {
            if name == "cpu_mem_bin_pack" || name == "dot_product" {
                policies.push((name, p.clone()));
                let off: &'static str = if name == "dot_product" {
                    "dot_product without repack"
                } else {
                    "cpu_mem_bin_pack without repack"
                };
                policies.push((off, TierPolicy { repack: false, ..p }));
            }
        }
        policies.push(mixed_policies().pop().expect("the baseline is last"));
        mixed(10_000, &policies, Order::Shuffled);
    }
    if run("mixed50k") {
        // At 50,000 hosts only the default scorer, the best one and the
        // baseline: each run places ~460,000 tasks.
        let policies: Vec<_> = mixed_policies()
            .into_iter()
            .filter(|(n, _)| {
                *n == "cpu_mem_bin_pack" || *n == "dot_product" || n.starts_with("first")
            })
            .collect();
        mixed(50_000, &policies, Order::LargestFirst);
    }
    if run("sweep") {
        sweep();
    }
}
