#!/usr/bin/env bash
# ray_check.sh - prove a 2-node Ray cluster on one host (plain `ray` from PyPI).
#
# Starts a head node and a worker node on this machine, each on its OWN
# loopback address (127.0.0.2 and 127.0.0.3) and with its own explicit ports,
# checks from Python that `ray.init(address="auto")` sees 2 nodes and that a
# task runs on each, then stops both nodes. Exit code 0 = it works.
#
# Facts behind the flags (measured here, see README.md):
#   * --node-ip-address 127.0.0.1 (or localhost) is silently replaced by Ray
#     with the host's outward IP (eth0), and so is --address 127.0.0.1:PORT.
#     Any OTHER loopback address (127.0.0.2, 127.0.0.3, ...) is kept as is, so
#     we use those: all traffic stays on loopback, and the two nodes get
#     distinct node IPs (distinct `node:<ip>` resources), like real nodes.
#   * Both nodes share the host's ports, so every port is set explicitly and
#     the worker-port ranges do not overlap (Ray's default 10002-19999 would be
#     shared by both raylets).
#   * Without --num-cpus each node claims all host CPUs (4 CPUs on 2 cores).
#   * Without --disable-usage-stats the head enables usage reporting (it would
#     try to send stats out of the machine); we pass it and also set
#     RAY_USAGE_STATS_ENABLED=0.
#   * --port and --include-dashboard are head-only: a worker given either
#     aborts. With plain `ray` (no ray[default]) there is no HTTP dashboard;
#     --include-dashboard=false changes nothing (the same processes start).
#   * --block keeps `ray start` in the foreground; SIGTERM to it stops that
#     node's processes. We use it so we stop exactly our own processes, by pid:
#     `ray stop` would stop every Ray process of the host (someone else's too).
#
# Env knobs:
#   INFRA_STATE     state folder (default /var/tmp/gym-dpo-infra)
#   RAY_PYTHON      python with ray installed (default: a venv under $STATE,
#                   created with `pip install ray[==RAY_VERSION]`)
#   RAY_VERSION     pin for that venv (default: newest)
#   RAY_HEAD_IP / RAY_WORKER_IP   default 127.0.0.2 / 127.0.0.3
#   RAY_GCS_PORT    head GCS port (default 16379)
#   RAY_HEAD_PORT_BASE / RAY_WORKER_PORT_BASE  first port of each node's block
#                   (default 16400 / 16600; a block uses base..base+5 and
#                   base+100..base+199 for workers)
#   RAY_START_TIMEOUT  seconds to wait for each step (default 90)
set -euo pipefail

STATE=${INFRA_STATE:-/var/tmp/gym-dpo-infra}
RAY_HEAD_IP=${RAY_HEAD_IP:-127.0.0.2}
RAY_WORKER_IP=${RAY_WORKER_IP:-127.0.0.3}
RAY_GCS_PORT=${RAY_GCS_PORT:-16379}
RAY_HEAD_PORT_BASE=${RAY_HEAD_PORT_BASE:-16400}
RAY_WORKER_PORT_BASE=${RAY_WORKER_PORT_BASE:-16600}
RAY_START_TIMEOUT=${RAY_START_TIMEOUT:-90}
RDIR="$STATE/ray"          # per-node temp dirs + logs (keep paths short:
                           # Ray's unix sockets live below them)
export RAY_USAGE_STATS_ENABLED=0

log() { echo "[ray_check] $*" >&2; }
die() { echo "[ray_check] ERROR: $*" >&2; exit 1; }

mkdir -p "$RDIR"

# ------------------------------------------------------------ install ray ----
if [[ -z ${RAY_PYTHON:-} ]]; then
    venv="$STATE/ray-venv"
    RAY_PYTHON="$venv/bin/python"
    if ! "$RAY_PYTHON" -c 'import ray' 2>/dev/null; then
        log "installing ray${RAY_VERSION:+==$RAY_VERSION} into $venv"
        [[ -x $RAY_PYTHON ]] || python3 -m venv "$venv"
        "$RAY_PYTHON" -m pip install -q "ray${RAY_VERSION:+==$RAY_VERSION}"
    fi
fi
RAY_BIN="$(dirname "$RAY_PYTHON")/ray"
[[ -x $RAY_BIN ]] || die "no ray CLI next to $RAY_PYTHON"
log "ray $("$RAY_PYTHON" -c 'import ray; print(ray.__version__)')"

# Ports of one node, from its base port. All explicit: two raylets share
# this host, so nothing may be left to defaults that could collide.
node_ports() {
    local b=$1
    echo --node-manager-port "$b" --object-manager-port "$((b + 1))" \
        --runtime-env-agent-port "$((b + 2))" --metrics-export-port "$((b + 3))" \
        --dashboard-agent-grpc-port "$((b + 4))" \
        --dashboard-agent-listen-port "$((b + 5))" \
        --min-worker-port "$((b + 100))" --max-worker-port "$((b + 199))"
}

# --------------------------------------------------------- start / stop ----
PIDS=()
stop_nodes() {
    # SIGTERM each blocking `ray start`; it then stops its node's processes.
    local pid i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for (( i = 0; i < 300; i++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && log "ray start (pid $pid) did not exit in 30 s"
    done
    return 0
}
trap stop_nodes EXIT

# start_node NAME ARGS... : run `ray start ARGS --block` in the background and
# wait until it reports "Ray runtime started." in $RDIR/NAME.log.
start_node() {
    local name=$1; shift
    local logf="$RDIR/$name.log" t0=$SECONDS
    "$RAY_BIN" start "$@" --block >"$logf" 2>&1 &
    PIDS+=($!)
    until grep -q 'Ray runtime started' "$logf"; do
        kill -0 "${PIDS[-1]}" 2>/dev/null ||
            { tail -n 30 "$logf" >&2; die "ray start ($name) exited; see $logf"; }
        (( SECONDS - t0 < RAY_START_TIMEOUT )) ||
            { tail -n 30 "$logf" >&2; die "ray start ($name) not ready in ${RAY_START_TIMEOUT}s"; }
        sleep 0.2
    done
    log "$name up in $((SECONDS - t0))s (log: $logf)"
}

# Head: GCS on $RAY_HEAD_IP:$RAY_GCS_PORT. Worker: joins it.
# shellcheck disable=SC2046  # node_ports output is meant to be word-split
start_node head --head --node-ip-address "$RAY_HEAD_IP" --port "$RAY_GCS_PORT" \
    $(node_ports "$RAY_HEAD_PORT_BASE") --num-cpus 1 \
    --disable-usage-stats --include-dashboard=false --temp-dir "$RDIR/n0"
# shellcheck disable=SC2046
start_node worker --address "$RAY_HEAD_IP:$RAY_GCS_PORT" \
    --node-ip-address "$RAY_WORKER_IP" \
    $(node_ports "$RAY_WORKER_PORT_BASE") --num-cpus 1 \
    --disable-usage-stats --temp-dir "$RDIR/n1"

# ------------------------------------------------------------------ check ----
RAY_CHECK_TIMEOUT=$RAY_START_TIMEOUT "$RAY_PYTHON" - <<'PY'
import os, time
import ray

ray.init(address="auto", logging_level="ERROR")
deadline = time.time() + int(os.environ["RAY_CHECK_TIMEOUT"])
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) == 2 or time.time() > deadline:
        break
    time.sleep(0.5)
assert len(alive) == 2, f"expected 2 alive Ray nodes, got {len(alive)}"

# One task pinned to each node must report that node's IP.
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=1)
def node_ip():
    return ray.util.get_node_ip_address()

want = sorted(n["NodeManagerAddress"] for n in alive)
got = sorted(ray.get([
    node_ip.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote()
    for n in alive]))
assert got == want, (got, want)
print(f"[ray_check] OK: 2 nodes {want}, cluster CPUs={ray.cluster_resources()['CPU']}")
PY

stop_nodes
trap - EXIT
log "nodes stopped"
