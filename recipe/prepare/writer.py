"""Second pass and output files: re-read the paired lines, build NeMo RL records, write atomically.

Records are built in worker processes from the input lines (by offset); every record is checked
against `schemas/pair.schema.json` before it is written. Outputs go to temporary files that are
renamed only when everything succeeded, so a failed run never leaves half-written data.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import jsonschema_rs
import msgspec
import orjson

from recipe.prepare import rollouts, scan


@dataclass(frozen=True)
class Side:
    file: int
    line: int
    offset: int
    nbytes: int
    reward: float


@dataclass(frozen=True)
class PairRef:
    chosen: Side
    rejected: Side
    group: str  # hex group key
    score_gap: float  # gap in the strategy's score (after normalisation / length penalty)


class PairSchemaError(RuntimeError):
    pass


def preference_record(context: list[dict], chosen, rejected) -> dict:
    def completion(response):
        return [{"role": "assistant", "content": response}] if isinstance(response, str) else response

    return {"context": context, "completions": [
        {"rank": 0, "completion": completion(chosen)},
        {"rank": 1, "completion": completion(rejected)},
    ]}


def binary_record(context: list[dict], chosen: str, rejected: str) -> dict:
    single_user_turn = len(context) == 1 and context[0]["role"] == "user"
    return {"prompt": context[0]["content"] if single_user_turn else context,
            "chosen": chosen, "rejected": rejected}


class PairBuilder:
    """Per worker: decodes the two lines of a pair and returns the JSONL line to write."""

    def __init__(self, paths: list[str], options: scan.ScanOptions, keep_extra_fields: bool):
        self.paths = paths
        self.options = options
        self.keep_extra_fields = keep_extra_fields
        self.decoder = msgspec.json.Decoder(rollouts.rollout_type(options.group_by))
        self.validator = jsonschema_rs.validator_for(rollouts.schema("pair"))
        self.files = [open(p, "rb") for p in paths]

    def _side(self, side: Side):
        handle = self.files[side.file]
        handle.seek(side.offset)
        return scan.convert(self.decoder.decode(handle.read(side.nbytes)), self.options)

    def build(self, pair: PairRef) -> bytes:
        context, chosen = self._side(pair.chosen)
        _, rejected = self._side(pair.rejected)
        if self.options.binary:
            record = binary_record(context, chosen, rejected)
        else:
            record = preference_record(context, chosen, rejected)
        if not self.validator.is_valid(record):
            error = next(iter(self.validator.iter_errors(record)))
            raise PairSchemaError(f"a pair from {self.source(pair.chosen)} and "
                                  f"{self.source(pair.rejected)} fails the pair schema: {error}")
        if self.keep_extra_fields:
            record.update({
                "chosen_reward": pair.chosen.reward,
                "rejected_reward": pair.rejected.reward,
                "reward_gap": pair.chosen.reward - pair.rejected.reward,
                "group_id": pair.group,
                "chosen_source": self.source(pair.chosen),
                "rejected_source": self.source(pair.rejected),
            })
        return orjson.dumps(record) + b"\n"

    def source(self, side: Side) -> str:
        return f"{self.paths[side.file]}:{side.line}"


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

    def write(self, name: str, data: bytes) -> None:
        self.handles[name].write(data)
        self.hashes[name].update(data)
        self.sizes[name] += len(data)
        self.lines[name] += data.count(b"\n")

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
