"""bench/gpu_check.py (the GPU check the project's owner runs on a GPU) runs on a CPU with a tiny
model: its JSON holds the memory sweep's steps and NeMo RL's own DPO loss (reference source tree)
equal to the CPU trainer's formula."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from engines import REPO, nemo_rl_checkout

pytest.importorskip("transformers")
pytestmark = pytest.mark.integration


def test_the_gpu_check_runs_tiny_on_a_cpu(tmp_path):
    src = nemo_rl_checkout()
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--nemo-rl-src", str(src),
                             "--tiny", "--out", str(out)], capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report and report["model"] == "tiny"
    assert report["loss"]["nemo_rl"] == "0.7.0" and report["loss"]["equal_to_1e-5"]
    assert set(report["loss"]["cases"]) == {"dpo_and_nll_per_token", "dpo_and_nll_summed_length_averaged_preference",
                                            "dpo_alone"}
    steps = report["memory"]["steps"]
    assert [(s["tokens"], s["pairs"]) for s in steps] == [(32, 1), (32, 2), (64, 1), (64, 2)]
    assert all(s["seconds"] > 0 and s["sequences"] == 2 * s["pairs"] for s in steps)
