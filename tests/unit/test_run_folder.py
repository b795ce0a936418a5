"""`stage=train run_dir=RUN` trains RUN's own config again.

Before, the train stage rebuilt the config from the defaults and never read
RUN/recipe_config.yaml, so a Qwen run was retrained as `gym-dpo/tiny`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from train_helpers import compose_config, make_prepared

from recipe.train import run_folder


def cli(tmp_path, *args):
    result = subprocess.run([sys.executable, "-m", "recipe", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


def written(run):
    return yaml.safe_load((run / "nemo_rl_dpo.yaml").read_text())


@pytest.fixture
def qwen_run(tmp_path):
    """A run folder whose train stage ran with Qwen and a batch of 8 (as stage=all leaves it)."""
    run = tmp_path / "results" / "qwen"
    make_prepared(run / "data")
    cli(tmp_path, "stage=train", f"run_dir={run}", "model=qwen2.5-1.5b",
        "policy.train_global_batch_size=8", "launcher=dry_run")
    assert written(run)["policy"]["model_name"] == "Qwen/Qwen2.5-1.5B-Instruct"
    return run


def test_training_a_run_folder_again_takes_its_own_model_and_values(tmp_path, qwen_run):
    out = cli(tmp_path, "stage=train", f"run_dir={qwen_run}", "launcher=dry_run")
    doc = written(qwen_run)
    assert doc["policy"]["model_name"] == "Qwen/Qwen2.5-1.5B-Instruct"  # not gym-dpo/tiny
    assert doc["policy"]["train_global_batch_size"] == 8                # the run's own override
    assert doc["policy"]["optimizer"]["kwargs"]["lr"] == 5e-6
    assert doc["data"]["train"]["data_path"] == str(qwen_run / "data" / "train.jsonl")
    assert f"{qwen_run / 'recipe_config.yaml'} is the base" in out
    sources = json.loads((qwen_run / "provenance.json").read_text())["recipe_config"]
    assert sources["base"] == str(qwen_run / "recipe_config.yaml")
    assert sources["command_line_keys"] == ["stage", "run_dir"]
    assert sources["command_line_groups"] == ["launcher"]


def test_command_line_overrides_still_win(tmp_path, qwen_run):
    out = cli(tmp_path, "stage=train", f"run_dir={qwen_run}", "launcher=slurm", "launcher.dry_run=true",
              "launcher.gpus_per_node=4", "policy.train_global_batch_size=4", "dpo.max_num_steps=3")
    doc = written(qwen_run)
    assert doc["policy"]["model_name"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (doc["policy"]["train_global_batch_size"], doc["dpo"]["max_num_steps"]) == (4, 3)
    assert doc["cluster"] == {"gpus_per_node": 4, "num_nodes": 1}
    assert (qwen_run / "slurm" / "job.env").is_file()  # the slurm launcher, not the run's dry_run
    assert "from the command line: stage, run_dir, launcher.dry_run, launcher.gpus_per_node" in out


def test_a_new_model_brings_its_own_training_values(tmp_path, qwen_run):
    cfg = compose_config("stage=train", f"run_dir={qwen_run}", "model=tiny")
    merged = run_folder.rebase(cfg, ["stage=train", f"run_dir={qwen_run}", "model=tiny"])
    assert merged.policy.model_name == "gym-dpo/tiny"
    assert merged.values_for_model == "gym-dpo/tiny"  # dpo: ${model} follows the model
    assert (merged.policy.train_global_batch_size, merged.dpo.max_num_steps) == (8, 30)
    assert merged.launcher.name == "dry_run"          # not given: the run's
    assert merged.train.config_sources.command_line_groups == ["model", "dpo"]


def test_keys_deleted_and_paths_of_a_moved_run_folder(tmp_path, qwen_run):
    moved = tmp_path / "elsewhere" / "qwen"
    shutil.copytree(qwen_run, moved)
    overrides = ["stage=train", f"run_dir={moved}", "~nemo_rl_overrides"]
    merged = run_folder.rebase(compose_config(*overrides), overrides)
    assert merged.data.output_dir == str(moved / "data")
    assert merged.checkpointing.checkpoint_dir == str(moved / "checkpoints")
    assert "nemo_rl_overrides" not in merged
    assert merged.train.config_sources.moved == {"from": str(qwen_run), "to": str(moved)}


def test_a_new_run_or_a_folder_without_a_run_config_is_composed_as_before(tmp_path, qwen_run):
    fresh = compose_config("stage=train", f"run_dir={tmp_path / 'new'}")
    assert run_folder.rebase(fresh, ["stage=train", f"run_dir={tmp_path / 'new'}"]) is fresh
    again = compose_config("stage=all", f"run_dir={qwen_run}", "data.input=x.jsonl")
    assert run_folder.rebase(again, ["stage=all", f"run_dir={qwen_run}"]) is again  # prepares anew
