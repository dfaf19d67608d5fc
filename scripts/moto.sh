#!/usr/bin/env bash
# Starts and stops the EC2 emulator the ebb-api tests use: moto (pinned) with
# Ebb's DescribeReservedInstances extension (api/tests/moto/ebb_moto.py), on a
# loopback port the OS picks.
#
#   eval "$(scripts/moto.sh start)"   # installs if needed, starts, prints exports
#   scripts/moto.sh env               # prints the exports of the running emulator
#   scripts/moto.sh stop              # stops it by the pid in its pid file
#
# `start` prints, for eval:
#   EBB_MOTO_ENDPOINT  http://127.0.0.1:PORT, the emulator the tests talk to
#   EBB_MOTO_PYTHON    the venv's python, for tests that run a private emulator
#   EBB_MOTO_LAUNCHER  the launcher script
#
# moto goes into a virtualenv (Debian 12 refuses `pip install` into the system
# Python): /var/cache/ebb-moto/venv-<version> when writable (root, CI: reused
# across runs), else target/moto-venv. Override with EBB_MOTO_VENV. The pid,
# port and log files live in EBB_MOTO_STATE (default target/moto).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

moto_version=5.2.5
launcher="$repo/api/tests/moto/ebb_moto.py"
constraints="$repo/api/tests/moto/constraints.txt"
state=${EBB_MOTO_STATE:-$repo/target/moto}
pid_file="$state/moto.pid"
port_file="$state/moto.port"
log_file="$state/moto.log"
# moto imports in about 2 s here; a loaded 2-core CI box may take several
# times that, so wait up to a minute before calling the start a failure.
start_timeout_secs=60

say() { printf 'moto.sh: %s\n' "$*" >&2; }

venv_dir() {
    if [ -n "${EBB_MOTO_VENV:-}" ]; then
        echo "$EBB_MOTO_VENV"
    elif mkdir -p /var/cache/ebb-moto 2>/dev/null && [ -w /var/cache/ebb-moto ]; then
        echo "/var/cache/ebb-moto/venv-$moto_version"
    else
        echo "$repo/target/moto-venv"
    fi
}

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "need the Debian packages $*: install them (as root: apt-get install $*)"
        exit 1
    fi
    say "installing $* (Debian packages)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

install() {
    local venv=$1
    if [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
        return
    fi
    say "installing moto[server]==$moto_version into $venv"
    if ! command -v python3 >/dev/null; then
        apt_install python3 python3-venv
    fi
    rm -rf "$venv"
    # Debian ships venv's pip bootstrap separately (python3-venv).
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv" >&2
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$constraints" "moto[server]==$moto_version" >&2
}

running_pid() {
    [ -f "$pid_file" ] || return 1
    local pid
    pid=$(cat "$pid_file")
    # Only a live process that is our launcher counts: a stale file's pid may
    # have been reused by something else, which must not be signalled.
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "ebb_moto.py"; then
        echo "$pid"
        return 0
    fi
    return 1
}

print_env() {
    local venv
    venv=$(venv_dir)
    echo "export EBB_MOTO_ENDPOINT=http://127.0.0.1:$(cat "$port_file")"
    echo "export EBB_MOTO_PYTHON=$venv/bin/python"
    echo "export EBB_MOTO_LAUNCHER=$launcher"
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file" "$port_file"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "moto (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file" "$port_file"
    say "stopped moto (pid $pid)"
}

start() {
    local venv pid
    venv=$(venv_dir)
    install "$venv"
    mkdir -p "$state"
    stop
    rm -f "$port_file"
    # setsid: the emulator must not get the terminal's SIGINT meant for cargo,
    # and must outlive this script until `stop`.
    setsid "$venv/bin/python" "$launcher" --host 127.0.0.1 --port 0 --port-file "$port_file" \
        >"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    for _ in $(seq $((start_timeout_secs * 5))); do
        if [ -s "$port_file" ]; then
            if "$venv/bin/python" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + '/ebb-test/health', timeout=5)" \
                "$(cat "$port_file")" 2>/dev/null; then
                say "moto $moto_version (pid $pid) on http://127.0.0.1:$(cat "$port_file"), log $log_file"
                print_env
                return 0
            fi
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "moto exited during startup; its log:"
            cat "$log_file" >&2
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.2
    done
    say "moto did not answer within ${start_timeout_secs} s; its log:"
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
