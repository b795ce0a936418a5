#!/usr/bin/env bash
# Bring up every engine the integration tests drive (as root: tests/run.sh calls it), in order:
# the Docker engine, the stand-in NeMo RL base image, the test images built from our Dockerfile,
# NeMo Gym with llama-server, the 2-node Slurm cluster. Prints the `export` lines the tests need
# (tests/run.sh evals them). A step that fails stops here with its name and exit code: nothing
# after it runs, and no half-set environment is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() {  # step NAME SCRIPT: run tests/infra/SCRIPT; its stdout is captured, its failure is ours
    local out
    if ! out=$(bash "tests/infra/$2"); then
        echo "tests/infra/up.sh: $1 failed (tests/infra/$2 exited non-zero; its messages are above)" >&2
        exit 1
    fi
    printf '%s' "$out"
}

step "the Docker engine" docker_up.sh >&2
base=$(step "the stand-in NeMo RL image" base_image.sh)
echo "export GYM_DPO_BASE_IMAGE=$(printf '%q' "$base")"
export GYM_DPO_BASE_IMAGE=$base
images=$(step "the test images" test_image.sh)
step "NeMo Gym and llama-server" iterate_up.sh >&2
slurm=$(step "the Slurm cluster" slurm_up.sh)
printf '%s\n%s\n' "$images" "$slurm"
echo "export GYM_DPO_REQUIRE_ENGINES=1"
