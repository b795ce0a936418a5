"""The prepare stage's view of the composed config (`data.*`, `data_prep.*`, `seed`), checked once."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recipe import report
from recipe.errors import RecipeError
from recipe.prepare import chat, grouping, pairing, rollouts, scan


@dataclass
class Settings:
    """The prepare stage's view of the composed config."""

    inputs: list[str]
    output_dir: Path
    scan: scan.ScanOptions
    strategy: str
    strategy_options: dict
    seed: int
    val_fraction: float
    val_size: int | None
    on_error: str
    keep_extra_fields: bool
    workers: int
    chunk_bytes: int

    @property
    def length_unit(self) -> str:
        return "tokens" if self.scan.tokenizer else "characters"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        data, prep = cfg.data, cfg.data_prep
        if data.format not in ("preference", "binary"):
            raise RecipeError(f"data.format={data.format!r}: choose preference or binary")
        if data.on_error not in ("skip", "fail"):
            raise RecipeError(f"data.on_error={data.on_error!r}: choose skip or fail")
        if not 0.0 <= float(data.val_fraction) < 1.0:
            raise RecipeError(f"data.val_fraction={data.val_fraction}: must be in [0, 1)")
        if data.developer_role not in ("system", "developer"):
            raise RecipeError(f"data.developer_role={data.developer_role!r}: system or developer")
        options = OmegaConf.to_container(prep, resolve=True)
        name = options.pop("name")
        try:
            options = pairing.resolve_options(name, options)
            rollouts.rollout_type(data.group_by)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        workers = data.workers or min(os.cpu_count() or 1, 8)
        return cls(
            inputs=resolve_inputs(None if OmegaConf.is_missing(data, "input") else data.input),
            output_dir=Path(data.output_dir).absolute(),
            scan=scan.ScanOptions(
                group_by=data.group_by,
                chat=chat.ChatOptions(data.developer_role, bool(data.include_reasoning)),
                binary=data.format == "binary",
                tokenizer=length_tokenizer(data.get("length_tokenizer"))),
            strategy=name, strategy_options=options, seed=int(cfg.seed),
            val_fraction=float(data.val_fraction),
            val_size=None if data.val_size is None else int(data.val_size),
            on_error=data.on_error, keep_extra_fields=bool(data.keep_extra_fields),
            workers=int(workers), chunk_bytes=int(float(data.chunk_mb) * (1 << 20)))


def length_tokenizer(spec: str | None) -> str | None:
    """The tokenizer.json that response lengths are counted with, or None for characters.

    `data.length_tokenizer` names a local Hugging Face tokenizer folder or tokenizer.json; one
    that is not on this machine (a hub name, say) leaves lengths in characters, with a warning.
    """
    if not spec:
        return None
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        import tokenizers  # noqa: F401  (the `local` extra)
    except ImportError:
        report.console.print(f"warning: data.length_tokenizer={spec} needs the tokenizers package "
                             "(pip install -e '.[local]'); lengths are in characters", markup=False)
        return None
    if not path.is_file():
        report.console.print(f"warning: data.length_tokenizer={spec}: no tokenizer.json on this "
                             "machine; lengths are in characters", markup=False)
        return None
    return str(path.absolute())


def resolve_inputs(spec) -> list[str]:
    """`data.input` as one path, a glob, or a list of them -> existing, non-empty files."""
    if spec is None:
        raise RecipeError("data.input is not set: give data.input=PATH (a .jsonl file, a glob, "
                          "or a list [a.jsonl,b.jsonl])")
    patterns = [spec] if isinstance(spec, str) else list(spec)
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise RecipeError(f"data.input: no file matches {pattern!r}")
        for path in matches:
            if not os.path.exists(path):
                raise RecipeError(f"data.input: {path} does not exist")
            if not os.path.isfile(path):
                raise RecipeError(f"data.input: {path} is not a file")
            if os.path.getsize(path) == 0:
                raise RecipeError(f"data.input: {path} is empty: no rollouts to prepare")
            if os.path.abspath(path) not in map(os.path.abspath, paths):
                paths.append(path)
    if len(paths) > np.iinfo(grouping.RECORD["file"]).max:
        raise RecipeError(f"data.input: {len(paths)} files is more than one run can take")
    return paths


def input_bytes(settings: Settings) -> int:
    return sum(os.path.getsize(p) for p in settings.inputs)
