"""launcher.env values are written into the run folder: a secret-looking name there is refused before
anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.train import redact

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "rollouts.jsonl"


def test_a_secret_in_launcher_env_is_refused_before_anything_is_written(tmp_path):
    """Its value would land in command.json, recipe_config.yaml, .hydra/ (and slurm/job.env)."""
    canary = "CANARY-5b1e0c"
    done = subprocess.run([sys.executable, "-m", "recipe", "stage=all", f"data.input={SAMPLE}",
                           f"output_root={tmp_path / 'results'}", f"+launcher.env.WANDB_API_KEY={canary}",
                           "launcher.dry_run=true"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error: launcher.env.WANDB_API_KEY looks like a secret" in done.stderr
    assert "export WANDB_API_KEY=..." in done.stderr
    found = [str(p) for p in tmp_path.rglob("*") if p.is_file() and canary in p.read_text(errors="replace")]
    assert found == []


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "db_password", "GH_AUTH"])
def test_names_of_secrets_are_refused(name):
    with pytest.raises(RecipeError, match=f"launcher.env.{name} looks like a secret"):
        redact.check_launcher_env({"OMP_NUM_THREADS": "2", name: "x"})


def test_other_names_are_kept():
    redact.check_launcher_env({"TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "INFO", "AUTHOR": "me"})
