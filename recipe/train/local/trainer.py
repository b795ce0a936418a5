"""TRL's DPOTrainer, told to optimize and batch the way NeMo RL's DPO does.

The preference loss is TRL's (settings.trl_loss picks the variant); the SFT term is NeMo RL's
(recipe.train.local.loss: the mean over pairs of each chosen reply's NLL, per token or summed),
which TRL's `sft` is not. What this module adds is what NeMo RL fixes beside the loss and Hugging
Face's Trainer does differently:
- the optimizer is `policy.optimizer.name` built with `policy.optimizer.kwargs` over all
  parameters (HF would split off weight-decay groups and use its own AdamW settings);
- the learning-rate schedule is `policy.scheduler`: torch schedulers by import path, chained by
  `milestones` with SequentialLR, stepped once per optimizer step;
- an epoch is whole global batches only: NeMo RL's loader drops the last partial batch, where HF
  would take one more, smaller, optimizer step;
- the datasets come tokenized the way NeMo RL tokenizes and masks them (`data.tokenize`): TRL
  trains their `chosen_ids`/`rejected_ids` as they are.
"""

from __future__ import annotations

import importlib

import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl import DPOTrainer

from recipe.errors import RecipeError
from recipe.train.local.loss import sft_term
from recipe.train.local.settings import Settings, optimizer_class


class WholeBatchSampler(Sampler[int]):
    """Per epoch: the pairs in a seeded order (or file order), cut to whole global batches."""

    def __init__(self, size: int, global_batch: int, shuffle: bool, seed: int):
        self.size, self.global_batch, self.shuffle, self.seed = size, global_batch, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at each epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.global_batch * self.global_batch

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        return iter(order[: len(self)].tolist())


def _scheduler_class(name: str):
    module, _, attribute = str(name).rpartition(".")
    if not module.startswith("torch.optim"):
        raise RecipeError(f"policy.scheduler name {name!r}: the CPU runner builds torch.optim.lr_scheduler "
                          "schedulers only")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        raise RecipeError(f"policy.scheduler name {name!r}: no such scheduler in torch") from None


def build_scheduler(optimizer: torch.optim.Optimizer, spec) -> torch.optim.lr_scheduler.LRScheduler:
    """NeMo RL's `policy.scheduler`: one {name, kwargs}, or a list of them plus {milestones: [...]}."""
    if spec is None:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    entries = [spec] if isinstance(spec, dict) else list(spec)
    milestones = [e["milestones"] for e in entries if "milestones" in e]
    schedulers = [_scheduler_class(e["name"])(optimizer, **(e.get("kwargs") or {}))
                  for e in entries if "milestones" not in e]
    if not schedulers:
        raise RecipeError("policy.scheduler names no scheduler")
    if len(schedulers) == 1:
        return schedulers[0]
    if len(milestones) != 1 or len(milestones[0]) != len(schedulers) - 1:
        raise RecipeError(f"policy.scheduler: {len(schedulers)} schedulers need one `milestones` entry "
                          f"with {len(schedulers) - 1} step(s)")
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=list(milestones[0]))


class NemoStyleDPOTrainer(DPOTrainer):
    """DPOTrainer with NeMo RL's optimizer, learning-rate schedule and whole-batch epochs."""

    def __init__(self, *args, settings: Settings, **kwargs):
        self.settings = settings
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            params = [p for p in model.parameters() if p.requires_grad]
            try:
                self.optimizer = optimizer_class(self.settings.optimizer_name)(
                    params, **self.settings.optimizer_kwargs)
            except TypeError as exc:
                raise RecipeError(f"policy.optimizer.kwargs do not fit {self.settings.optimizer_name}: {exc}") from None
        return self.optimizer

    def create_model_card(self, *args, **kwargs) -> None:
        """None: TRL writes its Hub model card (README.md) into `checkpoint_dir` at every save,
        where NeMo RL's layout has only `step_N` folders (a run that starts afresh would keep the
        old card beside its new steps)."""

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            try:
                self.lr_scheduler = build_scheduler(optimizer or self.optimizer, self.settings.scheduler)
            except TypeError as exc:
                raise RecipeError(f"policy.scheduler: {exc}") from None
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's preference loss + dpo.sft_loss_weight x NeMo RL's SFT term, on the log-probs of the
        policy's own forward pass in TRL's loss (taken with a forward hook: no second pass)."""
        if not self.settings.sft_loss_weight:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        seen = []
        hook = model.register_forward_hook(lambda module, args, kwargs, output: seen.append(output),
                                           with_kwargs=True)
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            hook.remove()
        mask = inputs["completion_mask"][..., 1:]
        per_token_logps = seen[0].log_probs[:, -mask.size(1):]  # as TRL aligns them with its mask
        sft = sft_term(per_token_logps, mask, self.settings.sft_average_log_probs)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["sft_loss"].append(sft.item())
        self._metrics[mode]["preference_loss"].append(
            (result[0] if return_outputs else result).item() / self.settings.preference_loss_weight
            if self.settings.preference_loss_weight else 0.0)
        if return_outputs:
            return result[0] + self.settings.sft_loss_weight * sft, result[1]
        return result + self.settings.sft_loss_weight * sft

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Datasets arrive tokenized (`data.tokenize`: NeMo RL's tokens and mask); of TRL's own
        preparation only its last step applies: a pair whose prompt alone fills `max_length`
        would keep no completion token, and is dropped (the runner reports how many)."""
        if "prompt_ids" not in dataset.column_names:
            raise RecipeError(f"the {dataset_name} pairs reach the trainer untokenized (recipe.train.local.data.load)")
        if args.max_length is None:
            return dataset
        return dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return WholeBatchSampler(len(dataset), self.settings.train_global_batch_size,
                                 self.settings.shuffle, self.settings.seed)


class NemoLoop(TrainerCallback):
    """When to validate and save, by NeMo RL's DPO loop rather than Trainer strategies.

    Validation after step N when `val_period` divides N, or at the last step with `val_at_end`;
    a checkpoint when `save_period` divides N and at the last step. (`val_at_start` is run
    before training by the runner, on a fresh start only, as NeMo RL does.)
    """

    def __init__(self, settings: Settings, has_validation: bool):
        self.settings, self.has_validation = settings, has_validation

    def on_step_end(self, args, state, control, **kwargs):
        step, last = state.global_step, state.global_step >= state.max_steps
        s = self.settings
        control.should_evaluate = self.has_validation and (
            (s.val_period > 0 and step % s.val_period == 0) or (s.val_at_end and last))
        control.should_save = s.checkpointing and (step % s.save_period == 0 or last)
        return control
