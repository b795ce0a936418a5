"""tests/infra/up.sh, what tests/run.sh runs to bring the engines up: a set-up script that fails
stops it with its name, before any later step and before any export line reaches run.sh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = ("docker_up.sh", "base_image.sh", "test_image.sh", "iterate_up.sh", "slurm_up.sh")


def stand_ins(tmp_path: Path, failing: str | None) -> Path:
    """A copy of up.sh among stand-ins of its steps, each leaving a mark; `failing` exits 3."""
    infra = tmp_path / "tests" / "infra"
    infra.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "infra" / "up.sh", infra / "up.sh")
    exports = {"base_image.sh": "echo gym-dpo-base:test",
               "test_image.sh": "echo export GYM_DPO_TEST_IMAGE=img:test",
               "slurm_up.sh": "echo export SLURM_CONF=/tmp/slurm.conf"}
    for name in STEPS:
        body = f"touch {tmp_path}/ran-{name}\n" + (
            f"echo '{name}: broken' >&2\nexit 3\n" if name == failing else exports.get(name, "") + "\n")
        (infra / name).write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    return infra / "up.sh"


def test_every_step_runs_and_its_exports_are_printed(tmp_path):
    result = subprocess.run(["bash", stand_ins(tmp_path, None)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / f"ran-{name}").exists() for name in STEPS)
    lines = result.stdout.splitlines()
    assert lines == ["export GYM_DPO_BASE_IMAGE=gym-dpo-base:test", "export GYM_DPO_TEST_IMAGE=img:test",
                     "export SLURM_CONF=/tmp/slurm.conf", "export GYM_DPO_REQUIRE_ENGINES=1"]


@pytest.mark.parametrize("failing", STEPS)
def test_a_failed_step_stops_the_run_with_its_name(tmp_path, failing):
    result = subprocess.run(["bash", stand_ins(tmp_path, failing)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{failing}: broken" in result.stderr and f"tests/infra/{failing} exited non-zero" in result.stderr
    later = STEPS[STEPS.index(failing) + 1:]
    assert not any((tmp_path / f"ran-{name}").exists() for name in later)
    assert "GYM_DPO_REQUIRE_ENGINES" not in result.stdout


def test_run_sh_stops_when_up_sh_fails(tmp_path):
    """run.sh's own lines: an assignment from a failed command substitution stops `set -e`."""
    script = tmp_path / "run.sh"
    text = (REPO / "tests" / "run.sh").read_text()
    start = text.index("    engines=$(bash tests/infra/up.sh)")
    body = text[start:text.index("fi\n", start)]
    failing = body.replace("bash tests/infra/up.sh", "bash -c 'echo export X=1; exit 4'")
    script.write_text("set -euo pipefail\n" + failing
                      + "echo reached pytest\n")
    result = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 4 and "reached pytest" not in result.stdout
