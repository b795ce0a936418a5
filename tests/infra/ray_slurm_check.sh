#!/usr/bin/env bash
# ray_slurm_check.sh - Ray head on node1 + Ray worker on node2, inside ONE
# Slurm job on the test cluster of slurm_up.sh (both "nodes" are this host).
#
# This is the pattern the project's sbatch script needs:
#   srun -N1 -n1 -w node1 ray start --head ... --block &     (step 1)
#   srun -N1 -n1 -w node2 ray start --address HEAD:PORT ... --block &  (step 2)
#   <driver: ray.init(address="auto")>
#   kill the two srun steps (SIGTERM) -> each `ray start --block` stops its node
#
# --block matters under Slurm: without it `ray start` returns at once, its
# daemons are re-parented to init, and with ProctrackType=proctrack/linuxproc
# they escape the step and outlive the job (seen here). With --block they are
# children of the step, and ending the step ends them.
#
# Ports/IPs are the ones of ray_check.sh (same env knobs). Exit code 0 = OK.
set -euo pipefail

STATE=${INFRA_STATE:-/var/tmp/gym-dpo-infra}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${RAY_START_TIMEOUT:-90}

log() { echo "[ray_slurm_check] $*" >&2; }
die() { echo "[ray_slurm_check] FAIL: $*" >&2; exit 1; }

# Ray in its own venv (same one as ray_check.sh) unless RAY_PYTHON is given.
if [[ -z ${RAY_PYTHON:-} ]]; then
    RAY_PYTHON="$STATE/ray-venv/bin/python"
    if ! "$RAY_PYTHON" -c 'import ray' 2>/dev/null; then
        log "installing ray${RAY_VERSION:+==$RAY_VERSION} into $STATE/ray-venv"
        [[ -x $RAY_PYTHON ]] || python3 -m venv "$STATE/ray-venv"
        "$RAY_PYTHON" -m pip install -q "ray${RAY_VERSION:+==$RAY_VERSION}"
    fi
fi

eval "$("$HERE/slurm_up.sh")"          # exports SLURM_CONF
work=$(mktemp -d "$STATE/rs.XXXXXX")   # short: Ray's unix sockets live below

# Settings for the job (sbatch passes the environment on to it).
RAY_BIN_DIR=$(dirname "$RAY_PYTHON")
export RAY_BIN_DIR RAY_WORK=$work TIMEOUT
export RAY_HEAD_IP=${RAY_HEAD_IP:-127.0.0.2} RAY_WORKER_IP=${RAY_WORKER_IP:-127.0.0.3}
export RAY_GCS_PORT=${RAY_GCS_PORT:-16379}
export RAY_HEAD_PORT_BASE=${RAY_HEAD_PORT_BASE:-16400}
export RAY_WORKER_PORT_BASE=${RAY_WORKER_PORT_BASE:-16600}
export RAY_USAGE_STATS_ENABLED=0

cat >"$work/ray.sbatch" <<'JOB'
#!/bin/bash
#SBATCH -N2 --ntasks-per-node=1 --cpus-per-task=1
set -euo pipefail
PATH=$RAY_BIN_DIR:$PATH
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))

node_ports() {
    local b=$1
    echo --node-manager-port "$b" --object-manager-port "$((b + 1))" \
        --runtime-env-agent-port "$((b + 2))" --metrics-export-port "$((b + 3))" \
        --dashboard-agent-grpc-port "$((b + 4))" \
        --dashboard-agent-listen-port "$((b + 5))" \
        --min-worker-port "$((b + 100))" --max-worker-port "$((b + 199))"
}
wait_started() {   # wait_started LOG: until `ray start` says it is up
    local t0=$SECONDS
    until grep -q 'Ray runtime started' "$1" 2>/dev/null; do
        (( SECONDS - t0 < TIMEOUT )) || { cat "$1"; echo "timeout: $1"; exit 1; }
        sleep 0.2
    done
}

srun -N1 -n1 -w "${nodes[0]}" ray start --head \
    --node-ip-address "$RAY_HEAD_IP" --port "$RAY_GCS_PORT" \
    $(node_ports "$RAY_HEAD_PORT_BASE") --num-cpus "$SLURM_CPUS_PER_TASK" \
    --disable-usage-stats --temp-dir "$RAY_WORK/n0" --block >"$RAY_WORK/head.log" 2>&1 &
wait_started "$RAY_WORK/head.log"
echo "head up on ${nodes[0]} after ${SECONDS}s"

srun -N1 -n1 -w "${nodes[1]}" ray start --address "$RAY_HEAD_IP:$RAY_GCS_PORT" \
    --node-ip-address "$RAY_WORKER_IP" \
    $(node_ports "$RAY_WORKER_PORT_BASE") --num-cpus "$SLURM_CPUS_PER_TASK" \
    --disable-usage-stats --temp-dir "$RAY_WORK/n1" --block >"$RAY_WORK/worker.log" 2>&1 &
wait_started "$RAY_WORK/worker.log"
echo "worker up on ${nodes[1]} after ${SECONDS}s"

python - <<'PY'
import time, ray
ray.init(address="auto", logging_level="ERROR")
for _ in range(120):
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) == 2:
        break
    time.sleep(0.5)
print("RAY_NODES", len(alive), sorted(n["NodeManagerAddress"] for n in alive))
PY

kill -TERM %1 %2     # end both steps: each `ray start --block` stops its node
wait || true
echo "job done after ${SECONDS}s"
JOB

t0=$SECONDS
job=$(sbatch --parsable -o "$work/job.out" "$work/ray.sbatch")
log "submitted job $job"
# Poll (sbatch --wait polls with growing sleeps, up to ~30 s late).
while [[ -n $(squeue -h -j "$job" 2>/dev/null) ]]; do
    (( SECONDS - t0 < 3 * TIMEOUT )) || { scancel "$job"; die "job $job timed out"; }
    sleep 0.5
done
cat "$work/job.out" >&2
state=$(scontrol show job "$job" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
[[ $state == COMPLETED ]] || die "job $job ended $state"
grep -q "^RAY_NODES 2 \['$RAY_HEAD_IP', '$RAY_WORKER_IP'\]" "$work/job.out" ||
    die "Ray did not see both nodes"
sleep 1
leftover=$(pgrep -f "$work/n[01]" || true)
[[ -z $leftover ]] || die "Ray processes outlived the job: $leftover"
log "OK in $((SECONDS - t0))s: head on node1, worker on node2, nothing left behind"
rm -rf "$work"
