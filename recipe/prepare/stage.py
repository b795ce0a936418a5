"""`stage=prepare`: rollouts -> train.jsonl, val.jsonl, rejects.jsonl and manifest.json.

Data flows one way: read + validate (scan, in worker processes) -> group -> pair -> split ->
write (pair records built in worker processes from the input lines, by offset). Memory holds a
fixed-size record per usable rollout, never the texts of the whole file.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import recipe
from recipe import report
from recipe.errors import RecipeError
from recipe.prepare import chat, grouping, manifest, pairing, rollouts, scan, split, writer

OUTPUTS = ["train.jsonl", "val.jsonl", "rejects.jsonl"]


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

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Settings":
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
            pairing.strategy(name)
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
                binary=data.format == "binary"),
            strategy=name, strategy_options=options, seed=int(cfg.seed),
            val_fraction=float(data.val_fraction),
            val_size=None if data.val_size is None else int(data.val_size),
            on_error=data.on_error, keep_extra_fields=bool(data.keep_extra_fields),
            workers=int(workers), chunk_bytes=int(float(data.chunk_mb) * (1 << 20)))


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


# -- worker processes ---------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(settings: Settings) -> None:
    _WORKER["settings"] = settings
    _WORKER["builder"] = writer.PairBuilder(settings.inputs, settings.scan, settings.keep_extra_fields)


def _scan(chunk: rollouts.Chunk) -> scan.ChunkResult:
    return scan.scan_chunk(chunk, _WORKER["settings"].scan)


def _build(batch: list[writer.PairRef]) -> list[bytes]:
    return [_WORKER["builder"].build(pair) for pair in batch]


class Workers:
    """A process pool (or in-process calls when workers=1) whose results come back in order."""

    def __init__(self, settings: Settings):
        self.pool = None
        if settings.workers > 1:
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            self.pool = context.Pool(settings.workers, _init_worker, (settings,))
        else:
            _init_worker(settings)

    def map(self, function, items: Iterable) -> Iterator:
        if self.pool is None:
            return map(function, items)
        return self.pool.imap(function, items)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# -- the stage ----------------------------------------------------------------------------------
@dataclass
class Scanned:
    records: np.ndarray
    rejects: list[scan.Reject]
    lines_per_file: list[int]


def scan_inputs(settings: Settings, workers: Workers) -> Scanned:
    total = sum(os.path.getsize(p) for p in settings.inputs)
    parts, rejects = [], []
    lines_per_file = [0] * len(settings.inputs)
    progress = tqdm(total=total, unit="B", unit_scale=True, desc="read+validate", mininterval=1.0)
    lines_seen = 0
    started = time.monotonic()
    with progress:
        chunks = rollouts.chunks(settings.inputs, settings.chunk_bytes)
        for result in workers.map(_scan, chunks):
            first = lines_per_file[result.chunk.file_index]
            result.records["line"] += first
            for reject in result.rejects:
                reject.line += first
                if settings.on_error == "fail":
                    raise RecipeError(f"{settings.inputs[reject.file]}:{reject.line}: {reject.reason}: "
                                      f"{reject.detail} (data.on_error=fail; use skip to count "
                                      "and write such lines to rejects.jsonl instead)")
            lines_per_file[result.chunk.file_index] += result.lines
            parts.append(result.records)
            rejects.extend(result.rejects)
            lines_seen += result.lines
            progress.update(result.chunk.end - result.chunk.start)
            progress.set_postfix_str(f"{lines_seen / max(time.monotonic() - started, 1e-9):,.0f} lines/s",
                                     refresh=False)
    records = np.concatenate(parts) if parts else np.empty(0, grouping.RECORD)
    return Scanned(grouping.sort_records(records), rejects, lines_per_file)


@dataclass
class Pairing:
    chosen: np.ndarray  # indices into the sorted records
    rejected: np.ndarray
    score_gap: np.ndarray
    unpaired: dict[str, int]  # why usable rollouts ended in no pair
    groups: int
    groups_with_pairs: int


def pair_records(records: np.ndarray, settings: Settings) -> Pairing:
    select = pairing.strategy(settings.strategy)
    chosen, rejected, gaps = [], [], []
    used = np.zeros(len(records), dtype=bool)
    unpaired = {"no_comparable_rollout": 0, "tie": 0, "not_selected": 0}
    rewards, responses = records["reward"], records["response"]
    groups = with_pairs = 0
    for start, end in grouping.group_bounds(records):
        groups += 1
        if end - start == 1:
            unpaired["no_comparable_rollout"] += 1
            continue
        scores = rewards[start:end]
        group = pairing.Group(scores, responses[start:end],
                              seed=(settings.seed << 64) | int(records["key_hi"][start]))
        selected = select(group, settings.strategy_options)
        if selected:
            with_pairs += 1
        for c, r in selected:
            chosen.append(start + c)
            rejected.append(start + r)
            gaps.append(scores[c] - scores[r])
            used[start + c] = used[start + r] = True
        left = int(end - start - used[start:end].sum())
        if left:
            unpaired["tie" if scores.min() == scores.max() else "not_selected"] += left
    return Pairing(np.array(chosen, dtype=np.int64), np.array(rejected, dtype=np.int64),
                   np.array(gaps, dtype=np.float64), unpaired, groups, with_pairs)


def _side(record) -> writer.Side:
    return writer.Side(int(record["file"]), int(record["line"]), int(record["offset"]),
                       int(record["nbytes"]), float(record["reward"]))


def _batches(records, pairs: Pairing, batch: int = 512) -> Iterator[list[writer.PairRef]]:
    for start in range(0, len(pairs.chosen), batch):
        refs = []
        for c, r, gap in zip(pairs.chosen[start:start + batch], pairs.rejected[start:start + batch],
                             pairs.score_gap[start:start + batch]):
            group = (int(records["key_hi"][c]).to_bytes(8, "big") + int(records["key_lo"][c]).to_bytes(8, "big")).hex()
            refs.append(writer.PairRef(_side(records[c]), _side(records[r]), group, float(gap)))
        yield refs


def write_outputs(settings: Settings, scanned: Scanned, pairs: Pairing, workers: Workers,
                  files: writer.AtomicFiles) -> np.ndarray:
    """Write train/val/rejects; returns a boolean mask of the pairs that went to validation."""
    records = scanned.records
    pair_contexts = records["context"][pairs.chosen]
    val_contexts = split.validation_contexts(pair_contexts, settings.seed, settings.val_fraction,
                                             settings.val_size)
    is_val = np.array([int(c) in val_contexts for c in pair_contexts], dtype=bool)
    index = 0
    with tqdm(total=len(pairs.chosen), unit="pair", desc="write pairs", mininterval=1.0) as progress:
        for lines in workers.map(_build, _batches(records, pairs)):
            for line in lines:
                files.write("val.jsonl" if is_val[index] else "train.jsonl", line)
                index += 1
            progress.update(len(lines))
    for reject in scanned.rejects:
        files.write("rejects.jsonl", orjson.dumps({
            "file": os.path.abspath(settings.inputs[reject.file]), "line": reject.line,
            "reason": reject.reason, "detail": reject.detail}) + b"\n")
    return is_val


def outcome_counts(scanned: Scanned, pairs: Pairing) -> dict:
    rejected: dict[str, int] = {}
    for reject in scanned.rejects:
        rejected[reject.reason] = rejected.get(reject.reason, 0) + 1
    paired = int(len(np.unique(np.concatenate([pairs.chosen, pairs.rejected]))))
    counts = {"lines": int(sum(scanned.lines_per_file)), "paired": paired,
              "unpaired": pairs.unpaired, "rejected": dict(sorted(rejected.items()))}
    accounted = paired + sum(pairs.unpaired.values()) + sum(rejected.values())
    assert accounted == counts["lines"], f"{accounted} outcomes for {counts['lines']} lines"
    return counts


def run(cfg: DictConfig) -> dict:
    """Run the prepare stage; returns the manifest it wrote."""
    started = datetime.now(timezone.utc)
    settings = Settings.from_config(cfg)
    hashing = ThreadPoolExecutor(1)
    input_hashes = hashing.map(manifest.sha256_of, settings.inputs)  # beside the scan
    workers = Workers(settings)
    files = None
    try:
        scanned = scan_inputs(settings, workers)
        pairs = pair_records(scanned.records, settings)
        files = writer.AtomicFiles(settings.output_dir, OUTPUTS)
        is_val = write_outputs(settings, scanned, pairs, workers, files)
    except writer.PairSchemaError as exc:
        raise RecipeError(f"internal error, please report: {exc}") from None
    except BaseException:
        if files is not None:
            files.abort()
        raise
    finally:
        workers.close()
    records = scanned.records
    gaps = records["reward"][pairs.chosen] - records["reward"][pairs.rejected]
    result = {
        "manifest_version": manifest.MANIFEST_VERSION,
        "package": {"name": "gym-dpo", "version": recipe.__version__},
        "inputs": [manifest.input_entry(p, h) for p, h in zip(settings.inputs, input_hashes)],
        "config": {"seed": settings.seed,
                   "data": OmegaConf.to_container(cfg.data, resolve=True),
                   "data_prep": OmegaConf.to_container(cfg.data_prep, resolve=True)},
        "format": "binary" if settings.scan.binary else "preference",
        "counts": outcome_counts(scanned, pairs),
        "groups": {"total": pairs.groups, "with_pairs": pairs.groups_with_pairs},
        "pairs": {
            "train": int((~is_val).sum()), "val": int(is_val.sum()),
            "prompts_train": int(len(np.unique(records["context"][pairs.chosen][~is_val]))),
            "prompts_val": int(len(np.unique(records["context"][pairs.chosen][is_val]))),
        },
        "rewards": {"usable_rollouts": manifest.stats(records["reward"]),
                    "chosen": manifest.stats(records["reward"][pairs.chosen]),
                    "rejected": manifest.stats(records["reward"][pairs.rejected]),
                    "gap": manifest.stats(gaps)},
    }
    hashing.shutdown()
    files.commit()
    result["outputs"] = {name.removesuffix(".jsonl"): files.digest(name) for name in OUTPUTS}
    finished = datetime.now(timezone.utc)
    result["timestamps"] = {"started": started.isoformat(), "finished": finished.isoformat(),
                            "seconds": round((finished - started).total_seconds(), 3)}
    manifest.write(settings.output_dir / "manifest.json", result)
    report.console.print(report.prepare_summary(result))
    report.console.print(f"wrote {settings.output_dir}/{{train,val,rejects}}.jsonl and manifest.json",
                         soft_wrap=True)
    return result
