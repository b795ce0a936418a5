"""Read NeMo Gym rollout files: split them into line-aligned chunks and decode each line.

The fast path is a typed msgspec decode: it checks the layout of `schemas/rollout.schema.json`
while it parses, and skips every key we do not read. When a line fails, jsonschema (the slow,
precise validator) explains which field is wrong. `tests/unit/test_schemas.py` checks that both
agree on valid and invalid records.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType, field


class Part(Struct, gc=False):
    type: str | None = None
    text: str | None = None


Content = str | list[Part] | None


class Item(Struct, gc=False):
    """One Responses API item: message (with or without `type`), reasoning, function_call, ..."""

    type: str | None = None
    role: str | None = None
    content: Content = None
    name: str | None = None
    arguments: str | None = None
    call_id: str | None = None
    output: Content = None
    summary: list[Part] | None = None


Input = str | list[Item] | None


class Params(Struct, gc=False):
    # Kept raw: its bytes identify the context (hashed as written), and `Reader` decodes them
    # with the `Input` type to validate them.
    input: msgspec.Raw = msgspec.Raw(b"null")
    instructions: str | None = None


class Response(Struct, gc=False):
    output: list[Item] | None = None


class AgentRef(Struct, gc=False):
    name: str | None = None


class Request(Struct, gc=False):
    """The request typed straight away: for lines the scan has validated already."""

    input: Input = None
    instructions: str | None = None


class PairSide(Struct, gc=False):
    """What a pair needs of a rollout the scan accepted: its request and its output."""

    responses_create_params: Request
    response: Response | None = None
    output: list[Item] | None = None


class Output(Struct, gc=False):
    """A rollout the scan accepted, when only its output is needed (the other side of a pair
    shares its context)."""

    response: Response | None = None
    output: list[Item] | None = None


_BASE_FIELDS = [
    ("responses_create_params", Params),
    ("response", Response | None, None),
    ("output", list[Item] | None, None),
    ("reward", float | None | UnsetType, UNSET),
    ("mask_sample", bool | None, None),
    # JSON Schema's "integer" takes 3.0 too: the decoder takes a float, `Reader.check_task_index` checks it
    ("task_index", int | float | None, field(default=None, name="_ng_task_index")),
    ("agent_ref", AgentRef | None, None),
]

_RESERVED = {"responses_create_params", "response", "output", "reward", "mask_sample",
             "_ng_task_index", "agent_ref"}


@cache
def rollout_type(group_by: str | None = None) -> type:
    """The typed view of a rollout; `group_by` adds the user's grouping field (any JSON value)."""
    fields = list(_BASE_FIELDS)
    if group_by:
        if group_by in _RESERVED:
            raise ValueError(f"data.group_by={group_by!r} is a field gym-dpo already reads; "
                             "name another top-level field (for example task_id)")
        fields.append(("group_value", Any, field(default=UNSET, name=group_by)))
    return msgspec.defstruct("Rollout", fields, gc=False)


class Reader:
    """The typed decode of a line; raises msgspec's errors when it is invalid, RecursionError for
    a line nested deeper than msgspec decodes (Python's recursion limit)."""

    def __init__(self, group_by: str | None = None):
        self.row_decoder = msgspec.json.Decoder(rollout_type(group_by))
        self.input_decoder = msgspec.json.Decoder(Input)

    def decode(self, line: bytes) -> tuple[Any, Input]:
        """(the rollout, its typed `responses_create_params.input`). The whole line must be UTF-8,
        the values msgspec skips unread included."""
        if not is_utf8(line):
            raise msgspec.DecodeError("the line is not UTF-8")
        row = self.row_decoder.decode(line)
        if not self.check_task_index(row):
            raise msgspec.ValidationError("Expected `int`, got `float` - at `$._ng_task_index`")
        return row, self.input_decoder.decode(row.responses_create_params.input)

    @staticmethod
    def check_task_index(row) -> bool:
        """JSON Schema's "integer" takes 3.0, so the decoder takes a float: one that is a whole
        number becomes an int, any other is invalid (False)."""
        if isinstance(row.task_index, float):
            if not row.task_index.is_integer():
                return False
            row.task_index = int(row.task_index)
        return True


def is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


TOO_DEEP = ("too_deep", "nested deeper than the decoder follows (Python's recursion limit, about "
            "1,000 levels)")


@cache
def schema(name: str) -> dict:
    text = resources.files("recipe.prepare").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)


def explain_invalid(line: bytes) -> tuple[str, str]:
    """(reason, detail) for a line the typed decoder refused: the precise jsonschema message."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "not_utf8", f"byte {exc.start} is not UTF-8"
    try:
        obj = json.loads(text)  # Python's parser, laxer than JSON: NaN, Infinity, lone surrogates
    except RecursionError:
        return TOO_DEEP
    except json.JSONDecodeError as exc:
        return "malformed_json", f"{exc.msg} at column {exc.colno}"
    reward = obj.get("reward") if isinstance(obj, dict) else None
    if isinstance(reward, float) and not math.isfinite(reward):
        return "reward_not_finite", f"reward is {reward}"
    try:
        json.loads(text, parse_constant=_refuse)
    except ValueError as exc:
        return "malformed_json", f"{exc} is not JSON"
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "malformed_json", "a \\u escape is a lone surrogate, not a character"
    if not isinstance(obj, dict):
        return "not_an_object", f"the line is a JSON {type(obj).__name__}, not an object"
    import jsonschema  # slow path only: importing it costs ~0.1 s

    validator = jsonschema.Draft202012Validator(schema("rollout"))
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        reason = "out_of_range" if error.validator in ("minimum", "maximum") else "schema"
        return reason, f"{where}: {error.message[:300]}"
    return "schema", "the typed decoder refused a record the schema accepts; please report it"


def _refuse(constant: str):
    raise ValueError(constant)


@dataclass(frozen=True)
class Chunk:
    """A byte range of one input file that starts and ends on line boundaries."""

    file_index: int
    path: str
    start: int
    end: int


def chunks(paths: list[str], chunk_bytes: int) -> Iterator[Chunk]:
    """Cut every file into ranges of about `chunk_bytes`, each ending after a newline."""
    for index, path in enumerate(paths):
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            start = 0
            while start < size:
                end = min(start + chunk_bytes, size)
                if end < size:
                    handle.seek(end)
                    rest = handle.readline()
                    end += len(rest)
                yield Chunk(index, path, start, end)
                start = end


def read_chunk(chunk: Chunk) -> bytes:
    with open(chunk.path, "rb") as handle:
        handle.seek(chunk.start)
        return handle.read(chunk.end - chunk.start)
