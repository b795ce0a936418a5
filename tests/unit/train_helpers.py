"""Helpers for the train-stage tests: composed configs, prepared data folders, NeMo RL's dpo.yaml.

A prepared folder is written here by hand (manifest.json + train/val.jsonl with the hashes the
prepare stage records), so each test picks its pair counts and its bad pairs; one session
fixture also runs the real prepare stage on samples/rollouts.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from hydra import compose, initialize_config_module

from tests.conftest import reference

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "rollouts.jsonl"

# Keys NeMo RL v0.7.0 reads without a default (its TypedDicts' required fields: MasterConfig,
# PolicyConfig, TokenizerConfig, DataConfig, CheckpointingConfig, LoggerConfig, ClusterConfig,
# GPUMonitoringConfig; DPOConfig fields have defaults but run_dpo.py reads these).
REQUIRED_KEYS = [
    "policy.model_name", "policy.tokenizer.name", "policy.train_global_batch_size",
    "policy.train_micro_batch_size", "policy.precision", "policy.dtensor_cfg.enabled",
    "policy.dynamic_batching.enabled", "policy.make_sequence_length_divisible_by",
    "policy.max_total_sequence_length",
    "data.max_input_seq_length", "data.shuffle", "data.train.dataset_name", "data.train.data_path",
    "dpo.max_num_epochs", "dpo.max_num_steps", "dpo.val_period", "dpo.val_batches",
    "dpo.val_global_batch_size", "dpo.val_micro_batch_size", "dpo.val_at_start", "dpo.seed",
    "dpo.reference_policy_kl_penalty", "dpo.preference_average_log_probs",
    "dpo.sft_average_log_probs", "dpo.preference_loss_weight", "dpo.sft_loss_weight",
    "checkpointing.enabled", "checkpointing.checkpoint_dir", "checkpointing.metric_name",
    "checkpointing.higher_is_better", "checkpointing.save_period",
    "logger.log_dir", "logger.wandb_enabled", "logger.swanlab_enabled", "logger.tensorboard_enabled",
    "logger.mlflow_enabled", "logger.wandb", "logger.monitor_gpus",
    "logger.gpu_monitoring.collection_interval", "logger.gpu_monitoring.flush_interval",
    "cluster.gpus_per_node", "cluster.num_nodes",
]


def compose_config(*overrides: str):
    with initialize_config_module("recipe.configs", version_base="1.3"):
        return compose("recipe", overrides=list(overrides))


def preference_pair(i: int, chosen: str | None = None, rejected: str | None = None,
                    ranks=(0, 1)) -> dict:
    return {"context": [{"role": "user", "content": f"question {i}?"}],
            "completions": [
                {"rank": ranks[0], "completion": [{"role": "assistant", "content": chosen or f"good {i}"}]},
                {"rank": ranks[1], "completion": [{"role": "assistant", "content": rejected or f"bad {i}"}]}]}


def binary_pair(i: int) -> dict:
    return {"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_prepared(folder: Path, train: int | list = 16, val: int | list = 4,
                  fmt: str = "preference") -> Path:
    """A data folder as stage=prepare writes it: manifest.json + train.jsonl + val.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    make = preference_pair if fmt == "preference" else binary_pair
    splits = {"train": train, "val": val}
    outputs = {}
    for name, rows in splits.items():
        rows = [make(i) for i in range(rows)] if isinstance(rows, int) else rows
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        splits[name] = len(rows)
        outputs[name] = {"path": str(path), "lines": len(rows), "bytes": path.stat().st_size,
                         "sha256": _sha(path)}
    manifest = {"manifest_version": 1, "format": fmt,
                "inputs": [{"path": "/in/rollouts.jsonl", "bytes": 1, "sha256": "ab" * 32}],
                "pairs": {"train": splits["train"], "val": splits["val"]}, "outputs": outputs}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def reference_dpo() -> Path:
    """NeMo RL v0.7.0's examples/configs/dpo.yaml from the reference files (or skip)."""
    return reference("nemo-rl-v0.7.0/dpo.yaml")


def fake_nemo_rl(root: Path) -> Path:
    """A folder standing in for /opt/nemo-rl: NeMo RL's reference dpo.yaml at its real place."""
    target = root / "opt" / "nemo-rl" / "examples" / "configs" / "dpo.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference_dpo(), target)
    return root / "opt" / "nemo-rl"


def train_overrides(tmp_path: Path, data: Path, *more: str) -> list[str]:
    """Overrides for a train run in tmp_path on `data`, with a real-model name (no tiny build)."""
    return [f"run_dir={tmp_path / 'run'}", f"data.output_dir={data}", "model=qwen2.5-1.5b",
            "policy.train_global_batch_size=8", f"container.lock_file={tmp_path / 'lock.json'}",
            *more]
