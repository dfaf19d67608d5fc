#!/usr/bin/env bash
# Builds the `ebb-workload:dev` image: the static `workload` example of
# ebb-executor (executor/examples/workload.rs) in a `FROM scratch` image.
# The executor's integration tests, its benchmark and the demo run it.
#
# No registry is involved: the binary is built here and `docker build` gets a
# context holding only that binary and a Dockerfile.
#
# Idempotent and fast when nothing changed: cargo rebuilds nothing, and the
# image is rebuilt only when the binary's checksum differs from the one
# recorded in the image's `ebb.workload.sha256` label.
#
# Usage: scripts/build-workload-image.sh [--quiet]
# Environment: EBB_WORKLOAD_IMAGE overrides the tag (default ebb-workload:dev);
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${EBB_WORKLOAD_IMAGE:-ebb-workload:dev}"
target=x86_64-unknown-linux-gnu
quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true
say() { $quiet || printf '==> %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
    echo "build-workload-image: no Docker engine is reachable (is dockerd running, and may this user use /var/run/docker.sock?)" >&2
    exit 1
fi

# A static binary runs in an empty image: glibc's static libc with no loader.
# The explicit --target keeps these artifacts in their own directory, so the
# different RUSTFLAGS never invalidate the ordinary host build.
say "building the static workload binary"
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --release -p ebb-executor --example workload --target "$target" \
    $($quiet && echo --quiet)

binary="${CARGO_TARGET_DIR:-target}/$target/release/examples/workload"
if ! file_out=$(od -An -c -N4 "$binary" 2>/dev/null) || [[ "$file_out" != *E*L*F* ]]; then
    echo "build-workload-image: $binary is missing or not an ELF binary" >&2
    exit 1
fi
sha=$(sha256sum "$binary" | cut -d' ' -f1)

current=$(docker image inspect --format '{{ index .Config.Labels "ebb.workload.sha256" }}' "$image" 2>/dev/null || true)
if [ "$current" = "$sha" ]; then
    say "$image is up to date (workload sha256 $sha)"
    exit 0
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/workload"
cat >"$context/Dockerfile" <<EOF
FROM scratch
COPY workload /workload
LABEL ebb.workload.sha256="$sha"
# No ENTRYPOINT: a run's command is the whole argv, e.g. ["/workload", "--work-ms", "500"].
CMD ["/workload"]
EOF

say "building $image"
# DOCKER_BUILDKIT=0: the classic builder needs no buildx plugin and, for a
# FROM scratch image, never contacts a registry.
# Its output (a deprecation notice among it) is shown only when it fails.
if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$image" "$context" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "build-workload-image: docker build failed" >&2
    exit 1
fi
# The previous build of this tag, if any, is now dangling; drop it so repeated
# builds do not pile up images.
docker image prune --force --filter "label=ebb.workload.sha256" >/dev/null
say "built $image (workload sha256 $sha)"
