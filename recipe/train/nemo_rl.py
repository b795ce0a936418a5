"""Write `<run_dir>/nemo_rl_dpo.yaml`: our config in NeMo RL's (v0.7.0) terms, one file per run.

The file is a child of NeMo RL's own `examples/configs/dpo.yaml` inside the container: `defaults:`
holds that file's absolute path (`container.base_config`), because NeMo RL's loader resolves a
relative path against the child's folder and `defaults: dpo` is no file at all. Only the keys we
set are written; NeMo RL's loader deep-merges them onto the parent (see nemo_rl_loader).

What this module decides (from NeMo RL v0.7.0's `examples/configs/dpo.yaml`, `examples/run_dpo.py`
and `nemo_rl/data/datasets/preference_datasets/`):
- `data:` replaces the parent's (`_override_: true`: HelpSteer3 must not leak in) in the v0.6+
  schema: `train` / `validation` with `dataset_name` PreferenceDataset or BinaryPreferenceDataset
  (the manifest's `format`), absolute `data_path`, `split: train` on both (a local file only has
  a train split); never `default: null`. No validation entry when there are no val pairs.
- `policy.tokenizer.name` follows `policy.model_name` unless set; both go through
  `recipe.train.tiny_model.resolve_model_name`, which turns `gym-dpo/tiny` into a local folder
  inside the run folder (its tokenizer trained on the train pairs) and leaves other names as they are.
- Training values chosen for one model (`values_for_model`, e.g. dpo/tiny.yaml) are refused for
  any other `policy.model_name`: no override can hand a real model the tiny model's lr.
- `dpo.sft_average_log_probs` left null is written as NeMo RL's own link to
  `preference_average_log_probs` (`${.preference_average_log_probs}`, as in its dpo.yaml), so it
  follows that key in NeMo RL and in the CPU runner, whatever overrides come later.
- `checkpointing.checkpoint_dir` and `logger.log_dir` are absolute (a requeued or rerun job
  with the same folder resumes from its latest step_N).
- `cluster` comes from the launcher (launcher.gpus_per_node, launcher.nodes).
- `nemo_rl_overrides` (any other NeMo RL key) is merged last; validation runs after it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from recipe.errors import RecipeError
from recipe.train import tiny_model
from recipe.train.prepared import PreparedData

FILENAME = "nemo_rl_dpo.yaml"
SECTIONS = ("policy", "dpo", "checkpointing", "logger")  # written whole from our config
SFT_AVERAGE_LINK = "${.preference_average_log_probs}"   # NeMo RL v0.7.0 dpo.yaml's own value


def _absolute(path: str, what: str) -> str:
    if not path:
        raise RecipeError(f"{what} is empty: give a folder (default: under the run folder)")
    return str(Path(path).expanduser().absolute())


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def data_section(cfg: DictConfig, data: PreparedData) -> dict:
    """NeMo RL's `data:` for our prepared folder (v0.6+ schema), replacing the parent's section."""
    def dataset(path: Path) -> dict:
        entry = {"dataset_name": data.dataset_name, "data_path": str(path), "split": "train"}
        if data.format == "binary":
            entry.update(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected")
        return entry

    knobs = OmegaConf.to_container(cfg.nemo_rl_data, resolve=True)
    section = {"_override_": True, **knobs, "train": dataset(data.train_path)}
    if data.val_pairs > 0:
        section["validation"] = dataset(data.val_path)
    return section


def check_values_for_model(cfg: DictConfig) -> None:
    """Refuse training values chosen for another model than policy.model_name."""
    meant = cfg.get("values_for_model")
    name = str(cfg.policy.model_name)
    if meant is None or str(meant) == name:
        return
    policy, dpo = cfg.policy, cfg.dpo
    raise RecipeError(
        f"policy.model_name={name} with training values chosen for {meant} (lr "
        f"{policy.optimizer.kwargs.lr}, batch {policy.train_global_batch_size}, "
        f"{dpo.max_num_steps} steps): pick that model's preset (model=<preset>, see configs/model/), "
        f"or model=hf policy.model_name={name} for NeMo RL's training values")


def checkpoint_dir(cfg: DictConfig) -> Path:
    """The run's checkpoint folder as `build` writes it (nemo_rl_overrides included)."""
    extra = (OmegaConf.to_container(cfg.nemo_rl_overrides, resolve=True) or {}).get("checkpointing") or {}
    given = extra.get("checkpoint_dir", OmegaConf.select(cfg, "checkpointing.checkpoint_dir"))
    return Path(_absolute(given, "checkpointing.checkpoint_dir"))


def build(cfg: DictConfig, data: PreparedData, run_dir: Path) -> dict:
    """The NeMo RL YAML document for this run, as a plain dict (nothing written yet)."""
    check_values_for_model(cfg)
    doc: dict = {"defaults": str(cfg.container.base_config)}
    for name in SECTIONS:
        doc[name] = OmegaConf.to_container(cfg[name], resolve=True)
    if doc["dpo"].get("sft_average_log_probs") is None:
        doc["dpo"]["sft_average_log_probs"] = SFT_AVERAGE_LINK
    policy = doc["policy"]
    policy["model_name"] = tiny_model.resolve_model_name(str(policy["model_name"]), run_dir,
                                                         train_file=data.train_path)
    tokenizer = dict(policy.get("tokenizer") or {})
    tokenizer["name"] = (tiny_model.resolve_model_name(str(tokenizer["name"]), run_dir, train_file=data.train_path)
                         if tokenizer.get("name") else policy["model_name"])
    policy["tokenizer"] = tokenizer
    doc["checkpointing"]["checkpoint_dir"] = _absolute(doc["checkpointing"].get("checkpoint_dir"),
                                                       "checkpointing.checkpoint_dir")
    doc["logger"]["log_dir"] = _absolute(doc["logger"].get("log_dir"), "logger.log_dir")
    doc["cluster"] = {"gpus_per_node": int(cfg.launcher.gpus_per_node),
                      "num_nodes": int(cfg.launcher.nodes)}
    doc["data"] = data_section(cfg, data)
    extra = OmegaConf.to_container(cfg.nemo_rl_overrides, resolve=True) or {}
    return _deep_merge(doc, extra)


HEADER = """\
# NeMo RL DPO config written by gym-dpo {version} for the run folder {run_dir}.
# Run inside the NeMo RL container, from {nemo_rl_dir}:
#   {command}
# `defaults:` is NeMo RL's own dpo.yaml in the container: only the keys below differ from it.
"""


def write(path: Path, doc: dict, header: str = "") -> None:
    """Write the YAML (keys in our order; readable; a comment header saying how to run it)."""
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(header + text)
    temp.replace(path)
