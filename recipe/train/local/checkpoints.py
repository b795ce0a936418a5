"""Checkpoints in NeMo RL's layout: `checkpoint_dir/step_N/`, kept by NeMo RL's rules, resumed.

A requeued Slurm job or a rerun reuses the same `checkpointing.checkpoint_dir` and must go on
from the latest `step_N`, as NeMo RL does by itself. The Hugging Face Trainer writes
`checkpoint-N` (weights, optimizer, scheduler, RNG and trainer state: everything a resume
needs); once it is complete we add NeMo RL's `training_info.json` (step, epoch, consumed samples,
the step's metrics) and `config.yaml`, then rename it to `step_N`. A `step_N` therefore always
is a whole checkpoint; a crash mid-write leaves a `checkpoint-N` that is never resumed from.

Standing in for NeMo RL's run_dpo.py (any launcher but local_cpu), a `step_N` also holds the
policy as NeMo RL's DTensor worker saves it (v0.7.0 `nemo_rl/algorithms/dpo.py`,
`nemo_rl/utils/native_checkpoint.py`): `policy/weights` a torch distributed checkpoint (DCP,
`.metadata` at its root) of the state dict under the key `model`, and `policy/tokenizer`, so
NeMo RL's own `examples/converters/convert_dcp_to_hf.py` reads it. launcher=local_cpu turns it
off (`POLICY_DCP_ENV=0`): its users read `model/`, and the weights would be stored twice.

Retention follows NeMo RL's CheckpointManager: the latest checkpoint is always kept; of the
checkpoints at multiples of `save_period`, the `keep_top_k` best by `metric_name` (all of them
when keep_top_k is null; by recency when there is no metric).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml
from transformers import TrainerCallback

from recipe.run_files import read_json, step_folders, sync_folder, sync_tree
from recipe.train.local import POLICY_DCP_ENV

INFO = "training_info.json"


def wants_policy_dcp() -> bool:
    return os.environ.get(POLICY_DCP_ENV, "1") != "0"


def write_policy(folder: Path, model, tokenizer) -> Path:
    """`folder/policy/weights` (DCP of {"model": state dict}) and `folder/policy/tokenizer`."""
    import torch.distributed.checkpoint as dcp

    policy = folder / "policy"
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    dcp.save({"model": state}, checkpoint_id=str(policy / "weights"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(policy / "tokenizer"))
    return policy


def steps(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    return [(step, path) for step, path in step_folders(checkpoint_dir)
            if (path / INFO).is_file() and (path / "trainer_state.json").is_file()]


def latest(checkpoint_dir: Path) -> Path | None:
    found = steps(checkpoint_dir)
    return found[-1][1] if found else None


def clear_partial(checkpoint_dir: Path) -> list[Path]:
    """Remove what an interrupted save left (Trainer `checkpoint-N` folders); returns them."""
    removed = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.glob("checkpoint-*"):
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(path)
    return removed


def finalize(trainer_folder: Path, step: int, info: dict, config: dict) -> Path:
    """Add NeMo RL's files to a Trainer checkpoint and rename it to `step_N` (replacing one),
    every file of it on disk before the rename and the rename on disk after it: a `step_N` a
    rerun resumes from is whole even after a power loss."""
    (trainer_folder / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (trainer_folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sync_tree(trainer_folder)
    target = trainer_folder.parent / f"step_{step}"
    if target.exists():  # a rerun saving the same step: swap, as NeMo RL does
        old = trainer_folder.parent / f"old_step_{step}"
        os.rename(target, old)
        os.rename(trainer_folder, target)
        shutil.rmtree(old)
    else:
        os.rename(trainer_folder, target)
    sync_folder(target.parent)
    return target


def retain(checkpoint_dir: Path, save_period: int, keep_top_k: int | None, metric_name: str | None,
           higher_is_better: bool) -> list[Path]:
    """Delete the checkpoints NeMo RL's rules do not keep; returns the deleted folders."""
    history = []
    for step, path in steps(checkpoint_dir):
        history.append((step, path, read_json(path / INFO, f"remove {path} (an interrupted save) to resume "
                                                             "from the checkpoint before it")))
    if not history or keep_top_k is None:
        return []
    protected = {max(step for step, _, _ in history)}
    periodic = [h for h in history if h[0] % save_period == 0]
    if metric_name is None:
        periodic.sort(key=lambda h: h[0], reverse=True)
    elif higher_is_better:
        periodic.sort(key=lambda h: (h[2].get(metric_name, -float("inf")), h[0]), reverse=True)
    else:
        periodic.sort(key=lambda h: (h[2].get(metric_name, float("inf")), -h[0]))
    protected.update(step for step, _, _ in periodic[:keep_top_k])
    deleted = []
    for step, path, _ in history:
        if step not in protected:
            shutil.rmtree(path)
            deleted.append(path)
    return deleted


class NemoCheckpoints(TrainerCallback):
    """After each Trainer save: NeMo RL's files, the `step_N` name, then retention."""

    def __init__(self, settings, metrics, log):
        self.settings, self.metrics, self.log = settings, metrics, log

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        folder = Path(args.output_dir) / f"checkpoint-{step}"
        if not folder.is_dir():
            return
        gbs = self.settings.train_global_batch_size
        info = {"step": step, "total_steps": step, "epoch": state.epoch,
                "consumed_samples": step * gbs, **self.metrics.at_step(step)}
        if self.settings.metric_name and self.settings.metric_name not in info:
            self.log(f"step {step}: checkpoint has no {self.settings.metric_name} (no validation at this "
                     "step): it ranks last when keep_top_k picks the best")
        if wants_policy_dcp():
            write_policy(folder, kwargs["model"], kwargs.get("processing_class"))
        target = finalize(folder, step, info, self.settings.config)
        for path in retain(self.settings.checkpoint_dir, self.settings.save_period, self.settings.keep_top_k,
                           self.settings.metric_name, self.settings.higher_is_better):
            self.log(f"removed checkpoint {path.name} (checkpointing.keep_top_k={self.settings.keep_top_k})")
        self.log(f"saved {target}")
