"""The README's first command for real: `gym-dpo stage=all` on the bundled sample, default launcher.

Prepare, then the train stage writes nemo_rl_dpo.yaml, runs preflight and launches the CPU runner
(TRL) in a subprocess, which trains the tiny model for 30 steps; then a rerun on the same
checkpoint folder resumes from the latest step_N, exactly, as a requeued Slurm job must.

Whether NeMo RL's dpo.yaml (the written YAML's parent) is on the machine is pinned, never taken
from the machine: the main run points container.base_config at a path that does not exist (the
"not on this machine" path), and one short run inherits NeMo RL v0.7.0's own dpo.yaml from
the reference files (GYM_DPO_REFERENCE) at /opt/nemo-rl's layout in a temp folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "rollouts.jsonl"
STEPS = 30


def no_parent(tmp: Path) -> Path:
    return tmp / "no-nemo-rl" / "examples" / "configs" / "dpo.yaml"  # never created


def environment(tmp: Path) -> dict:
    return {**os.environ, "GYM_DPO_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1"}


def gym_dpo() -> list[str]:
    script = Path(sys.executable).with_name("gym-dpo")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "recipe"]


def train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train:loss" in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    if not SAMPLE.is_file():
        pytest.skip("samples/rollouts.jsonl is not there")
    tmp = tmp_path_factory.mktemp("local_cpu")
    result = subprocess.run([*gym_dpo(), "stage=all", f"data.input={SAMPLE}", f"run_dir={tmp / 'run'}",
                             f"container.base_config={no_parent(tmp)}"],
                            cwd=tmp, env=environment(tmp), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (tmp / "run" / "cli.out").write_text(result.stdout + result.stderr)
    return tmp / "run"


def test_stage_all_trains_the_tiny_model_on_the_sample(run):
    log = (run / "cli.out").read_text()
    doc = yaml.safe_load((run / "nemo_rl_dpo.yaml").read_text())
    assert doc["defaults"] == str(no_parent(run.parent))
    assert "is not on this machine: reading nemo_rl_dpo.yaml alone" in log
    assert "recipe.train.local_dpo --config" in (run / "command.txt").read_text()

    step = run / "checkpoints" / f"step_{STEPS}"
    info = json.loads((step / "training_info.json").read_text())
    assert info["step"] == STEPS and "val:validation-default_loss" in info
    assert (step / "model.safetensors").is_file() and (step / "optimizer.pt").is_file()
    assert (step / "config.yaml").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (run / "model" / name).is_file(), name

    rows = train_rows(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = [r["train:loss"] for r in rows]
    assert losses[0] == pytest.approx(0.6931, abs=0.01)         # log 2: policy = reference at step 1
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5     # the loss falls visibly
    assert sum(r["train:accuracy"] for r in rows[-5:]) / 5 > 0.5
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
           if "val:validation-default_accuracy" in line]
    assert [r["step"] for r in val] == [0, 10, 20, 30]
    assert val[-1]["val:validation-default_accuracy"] > 0.5
    assert val[-1]["val:validation-default_loss"] < val[0]["val:validation-default_loss"]

    assert json.loads((run / "preflight.json").read_text())["tokens_checked"] is True
    page = (run / "report.html").read_text()
    for plot in ("reward_distribution", "token_lengths", "loss_curve", "accuracy_curve"):
        assert re.search(rf"<figure id='plot-{plot}'><h3>[^<]*</h3><img ", page), plot


def test_a_rerun_on_the_same_checkpoints_resumes_exactly(run, tmp_path):
    """A requeued job: the last save was step 20; it must continue as if never stopped."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / f"step_{STEPS}")
    result = subprocess.run(
        [sys.executable, "-m", "recipe.train.local_dpo", "--config", str(copy / "nemo_rl_dpo.yaml"),
         f"checkpointing.checkpoint_dir={copy / 'checkpoints'}", "dpo.max_num_steps=34"],
        cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {copy / 'checkpoints' / 'step_20'}" in result.stderr
    rows = train_rows(copy)
    assert [r["step"] for r in rows] == list(range(1, 35))     # steps 21-30 again, once each, then on
    original = {r["step"]: r["train:loss"] for r in train_rows(run)}
    for row in rows[20:STEPS]:
        assert row["train:loss"] == pytest.approx(original[row["step"]], rel=1e-4), row["step"]
    assert (copy / "checkpoints" / "step_34" / "training_info.json").is_file()


def negated(tmp: Path) -> Path:
    """The sample with every reward negated: the same prompts, each pair the other way round."""
    lines = []
    for line in SAMPLE.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and type(row.get("reward")) in (int, float):
            line = json.dumps({**row, "reward": -row["reward"]})
        lines.append(line)
    path = tmp / "negated.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_run_folder_is_not_resumed_on_other_pairs(run, tmp_path):
    """`stage=train run_dir=RUN data.output_dir=NEW`: RUN's step_30 was trained on the sample's
    pairs; NEW holds the sample with its rewards negated. Resuming would continue (or, at max
    steps, silently end) the old training while the folder names the new pairs: it is refused,
    with both shown, nothing in RUN rewritten; `train.fresh_start=true` trains from step 0."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    prepared = subprocess.run([*gym_dpo(), "stage=prepare", f"data.input={negated(tmp_path)}",
                               f"data.output_dir={tmp_path / 'negated'}", f"run_dir={tmp_path / 'prep'}"],
                              cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=900)
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    argv = [*gym_dpo(), "stage=train", f"run_dir={copy}", f"data.output_dir={tmp_path / 'negated'}"]
    refused = subprocess.run(argv, cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True,
                             timeout=900)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert re.search(rf"checkpoints up to step_{STEPS}, and they were trained on train sha256 \w+….*{run / 'data'}\)"
                     rf"; this run's pairs are train sha256 \w+….*{tmp_path / 'negated'}\)", " ".join(out.split()))
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before

    fresh = subprocess.run([*argv, "train.fresh_start=true", "dpo.max_num_steps=2"], cwd=tmp_path,
                           env=environment(tmp_path), capture_output=True, text=True, timeout=900)
    assert fresh.returncode == 0, (fresh.stdout + fresh.stderr)[-3000:]
    assert "resuming from" not in fresh.stderr
    assert [r["step"] for r in train_rows(copy)] == [1, 2]
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["step_2"]
    aside = [p for p in copy.iterdir() if p.name.startswith("checkpoints.replaced-")]
    assert len(aside) == 1 and (aside[0] / f"step_{STEPS}").is_dir()


def test_with_nemo_rls_dpo_yaml_the_run_inherits_it(tmp_path):
    """The other path: the parent is there, so the CPU runner reads the file as NeMo RL does."""
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from train_helpers import fake_nemo_rl
    nemo_rl_dir = fake_nemo_rl(tmp_path / "c")
    result = subprocess.run([*gym_dpo(), "stage=all", f"data.input={SAMPLE}", f"run_dir={tmp_path / 'run'}",
                             f"container.nemo_rl_dir={nemo_rl_dir}", "dpo.max_num_steps=2",
                             "dpo.val_period=1", "checkpointing.save_period=2"],
                            cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = yaml.safe_load((tmp_path / "run" / "nemo_rl_dpo.yaml").read_text())
    assert doc["defaults"] == str(nemo_rl_dir / "examples" / "configs" / "dpo.yaml")
    assert "is not on this machine" not in result.stdout + result.stderr
    assert [r["step"] for r in train_rows(tmp_path / "run")] == [1, 2]
