"""Training an existing run folder again: the run's own composed config is the base.

`gym-dpo stage=train run_dir=RUN` (or stage=preflight) on a folder whose train stage ran before
starts from RUN/recipe_config.yaml (the composed config that run trained with), not from the
defaults, so RUN's model, training values, launcher and data stay RUN's. The command line still
wins, override by override:
- `key=value`, `+key=value`, `++key=value` set that key; `~key` deletes it;
- `group=option` takes the keys that group owns from the fresh composition: its own section
  (`launcher=`, `container=`, `data_prep=`), or, for a group written at the top level, the keys
  its options set (`model=`: the model facts; `dpo=`: the training values); a group that the
  defaults list derives from another one (`optional dpo: ${model}`) follows it;
- when RUN was moved, the base's paths inside its old folder are moved with it.
What came from where is printed and kept under `train.config_sources` (so in recipe_config.yaml
and provenance.json).
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from recipe import report
from recipe.errors import RecipeError
from recipe.train.nemo_rl_loader import dotted_keys, parse_overrides

FILENAME = "recipe_config.yaml"
STAGES = ("train", "preflight")  # the stages that take an existing run folder


def _config_root():
    return resources.files("recipe.configs")


def _defaults() -> list[tuple[str, str]]:
    """(group, choice) of the group entries of recipe.yaml's defaults list (`optional` dropped)."""
    entries = yaml.safe_load(_config_root().joinpath("recipe.yaml").read_text()).get("defaults", [])
    return [(group.removeprefix("optional ").strip(), str(choice))
            for entry in entries if isinstance(entry, dict) for group, choice in entry.items()]


@lru_cache(maxsize=1)
def group_keys() -> dict[str, tuple[str, ...]]:
    """Config group -> the keys it owns: a group without `@package _global_` owns its section;
    a top-level one (model, dpo) the keys its options set, unless a group later in the defaults
    list sets them too (model presets own policy.model_name, which dpo/default marks ???)."""
    order = [group for group, _ in _defaults()]
    owner: dict[str, str] = {}
    for group in order:
        folder = _config_root().joinpath(group)
        for option in sorted(folder.iterdir(), key=lambda o: o.name):
            if not option.name.endswith(".yaml"):
                continue
            text = option.read_text()
            if "@package _global_" not in text.split("\n", 1)[0]:
                owner[group] = group
                break
            document = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "defaults"}
            owner.update({key: group for key in dotted_keys(document) if key})
    keys: dict[str, list[str]] = {}
    for key, group in owner.items():
        keys.setdefault(group, []).append(key)
    return {group: tuple(sorted(found)) for group, found in keys.items()}


@lru_cache(maxsize=1)
def derived_groups() -> dict[str, set[str]]:
    """group -> the groups whose choice the primary defaults list derives from it (dpo: ${model})."""
    derived: dict[str, set[str]] = {}
    for group, choice in _defaults():
        for source in re.findall(r"\$\{(\w+)\}", choice):
            derived.setdefault(source, set()).add(group)
    return derived


_ABSENT = object()


def _select(node: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _assign(node: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def _delete(node: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.get(part, {})
    node.pop(last, None)


def _move_paths(node, old: str, new: str):
    """Strings naming `old` or a path inside it, rewritten under `new` (RUN was moved)."""
    if isinstance(node, dict):
        return {k: _move_paths(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_move_paths(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")):]
    return node


def rebase(cfg: DictConfig, overrides: list[str], say: bool = True) -> DictConfig:
    """`cfg` (composed from the defaults and `overrides`) on top of RUN's own config, if any
    (printing what came from where unless `say` is false)."""
    if str(cfg.get("stage")) not in STAGES:
        return cfg
    path = Path(str(cfg.run_dir)).expanduser() / FILENAME
    if not path.is_file():
        return cfg
    try:
        base = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # a hand-edited file that is no longer YAML
        raise RecipeError(f"{path}: not a readable run config ({exc}); move it away to train "
                          "from the defaults") from None
    new = OmegaConf.to_container(cfg, resolve=True)
    merged, moved = copy.deepcopy(base), None
    old_dir, new_dir = str(base.get("run_dir", "")), str(new["run_dir"])
    if old_dir and Path(old_dir).expanduser().absolute() != Path(new_dir).expanduser().absolute():
        merged, moved = _move_paths(merged, old_dir, new_dir), {"from": old_dir, "to": new_dir}
    owned, derived = group_keys(), derived_groups()
    keys, groups = [], []
    for override in parse_overrides([str(o) for o in overrides]):
        name = override.key_or_group
        if name == "hydra" or name.startswith("hydra."):
            continue
        if name in owned and not override.is_delete():
            groups += [name, *sorted(derived.get(name, ()))]
        elif override.is_delete():
            _delete(merged, name)
            keys.append(f"~{name}")
        elif (value := _select(new, name)) is not _ABSENT:
            _assign(merged, name, value)
            keys.append(name)
    groups = list(dict.fromkeys(groups))
    taken = [key for group in groups for key in owned[group] if key not in keys]
    for key in taken:
        value = _select(new, key)
        if value is _ABSENT:
            _delete(merged, key)
        else:
            _assign(merged, key, value)
    sources = {"base": str(path.absolute()), "command_line_keys": keys,
               "command_line_groups": groups, "keys_from_groups": taken, "moved": moved}
    merged.setdefault("train", {})["config_sources"] = sources
    result = OmegaConf.create(merged)
    OmegaConf.set_struct(result, True)
    said = ", ".join(keys + [f"{group}=" for group in groups])
    if say:
        report.console.print(f"training the run folder again: {path} is the base"
                             + (f"; from the command line: {said}" if said else "")
                             + (f"; paths under {old_dir} moved to {new_dir}" if moved else ""),
                             highlight=False, soft_wrap=True)
    return result
