"""The CPU runner: NeMo RL's DPO run of one config file, trained by Hugging Face TRL on the CPU.

    run(config_path, overrides) -> Path       load -> build_trainer -> train; the final model folder
    main(argv) -> int                         `python -m recipe.train.local_dpo --config FILE [overrides]`

The same command line as NeMo RL's `examples/run_dpo.py`, so it can stand where that script is
expected (a container or Slurm test without GPUs), and the same config file the GPU launchers
write. `load` reads the config (recipe.train.local.settings), finds the model (a local folder
only: `HF_HUB_OFFLINE=1`; `gym-dpo/tiny` is built), tokenizes the pairs (recipe.train.local.data)
and finds the latest `checkpoint_dir/step_N` to resume from, saying what maps where and what is
ignored; `build_trainer` gives TRL's `DPOTrainer` NeMo RL's loop (recipe.train.local.trainer,
checkpoints, metrics); `train` trains and leaves in the config's folder (the run folder):
- `metrics.jsonl`: per-step metrics under NeMo RL's names;
- `model/`: the final policy as a Hugging Face folder;
- `trl_settings.json`: what TRL was told, the keys ignored, and the resume point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError
from recipe.run_files import step_number
from recipe.train import tiny_model
from recipe.train.local import settings as settings_mod

PREFIX = "[local_dpo]"


def say(message: str) -> None:
    """One line on stderr that does not break a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"{PREFIX} {message}", file=sys.stderr)


def _quiet_environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # never reach a hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # TRL 1.16 still sets the argument transformers 5 renamed: a warning per step, nothing to act on
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)


def local_model(name: str, key: str, settings) -> str:
    """A model/tokenizer name this machine has: `gym-dpo/tiny` is built; a folder, or a hub id
    already in the Hugging Face cache, is used as is; anything else is refused (no download)."""
    from huggingface_hub import try_to_load_from_cache

    name = tiny_model.resolve_model_name(name, settings.run_dir, settings.train.path)
    path = Path(name).expanduser()
    needs = "tokenizer_config.json" if key.endswith("tokenizer.name") else "config.json"
    if (path / needs).is_file():
        return str(path.absolute())
    try:
        cached = isinstance(try_to_load_from_cache(name, needs), str)
    except Exception:  # not a repo id either
        cached = False
    if cached:
        return name
    raise RecipeError(f"{key}={name!r} is neither a local Hugging Face folder nor in the Hugging Face "
                      f"cache: the CPU runner never downloads (HF_HUB_OFFLINE=1). Give a folder "
                      f"({key}=/path/to/model) or use {tiny_model.TINY_NAME} (model=tiny)")


def _import_training():
    try:
        import torch  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise RecipeError(f"the CPU runner needs the local extra ({exc.name} is missing): "
                          "pip install -e '.[local]'") from None


def describe(settings, max_steps: int, steps_per_epoch: int, train_pairs: int) -> list[str]:
    loss_types, loss_weights = settings.trl_loss()
    lines = [
        f"config {settings.config_path}",
        f"policy {settings.model_name} -> TRL DPOTrainer on CPU, float32",
        f"beta={settings.beta} (dpo.reference_policy_kl_penalty), loss_type={loss_types} "
        f"loss_weights={loss_weights} (the preference loss, preference_average_log_probs="
        f"{settings.preference_average_log_probs})"
        + (f" + {settings.sft_loss_weight} x NeMo RL's NLL of the chosen reply ("
           f"{'per token' if settings.sft_average_log_probs else 'summed over tokens'}, a mean over pairs)"
           if settings.sft_loss_weight else ""),
        f"{train_pairs} train pairs, {settings.train_global_batch_size} per step "
        f"({settings.train_micro_batch_size} per micro-batch): {steps_per_epoch} step(s) per epoch, "
        f"{max_steps} step(s) = min(dpo.max_num_steps={settings.max_num_steps}, "
        f"dpo.max_num_epochs={settings.max_num_epochs} x {steps_per_epoch})",
        f"optimizer {settings.optimizer_name} {settings.optimizer_kwargs}, max_grad_norm="
        f"{settings.max_grad_norm}, max_length={settings.max_total_sequence_length}",
    ]
    lines += settings.notes
    for reason, keys in settings.ignored.items():
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        lines.append(f"ignored ({reason}): {shown}")
    return lines


@dataclass
class Run:
    """What `load` found: the settings, the model, the tokenized pairs, the steps, the resume point."""

    settings: settings_mod.Settings
    model_path: str
    tokenizer: Any
    train_set: Any                  # a datasets.Dataset of token ids
    val_set: Any | None
    max_steps: int
    resume: Path | None

    @property
    def resume_step(self) -> int | None:
        return step_number(self.resume) if self.resume else None

    @property
    def metrics_path(self) -> Path:
        return self.settings.run_dir / "metrics.jsonl"


def _steps(settings, pairs: int, where: str) -> int:
    """min(dpo.max_num_steps, epochs x whole global batches of `pairs`); refuses zero batches."""
    steps_per_epoch = pairs // settings.train_global_batch_size
    if steps_per_epoch == 0:
        raise RecipeError(where)
    return min(settings.max_num_steps, settings.max_num_epochs * steps_per_epoch)


def load(config_path: str | Path, overrides: list[str]) -> Run:
    """Read the config, find the model and tokenizer, tokenize the pairs, find the resume point."""
    _quiet_environment()
    config, notes = settings_mod.load(Path(config_path), overrides)
    settings = settings_mod.from_config(config, Path(config_path), notes)
    _import_training()

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from recipe.train.local import checkpoints, data

    hf_logging.disable_progress_bar()  # weight loading/saving bars; ours show steps and tokenization
    model_path = local_model(settings.model_name, "policy.model_name", settings)
    tokenizer_path = (model_path if settings.tokenizer_name == settings.model_name
                      else local_model(settings.tokenizer_name, "policy.tokenizer.name", settings))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"the tokenizer in {tokenizer_path} has no chat template: the pairs are chat "
                          "messages (use an instruct model's folder, or gym-dpo/tiny)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    train_set = data.load(settings.train, tokenizer)
    wants_val = settings.val_period > 0 or settings.val_at_start or settings.val_at_end
    val_limit = settings.val_batches * settings.val_global_batch_size if settings.val_batches > 0 else None
    val_set = data.load(settings.validation, tokenizer, val_limit) if settings.validation and wants_val else None
    max_steps = _steps(settings, len(train_set),
                       f"{settings.train.path} has {len(train_set)} pairs, fewer than "
                       f"policy.train_global_batch_size={settings.train_global_batch_size}: NeMo RL "
                       "drops the partial batch, so there is no training step")

    resume = checkpoints.latest(settings.checkpoint_dir) if settings.checkpointing else None
    for path in checkpoints.clear_partial(settings.checkpoint_dir):
        say(f"removed {path}: an interrupted save")
    for line in describe(settings, max_steps, len(train_set) // settings.train_global_batch_size, len(train_set)):
        say(line)
    if resume:
        say(f"resuming from {resume} (same checkpointing.checkpoint_dir)")
    return Run(settings, model_path, tokenizer, train_set, val_set, max_steps, resume)


def build_trainer(run: Run):
    """TRL's DPOTrainer told NeMo RL's values and loop: optimizer, schedule, whole batches,
    validation and checkpoints on NeMo RL's schedule, metrics under NeMo RL's names."""
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig

    from recipe.train.local import checkpoints, metrics
    from recipe.train.local.trainer import NemoLoop, NemoStyleDPOTrainer

    settings = run.settings
    loss_types, loss_weights = settings.trl_loss()
    args = DPOConfig(
        output_dir=str(settings.checkpoint_dir), use_cpu=True, report_to=[], bf16=False, fp16=False,
        gradient_checkpointing=False, seed=settings.seed, data_seed=settings.seed,
        per_device_train_batch_size=settings.train_micro_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        per_device_eval_batch_size=settings.val_micro_batch_size,
        max_steps=run.max_steps, learning_rate=float(settings.optimizer_kwargs.get("lr", 0.0)),
        max_grad_norm=settings.max_grad_norm or 0.0,
        beta=settings.beta, loss_type=loss_types, loss_weights=loss_weights,
        max_length=settings.max_total_sequence_length,
        # the reference is the starting policy, frozen: its log-probs of every pair are the same in
        # every epoch, so TRL computes them once, before the first step, not in every step
        precompute_ref_log_probs=True, precompute_ref_batch_size=settings.train_micro_batch_size,
        logging_steps=1, eval_strategy="no", save_strategy="no",  # NemoLoop decides both
        dataloader_pin_memory=False, model_init_kwargs={"dtype": torch.float32},
    )
    metrics_log = metrics.MetricsLog(run.metrics_path, run.resume_step)
    preference_only = settings.preference_loss_weight if not settings.sft_loss_weight else None
    trainer = NemoStyleDPOTrainer(
        model=run.model_path, args=args, train_dataset=run.train_set, eval_dataset=run.val_set,
        processing_class=run.tokenizer, settings=settings,
        callbacks=[NemoLoop(settings, has_validation=run.val_set is not None),
                   metrics.NemoMetrics(metrics_log, preference_only, say),
                   checkpoints.NemoCheckpoints(settings, metrics_log, say)])
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if len(trainer.train_dataset) != len(run.train_set):  # TRL drops pairs whose prompt fills max_length
        kept = len(trainer.train_dataset)
        say(f"{len(run.train_set) - kept} train pair(s) dropped by TRL: their prompt alone fills "
            f"max_total_sequence_length={settings.max_total_sequence_length}")
        run.max_steps = trainer.args.max_steps = _steps(
            settings, kept, "after dropping over-length prompts no whole batch is left: raise "
                            "policy.max_total_sequence_length or lower the batch size")
    return trainer


def train(run: Run, trainer) -> Path:
    """Record what TRL was told, train (from the resume point), save the final model."""
    settings = run.settings
    _write_settings(run, trainer.args, len(trainer.train_dataset))
    started = time.monotonic()
    if run.resume is None and run.val_set is not None and settings.val_at_start:
        trainer.evaluate()
    trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None)
    final = settings.run_dir / "model"
    trainer.save_model(str(final))
    run.tokenizer.save_pretrained(str(final))
    done = trainer.state.global_step - (run.resume_step or 0)
    say(f"at step {trainer.state.global_step} of {run.max_steps} ({done} trained now, in "
        f"{time.monotonic() - started:.1f}s); final model {final}, metrics {run.metrics_path}")
    return final


def run(config_path: str | Path, overrides: list[str]) -> Path:
    """Train; returns the final model folder."""
    loaded = load(config_path, overrides)
    return train(loaded, build_trainer(loaded))


def _write_settings(run: Run, args, train_pairs: int) -> None:
    settings = run.settings
    fields = ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
              "max_steps", "learning_rate", "max_grad_norm", "beta", "loss_type", "loss_weights",
              "max_length", "seed")
    record = {
        "config": str(settings.config_path),
        "dpo_config": {name: getattr(args, name) for name in fields},
        "optimizer": {"name": settings.optimizer_name, "kwargs": settings.optimizer_kwargs},
        "scheduler": settings.scheduler,
        "train_pairs": train_pairs, "val_pairs": 0 if run.val_set is None else len(run.val_set),
        "max_steps": run.max_steps,
        "resumed_from": str(run.resume) if run.resume else None,
        "notes": settings.notes, "ignored": settings.ignored,
    }
    (settings.run_dir / "trl_settings.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.train.local_dpo",
        description="Run NeMo RL's DPO config on the CPU with Hugging Face TRL "
                    "(same command line as NeMo RL's examples/run_dpo.py).")
    parser.add_argument("--config", required=True, help="the NeMo RL DPO YAML (nemo_rl_dpo.yaml)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides: k=v, +k=v, ++k=v, ~k")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args.config, args.overrides)
    except RecipeError as exc:
        print(f"{PREFIX} error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
