#!/usr/bin/env bash
# slurm_down.sh - stop the test cluster started by slurm_up.sh.
#
# Cancels the cluster's jobs, then stops only the daemons named in our own
# pid files under $STATE/slurm: both slurmd at once, then slurmctld.
# Safe to run when nothing is up. slurm.conf and the logs stay in
# $STATE/slurm for inspection.
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SDIR="$STATE/slurm"
STOP_TIMEOUT=${SLURM_STOP_TIMEOUT:-20}
export SLURM_CONF="$SDIR/slurm.conf"


# daemon_pid NAME PIDFILE: print the pid if it is still that daemon (pids get
# reused, so also check the process name); drop a stale pid file.
daemon_pid() {
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
        echo "$pid"
    else
        rm -f "$pidfile"
        return 1
    fi
}

# stop NAME PIDFILE...: SIGTERM those daemons together, wait for them to exit
# (SIGKILL after $STOP_TIMEOUT s), remove their pid files.
stop() {
    local name=$1 pidfile pid i; shift
    local pids=() files=()
    for pidfile in "$@"; do
        if pid=$(daemon_pid "$name" "$pidfile"); then
            pids+=("$pid"); files+=("$pidfile")
        fi
    done
    if (( ${#pids[@]} == 0 )); then log "$name: not running"; return 0; fi
    log "stopping $name (pid ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for (( i = 0; i < STOP_TIMEOUT * 10; i++ )); do
        kill -0 "${pids[@]}" 2>/dev/null || break   # true while any is alive
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "${files[@]}"
}

# First cancel every job of the test cluster (if its controller runs), so no
# job step (slurmstepd and its tasks) outlives the daemons.
jobs=()
if daemon_pid slurmctld "$SDIR/slurmctld.pid" >/dev/null && [[ -f $SLURM_CONF ]]; then
    mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null || true)
fi
if (( ${#jobs[@]} > 0 )); then
    log "cancelling jobs: ${jobs[*]}"
    scancel "${jobs[@]}" || true
    for (( i = 0; i < STOP_TIMEOUT; i++ )); do
        [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
        sleep 1
    done
fi

shopt -s nullglob
stop slurmd "$SDIR"/slurmd-*.pid
stop slurmctld "$SDIR/slurmctld.pid"
log "done"
