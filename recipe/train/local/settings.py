"""Read NeMo RL's DPO config the way run_dpo.py does, and decide what TRL is told.

The CPU runner must train from the very file the GPU launchers hand to NeMo RL, so it loads it
with NeMo RL's rules (recipe.train.nemo_rl_loader: `defaults:` inheritance, `_override_`, Hydra
overrides in struct mode), then maps each key it understands onto TRL and says which it ignores.

The parent config: the written YAML inherits from NeMo RL's own `examples/configs/dpo.yaml`
(`/opt/nemo-rl/...` in the container). On a machine without NeMo RL that file is not there. Then,
and only then, the runner reads the file alone, provided the file itself sets every key the runner
reads (the recipe writes them all); it says so in the log. A key it would need from the missing
parent is an error naming the key: the runner never invents a value NeMo RL would take from a file
we cannot see.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.errors import RecipeError
from recipe.train import nemo_rl_loader
from recipe.train.prepared import Dataset, dataset_entry

# Every key the runner reads. Without the parent config each must be in the file itself.
READ = (
    "policy.model_name", "policy.tokenizer.name", "policy.train_global_batch_size",
    "policy.train_micro_batch_size", "policy.max_total_sequence_length", "policy.max_grad_norm",
    "policy.optimizer.name", "policy.optimizer.kwargs", "policy.scheduler",
    "dpo.max_num_epochs", "dpo.max_num_steps", "dpo.val_period", "dpo.val_batches",
    "dpo.val_global_batch_size", "dpo.val_micro_batch_size", "dpo.val_at_start", "dpo.val_at_end",
    "dpo.seed", "dpo.reference_policy_kl_penalty", "dpo.preference_average_log_probs",
    "dpo.sft_average_log_probs", "dpo.preference_loss_weight", "dpo.sft_loss_weight",
    "checkpointing.enabled", "checkpointing.checkpoint_dir", "checkpointing.metric_name",
    "checkpointing.higher_is_better", "checkpointing.keep_top_k", "checkpointing.save_period",
    "data.train", "data.shuffle",
)
# Read when present (NeMo RL accepts them absent too).
READ_IF_PRESENT = ("data.validation", "data.default")

# What the runner does not use, and why (prefix -> reason), for the run log and the README.
IGNORED = {
    "cluster": "no cluster: one CPU process",
    "policy.dtensor_cfg": "GPU training backend",
    "policy.megatron_cfg": "GPU training backend",
    "policy.dynamic_batching": "GPU batching (must be off for DPO anyway)",
    "policy.sequence_packing": "GPU batching (must be off for DPO anyway)",
    "policy.make_sequence_length_divisible_by": "tensor parallelism only",
    "policy.offload_optimizer_for_logprob": "GPU memory only",
    "policy.precision": "the CPU trains in float32",
    "policy.tokenizer.chat_template_kwargs": "the tokenizer's chat template is used as it is",
    "policy.logprob_batch_size": "reference log-probs are computed per micro-batch",
    "logger": "metrics go to metrics.jsonl in the run folder (TensorBoard/W&B/MLflow are not started)",
    "checkpointing.checkpoint_must_save_by": "no wall-clock save deadline",
    "checkpointing.save_optimizer": "the optimizer state is always saved (a resume needs it)",
    "checkpointing.pretrained_checkpoint": "Megatron backend only",
    "data.num_workers": "data is loaded in the training process",
    "data.max_input_seq_length": "TRL truncates pairs over max_total_sequence_length where NeMo RL "
                                 "masks them (see `gym-dpo stage=preflight`)",
}


@dataclass
class Settings:
    """The runner's view of the NeMo RL config: each field named after the key it comes from."""

    config_path: Path
    run_dir: Path
    config: dict                            # the whole resolved config (saved in each checkpoint)
    model_name: str
    tokenizer_name: str
    train: Dataset
    validation: Dataset | None
    shuffle: bool
    train_global_batch_size: int
    train_micro_batch_size: int
    max_total_sequence_length: int
    max_grad_norm: float | None
    optimizer_name: str
    optimizer_kwargs: dict
    scheduler: Any                          # NeMo RL's spec: a dict, a list of them (+ milestones), or None
    max_num_epochs: int
    max_num_steps: int
    val_period: int
    val_batches: int
    val_global_batch_size: int
    val_micro_batch_size: int
    val_at_start: bool
    val_at_end: bool
    seed: int
    beta: float
    preference_average_log_probs: bool
    sft_average_log_probs: bool
    preference_loss_weight: float
    sft_loss_weight: float
    checkpointing: bool
    checkpoint_dir: Path
    metric_name: str | None
    higher_is_better: bool
    keep_top_k: int | None
    save_period: int
    notes: list[str] = field(default_factory=list)     # what the run log says about the config
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys set in the file

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.train_global_batch_size // self.train_micro_batch_size

    def trl_loss(self) -> tuple[list[str], list[float]]:
        """NeMo RL's weighted preference loss as TRL's `loss_type` and `loss_weights`.

        `preference_average_log_probs` divides each sequence's log-ratio by its token count:
        TRL's `sigmoid_norm`; otherwise the summed log-ratio of `sigmoid`. The SFT term is not
        TRL's `sft` (a mean over all chosen tokens of a micro batch): the trainer adds NeMo RL's
        (recipe.train.local.loss.sft_term).
        """
        types = ["sigmoid_norm" if self.preference_average_log_probs else "sigmoid"]
        return types, [self.preference_loss_weight]


# -- loading ------------------------------------------------------------------------------------
def _parents(path: Path) -> list[Path]:
    child = OmegaConf.load(path)
    if not isinstance(child, DictConfig) or "defaults" not in child:
        return []
    try:
        return nemo_rl_loader._parent_paths(child.defaults, path.parent)
    except nemo_rl_loader.NemoRLConfigError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def load(path: Path, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The config run_dpo.py would see (loaded, overridden) and notes for the log.

    A parent file that is not on this machine is left out, but then every key in READ must be
    in the file itself (checked by `from_config`).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"--config {path}: no such file")
    notes = []
    try:
        missing = [p for p in _parents(path) if not p.is_file()]
        if not missing:
            return nemo_rl_loader.load_with_overrides(path, overrides), notes
        child = OmegaConf.load(path)
        with open_dict(child):
            child.pop("defaults")
        config = nemo_rl_loader.apply_overrides(nemo_rl_loader.merge(OmegaConf.create({}), child),
                                                overrides)
    except nemo_rl_loader.NemoRLConfigError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    notes.append(f"the parent config {', '.join(map(str, missing))} (NeMo RL's dpo.yaml) is not on "
                 f"this machine: reading {path.name} alone, which sets every key the CPU runner "
                 "reads. NeMo RL itself would refuse this file here; in its container the parent "
                 "fills the keys this runner does not read.")
    return config, notes


_ABSENT = object()
# READ keys that may be null (but must be there): NeMo RL reads them all
NULLABLE = ("policy.scheduler", "policy.max_grad_norm", "checkpointing.metric_name",
            "checkpointing.keep_top_k")


def _select(config: dict, dotted: str, default=KeyError):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is KeyError:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def ignored_keys(config: dict) -> dict[str, list[str]]:
    """reason -> the keys of `config` the runner does not use (READ keys and their children excluded)."""
    used = READ + READ_IF_PRESENT
    found: dict[str, list[str]] = {}
    for key in nemo_rl_loader.dotted_keys(config):
        reason = next((why for prefix, why in IGNORED.items()
                       if key == prefix or key.startswith(prefix + ".")), None)
        if reason is None:
            if any(key == u or key.startswith(u + ".") for u in used):
                continue
            reason = "not used by the CPU runner"
        found.setdefault(reason, []).append(key)
    return found


def _positive(config_path: Path, key: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RecipeError(f"{config_path}: {key}={value!r} must be an integer >= {minimum}")
    return value


def from_config(config: DictConfig, config_path: Path, notes: list[str] | None = None) -> Settings:
    """Map the loaded config onto Settings; one RecipeError lists every missing key."""
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except Exception as exc:  # an interpolation to a key the file does not have, a bad resolver
        raise RecipeError(f"{config_path}: the config does not resolve: {exc}") from None
    missing = [key for key in READ if _select(plain, key, _ABSENT) is _ABSENT
               or (key not in NULLABLE and _select(plain, key) is None)]
    if missing:
        hint = (" Point `defaults:` at NeMo RL's dpo.yaml (a NeMo RL checkout: "
                "container.base_config=/path/to/RL/examples/configs/dpo.yaml) or set these keys."
                if notes else "")
        raise RecipeError(f"{config_path} lacks key{'s' if len(missing) > 1 else ''} the CPU runner "
                          f"needs: {', '.join(missing)}.{hint}")

    def get(key):
        return _select(plain, key)

    config_path = Path(config_path).absolute()
    policy_gbs = _positive(config_path, "policy.train_global_batch_size", get("policy.train_global_batch_size"))
    policy_mbs = _positive(config_path, "policy.train_micro_batch_size", get("policy.train_micro_batch_size"))
    if policy_gbs % policy_mbs:
        raise RecipeError(f"{config_path}: policy.train_global_batch_size={policy_gbs} is not a multiple "
                          f"of policy.train_micro_batch_size={policy_mbs}")
    save_period = _positive(config_path, "checkpointing.save_period", get("checkpointing.save_period"))
    optimizer = get("policy.optimizer")
    if not str(optimizer["name"]).startswith("torch.optim."):
        raise RecipeError(f"{config_path}: policy.optimizer.name={optimizer['name']!r}: the CPU runner "
                          "builds torch.optim optimizers only")
    keep_top_k = get("checkpointing.keep_top_k")
    settings = Settings(
        config_path=config_path, run_dir=config_path.parent, config=plain,
        model_name=str(get("policy.model_name")), tokenizer_name=str(get("policy.tokenizer.name")),
        train=dataset_entry(plain["data"], "train", config_path),
        validation=dataset_entry(plain["data"], "validation", config_path),
        shuffle=bool(get("data.shuffle")),
        train_global_batch_size=policy_gbs, train_micro_batch_size=policy_mbs,
        max_total_sequence_length=_positive(config_path, "policy.max_total_sequence_length",
                                            get("policy.max_total_sequence_length")),
        max_grad_norm=None if get("policy.max_grad_norm") is None else float(get("policy.max_grad_norm")),
        optimizer_name=str(optimizer["name"]), optimizer_kwargs=dict(optimizer["kwargs"] or {}),
        scheduler=get("policy.scheduler"),
        max_num_epochs=_positive(config_path, "dpo.max_num_epochs", get("dpo.max_num_epochs")),
        max_num_steps=_positive(config_path, "dpo.max_num_steps", get("dpo.max_num_steps")),
        val_period=_positive(config_path, "dpo.val_period", get("dpo.val_period"), 0),
        val_batches=int(get("dpo.val_batches")),
        val_global_batch_size=_positive(config_path, "dpo.val_global_batch_size", get("dpo.val_global_batch_size")),
        val_micro_batch_size=_positive(config_path, "dpo.val_micro_batch_size", get("dpo.val_micro_batch_size")),
        val_at_start=bool(get("dpo.val_at_start")), val_at_end=bool(get("dpo.val_at_end")),
        seed=int(get("dpo.seed")), beta=float(get("dpo.reference_policy_kl_penalty")),
        preference_average_log_probs=bool(get("dpo.preference_average_log_probs")),
        sft_average_log_probs=bool(get("dpo.sft_average_log_probs")),
        preference_loss_weight=float(get("dpo.preference_loss_weight")),
        sft_loss_weight=float(get("dpo.sft_loss_weight")),
        checkpointing=bool(get("checkpointing.enabled")),
        checkpoint_dir=Path(str(get("checkpointing.checkpoint_dir"))).expanduser().absolute(),
        metric_name=get("checkpointing.metric_name"),
        higher_is_better=bool(get("checkpointing.higher_is_better")),
        keep_top_k=None if keep_top_k is None else int(keep_top_k), save_period=save_period,
        notes=list(notes or []),
    )
    metric = settings.metric_name
    if metric is not None and not str(metric).startswith(("val:", "train:")):
        raise RecipeError(f"{config_path}: checkpointing.metric_name={metric!r} must start with "
                          "val: or train: (as NeMo RL requires)")
    settings.ignored = ignored_keys(plain)
    return settings


def optimizer_class(name: str):
    """`torch.optim.AdamW` -> the class (NeMo RL names optimizers by import path)."""
    module, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        raise RecipeError(f"policy.optimizer.name={name!r}: no such optimizer in torch") from None
