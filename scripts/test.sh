#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
# This is the README's test command; CI runs it through .ci/run.
#
# It installs what the tests need and starts the services they use, then
# stops them. Today the suite needs only the Rust toolchain; later issues add
# etcd, moto and Docker-backed tests here.
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

step "cargo test --workspace"
cargo test --workspace --locked
