#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
# This is the README's test command; CI runs it through .ci/run.
#
# It installs what the tests need and starts the services they use, then
# stops them: the executor's integration tests run containers on the local
# Docker engine from an image this script builds (no registry is needed), and
# the EC2 tests run the real AWS SDK against a local moto server, and the
# etcd store's tests run against a local etcd.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so repeated CI runs on this machine reuse the cache.
if [ -z "${CARGO_TARGET_DIR:-}" ] && mkdir -p /var/cache/ebb-target 2>/dev/null && [ -w /var/cache/ebb-target ]; then
    export CARGO_TARGET_DIR=/var/cache/ebb-target
fi

step() { printf '\n==> %s\n' "$*"; }

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing rustfmt and clippy"
    rustup component add rustfmt clippy
fi

# etcd-client's build script compiles etcd's .proto files with protoc, which
# needs Google's well-known types (libprotobuf-dev); the etcd store's tests
# run against Debian's etcd-server.
if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/descriptor.proto ] ||
    ! command -v etcd >/dev/null 2>&1; then
    step "installing protoc, Google's .proto includes and etcd (etcd store)"
    apt-get install -y protobuf-compiler libprotobuf-dev etcd-server ||
        { apt-get update && apt-get install -y protobuf-compiler libprotobuf-dev etcd-server; }
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the ebb-workload:dev image (executor integration tests)"
bash scripts/build-workload-image.sh

# The EC2 reservation source is tested with the real SDK against moto
# (api/tests/ec2.rs), the etcd store against a real etcd. Both are stopped by
# pid however the tests end (each stop is a no-op if it never started).
trap 'scripts/etcd.sh stop; scripts/moto.sh stop' EXIT
step "starting the EC2 emulator (moto 5.2.5, pinned) for the ebb-api tests"
moto_env=$(scripts/moto.sh start)   # an assignment, so set -e sees a failed start
eval "$moto_env"                    # EBB_MOTO_ENDPOINT, EBB_MOTO_PYTHON, EBB_MOTO_LAUNCHER

step "starting etcd on loopback ports (etcd store tests)"
etcd_env=$(scripts/etcd.sh start)
eval "$etcd_env"                    # EBB_ETCD_ENDPOINT

# The finance dashboard's browser test (api/tests/dashboard.rs) loads the
# dashboard in Debian's chromium, headless.
if ! command -v chromium >/dev/null 2>&1; then
    step "installing chromium (finance dashboard browser test)"
    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi

# The executor's end-to-end tests run the `ebb` server and CLI binaries of
# another package, so build every binary first.
step "cargo build --workspace --bins"
cargo build --workspace --bins --locked

step "cargo test --workspace"
cargo test --workspace --locked

# The API and CLI suites once more with every test server on etcd (the
# persistence test and a representative part of the API suite run on both
# stores above already).
step "cargo test -p ebb-api --test api --test cli, on etcd"
EBB_TEST_STORE=etcd cargo test -p ebb-api --locked --test api --test cli
