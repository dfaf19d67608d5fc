#!/usr/bin/env bash
# One big placement round before and after the overlay promotes partitions
# (the fix for the quadratic stale-entry walk in `HostIndex::candidates`),
# measured in one run. Builds the scheduler at $BEFORE (default 69fe6e9, the
# last commit before the change) and from this working tree's `scheduler/`
# (copied onto a worktree of $BEFORE, so nothing is written to the work tree),
# then runs the same shapes on both, interleaved:
#
# - big:   one round placing 10 tasks of 6 vCPU / 24 GiB per host on empty
#          m5.16xlarge hosts (64 vCPU / 256 GiB), one pool: 10,000 tasks on
#          1,000 hosts and 100,000 on 10,000 (the shape of `ebb-api`'s
#          `core_round` bench);
# - fenzo: Fenzo's shape, 10,000 hosts × 8 vCPU, 400 rounds of 200 × 1 vCPU
#          (small rounds: they must not get slower).
#
# Every line ends with a hash of the plan's assignments (runs, hosts,
# scores, in order): before and after must print the same hash, since the
# change must not alter a single decision.
#
#   bash scripts/bench/big-round-before-after.sh               # 3 runs of each shape
#   RUNS=1 bash scripts/bench/big-round-before-after.sh        # quicker
#   bash scripts/bench/big-round-before-after.sh --callgrind   # instruction counts in
#       plan_round (repeatable whatever else the machine runs): Fenzo fill, 1,000 hosts
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=${BEFORE:-69fe6e9}
RUNS=${RUNS:-3}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" >/dev/null 2>&1 || true; git worktree remove --force "$work/after" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/before" "$BEFORE" >/dev/null
git worktree add --detach "$work/after" "$BEFORE" >/dev/null
# The working tree's scheduler on top of the same workspace (lock file, other crates).
rm -rf "$work/after/scheduler"
cp -a scheduler "$work/after/scheduler"

cat > "$work/big_round.rs" <<'RS'
// A shell around the sans-IO core: it owns the clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
use std::time::Instant;
use ebb_scheduler::*;

fn host(i: usize, cpu_millis: u64, memory_mib: u64, instance_type: &str) -> HostSpec {
    HostSpec {
        id: HostId::from(format!("h{i:06}")),
        pool: PoolId::from("bench"),
        instance_type: instance_type.into(),
        zone: format!("z{}", i % 3),
        region: "us-east-1".into(),
        attributes: Default::default(),
        capacity: Resources::cpu_mem(cpu_millis, memory_mib),
        gpu_model: None,
    }
}

fn job(id: u64, n_tasks: u32, cpu_millis: u64, memory_mib: u64) -> JobSpec {
    let mut job: JobSpec = serde_json::from_value(serde_json::json!({
        "id": id, "team": "encoding", "tier": "flex", "n_tasks": n_tasks,
        "request": { "cpu_millis": cpu_millis, "memory_mib": memory_mib }
    }))
    .unwrap();
    job.name = String::new();
    job
}

/// FNV-1a over the assignments, in order.
fn fingerprint(hash: &mut u64, plan: &Plan) {
    for a in &plan.assignments {
        for b in format!("{:?}", a).bytes() {
            *hash = (*hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// One round of `n_hosts × 10` tasks: prints plan ms, µs per task, commit ms.
fn big(n_hosts: usize) {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let now = Timestamp::from_millis(1);
    for i in 0..n_hosts {
        s.handle_host_added(now, host(i, 64_000, 256 * 1024, "m5.16xlarge")).unwrap();
    }
    s.handle_job_submitted(now, job(1, (n_hosts * 10) as u32, 6_000, 24 * 1024)).unwrap();
    let t0 = Instant::now();
    let plan = s.plan_round(now).unwrap();
    let t1 = Instant::now();
    let mut hash = 0xcbf2_9ce4_8422_2325;
    fingerprint(&mut hash, &plan);
    let t2 = Instant::now();
    let report = s.commit(now, plan).unwrap();
    let t3 = Instant::now();
    assert_eq!(report.n_applied as usize, n_hosts * 10);
    let plan_s = (t1 - t0).as_secs_f64();
    println!(
        "{:9.1} {:7.2} {:8.1}  {hash:016x}",
        plan_s * 1e3,
        plan_s * 1e6 / (n_hosts * 10) as f64,
        (t3 - t2).as_secs_f64() * 1e3
    );
}

/// Fenzo's fill: prints mean plan ms and commit ms per 200-task round.
fn fenzo() {
    let config = SchedulerConfig {
        flex: TierPolicy::single(ScorerKind::CpuBinPack),
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(config);
    for i in 0..10_000 {
        s.handle_host_added(Timestamp::ZERO, host(i, 8_000, 32 * 1024, "m5.2xlarge")).unwrap();
    }
    let (mut plan_s, mut commit_s) = (0.0, 0.0);
    let mut hash = 0xcbf2_9ce4_8422_2325;
    for round in 1..=400u64 {
        let now = Timestamp::from_millis(round);
        s.handle_job_submitted(now, job(round, 200, 1_000, 1_024)).unwrap();
        let t0 = Instant::now();
        let plan = s.plan_round(now).unwrap();
        let t1 = Instant::now();
        fingerprint(&mut hash, &plan);
        let t2 = Instant::now();
        let report = s.commit(now, plan).unwrap();
        let t3 = Instant::now();
        while s.poll_action().is_some() {}
        assert_eq!(report.n_applied, 200);
        plan_s += (t1 - t0).as_secs_f64();
        commit_s += (t3 - t2).as_secs_f64();
    }
    println!("{:9.4} {:7.4}  {hash:016x}", plan_s * 1e3 / 400.0, commit_s * 1e3 / 400.0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "big" => big(args[2].parse().unwrap()),
        "fenzo" => fenzo(),
        other => panic!("unknown shape {other}"),
    }
}
RS

for v in before after; do
    mkdir -p "$work/$v/scheduler/examples"
    cp "$work/big_round.rs" "$work/$v/scheduler/examples/big_round.rs"
    # One target dir per tree: with a shared one, cargo may take the copied
    # sources (older mtimes) as already built.
    (cd "$work/$v" && cargo build -q --release --example big_round -p ebb-scheduler --target-dir "$work/target-$v")
    cp "$work/target-$v/release/examples/big_round" "$work/big_round.$v"
done

if [ "${1:-}" = "--callgrind" ]; then
    echo "instructions inside plan_round (all rounds), before → after"
    for shape in fenzo "big 1000"; do
        for v in before after; do
            # shellcheck disable=SC2086 # $shape is two words on purpose
            valgrind --tool=callgrind --toggle-collect='*Scheduler>::plan_round' \
                --callgrind-out-file="$work/cg.$v" "$work/big_round.$v" $shape >/dev/null 2>"$work/cg.$v.log"
            eval "n_$v=$(grep -o 'Collected : [0-9]*' "$work/cg.$v.log" | tr -d 'a-zA-Z: ')"
        done
        # shellcheck disable=SC2154 # set by eval above
        echo "$shape: $n_before → $n_after ($(awk -v a="$n_after" -v b="$n_before" 'BEGIN { printf "%.3f", a / b }')x)"
    done
    exit 0
fi

echo "one round, 10 tasks per host: plan ms, µs/task, commit ms, assignments hash"
for n in 1000 10000; do
    for i in $(seq "$RUNS"); do
        echo "$n hosts  before $("$work/big_round.before" big "$n")"
        echo "$n hosts  after  $("$work/big_round.after" big "$n")"
    done
done
echo "Fenzo fill, 400 rounds of 200 tasks: mean plan ms, mean commit ms per round, assignments hash"
for i in $(seq "$RUNS"); do
    echo "fenzo  before $("$work/big_round.before" fenzo)"
    echo "fenzo  after  $("$work/big_round.after" fenzo)"
done
