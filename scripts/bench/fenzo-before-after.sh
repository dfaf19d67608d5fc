#!/usr/bin/env bash
# Fenzo-shape round before and after the pure plan (issue 7), measured in
# one run: builds the scheduler at the last commit before the change
# (b6f67cc, where plan_round charged the state and undid it) and at HEAD,
# runs the same 400-round fill on both, one after the other, and prints the
# mean time per round (plan + commit) and, with `--callgrind`, the
# instruction counts of each (repeatable whatever else the machine runs).
#
#   bash scripts/bench/fenzo-before-after.sh              # timing, 5 fills each, interleaved
#   bash scripts/bench/fenzo-before-after.sh --callgrind  # instruction counts, 1 fill each
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=b6f67cc
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" >/dev/null 2>&1 || true; git worktree remove --force "$work/after" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/before" "$BEFORE" >/dev/null
git worktree add --detach "$work/after" HEAD >/dev/null

# The same driver against each API: the old plan_round(&mut self, now) and
# commit(plan), and the new plan_round(&self, now)? and commit(now, plan)?.
driver() {  # $1 = plan expression, $2 = commit expression
cat <<RS
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
    for round in 1..=400u64 {
        let now = Timestamp::from_millis(round);
        let mut job: JobSpec = serde_json::from_value(serde_json::json!({
            "id": round, "team": "enc", "tier": "flex", "n_tasks": 200,
            "request": { "cpu_millis": 1000, "memory_mib": 1024 }
        })).unwrap();
        job.name = String::new();
        s.handle_job_submitted(now, job).unwrap();
        let t0 = Instant::now();
        let plan = $1;
        let t1 = Instant::now();
        let report = $2;
        let t2 = Instant::now();
        while s.poll_action().is_some() {}
        assert_eq!(report.n_applied, 200);
        plan_s += (t1 - t0).as_secs_f64();
        commit_s += (t2 - t1).as_secs_f64();
        rounds += 1;
    }
    println!("{:.4} {:.4} {}", plan_s * 1e3 / rounds as f64, commit_s * 1e3 / rounds as f64, rounds);
}
RS
}
setup() {  # $1 = tree, $2 = plan expr, $3 = commit expr
    mkdir -p "$1/scheduler/examples"
    driver "$2" "$3" > "$1/scheduler/examples/fenzo_round.rs"
    grep -q '^serde_json' "$1/scheduler/Cargo.toml" || sed -i 's/^\[dev-dependencies\]/[dev-dependencies]\nserde_json.workspace = true/' "$1/scheduler/Cargo.toml"
    (cd "$1" && cargo build -q --release --example fenzo_round -p ebb-scheduler --target-dir "$work/target-$(basename "$1")")
}
setup "$work/before" 's.plan_round(now)' 's.commit(plan)'
setup "$work/after" '{ s.handle_tick(now).unwrap(); s.plan_round(now).unwrap() }' 's.commit(now, plan).unwrap()'
bin_before="$work/target-before/release/examples/fenzo_round"
bin_after="$work/target-after/release/examples/fenzo_round"

if [ "${1:-}" = "--callgrind" ]; then
    for v in before after; do
        bin="$work/target-$v/release/examples/fenzo_round"
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.$v" "$bin" >/dev/null 2>"$work/cg.$v.log"
        echo "$v: $(grep -o 'Collected : [0-9]*' "$work/cg.$v.log" | tr -d 'a-zA-Z: ') instructions (whole program, hosts added + 400 rounds)"
    done
    exit 0
fi
echo "fill  before(plan ms, commit ms)  after(plan ms, commit ms)"
for i in 1 2 3 4 5; do
    echo "$i     $("$bin_before" | cut -d' ' -f1,2)          $("$bin_after" | cut -d' ' -f1,2)"
done
