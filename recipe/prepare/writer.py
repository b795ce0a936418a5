"""Second pass and output files: re-read the paired lines, build NeMo RL records, write atomically.

Records are built in worker processes from the input lines (by offset); every record is checked
against `schemas/pair.schema.json` (jsonschema_rs) before it is written.
Outputs go to temporary files that are renamed only when everything succeeded, so a failed run
never leaves half-written data.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import jsonschema_rs
import numpy as np
import orjson

from recipe.prepare import chat, cut, rollouts
from recipe.prepare.lines import LineSource
from recipe.scratch import Scratch

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
    """A pair we built fails the pair schema or the cut: a bug of ours, never the user's data."""


class PairBuilder:
    """Per worker: re-reads the two lines of a pair, cuts them where they part, returns the
    JSONL line to write.

    PreferenceDataset: the context (the request, then the turns both rollouts share) and two
    ranked one-message completions. BinaryPreferenceDataset: prompt (the only user turn's text
    when that is the whole context, else the context's messages), chosen and rejected texts.
    """

    def __init__(self, lines: LineSource, keep_extra_fields: bool):
        self.lines = lines
        self.paths = [handle.name for handle in lines.files]
        self.binary = lines.options.binary
        self.keep_extra_fields = keep_extra_fields
        self.validator = jsonschema_rs.validator_for(rollouts.schema("pair"))
        # pairs whose context holds turns both share; tool calls whose arguments are not a JSON object
        self.tally = Counter()

    def build_all(self, pairs: np.ndarray) -> list[bytes]:
        """The JSONL lines of a batch of pairs."""
        return [self.build(row) for row in pairs.tolist()]

    def record(self, pair: tuple) -> dict:
        """The pair record of one pair (`pair`: a PAIR row as a tuple)."""
        context, chosen = self.lines.convert(pair[_CHOSEN_FILE], pair[_CHOSEN_OFFSET], pair[_CHOSEN_NBYTES])
        rejected = self.lines.output(pair[_REJECTED_FILE], pair[_REJECTED_OFFSET], pair[_REJECTED_NBYTES])
        if isinstance(chosen, str) and isinstance(rejected, str) and chosen != rejected:
            # two single answers part at their first and only message: no cut to look for
            return self._record(context, {"role": "assistant", "content": chosen},
                                {"role": "assistant", "content": rejected}, pair)
        parted = cut.cut(chosen, rejected, self.binary)
        if isinstance(parted, str):
            raise PairSchemaError(f"{self.source(pair, 'chosen')} and {self.source(pair, 'rejected')} were "
                                  f"paired, but they cannot be cut: {parted}")
        if cut.message_key(parted.chosen) == cut.message_key(parted.rejected):
            raise PairSchemaError(f"{self.source(pair, 'chosen')} and {self.source(pair, 'rejected')} "
                                  "end in the same message")
        self.tally["with_shared_turns"] += bool(parted.shared)
        return self._record(context + parted.shared, parted.chosen, parted.rejected, pair)

    def _record(self, context: list[dict], chosen: dict, rejected: dict, pair: tuple) -> dict:
        self.tally["arguments_as_written"] += _arguments_as_written(context) + _arguments_as_written(
            [chosen, rejected])
        if self.binary:
            # the prompt as text when it is one user turn with text (the schema's rule), else the turns
            as_text = len(context) == 1 and context[0]["role"] == "user" and chat.has_text(context[0]["content"])
            record = {"prompt": context[0]["content"] if as_text else context,
                      "chosen": chosen["content"], "rejected": rejected["content"]}
        else:
            record = {"context": context, "completions": [
                {"rank": 0, "completion": [chosen]}, {"rank": 1, "completion": [rejected]}]}
        if not self.validator.is_valid(record):
            error = next(iter(self.validator.iter_errors(record)))
            raise PairSchemaError(f"a pair from {self.source(pair, 'chosen')} and "
                                  f"{self.source(pair, 'rejected')} fails the pair schema: {error}")
        return record

    def build(self, pair: tuple) -> bytes:
        record = self.record(pair)
        if self.keep_extra_fields:
            record.update(self.extra_fields(pair))
        return orjson.dumps(record) + b"\n"

    def extra_fields(self, pair: tuple) -> dict:
        """`data.keep_extra_fields`: the pair's rewards, gap, group and sources."""
        chosen, rejected = pair[_AT["chosen_reward"]], pair[_AT["rejected_reward"]]
        return {
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            "reward_gap": chosen - rejected,  # infinite for rewards of +-1e308: orjson writes null
            "group_id": f"{pair[_AT['key_hi']]:016x}{pair[_AT['key_lo']]:016x}",
            "chosen_source": self.source(pair, "chosen"),
            "rejected_source": self.source(pair, "rejected"),
        }

    def source(self, pair: tuple, side: str) -> str:
        return f"{self.paths[pair[_AT[side + '_file']]]}:{pair[_AT[side + '_line']]}"


def _arguments_as_written(messages: list[dict]) -> int:
    return sum(isinstance(call["function"]["arguments"], str)
               for message in messages for call in message.get("tool_calls", ()))


class AtomicFiles:
    """Files written under temporary names in a scratch folder of `folder`, renamed into place
    together on `commit()`; `close()` removes the scratch folder (and with it whatever else the
    run kept there, the files too before a commit)."""

    def __init__(self, folder: Path, names: list[str]):
        self.folder = folder
        self.scratch = Scratch(folder, "prepare")  # sweeps what killed runs left in `folder`
        self.final = {name: folder / name for name in names}
        self.temp = {name: self.scratch.path / name for name in names}
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

    def sync(self) -> None:
        """Every file on disk under its temporary name (`commit` then only renames)."""
        for handle in self.handles.values():
            if not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()

    def commit(self) -> None:
        self.sync()
        for name, temp in self.temp.items():
            os.replace(temp, self.final[name])

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.scratch.remove()
