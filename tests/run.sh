#!/usr/bin/env bash
# The project's test command (README, .ci/run): install the package with the extras the tests
# use, lint (ruff), bring up the real engines the integration tests drive, run pytest, tear Slurm down.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh tests/unit -q   # arguments go to pytest
#
# As root (CI, a disposable VM) it installs and starts a Docker engine, the local stand-in for
# the NeMo RL image, the test images built from our Dockerfile (tests/infra/test_image.sh) and a
# 2-node Slurm cluster (tests/infra/), NeMo Gym with llama.cpp's server for stage=iterate
# (tests/infra/iterate_up.sh), and sets GYM_DPO_REQUIRE_ENGINES=1: a test that finds an
# engine missing then fails instead of skipping. Otherwise it uses what is already running, and
# the tests that need a missing tool skip with a one-line reason.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet -e '.[test,local,docker,slurm,iterate]'
python -m ruff check .   # the rule set is pyproject.toml's [tool.ruff]

if [ "$(id -u)" = 0 ] && [ "${GYM_DPO_SKIP_INFRA:-0}" != 1 ]; then
    trap 'bash tests/infra/slurm_down.sh' EXIT
    # GYM_DPO_BASE_IMAGE, GYM_DPO_TEST_IMAGE, _CPU_IMAGE, _BASE_REF, SLURM_CONF, GYM_DPO_REQUIRE_ENGINES;
    # a failed step stops the run here with its message (an assignment keeps its exit code)
    engines=$(bash tests/infra/up.sh)
    eval "$engines"
fi

python -m pytest "$@"
