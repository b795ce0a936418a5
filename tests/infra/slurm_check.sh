#!/usr/bin/env bash
# slurm_check.sh - prove the test cluster of slurm_up.sh really works.
#
#   1. A 2-node batch job: `srun hostname; srun -l printenv SLURMD_NODENAME`
#      runs one task on node1 and one on node2.
#   2. Requeue: a running `sbatch --requeue` job is requeued with
#      `scontrol requeue`, runs again, and sees SLURM_RESTART_COUNT=1.
#
# Starts the cluster if it is not up (slurm_up.sh) but leaves it running;
# stop it with slurm_down.sh. Exit code 0 = both checks passed.
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${SLURM_CHECK_TIMEOUT:-120}

die() { echo "[slurm_check] FAIL: $*" >&2; exit 1; }

eval "$("$HERE/slurm_up.sh")"          # exports SLURM_CONF
work=$(mktemp -d "$STATE/slurm-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# job_state JOBID -> PENDING / RUNNING / COMPLETED / ... ("" once forgotten)
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }

# wait_state JOBID STATE...: wait until the job is in one of the states.
wait_state() {
    local job=$1 t0=$SECONDS s; shift
    while :; do
        s=$(job_state "$job")
        for want in "$@"; do [[ $s == "$want" ]] && return 0; done
        (( SECONDS - t0 < TIMEOUT )) || die "job $job is '$s', not $* after ${TIMEOUT}s"
        sleep 0.5
    done
}

# ---------------------------------------------------------- 1. two nodes ----
t0=$SECONDS
sbatch --wait -N2 -o "$work/two-nodes.out" \
    --wrap 'srun hostname; srun -l printenv SLURMD_NODENAME' >/dev/null ||
    die "2-node job failed: $(cat "$work/two-nodes.out")"
sort "$work/two-nodes.out" | grep -q '^0: node1$' || die "no task on node1"
sort "$work/two-nodes.out" | grep -q '^1: node2$' || die "no task on node2"
log "2-node job OK in $((SECONDS - t0))s: $(grep -c "^$(hostname -s)\$" "$work/two-nodes.out") x hostname, tasks on node1+node2"

# ------------------------------------------------------------- 2. requeue ----
t0=$SECONDS
# shellcheck disable=SC2016  # expanded by the job, not here
job=$(sbatch --parsable --requeue --open-mode=append -o "$work/requeue.out" \
    --wrap 'echo "run restart_count=${SLURM_RESTART_COUNT:-0}"; sleep 3')
wait_state "$job" RUNNING
sleep 1
scontrol requeue "$job"
log "job $job requeued while running"
wait_state "$job" COMPLETED
grep -q '^run restart_count=0$' "$work/requeue.out" || die "first run missing: $(cat "$work/requeue.out")"
grep -q '^run restart_count=1$' "$work/requeue.out" || die "second run missing: $(cat "$work/requeue.out")"
restarts=$(scontrol show job "$job" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
[[ $restarts == 1 ]] || die "Restarts=$restarts, expected 1"
log "requeue OK in $((SECONDS - t0))s (ran twice, SLURM_RESTART_COUNT=1 on the rerun)"
