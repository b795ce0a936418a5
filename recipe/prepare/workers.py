"""The prepare stage's worker processes: what runs in them, and the pools that run it.

Two pools per run, each a `processes.Pool` (forked: a worker holds a line source on the inputs
and, for the writing, the pairs themselves, handed over by the fork without a copy):

    reading(settings)              scan_chunk (read + validate), then pair_bucket (group + pair)
    writing(settings, pairs, val)  build_part: pair records written to files beside the outputs

The writing pool is a fresh one: a reading worker's heap is not given back to the system.
With `data.workers=1` the same functions run in this process.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from recipe.prepare import buckets, rollouts, scan, writer
from recipe.prepare.lines import LineSource
from recipe.prepare.pairing import engine
from recipe.prepare.settings import Settings, input_bytes
from recipe.processes import Pool

BUILD_BATCH = 512  # pairs a worker builds in one call
PART_PAIRS = 8192  # pairs per work item of the writing phase

_WORKER: dict = {}


def _init(settings: Settings, pairs: np.ndarray | None = None, is_val: np.ndarray | None = None) -> None:
    _WORKER["settings"] = settings
    _WORKER["buckets"] = buckets.count_for(input_bytes(settings))
    _WORKER["lines"] = LineSource(settings.inputs, settings.scan)
    _WORKER["builder"] = writer.PairBuilder(_WORKER["lines"], settings.keep_extra_fields)
    _WORKER["pairs"], _WORKER["is_val"] = pairs, is_val


def reading(settings: Settings) -> Pool:
    return Pool(settings.workers, _init, (settings,), name="gym-dpo-prepare")


def writing(settings: Settings, pairs: np.ndarray, is_val: np.ndarray) -> Pool:
    return Pool(settings.workers, _init, (settings, pairs, is_val), name="gym-dpo-write")


def scan_chunk(chunk: rollouts.Chunk) -> tuple[scan.ChunkResult, np.ndarray]:
    """A chunk's records (ordered by bucket) and rejects, and where each bucket's records start."""
    result = scan.scan_chunk(chunk, _WORKER["settings"].scan)
    result.records, bounds = buckets.split(result.records, _WORKER["buckets"])
    return result, bounds


def pair_bucket(task: tuple[Path, Settings]) -> engine.BucketPairs:
    """One bucket file paired under `settings` (compare_strategies pairs the same buckets under
    each strategy's)."""
    path, settings = task
    return engine.pair_bucket(buckets.load(path), settings, _WORKER["lines"])


def parts(pairs: int, folder: Path):
    """The writing phase's work items: (file stem, first pair, end)."""
    return ((folder / f"part-{start // PART_PAIRS:06d}", start, min(start + PART_PAIRS, pairs))
            for start in range(0, pairs, PART_PAIRS))


def build_part(task: tuple[Path, int, int]) -> tuple[Path, int, Path, int, Counter]:
    """Write pairs [start, end) (train and validation lines, in pair order) to two files beside
    the outputs; returns (train file, its lines, validation file, its lines, the builder's tally
    for them). The lines go through files, not back through a pipe, which carries a few
    hundred MB/s at most."""
    stem, start, end = task
    pairs, is_val = _WORKER["pairs"][start:end], _WORKER["is_val"][start:end]
    train_path, val_path = stem.with_suffix(".train"), stem.with_suffix(".val")
    builder = _WORKER["builder"]
    before = builder.tally.copy()
    counts = [0, 0]
    with open(train_path, "wb") as train, open(val_path, "wb") as val:
        for first in range(0, len(pairs), BUILD_BATCH):
            lines = builder.build_all(pairs[first:first + BUILD_BATCH])
            sides = is_val[first:first + BUILD_BATCH].tolist()
            for side, handle in ((False, train), (True, val)):
                chosen = [line for line, on_val in zip(lines, sides) if on_val is side]
                handle.write(b"".join(chosen))
                counts[side] += len(chosen)
    return train_path, counts[0], val_path, counts[1], builder.tally - before
