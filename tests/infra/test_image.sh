#!/usr/bin/env bash
# test_image.sh - the images the Docker tests run, built from the project's REAL Dockerfile.
#
#   1. $STANDIN (gym-dpo-test:nemo-rl) = tests/infra/test_image/nemo_rl.Dockerfile FROM the local
#      base (base_image.sh): a CPU stand-in for the NeMo RL image: torch (CPU) and the rest of the
#      `local` extra plus uv in /opt/nemo_rl_venv, the CPU runner at
#      /opt/nemo-rl/examples/run_dpo.py, NeMo RL v0.7.0's dpo.yaml (from GYM_DPO_REFERENCE) at
#      /opt/nemo-rl/examples/configs/dpo.yaml and the two NeMo RL v0.7.0 files our Dockerfile
#      patches (nemo-rl-v0.7.0/src: native_checkpoint.py, automodel/checkpoint.py) at their
#      place under /opt/nemo-rl. Its packages come from a wheel folder filled here
#      on the host ($CACHE/test-image/wheels: `pip download` with the host's pip config, which has
#      the CPU torch wheel; a container's pip would fetch the CUDA build from PyPI).
#   2. It is pushed to a local registry (Debian's docker-registry on
#      127.0.0.1:$GYM_DPO_REGISTRY_PORT, storage under $STATE), so it has a registry digest like
#      the real nvcr.io image: $BASE_REF = 127.0.0.1:PORT/nemo-rl-cpu:v0.7.0@sha256:...
#   3. $IMAGE (gym-dpo-test:dockerfile) = `docker build --build-arg BASE_IMAGE=$BASE_REF .` of the
#      repository's own Dockerfile, pinned by tag@digest as a user pins it; nothing added but
#      NEMO_GYM=skip (the stand-in's Python 3.11 is below NeMo Gym's floor: no NeMo Gym in the image).
#   4. $CPU_IMAGE (gym-dpo-test:cpu) = tests/infra/test_image/cpu.Dockerfile FROM $IMAGE: no
#      ENTRYPOINT (the NeMo RL image's behaviour, which the Docker SDK launcher relies on).
#
# Fast when nothing changed: the registry stays up, steps 1-2 are cached (they do not depend on
# gym-dpo's sources), step 3 reinstalls gym-dpo when its sources changed (~30 s), step 4 is a
# one-line layer.
#
# Exit code 3: a tool is missing and cannot be installed here (no engine; not root for apt).
# stdout: one `export` line for the tests (the only stdout), so:  eval "$(tests/infra/test_image.sh)"
#   GYM_DPO_TEST_IMAGE      the image of step 3      GYM_DPO_TEST_CPU_IMAGE   the image of step 4
#   GYM_DPO_TEST_BASE_REF   repo:tag@sha256 of the pushed stand-in (what step 3 was built FROM)
#
# Env knobs:
#   INFRA_STATE, GYM_DPO_CACHE, GYM_DPO_BASE_IMAGE   as in base_image.sh
#   GYM_DPO_REGISTRY_PORT   local registry port (default 15000; 127.0.0.1 is an insecure
#                           registry for Docker by default, no TLS needed)
#   GYM_DPO_TEST_IMAGE, GYM_DPO_TEST_CPU_IMAGE, GYM_DPO_TEST_STANDIN   image names (defaults above)
#   GYM_DPO_REFERENCE       the upstream reference files' folder, with nemo-rl-v0.7.0/dpo.yaml and src/
#                           (default: shared/reference beside the repository, as tests/conftest.py)
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CACHE=${GYM_DPO_CACHE:-$HOME/.cache/gym-dpo}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PORT=${GYM_DPO_REGISTRY_PORT:-15000}
REGISTRY=127.0.0.1:$PORT
IMAGE=${GYM_DPO_TEST_IMAGE:-gym-dpo-test:dockerfile}
CPU_IMAGE=${GYM_DPO_TEST_CPU_IMAGE:-gym-dpo-test:cpu}
STANDIN=${GYM_DPO_TEST_STANDIN:-gym-dpo-test:nemo-rl}
REFERENCE=${GYM_DPO_REFERENCE:-$(dirname "$REPO")/shared/reference}
CONTEXT=$CACHE/test-image

missing() { echo "[test_image] $*" >&2; exit 3; }   # a tool is missing (the tests skip on 3)
t0=$SECONDS

docker info >/dev/null 2>&1 || missing "no Docker engine (tests/infra/docker_up.sh starts one)"
[[ -f $REFERENCE/nemo-rl-v0.7.0/dpo.yaml ]] || die "no $REFERENCE/nemo-rl-v0.7.0/dpo.yaml (NeMo RL v0.7.0's dpo.yaml; set GYM_DPO_REFERENCE)"
NEMO_RL_SRC=$REFERENCE/nemo-rl-v0.7.0/src   # the two files our Dockerfile's build step patches
[[ -f $NEMO_RL_SRC/nemo_rl/utils/native_checkpoint.py && -f $NEMO_RL_SRC/nemo_rl/models/automodel/checkpoint.py ]] \
    || die "no NeMo RL v0.7.0 source tree at $NEMO_RL_SRC (set GYM_DPO_REFERENCE)"
mkdir -p "$STATE" "$CACHE"
BASE=$("$HERE/base_image.sh")

# ------------------------------------------------------------- 1. the NeMo RL stand-in ----
mkdir -p "$CONTEXT"
python3 - "$REPO/pyproject.toml" >"$CONTEXT/requirements.txt.new" <<'PY'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
if "local" not in extras:
    sys.exit("pyproject.toml has no `local` extra (the CPU runner's packages)")
print("\n".join(extras["local"]))
PY
echo "uv==${GYM_DPO_TEST_UV_VERSION:-0.13.9}" >>"$CONTEXT/requirements.txt.new"
if ! cmp -s "$CONTEXT/requirements.txt.new" "$CONTEXT/requirements.txt" || [[ ! -d $CONTEXT/wheels ]]; then
    log "pip download (host pip config: the CPU torch wheel) -> $CONTEXT/wheels"
    rm -rf "$CONTEXT/wheels"
    python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
        -d "$CONTEXT/wheels" -r "$CONTEXT/requirements.txt.new" 2> >(grep -v "is ignored: it is neither" >&2)
fi
mv "$CONTEXT/requirements.txt.new" "$CONTEXT/requirements.txt"
cp "$HERE/test_image/nemo_rl.Dockerfile" "$HERE/test_image/run_dpo.py" "$CONTEXT/"
cp "$REFERENCE/nemo-rl-v0.7.0/dpo.yaml" "$CONTEXT/dpo.yaml"
cp "$NEMO_RL_SRC/nemo_rl/utils/native_checkpoint.py" "$NEMO_RL_SRC/nemo_rl/models/automodel/checkpoint.py" "$CONTEXT/"
log "docker build $CONTEXT (test_image/nemo_rl.Dockerfile) FROM $BASE -> $STANDIN"
docker build -q -f "$CONTEXT/nemo_rl.Dockerfile" --build-arg "BASE_IMAGE=$BASE" -t "$STANDIN" "$CONTEXT" >&2

# ------------------------------------------------------------- 2. registry + digest ----
registry_up() { curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; }
if ! registry_up; then
    if ! command -v docker-registry >/dev/null; then
        [[ $(id -u) == 0 ]] || missing "no local registry: docker-registry is not installed (apt-get install docker-registry, as root)"
        apt_install docker-registry
    fi
    mkdir -p "$STATE/registry/data"
    cat >"$STATE/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry/data}
  delete: {enabled: true}
http:
  addr: $REGISTRY
EOF
    log "starting a local registry on $REGISTRY"
    setsid docker-registry serve "$STATE/registry/config.yml" >>"$STATE/registry/registry.log" 2>&1 </dev/null &
    echo $! >"$STATE/registry/registry.pid"
    for _ in $(seq 100); do registry_up && break; sleep 0.1; done
    registry_up || die "registry did not answer on $REGISTRY (see $STATE/registry/registry.log)"
fi
REMOTE=$REGISTRY/nemo-rl-cpu:v0.7.0
docker tag "$STANDIN" "$REMOTE"
docker push -q "$REMOTE" >&2
BASE_REF=$(docker image inspect "$REMOTE" --format '{{range .RepoDigests}}{{println .}}{{end}}' \
           | grep -m1 "^$REGISTRY/nemo-rl-cpu@") || die "no registry digest for $REMOTE"
BASE_REF="$REMOTE@${BASE_REF#*@}"
log "stand-in $STANDIN pushed as $BASE_REF"

# ------------------------------------------------------------- 3. the project's Dockerfile ----
log "docker build $REPO (Dockerfile) with BASE_IMAGE=$BASE_REF -> $IMAGE"
# NEMO_GYM=skip: the stand-in's Python is Debian's 3.11, below NeMo Gym 0.4.0's floor (3.12)
docker build -q --build-arg "BASE_IMAGE=$BASE_REF" --build-arg NEMO_GYM=skip -t "$IMAGE" "$REPO" >&2

# ------------------------------------------------------------- 4. the CPU/SDK touches ----
log "docker build (test_image/cpu.Dockerfile) FROM $IMAGE -> $CPU_IMAGE"
docker build -q -f "$HERE/test_image/cpu.Dockerfile" --build-arg "FROM_IMAGE=$IMAGE" -t "$CPU_IMAGE" \
    "$HERE/test_image" >&2

log "done in $((SECONDS - t0)) s"
echo "export GYM_DPO_TEST_IMAGE=$IMAGE GYM_DPO_TEST_CPU_IMAGE=$CPU_IMAGE GYM_DPO_TEST_BASE_REF=$BASE_REF"
