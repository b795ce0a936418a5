"""Which rollouts are comparable (CONTRACT section 1).

Two rollouts may form a pair only when they share the full context (instructions, system and
developer turns, every earlier turn) and, when the rows carry it, the task identity
(`agent_ref.name`, `_ng_task_index`, which restarts at 0 in every file) or the user's
`data.group_by` field. Only a fixed-size record per usable rollout is kept in memory; the texts
are re-read from the input by offset when a pair is written.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import msgspec
import numpy as np
import xxhash

# One usable rollout. `key` groups comparable rollouts; `context` (the prompt alone) decides the
# train/val split so that a prompt never sits on both sides, even under two task identities.
RECORD = np.dtype([
    ("key_hi", "u8"),
    ("key_lo", "u8"),
    ("context", "u8"),
    ("response", "u8"),  # hash of the response: identical texts never make a pair
    ("reward", "f8"),
    ("length", "u4"),  # characters of the response (length penalty, length bias)
    ("file", "u2"),
    ("nbytes", "u4"),
    ("offset", "u8"),
    ("line", "u8"),  # 1-based line number in its file
])

_encode = msgspec.json.Encoder(order="sorted").encode
_LOW = (1 << 64) - 1


def identity(file_index: int, agent: str | None, task_index: int | None, group_value) -> bytes:
    """The task identity part of a group key, encoded (`null` when the row carries none)."""
    if group_value is not msgspec.UNSET:
        return _encode(["field", group_value])
    return _task_identity(file_index, agent, task_index)


@lru_cache(maxsize=1 << 16)
def _task_identity(file_index: int, agent: str | None, task_index: int | None) -> bytes:
    if task_index is None and agent is None:
        return b"null"
    # task indices restart at 0 in every collection run: scope them to their file
    return _encode(["task", agent, task_index, file_index if task_index is not None else None])


def keys(raw_input, instructions: str | None, task: bytes) -> tuple[int, int, int]:
    """(group key high, group key low, context hash) of one rollout.

    The context is identified by the request's `input` exactly as written plus `instructions`:
    rows of one task carry byte-identical requests, and a hash of the bytes costs no re-encoding.
    """
    seed = xxhash.xxh3_64_intdigest(instructions.encode()) + 1 if instructions is not None else 0
    context = xxhash.xxh3_128_intdigest(raw_input, seed & _LOW)
    group = xxhash.xxh3_128_intdigest(context.to_bytes(16, "little") + task)
    return group >> 64, group & _LOW, context & _LOW


def response_hash(response: str | list[dict]) -> int:
    data = response.encode() if isinstance(response, str) else _encode(response)
    return xxhash.xxh3_64_intdigest(data)


def sort_records(records: np.ndarray) -> np.ndarray:
    """Records ordered by group, then by input position: a canonical order for any chunking."""
    order = np.lexsort((records["line"], records["file"], records["key_lo"], records["key_hi"]))
    return records[order]


def group_bounds(records: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of `sort_records` output that shares a group key."""
    if len(records) == 0:
        return
    hi, lo = records["key_hi"], records["key_lo"]
    starts = np.flatnonzero((hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])) + 1
    bounds = np.concatenate(([0], starts, [len(records)])).tolist()
    yield from zip(bounds[:-1], bounds[1:])
