#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
# This is the README's test command; CI runs it through .ci/run.
#
# It installs what the tests need and starts the services they use, then
# stops them: the executor's integration tests run containers on the local
# Docker engine from an image this script builds (no registry is needed), and
# the EC2 tests run the real AWS SDK against a local moto server.
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

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the ebb-workload:dev image (executor integration tests)"
bash scripts/build-workload-image.sh

# The EC2 reservation source is tested with the real SDK against moto
# (api/tests/ec2.rs). The emulator is stopped by pid however the tests end.
step "starting the EC2 emulator (moto 5.2.5, pinned) for the ebb-api tests"
trap 'scripts/moto.sh stop' EXIT
moto_env=$(scripts/moto.sh start)   # an assignment, so set -e sees a failed start
eval "$moto_env"                    # EBB_MOTO_ENDPOINT, EBB_MOTO_PYTHON, EBB_MOTO_LAUNCHER

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
