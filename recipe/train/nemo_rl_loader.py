"""NeMo RL's config loading rules, re-implemented so we can check a written YAML without NeMo RL.

`examples/run_dpo.py --config FILE [overrides]` (NeMo RL v0.7.0; its loader is
`nemo_rl/utils/config.py`) does two things we must match:

1. Inheritance (`load`): a top-level `defaults:` holds a path or a list of paths to parent YAML
   files, each relative to the folder of the file that names it, or absolute. Parents are loaded
   the same way (recursively), deep-merged in order with OmegaConf, and the child merged on top.
   A top-level section of the child marked `_override_: true` replaces the parent's section
   instead of being merged into it. A `???` value in a child never hides the parent's value.
   This is NOT Hydra's defaults list: `defaults: dpo` (a bare name) is a file that does not exist.
2. Overrides (`apply_overrides`): Hydra's override grammar applied to the loaded config in struct
   mode: `a.b=v` changes an existing key only, `+a.b=v` adds a key that must not exist,
   `++a.b=v` adds or changes, `~a.b` (or `~a.b=v`, which must match) deletes.

Use it to read a NeMo RL YAML the way NeMo RL will (`load_with_overrides(path, overrides)`): the
tests do, and so can any code of this recipe that needs the effective NeMo RL config (the CPU
runner, recipe.train.local, reads `<run_dir>/nemo_rl_dpo.yaml` through it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict


class NemoRLConfigError(ValueError):
    """The file or an override would make NeMo RL's own loader fail; the message says where."""


def _parent_paths(defaults, folder: Path) -> list[Path]:
    if isinstance(defaults, (str, Path)):
        defaults = [defaults]
    elif isinstance(defaults, ListConfig):
        defaults = list(defaults)
    else:
        raise NemoRLConfigError(f"`defaults:` must be a path or a list of paths, not {defaults!r}")
    paths = []
    for item in defaults:
        if not isinstance(item, (str, Path)):
            raise NemoRLConfigError(f"`defaults:` entry {item!r} is not a path (NeMo RL's loader "
                                    "takes file paths, not Hydra's `group: option` entries)")
        path = Path(str(item))
        paths.append(path if path.is_absolute() else folder / path)
    return paths


def merge(parent: DictConfig, child: DictConfig) -> DictConfig:
    """Deep-merge `child` onto `parent`; child sections with `_override_: true` replace the parent's."""
    parent = parent.copy()
    child = child.copy()
    for key in list(child.keys()):
        if OmegaConf.is_missing(child, key):  # `???`: OmegaConf.merge keeps the parent's value
            continue
        section = child[key]
        if isinstance(section, DictConfig) and section.get("_override_", False):
            with open_dict(section):
                section.pop("_override_")
            if key in parent:
                with open_dict(parent):
                    parent.pop(key)
    return OmegaConf.merge(parent, child)


def load(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load a NeMo RL YAML file with its `defaults:` inheritance resolved (not interpolated)."""
    path = Path(path)
    if not path.is_file():
        raise NemoRLConfigError(f"{path}: no such config file"
                                + (f" (named in `defaults:` of {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        raise NemoRLConfigError(f"{path}: `defaults:` inheritance loops back to this file")
    config = OmegaConf.load(path)
    if not isinstance(config, DictConfig):
        raise NemoRLConfigError(f"{path}: the top level must be a mapping, not a list")
    if "defaults" not in config:
        return config
    with open_dict(config):
        defaults = config.pop("defaults")
    base = OmegaConf.create({})
    for parent in _parent_paths(defaults, path.parent):
        base = merge(base, load(parent, _seen + (path.resolve(),)))
    return merge(base, config)


def dotted_keys(node, prefix: str = ""):
    """The dotted keys of a nested mapping's leaves (what an override names); {} is a leaf."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from dotted_keys(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def parse_overrides(overrides: Iterable[str]) -> list[Override]:
    """Parse with Hydra's override grammar; a NemoRLConfigError names the bad one."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # hydra raises OverrideParseException with the position
        raise NemoRLConfigError(f"bad override: {exc}") from None


def apply_overrides(config: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply Hydra-grammar overrides to `config` in struct mode, in order, as NeMo RL does."""
    config = config.copy()
    OmegaConf.set_struct(config, True)
    for override in parse_overrides(overrides):
        key = override.key_or_group
        text = override.input_line
        exists = OmegaConf.select(config, key, throw_on_missing=False, default=_ABSENT) is not _ABSENT
        if override.is_delete():
            if not exists:
                raise NemoRLConfigError(f"{text}: cannot delete {key}, it is not in the config")
            if override.value() is not None:
                current = OmegaConf.select(config, key)
                if current != override.value():
                    raise NemoRLConfigError(f"{text}: {key} is {current!r}, not {override.value()!r}")
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(config, parent_key) if parent_key else config
            with open_dict(parent):
                del parent[leaf]
            continue
        value = override.value()
        if override.is_add() and exists:
            raise NemoRLConfigError(f"{text}: {key} is already in the config; use {key}=... "
                                    f"to change it or ++{key}=... to add-or-change")
        if not (override.is_add() or override.is_force_add()) and not exists:
            raise NemoRLConfigError(f"{text}: {key} is not in the config (struct mode); "
                                    f"use +{key}=... to add it")
        if override.is_add() or override.is_force_add():
            with open_dict(config):
                OmegaConf.update(config, key, value, merge=True, force_add=True)
        else:
            OmegaConf.update(config, key, value, merge=True)
    return config


_ABSENT = object()


def load_with_overrides(path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """What run_dpo.py sees before `OmegaConf.to_container(resolve=True)`: loaded, overridden."""
    return apply_overrides(load(path), overrides)


def resolved(config: DictConfig) -> dict:
    """The plain dict NeMo RL builds from the config (interpolations resolved, as run_dpo.py does)."""
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception as exc:
        raise NemoRLConfigError(f"the config does not resolve: {exc}") from None
