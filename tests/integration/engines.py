"""What the real-engine tests share: finding (or building) what they drive, and skipping well.

Locally a test whose engine is missing skips with a one-line reason; in CI it fails
(`unavailable`, GYM_DPO_REQUIRE_ENGINES=1).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REFERENCE, unavailable

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "tests" / "infra"
SAMPLE = REPO / "samples" / "rollouts.jsonl"
MISSING_TOOL = 3  # exit code of tests/infra/test_image.sh when a tool is missing and cannot be installed


def run(argv, *, timeout=900, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Run and capture; on an unexpected exit code fail with the command and its output."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{shlex.join(map(str, argv))} exited with {result.returncode}\n"
                    f"--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}",
                    pytrace=False)
    return result


def gym_dpo_cli() -> list[str]:
    """The CLI of this interpreter's install (the same `gym-dpo` a user types)."""
    script = Path(sys.executable).with_name("gym-dpo")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recipe"]


# -- Docker ---------------------------------------------------------------------------------------
def docker_engine() -> None:
    """A Docker engine and Compose v2, or skip."""
    if shutil.which("docker") is None:
        unavailable("no docker CLI (tests/infra/docker_up.sh installs the engine and Compose)")
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                          text=True, timeout=60)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"no Docker engine: `docker info` failed: {last}")
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if compose.returncode != 0:
        unavailable("no Docker Compose v2 (`docker compose version` failed; tests/infra/docker_up.sh)")


_IMAGES: dict[str, str] = {}


def build_test_images() -> dict[str, str]:
    """Build (or reuse) the test images with tests/infra/test_image.sh, once per session: the
    names it exports (GYM_DPO_TEST_IMAGE, GYM_DPO_TEST_CPU_IMAGE, GYM_DPO_TEST_BASE_REF)."""
    docker_engine()
    if _IMAGES:
        return dict(_IMAGES)
    names = ("GYM_DPO_TEST_IMAGE", "GYM_DPO_TEST_CPU_IMAGE", "GYM_DPO_TEST_BASE_REF")
    if all(os.environ.get(name) for name in names):  # tests/run.sh built them just before pytest
        _IMAGES.update({name: os.environ[name] for name in names})
        return dict(_IMAGES)
    result = subprocess.run(["bash", str(INFRA / "test_image.sh")], capture_output=True, text=True,
                            timeout=1800, stdin=subprocess.DEVNULL)
    if result.returncode == MISSING_TOOL:
        unavailable(result.stderr.strip().splitlines()[-1])
    if result.returncode != 0:
        pytest.fail(f"tests/infra/test_image.sh failed ({result.returncode}):\n{result.stderr[-4000:]}",
                    pytrace=False)
    names = {}
    for word in shlex.split(result.stdout.strip().splitlines()[-1]):
        if "=" in word:
            key, _, value = word.partition("=")
            names[key] = value
    _IMAGES.update(names)
    return dict(names)


# -- Slurm ----------------------------------------------------------------------------------------
def slurm_cluster(nodes: int = 2) -> dict[str, str]:
    """SLURM_CONF of a running cluster with at least `nodes` idle-able nodes, or skip."""
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        unavailable("SLURM_CONF is not set (eval \"$(tests/infra/slurm_up.sh)\" starts a 2-node cluster)")
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        unavailable("no Slurm client commands (sbatch, sinfo) on PATH")
    info = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        unavailable(f"`sinfo` failed: {info.stderr.strip()}")
    usable = [line.split()[0] for line in info.stdout.splitlines()
              if line.split()[1].rstrip("*~#") in ("idle", "mix", "alloc", "comp")]
    if len(set(usable)) < nodes:
        unavailable(f"the Slurm cluster has {len(set(usable))} usable node(s), the test needs {nodes}: "
                    f"{info.stdout.strip()}")
    return {"SLURM_CONF": conf}


# -- NeMo RL's source -------------------------------------------------------------------------------
NEMO_RL_SRC_ENV = "GYM_DPO_NEMO_RL_SRC"
NEMO_RL_VERSION = "0.7.0"


def nemo_rl_checkout() -> Path:
    """NeMo RL v0.7.0's source tree: the upstream reference files' `nemo-rl-v0.7.0/src`
    (GYM_DPO_REFERENCE, default shared/reference beside the repository; commit 81aa43dd), or
    another checkout at $GYM_DPO_NEMO_RL_SRC. Missing or not v0.7.0: a skip, or a failure in CI
    (GYM_DPO_REQUIRE_ENGINES=1), like the other reference files."""
    given = os.environ.get(NEMO_RL_SRC_ENV)
    path = Path(given).expanduser() if given else REFERENCE / "nemo-rl-v0.7.0" / "src"
    info = path / "nemo_rl" / "package_info.py"
    converter = path / "examples" / "converters" / "convert_dcp_to_hf.py"
    if not info.is_file() or not converter.is_file():
        unavailable(f"no NeMo RL v{NEMO_RL_VERSION} source tree at {path} (the reference files' nemo-rl-v0.7.0/src: "
                    f"GYM_DPO_REFERENCE, now {REFERENCE}; or {NEMO_RL_SRC_ENV})")
    text = info.read_text()
    found = ".".join(re.findall(r"^(?:MAJOR|MINOR|PATCH) = (\d+)", text, re.MULTILINE))
    if found != NEMO_RL_VERSION:
        unavailable(f"{path} is NeMo RL {found}, not v{NEMO_RL_VERSION}")
    return path.resolve()


def converter_settings(checkout: Path) -> list[str]:
    """NeMo RL's converter run from its checkout with this Python (torch, transformers, PyYAML:
    all it imports), as `iterate.dcp_to_hf` overrides; the loop runs it in the checkout."""
    return [f"iterate.dcp_to_hf.runner=[{sys.executable},examples/converters/convert_dcp_to_hf.py]",
            f"+iterate.dcp_to_hf.env.PYTHONPATH={checkout}", "+iterate.dcp_to_hf.env.NO_VCS_VERSION=1"]
