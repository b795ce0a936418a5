"""Composition of the train config and the NeMo RL YAML the train stage writes from it."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from train_helpers import REPO, compose_config, make_prepared, train_overrides

from recipe.train import tiny_model
from recipe.train.plan import build_plan

CONFIGS = REPO / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


LAUNCHERS = options("launcher")
COMBINATIONS = list(itertools.product(options("data_prep"), options("dpo"), options("model"),
                                      options("container")))


def test_groups_are_the_documented_ones():
    assert {"dry_run", "single_gpu", "multi_gpu", "slurm"} <= set(LAUNCHERS)
    assert {"tiny", "qwen2.5-1.5b", "llama3.2-1b"} <= set(options("model"))
    assert {"default", "smoke"} <= set(options("dpo"))


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_group_option_composes_with_every_launcher(launcher):
    for data_prep, dpo, model, container in COMBINATIONS:
        cfg = compose_config(f"launcher={launcher}", f"data_prep={data_prep}", f"dpo={dpo}",
                             f"model={model}", f"container={container}", "data.input=x.jsonl",
                             "run_name=r")
        resolved = OmegaConf.to_container(cfg, resolve=True)  # no dangling interpolation, no ???
        assert resolved["launcher"]["name"] == launcher
        assert resolved["policy"]["model_name"]
        assert resolved["launcher"]["runner"] and "workdir" in resolved["launcher"]  # the seam's keys
        assert resolved["launcher"]["gpus_per_node"] >= 1 and resolved["launcher"]["nodes"] >= 1


def test_default_model_is_the_tiny_literal_and_launcher_the_cpu_runner():
    cfg = compose_config("data.input=x")
    assert cfg.policy.model_name == "gym-dpo/tiny"
    assert cfg.launcher.name == "local_cpu" and cfg.launcher.dry_run is False


def _write(tmp_path, *overrides, data=None):
    data = data or make_prepared(tmp_path / "data")
    cfg = compose_config(*train_overrides(tmp_path, data, *overrides))
    plan, prepared = build_plan(cfg)
    return yaml.safe_load(plan.config_path.read_text()), plan, data


def test_written_yaml_follows_nemo_rl_rules(tmp_path):
    doc, plan, data = _write(tmp_path)
    run = tmp_path / "run"
    assert plan.config_path == run / "nemo_rl_dpo.yaml"
    assert doc["defaults"] == "/opt/nemo-rl/examples/configs/dpo.yaml"
    assert doc["data"]["_override_"] is True and "default" not in doc["data"]
    for split, name in (("train", "train.jsonl"), ("validation", "val.jsonl")):
        assert doc["data"][split] == {"dataset_name": "PreferenceDataset",
                                      "data_path": str(data / name), "split": "train"}
    assert doc["policy"]["model_name"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert doc["policy"]["tokenizer"]["name"] == doc["policy"]["model_name"]
    assert doc["checkpointing"]["metric_name"] == "val:validation-default_loss"
    assert doc["checkpointing"]["save_period"] % doc["dpo"]["val_period"] == 0
    assert doc["checkpointing"]["checkpoint_dir"] == str(run / "checkpoints")
    assert doc["logger"]["log_dir"] == str(run / "logs")
    assert doc["cluster"] == {"gpus_per_node": 1, "num_nodes": 1}
    text = plan.config_path.read_text()  # everything of ours resolved; NeMo RL's one link kept
    assert text.count("${") == 1 and doc["dpo"]["sft_average_log_probs"] == "${.preference_average_log_probs}"


def test_sft_average_log_probs_keeps_nemo_rls_link_unless_set(tmp_path):
    """Upstream ties it to preference_average_log_probs; an earlier gym-dpo wrote `false`."""
    from train_helpers import fake_nemo_rl, reference_dpo

    from recipe.train import nemo_rl_loader

    nemo_rl_dir = fake_nemo_rl(tmp_path / "c")
    doc, plan, _ = _write(tmp_path, f"container.nemo_rl_dir={nemo_rl_dir}")
    for overrides, expected in (([], False), (["dpo.preference_average_log_probs=true"], True)):
        loaded = nemo_rl_loader.resolved(nemo_rl_loader.load_with_overrides(plan.config_path, overrides))
        assert loaded["dpo"]["sft_average_log_probs"] is expected, overrides  # follows, as upstream
    alone = OmegaConf.load(plan.config_path)  # the CPU runner without NeMo RL reads the file alone
    alone.dpo.preference_average_log_probs = True
    assert alone.dpo.sft_average_log_probs is True
    assert "sft_average_log_probs: ${.preference_average_log_probs}" in reference_dpo().read_text()
    set_doc, _, _ = _write(tmp_path / "b", "dpo.sft_average_log_probs=true")
    assert set_doc["dpo"]["sft_average_log_probs"] is True  # the user's value, written as given


def test_command_line_overrides_reach_the_written_yaml(tmp_path):
    doc, plan, _ = _write(
        tmp_path, "model=llama3.2-1b", "policy.train_global_batch_size=8",
        "policy.train_micro_batch_size=2", "policy.max_total_sequence_length=333",
        "dpo.reference_policy_kl_penalty=0.2", "dpo.sft_loss_weight=0.5", "dpo.max_num_steps=7",
        "dpo.val_period=5", "checkpointing.save_period=10", "policy.optimizer.kwargs.lr=1e-6",
        "launcher=multi_gpu", "launcher.gpus_per_node=4", "policy.tokenizer.name=my/tokenizer",
        "+policy.dtensor_cfg.cpu_offload=true", "nemo_rl_data.num_workers=3",
        "+nemo_rl_overrides.logger.num_val_samples_to_print=2")
    assert doc["policy"]["model_name"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert doc["policy"]["tokenizer"]["name"] == "my/tokenizer"
    assert (doc["policy"]["train_global_batch_size"], doc["policy"]["train_micro_batch_size"]) == (8, 2)
    assert doc["policy"]["max_total_sequence_length"] == 333
    assert doc["data"]["max_input_seq_length"] == 333  # follows the sequence length
    assert doc["data"]["num_workers"] == 3
    assert doc["dpo"]["reference_policy_kl_penalty"] == 0.2 and doc["dpo"]["sft_loss_weight"] == 0.5
    assert doc["dpo"]["max_num_steps"] == 7 and doc["checkpointing"]["save_period"] == 10
    assert doc["policy"]["optimizer"]["kwargs"]["lr"] == 1e-6
    assert doc["policy"]["dtensor_cfg"] == {"cpu_offload": True}
    assert doc["logger"]["num_val_samples_to_print"] == 2
    assert doc["cluster"] == {"gpus_per_node": 4, "num_nodes": 1}


def test_binary_format_writes_binary_preference_dataset(tmp_path):
    data = make_prepared(tmp_path / "data", fmt="binary")
    doc, _, _ = _write(tmp_path, data=data)
    assert doc["data"]["train"] == {"dataset_name": "BinaryPreferenceDataset",
                                    "data_path": str(data / "train.jsonl"), "split": "train",
                                    "prompt_key": "prompt", "chosen_key": "chosen",
                                    "rejected_key": "rejected"}


def test_no_validation_pairs_writes_no_validation_dataset(tmp_path):
    data = make_prepared(tmp_path / "data", val=0)
    doc, _, _ = _write(tmp_path, "dpo.val_period=0", "checkpointing.metric_name=null", data=data)
    assert "validation" not in doc["data"]
    assert doc["checkpointing"]["metric_name"] is None


def test_model_name_goes_through_the_tiny_model_resolver(tmp_path, monkeypatch):
    calls = []

    def resolve_model_name(name, run_dir, train_file=None):
        calls.append((name, Path(run_dir), Path(train_file)))
        return str(run_dir / "tiny_model") if name == "gym-dpo/tiny" else name

    monkeypatch.setattr(tiny_model, "resolve_model_name", resolve_model_name)
    (tmp_path / "run" / "tiny_model").mkdir(parents=True)
    doc, plan, data = _write(tmp_path, "model=tiny")
    assert calls[0] == ("gym-dpo/tiny", tmp_path / "run", data / "train.jsonl")
    assert doc["policy"]["model_name"] == str(tmp_path / "run" / "tiny_model")
    assert doc["policy"]["tokenizer"]["name"] == doc["policy"]["model_name"]
    assert plan.model_path == tmp_path / "run" / "tiny_model"


def test_the_cli_writes_the_run_folder(tmp_path):
    """Through the real Hydra entry point: .hydra/, the YAML, the command, provenance."""
    data = make_prepared(tmp_path / "data")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "recipe", "stage=train", *train_overrides(tmp_path, data),
         "launcher=dry_run", "dpo.max_num_steps=3"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"--config {run / 'nemo_rl_dpo.yaml'}" in result.stdout
    for name in (".hydra/config.yaml", "nemo_rl_dpo.yaml", "command.txt", "command.json",
                 "provenance.json", "recipe_config.yaml"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "nemo_rl_dpo.yaml").read_text())["dpo"]["max_num_steps"] == 3
    assert "dpo.max_num_steps=3" in (run / ".hydra" / "overrides.yaml").read_text()


def test_stage_all_prepares_then_trains_on_what_it_prepared(tmp_path):
    from train_helpers import SAMPLE

    if not SAMPLE.is_file():
        pytest.skip("samples/rollouts.jsonl is not there")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "recipe", "stage=all", f"data.input={SAMPLE}", f"run_dir={run}",
         "launcher=dry_run", "model=qwen2.5-1.5b", "policy.train_global_batch_size=4",
         "data.workers=1", f"container.lock_file={tmp_path / 'lock.json'}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load((run / "nemo_rl_dpo.yaml").read_text())
    assert doc["data"]["train"]["data_path"] == str(run / "data" / "train.jsonl")
    assert (run / "data" / "manifest.json").is_file() and (run / "command.txt").is_file()
