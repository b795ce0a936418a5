"""Which rollouts are comparable (NeMo Gym's rollout collection, `nemo_gym/rollout_collection.py`).

Two rollouts may form a pair only when they share the full context (instructions, system and
developer turns, every earlier turn) and, when the rows carry it, the task identity
(`agent_ref.name`, `_ng_task_index`, which restarts at 0 in every file) or the user's
`data.group_by` field. Only a fixed-size record per usable rollout is kept in memory; the texts
are re-read from the input by offset when a pair is written.
"""

from __future__ import annotations

import msgspec
import numpy as np
import xxhash

# One usable rollout. `key` groups comparable rollouts; `context` (the prompt alone) decides the
# train/val split so that a prompt never sits on both sides, even under two task identities.
RECORD = np.dtype([
    ("key_hi", "u8"),
    ("key_lo", "u8"),
    ("context", "u8"),
    ("response", "u8"),  # hash of the response (`cut.identity`): identical outputs never make a pair
    ("first", "u8"),  # hash of its first message, and
    ("shape", "u1"),  # its shape (`cut` bits): most cuts are settled from these two alone
    ("reward", "f8"),
    ("length", "u4"),  # characters of the response (length penalty, length bias)
    ("file", "u2"),
    ("nbytes", "u4"),
    ("offset", "u8"),
    ("line", "u8"),  # 1-based line number in its file
])

_encode = msgspec.json.Encoder(order="sorted").encode
_LOW = (1 << 64) - 1
CONTEXT_SALT = 0x9E3779B97F4A7C15  # the second half of the 128-bit context hash
_xxh64 = xxhash.xxh64_intdigest


def identity(file_index: int, agent: str | None, task_index: int | None, group_value) -> bytes:
    """The task identity part of a group key (empty when the row carries none)."""
    if group_value is not msgspec.UNSET:
        return b"F" + _encode(group_value)
    return _task_identity(file_index, agent, task_index)


def _task_identity(file_index: int, agent: str | None, task_index: int | None) -> bytes:
    if task_index is None and agent is None:
        return b""
    # task indices restart at 0 in every collection run: scope them to their file
    name = b"\x00" if agent is None else b"\x01" + _length_prefixed(agent.encode())
    # any integer, however large (JSON has no bound), scoped to its file
    index = b"\x00" if task_index is None else (
        b"\x01" + _length_prefixed(task_index.to_bytes(task_index.bit_length() // 8 + 1, "little", signed=True))
        + file_index.to_bytes(2, "little"))
    return b"T" + name + index


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _seed(instructions: str | None) -> int:
    return (_xxh64(instructions.encode()) + 1) & _LOW if instructions is not None else 0


def context_hash(raw_input, instructions: str | None) -> int:
    """The 64-bit hash of one request: its `input` exactly as written plus `instructions`. Rows
    of one task carry byte-identical requests, and a hash of the bytes costs no re-encoding."""
    return _xxh64(raw_input, _seed(instructions))


def context_identity(raw_input, instructions: str | None, context: int) -> bytes:
    """The 128-bit identity of the request whose `context_hash` is `context`: the group key
    is made from it, so that two contexts never share a group by a 64-bit collision."""
    return context.to_bytes(8, "little") + _xxh64(raw_input, _seed(instructions) ^ CONTEXT_SALT).to_bytes(8, "little")


def group_key(context: bytes, task: bytes) -> tuple[int, int]:
    """(high, low) of the 128-bit group key: the context identity and the task identity."""
    return _xxh64(context + task, 1), _xxh64(context + task, 2)


def sort_records(records: np.ndarray) -> np.ndarray:
    """Records ordered by group, then by input position: a canonical order for any chunking."""
    order = np.lexsort((records["line"], records["file"], records["key_lo"], records["key_hi"]))
    return records[order]


def group_starts(key_hi: np.ndarray, key_lo: np.ndarray) -> np.ndarray:
    """Where each run of equal (key_hi, key_lo) begins, in keys sorted by group (`sort_records`)."""
    if len(key_hi) == 0:
        return np.zeros(0, dtype=np.int64)
    changes = np.flatnonzero((key_hi[1:] != key_hi[:-1]) | (key_lo[1:] != key_lo[:-1])) + 1
    return np.concatenate(([0], changes)).astype(np.int64)


def group_sizes(starts: np.ndarray, n: int) -> np.ndarray:
    """How many of the `n` sorted rows each group beginning at `starts` holds."""
    return np.diff(np.append(starts, n))


def group_ids(starts: np.ndarray, n: int) -> np.ndarray:
    """Each of the `n` sorted rows' group: its position in `starts`."""
    return np.repeat(np.arange(len(starts)), group_sizes(starts, n))
