"""Per-step metrics under NeMo RL's names in `<run folder>/metrics.jsonl`, and the progress bar.

A CPU run and a GPU run must be read the same way (the report plots, `checkpointing.metric_name`),
so TRL's log keys are renamed to NeMo RL's DPO metrics: `train:<m>` after each optimizer step and
`val:validation-default_<m>` after each validation (NeMo RL names its one validation set
`default`). One JSON object a line: `{"step": N, "epoch": E, "<name>": value, ...}`. Only what the
trainer measures is written (`preference_loss` and `sft_loss` with an SFT term: recipe.train.local.
trainer); NeMo RL metrics it has no value for are absent rather than guessed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

VAL_PREFIX = "val:validation-default_"
# TRL log key -> NeMo RL metric (without the train:/val: prefix)
NAMES = {
    "loss": "loss",
    "rewards/accuracies": "accuracy",
    "rewards/chosen": "rewards_chosen_mean",
    "rewards/rejected": "rewards_rejected_mean",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "preference_loss": "preference_loss",   # the trainer's own, when an SFT term is on
    "sft_loss": "sft_loss",
}


def nemo_names(logs: dict, preference_only_weight: float | None) -> tuple[str, dict]:
    """("train" | "val", {NeMo RL name: value}) for one TRL log record.

    `preference_only_weight`: the preference loss weight when the loss has no SFT term (then
    NeMo RL's `preference_loss` is the loss divided by it), else None.
    """
    evaluating = any(key.startswith("eval_") for key in logs)
    kind, prefix = ("val", VAL_PREFIX) if evaluating else ("train", "train:")
    out = {}
    for key, value in logs.items():
        key = key.removeprefix("eval_")
        if key in NAMES and isinstance(value, (int, float)) and math.isfinite(value):
            out[prefix + NAMES[key]] = float(value)
    loss = out.get(prefix + "loss")
    if loss is not None and preference_only_weight:
        out[prefix + "preference_loss"] = loss / preference_only_weight
    return kind, out


class MetricsLog:
    """`metrics.jsonl`, kept consistent with the checkpoint a run resumes from."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.rows: list[dict] = []
        if resume_step is not None and path.is_file():  # keep what the resumed checkpoint had seen
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line) if line.strip() else {}
                except ValueError:  # the line being written when the run was killed: after the checkpoint
                    continue
                if row and row.get("step", 0) <= resume_step:
                    self.rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def at_step(self, step: int) -> dict:
        merged = {}
        for row in self.rows:
            if row.get("step") == step:
                merged.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
        return merged


class NemoMetrics(TrainerCallback):
    """TRL's log records -> metrics.jsonl rows, and a progress bar with the latest values."""

    def __init__(self, log: MetricsLog, preference_only_weight: float | None, say):
        self.log, self.weight, self.say = log, preference_only_weight, say
        self.bar = None
        self.shown = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="DPO steps", unit="step",
                        dynamic_ncols=True)
        self.shown = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.shown)
            self.shown = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        kind, values = nemo_names(logs or {}, self.weight)
        if not values:
            return
        self.log.write({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **values})
        if kind == "train" and self.bar is not None:
            self.bar.set_postfix(loss=f"{values.get('train:loss', float('nan')):.4f}",
                                 acc=f"{values.get('train:accuracy', float('nan')):.2f}")
        elif kind == "val":
            self.say(f"validation at step {state.global_step}: loss "
                     f"{values.get(VAL_PREFIX + 'loss', float('nan')):.4f}, accuracy "
                     f"{values.get(VAL_PREFIX + 'accuracy', float('nan')):.2f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def read(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (for the report and the tests)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
