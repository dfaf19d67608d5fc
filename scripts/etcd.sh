#!/usr/bin/env bash
# Starts and stops the etcd the ebb-api tests use (the etcd store): Debian's
# etcd-server, on loopback ports, with a temporary data directory.
#
#   eval "$(scripts/etcd.sh start)"   # installs if needed, starts, prints exports
#   scripts/etcd.sh env               # prints the exports of the running etcd
#   scripts/etcd.sh stop              # stops it by the pid in its pid file
#
# `start` prints, for eval:
#   EBB_ETCD_ENDPOINT  http://127.0.0.1:PORT, the client endpoint
#
# The pid, port, data directory and log live in EBB_ETCD_STATE (default
# target/etcd); the data directory is deleted at stop (test data only).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

state=${EBB_ETCD_STATE:-$repo/target/etcd}
pid_file="$state/etcd.pid"
port_file="$state/etcd.port"
log_file="$state/etcd.log"
data_dir="$state/data"
# etcd starts in well under a second here; a loaded 2-core CI box may take
# several times that (its first fsyncs), so wait up to 30 s.
start_timeout_secs=30

say() { printf 'etcd.sh: %s\n' "$*" >&2; }

install() {
    command -v etcd >/dev/null && return
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "need the Debian package etcd-server: install it (as root: apt-get install etcd-server)"
        exit 1
    fi
    say "installing etcd-server (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2; }
}

running_pid() {
    [ -f "$pid_file" ] || return 1
    local pid
    pid=$(cat "$pid_file")
    # Only a live etcd counts: a stale file's pid may have been reused by
    # something else, which must not be signalled.
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "etcd --name ebb-test"; then
        echo "$pid"
        return 0
    fi
    return 1
}

print_env() {
    echo "export EBB_ETCD_ENDPOINT=http://127.0.0.1:$(cat "$port_file")"
}

# A free loopback port (the OS picks; etcd itself cannot report one it chose).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -rf "$pid_file" "$port_file" "$data_dir"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "etcd (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$pid_file" "$port_file" "$data_dir"
    say "stopped etcd (pid $pid)"
}

start() {
    local pid client peer
    install
    mkdir -p "$state"
    stop
    client=$(free_port)
    peer=$(free_port)
    # setsid: etcd must not get the terminal's SIGINT meant for cargo, and
    # must outlive this script until `stop`.
    setsid etcd --name ebb-test --data-dir "$data_dir" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "ebb-test=http://127.0.0.1:$peer" \
        >"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    echo "$client" >"$port_file"
    for _ in $(seq $((start_timeout_secs * 5))); do
        if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + '/health', timeout=5)" \
            "$client" 2>/dev/null; then
            say "etcd (pid $pid) on http://127.0.0.1:$client, log $log_file"
            print_env
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "etcd exited during startup; its log:"
            cat "$log_file" >&2
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.2
    done
    say "etcd did not answer within ${start_timeout_secs} s; its log:"
    cat "$log_file" >&2
    stop
    exit 1
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
    if running_pid >/dev/null; then print_env; else
        say "not running"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
