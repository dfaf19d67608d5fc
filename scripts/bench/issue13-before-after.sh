#!/usr/bin/env bash
# Issue 13 (class steps, round repacking, cheaper drain scan), measured in
# one run: the Fenzo-shape fill (10,000 hosts x 8 vCPU, 200 one-vCPU tasks
# per round, CPU bin-packing, 400 rounds) driven against the scheduler at
# the commit before the change and at the change, one binary after the
# other. Prints the mean plan and commit time per round of each, interleaved
# (5 fills each), or with `--callgrind` the instruction counts (repeatable
# whatever else the machine runs).
#
#   bash scripts/bench/issue13-before-after.sh              # timing
#   bash scripts/bench/issue13-before-after.sh --callgrind  # instructions
#
# BEFORE defaults to feee9e8 (the last commit before issue 13's work);
# AFTER defaults to HEAD; AFTER=. measures the working tree as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
BEFORE=${BEFORE:-feee9e8}
AFTER=${AFTER:-HEAD}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" >/dev/null 2>&1 || true; git worktree remove --force "$work/after" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/before" "$BEFORE" >/dev/null
if [ "$AFTER" = "." ]; then
    after_tree=$root
else
    git worktree add --detach "$work/after" "$AFTER" >/dev/null
    after_tree=$work/after
fi

# A driver crate outside both trees, depending on each tree's scheduler by path.
driver() {  # $1 = name, $2 = tree
    mkdir -p "$work/$1/src"
    cat > "$work/$1/Cargo.toml" <<TOML
[package]
name = "fenzo-round"
version = "0.1.0"
edition = "2024"
[dependencies]
ebb-scheduler = { path = "$2/scheduler" }
serde_json = "1"
[workspace]
TOML
    cp "$2/Cargo.lock" "$work/$1/"
    cat > "$work/$1/src/main.rs" <<'RS'
use std::time::Instant;
use ebb_scheduler::*;
const N_HOSTS: u32 = 10_000;
fn main() {
    let config = SchedulerConfig {
        flex: TierPolicy::single(ScorerKind::CpuBinPack),
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(config);
    for i in 0..N_HOSTS {
        let spec = HostSpec {
            id: HostId::from(format!("h{i:05}")),
            pool: PoolId::from("pool"),
            instance_type: "m5.2xlarge".into(),
            zone: "z".into(),
            region: "r".into(),
            attributes: Default::default(),
            capacity: Resources::cpu_mem(8_000, 32 * 1024),
            gpu_model: None,
        };
        s.handle_host_added(Timestamp::ZERO, spec).unwrap();
    }
    let (mut plan_s, mut commit_s, mut rounds) = (0.0, 0.0, 0u32);
    let mut hash = 0u64;
    for round in 1..=400u64 {
        let now = Timestamp::from_millis(round);
        let mut job: JobSpec = serde_json::from_value(serde_json::json!({
            "id": round, "team": "enc", "tier": "flex", "n_tasks": 200,
            "request": { "cpu_millis": 1000, "memory_mib": 1024 }
        })).unwrap();
        job.name = String::new();
        s.handle_job_submitted(now, job).unwrap();
        let t0 = Instant::now();
        s.handle_tick(now).unwrap();
        let plan = s.plan_round(now).unwrap();
        let t1 = Instant::now();
        for a in &plan.assignments {
            for b in a.host.to_string().bytes() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        let report = s.commit(now, plan).unwrap();
        let t2 = Instant::now();
        while s.poll_action().is_some() {}
        assert_eq!(report.n_applied, 200);
        plan_s += (t1 - t0).as_secs_f64();
        commit_s += (t2 - t1).as_secs_f64();
        rounds += 1;
    }
    // The hash of every assignment's host, in order: equal before and after
    // means the same decisions.
    println!("{:.4} {:.4} {} {hash:016x}", plan_s * 1e3 / rounds as f64, commit_s * 1e3 / rounds as f64, rounds);
}
RS
    (cd "$work/$1" && cargo build -q --release --offline)
}
driver drv-before "$work/before"
driver drv-after "$after_tree"
bin_before="$work/drv-before/target/release/fenzo-round"
bin_after="$work/drv-after/target/release/fenzo-round"

if [ "${1:-}" = "--callgrind" ]; then
    for v in before after; do
        bin="$work/drv-$v/target/release/fenzo-round"
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.$v" "$bin" >"$work/cg.$v.out" 2>"$work/cg.$v.log"
        echo "$v: $(grep -o 'Collected : [0-9]*' "$work/cg.$v.log" | tr -d 'a-zA-Z: ') instructions (whole program, hosts added + 400 rounds), decisions hash $(cut -d' ' -f4 "$work/cg.$v.out")"
    done
    exit 0
fi
echo "fill  before(plan ms, commit ms, decisions hash)  after(plan ms, commit ms, decisions hash)"
for i in 1 2 3 4 5; do
    echo "$i     $("$bin_before" | cut -d' ' -f1,2,4)    $("$bin_after" | cut -d' ' -f1,2,4)"
done
