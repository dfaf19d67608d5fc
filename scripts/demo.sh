#!/usr/bin/env bash
# One-command local run of the whole product: `ebb server` with two pools
# (examples/demo-two-pools.toml), two `ebb-executor`s standing for a host in
# each (a slice of this machine each), and the 8-chunk workload job
# (examples/jobs/workload-demo.yaml) submitted with the `ebb` CLI. It watches
# the job to the end, shows where each task ran and the containers Docker ran
# for it, then stops everything it started (by pid) and removes the
# containers and its temporary data directory.
#
#   bash scripts/demo.sh              # about 30 s once built
#   bash scripts/demo.sh --preempt    # also take pool east's supply back mid-run
#
# Needs a Docker engine. Builds `ebb` and `ebb-executor` without the EC2
# feature (the AWS SDK is the slow part of a cold build and the demo does not
# use it) and the `ebb-workload:dev` image (FROM scratch, no registry).
set -euo pipefail
cd "$(dirname "$0")/.."

preempt=false
case "${1:-}" in
    --preempt) preempt=true ;;
    "") ;;
    *) echo "usage: bash scripts/demo.sh [--preempt]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }

docker info >/dev/null 2>&1 || {
    echo "error: no Docker engine answers (docker info failed); the executors run tasks as containers" >&2
    exit 1
}

step "building ebb and ebb-executor (debug, without the EC2 feature)"
cargo build --locked --no-default-features -p ebb-api -p ebb-executor
bin="${CARGO_TARGET_DIR:-target}/debug"

step "building the ebb-workload:dev image"
bash scripts/build-workload-image.sh

# Ports of their own, so a server the user already runs on 7600 is left alone.
grpc=127.0.0.1:7610
http=127.0.0.1:7611
addr="http://$grpc"
work=$(mktemp -d)
pids=()
hosts=(demo-east demo-west)
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for h in "${hosts[@]}"; do
        ids=$(docker ps -aq --filter "label=ebb.executor=$h")
        [ -z "$ids" ] || docker rm -f $ids >/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

step "starting ebb server on $grpc (logs: $work/server.log)"
"$bin/ebb" server --config examples/demo-two-pools.toml --listen "$grpc" \
    --http-listen "$http" --data-dir "$work/data" 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do
    "$bin/ebb" capacity --addr "$addr" >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin/ebb" capacity --addr "$addr"

step "starting two executors: demo-east in pool east, demo-west in pool west (1 vCPU, 2 GiB each)"
for h in "${hosts[@]}"; do
    pool=${h#demo-}
    "$bin/ebb-executor" --server "$addr" --host-id "$h" --pool "$pool" --zone "local-$pool" \
        --cpu-millis 1000 --memory-mib 2048 --data-dir "$work/$h" 2>"$work/$h.log" &
    pids+=($!)
done

step "submitting examples/jobs/workload-demo.yaml"
job=$("$bin/ebb" job submit --addr "$addr" -f examples/jobs/workload-demo.yaml)
echo "$job"
id=$(echo "$job" | sed -n 's/^job \([0-9]*\) created.*/\1/p')

if $preempt; then
    # Take pool east's whole supply back 8 s in: its chunks get SIGTERM,
    # checkpoint, are reported stopped and requeued onto host demo-west.
    (
        sleep 8
        echo
        echo "==> streaming demand in pool east rises to 4 IE (its whole reservation)"
        "$bin/ebb" demand report --addr "$addr" --pool east --ie 4
    ) &
    pids+=($!)
fi

step "watching job $id until it ends"
"$bin/ebb" job watch --addr "$addr" "$id"

step "where each task ran"
"$bin/ebb" job tasks --addr "$addr" "$id"
"$bin/ebb" job get --addr "$addr" "$id"

step "the containers Docker ran (removed when this script exits)"
docker ps -a --filter "label=ebb.job=job-$id" --format 'table {{.Names}}\t{{.Status}}'
