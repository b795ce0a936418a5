"""Second pass and output files: re-read the paired lines, build NeMo RL records, write atomically.

Records are built in worker processes from the input lines (by offset); every record is checked
against `schemas/pair.schema.json` (jsonschema_rs) before it is written.
Outputs go to temporary files that are renamed only when everything succeeded, so a failed run
never leaves half-written data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jsonschema_rs
import numpy as np
import orjson

from recipe.prepare import rollouts, scan


SIDE = [("file", "u2"), ("line", "u8"), ("offset", "u8"), ("nbytes", "u4"), ("reward", "f8"),
        ("length", "u4")]
# One pair: where to re-read its two lines, and what the manifest and report need of it.
PAIR = np.dtype([("key_hi", "u8"), ("key_lo", "u8"), ("context", "u8"), ("score_gap", "f8")]
                + [(f"chosen_{name}", kind) for name, kind in SIDE]
                + [(f"rejected_{name}", kind) for name, kind in SIDE])


_AT = {name: index for index, name in enumerate(PAIR.names)}  # a field's place in a row tuple
_CHOSEN_FILE, _CHOSEN_OFFSET, _CHOSEN_NBYTES = (_AT[f"chosen_{n}"] for n in ("file", "offset", "nbytes"))
_REJECTED_FILE, _REJECTED_OFFSET, _REJECTED_NBYTES = (_AT[f"rejected_{n}"] for n in ("file", "offset", "nbytes"))


def pairs_of(records: np.ndarray, chosen: np.ndarray, rejected: np.ndarray,
             score_gap: np.ndarray) -> np.ndarray:
    """PAIR rows for positions `chosen[i]`, `rejected[i]` of `records`."""
    pairs = np.empty(len(chosen), dtype=PAIR)
    for name in ("key_hi", "key_lo", "context"):
        pairs[name] = records[name][chosen]
    pairs["score_gap"] = score_gap
    for name, _ in SIDE:
        pairs[f"chosen_{name}"] = records[name][chosen]
        pairs[f"rejected_{name}"] = records[name][rejected]
    return pairs


class PairSchemaError(RuntimeError):
    """A pair we built fails the pair schema: a bug of ours, never the user's data."""


# A pair line is put together from the JSON of its parts (as orjson writes them). PreferenceDataset: the context and two ranked
# completions (a plain-text response becomes one assistant message); BinaryPreferenceDataset:
# prompt (the only user turn's text, else the context), chosen and rejected texts.
def _completion(response: bytes) -> bytes:
    return response if response[:1] == b"[" else b'[{"role":"assistant","content":' + response + b"}]"


def preference_line(context: bytes, chosen: bytes, rejected: bytes) -> bytes:
    return (b'{"context":' + context + b',"completions":[{"rank":0,"completion":' + _completion(chosen)
            + b'},{"rank":1,"completion":' + _completion(rejected) + b"}]}")


def binary_line(prompt: bytes, chosen: bytes, rejected: bytes) -> bytes:
    return b'{"prompt":' + prompt + b',"chosen":' + chosen + b',"rejected":' + rejected + b"}"


class PairBuilder:
    """Per worker: converts the two lines of a pair and returns the JSONL line to write."""

    def __init__(self, paths: list[str], options: scan.ScanOptions, keep_extra_fields: bool):
        self.paths = paths
        self.options = options
        self.keep_extra_fields = keep_extra_fields
        self.reader = rollouts.Reader(options.group_by)
        self.validator = jsonschema_rs.validator_for(rollouts.schema("pair"))
        # lines are read with pread: a file mapping would count the pages it touched as the
        # process's memory (PSS), up to the whole input
        self.files = [open(p, "rb", buffering=0) for p in paths]  # closed with the builder
        self.fds = tuple(handle.fileno() for handle in self.files)

    def _parts(self, file: int, offset: int, nbytes: int) -> tuple[bytes, bytes, bytes | None]:
        """(context JSON, response JSON, prompt JSON when the context is one user turn)."""
        line = os.pread(self.fds[file], nbytes, offset)
        context, response = scan.convert(*self.reader.decode(line), self.options)
        single_user_turn = len(context) == 1 and context[0]["role"] == "user"
        return (orjson.dumps(context), orjson.dumps(response),
                orjson.dumps(context[0]["content"]) if single_user_turn else None)

    def build_all(self, pairs: np.ndarray) -> list[bytes]:
        """The JSONL lines of a batch of pairs."""
        return [self.build(row) for row in pairs.tolist()]

    def build(self, pair: tuple) -> bytes:
        """The JSONL line of one pair (`pair`: a PAIR row as a tuple)."""
        context, chosen, prompt = self._parts(
            pair[_CHOSEN_FILE], pair[_CHOSEN_OFFSET], pair[_CHOSEN_NBYTES])
        _, rejected, _ = self._parts(
            pair[_REJECTED_FILE], pair[_REJECTED_OFFSET], pair[_REJECTED_NBYTES])
        if self.options.binary:
            line = binary_line(prompt or context, chosen, rejected)
        else:
            line = preference_line(context, chosen, rejected)
        if not self.validator.is_valid(orjson.loads(line)):
            error = next(iter(self.validator.iter_errors(orjson.loads(line))))
            raise PairSchemaError(f"a pair from {self.source(pair, 'chosen')} and "
                                  f"{self.source(pair, 'rejected')} fails the pair schema: {error}")
        if self.keep_extra_fields:
            line = line[:-1] + b"," + self.extra_fields(pair)[1:]
        return line + b"\n"

    def extra_fields(self, pair: tuple) -> bytes:
        """`data.keep_extra_fields`: the pair's rewards, gap, group and sources, as a JSON object."""
        field = dict(zip(PAIR.names, pair))
        return orjson.dumps({
            "chosen_reward": field["chosen_reward"],
            "rejected_reward": field["rejected_reward"],
            "reward_gap": field["chosen_reward"] - field["rejected_reward"],
            "group_id": f"{field['key_hi']:016x}{field['key_lo']:016x}",
            "chosen_source": self.source(pair, "chosen"),
            "rejected_source": self.source(pair, "rejected"),
        })

    def source(self, pair: tuple, side: str) -> str:
        return f"{self.paths[pair[_AT[side + '_file']]]}:{pair[_AT[side + '_line']]}"


class AtomicFiles:
    """Files written under temporary names, renamed into place together on `commit()`."""

    def __init__(self, folder: Path, names: list[str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.final = {name: folder / name for name in names}
        self.temp = {name: folder / f".{name}.partial-{os.getpid()}" for name in names}
        self.handles = {name: open(self.temp[name], "wb") for name in names}
        self.hashes = {name: hashlib.sha256() for name in names}
        self.sizes = dict.fromkeys(names, 0)
        self.lines = dict.fromkeys(names, 0)

    def _add(self, name: str, data) -> None:
        self.handles[name].write(data)
        self.hashes[name].update(data)
        self.sizes[name] += len(data)

    def write(self, name: str, data: bytes) -> None:
        self._add(name, data)
        self.lines[name] += data.count(b"\n")

    def append(self, name: str, part: Path, lines: int, block: int = 1 << 22) -> None:
        """Append the file `part` (of `lines` lines) to `name`, then delete it."""
        buffer = bytearray(block)
        view = memoryview(buffer)
        with open(part, "rb", buffering=0) as source:
            while size := source.readinto(buffer):
                self._add(name, view[:size])
        self.lines[name] += lines
        part.unlink()

    def digest(self, name: str) -> dict:
        return {"path": str(self.final[name]), "lines": self.lines[name],
                "bytes": self.sizes[name], "sha256": self.hashes[name].hexdigest()}

    def commit(self) -> None:
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for name, temp in self.temp.items():
            os.replace(temp, self.final[name])

    def abort(self) -> None:
        for handle in self.handles.values():
            handle.close()
        for temp in self.temp.values():
            temp.unlink(missing_ok=True)
