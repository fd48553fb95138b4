#!/usr/bin/env bash
# Make a Docker engine reachable, for local runs and for building the project image.
#
#   docker/ensure_engine.sh [--no-install] [--timeout SECONDS]
#
# When `docker info` already works, it does nothing. Otherwise, on a Debian host as root, it says what
# it does and:
#   - installs what is missing with apt-get: docker.io (engine and client), docker-compose (v1; the
#     SageMaker SDK's local mode uses it when `docker compose` v2 is missing) and debootstrap (for
#     docker/build_base_image.sh);
#   - starts the engine: `systemctl start docker` under systemd, else `dockerd` in the background
#     (log: $DOCKERD_LOG, default /var/log/dockerd.log);
#   - waits for `docker info` (default 60 s).
# Exits 0 when the engine answers; 1, with the reason, when it cannot make it answer; 3 when installing
# the packages failed (apt-get).
# --no-install: never install packages, only start an installed engine.
set -euo pipefail

TIMEOUT="${ENGINE_TIMEOUT:-60}"
INSTALL=1
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"

say() { echo "ensure_engine: $*" >&2; }
die() { echo "ensure_engine: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --no-install) INSTALL=0; shift ;;
        --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; TIMEOUT="$2"; shift 2 ;;
        --timeout=*) TIMEOUT="${1#*=}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case "$TIMEOUT" in ''|*[!0-9]*) die "--timeout must be a whole number of seconds, not '$TIMEOUT'" ;; esac

engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
compose_ok() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }

missing=()
# docker.io: no client, or a client with neither a local engine binary nor a reachable engine
if ! command -v docker >/dev/null 2>&1 || { ! command -v dockerd >/dev/null 2>&1 && ! engine_up; }; then
    missing+=(docker.io)
fi
compose_ok || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$INSTALL" -eq 0 ]; then
        say "missing: ${missing[*]} (not installing: --no-install)"
    elif [ "$(id -u)" -ne 0 ]; then
        say "missing: ${missing[*]}; run as root to install them (apt-get install -y ${missing[*]})"
    elif ! command -v apt-get >/dev/null 2>&1; then
        say "missing: ${missing[*]}; this is not a Debian host (no apt-get): install Docker yourself"
    else
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || { say "error: apt-get update failed"; exit 3; }
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || { say "error: apt-get install ${missing[*]} failed"; exit 3; }
    fi
fi

if engine_up; then
    say "Docker engine is reachable ($(docker version --format 'server {{.Server.Version}}' 2>/dev/null || echo up))"
    exit 0
fi
command -v docker >/dev/null 2>&1 || die "no docker client (install docker.io, or run as root on Debian to have it installed)"
command -v dockerd >/dev/null 2>&1 || die "'docker info' fails and there is no dockerd here to start: start your Docker engine"
[ "$(id -u)" -eq 0 ] || die "'docker info' fails: start the engine (as root: $0), or add this user to the docker group"

PIDFILE="${DOCKER_PIDFILE:-/var/run/docker.pid}"
pid_alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
if pid_alive; then
    say "dockerd (pid $(cat "$PIDFILE")) is running but not answering yet; waiting"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    say "starting the engine: systemctl start docker"
    systemctl start docker || die "systemctl start docker failed (journalctl -u docker says why)"
else
    say "starting the engine: dockerd in the background (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    started_pid=$!
    disown || true
fi

waited=0
until engine_up; do
    if [ -n "${started_pid:-}" ] && ! kill -0 "$started_pid" 2>/dev/null; then
        say "dockerd exited after ${waited}s; the end of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "no Docker engine"
    fi
    if [ "$waited" -ge "$TIMEOUT" ]; then
        say "the engine did not answer within ${TIMEOUT}s; the end of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "no Docker engine"
    fi
    sleep 1
    waited=$((waited + 1))
done
say "Docker engine is up after ${waited}s"
