"""The prepare stage's view of the composed config (`data.*`, `data_prep.*`, `seed`), checked once."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recipe import report, report_page
from recipe.errors import RecipeError
from recipe.prepare import chat, grouping, pairing, rollouts, scan

OUTPUTS = ["train.jsonl", "val.jsonl", "rejects.jsonl"]  # the pair files (then manifest.json)


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
        if not isinstance(workers, int) or workers < 1:
            raise RecipeError(f"data.workers={data.workers!r}: give a number of processes (1 or more), or "
                              "null for one per core")
        try:
            chunk_mb = float(data.chunk_mb)
        except (TypeError, ValueError):
            chunk_mb = float("nan")
        if not 1 / 1024 <= chunk_mb <= 1024:
            raise RecipeError(f"data.chunk_mb={data.chunk_mb!r}: give the MiB of input per work item, "
                              "between 0.001 and 1024 (default 16)")
        inputs = resolve_inputs(None if OmegaConf.is_missing(data, "input") else data.input)
        output_dir = Path(data.output_dir).absolute()
        check_outputs_apart(inputs, output_dir, Path(str(cfg.run_dir)).absolute())
        return cls(
            inputs=inputs,
            output_dir=output_dir,
            scan=scan.ScanOptions(
                group_by=data.group_by,
                chat=chat.ChatOptions(data.developer_role, bool(data.include_reasoning)),
                binary=data.format == "binary",
                tokenizer=length_tokenizer(data.get("length_tokenizer"))),
            strategy=name, strategy_options=options, seed=int(cfg.seed),
            val_fraction=float(data.val_fraction),
            val_size=None if data.val_size is None else int(data.val_size),
            on_error=data.on_error, keep_extra_fields=bool(data.keep_extra_fields),
            workers=workers, chunk_bytes=int(chunk_mb * (1 << 20)))


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
        # a file that is there under this very name is that file, [ or * in its name or not
        literal = os.path.lexists(pattern) or not glob.has_magic(pattern)
        matches = [pattern] if literal else sorted(glob.glob(pattern))
        if not matches:
            raise RecipeError(f"data.input: no file matches {pattern!r}")
        for path in matches:
            if not os.path.exists(path):
                raise RecipeError(f"data.input: {path} does not exist")
            if not os.path.isfile(path):
                raise RecipeError(f"data.input: {path} is not a file")
            if os.path.getsize(path) == 0:
                raise RecipeError(f"data.input: {path} is empty: no rollouts to prepare")
            _check_readable(path)
            if os.path.abspath(path) not in map(os.path.abspath, paths):
                paths.append(path)
    if len(paths) > np.iinfo(grouping.RECORD["file"]).max:
        raise RecipeError(f"data.input: {len(paths)} files is more than one run can take")
    return paths


def _check_readable(path: str) -> None:
    """Read the first byte here, so an unreadable input fails before any worker starts."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise RecipeError(f"data.input: {path} cannot be read ({exc.strerror or exc}): fix its permissions "
                          "or give another file") from None


def check_outputs_apart(inputs: list[str], output_dir: Path, run_dir: Path) -> None:
    """Refuse, before anything is written, a run whose outputs would replace one of its inputs
    (NeMo Gym names its own output train.jsonl: data.input=d/train.jsonl data.output_dir=d)."""
    outputs = [output_dir / name for name in [*OUTPUTS, "manifest.json", report_page.REWARDS_FILE]]
    outputs.append(run_dir / report_page.FILENAME)
    real = {os.path.realpath(path): path for path in outputs}
    for path in inputs:
        clash = real.get(os.path.realpath(path))
        if clash is not None:
            raise RecipeError(f"data.input {path} is also where this run would write {clash.name} "
                              f"({clash}): prepare would replace its own input. Give another "
                              f"data.output_dir (e.g. data.output_dir={clash.parent / 'pairs'}) or move the input")


def input_bytes(settings: Settings) -> int:
    return sum(os.path.getsize(p) for p in settings.inputs)
