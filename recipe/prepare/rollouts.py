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


class UserSim(Struct, gc=False):
    """NeMo Gym 0.7.0's user-simulation episode (`nemo_user_sim`): the whole conversation, kept raw
    (`from_episode` splits it into the request and the response)."""

    conversation_messages: msgspec.Raw = msgspec.Raw(b"null")


class Request(Struct, gc=False):
    """The request typed straight away: for lines the scan has validated already."""

    input: Input = None
    instructions: str | None = None


class PairSide(Struct, gc=False):
    """What a pair needs of a rollout the scan accepted: its request and its output."""

    responses_create_params: Request | None = None   # None: an episode row (`from_episode` makes it)
    response: Response | None = None
    output: list[Item] | None = None
    usersim_result: UserSim | None = None


class Output(Struct, gc=False):
    """A rollout the scan accepted, when only its output is needed (the other side of a pair
    shares its context)."""

    response: Response | None = None
    output: list[Item] | None = None
    usersim_result: UserSim | None = None


_BASE_FIELDS = [
    ("responses_create_params", Params | None, None),  # None: an episode row (`from_episode`) or a reject
    ("response", Response | None, None),
    ("output", list[Item] | None, None),
    ("reward", float | None | UnsetType, UNSET),
    ("mask_sample", bool | None, None),
    # JSON Schema's "integer" takes 3.0 too: the decoder takes a float, `Reader.check_task_index` checks it
    ("task_index", int | float | None, field(default=None, name="_ng_task_index")),
    ("agent_ref", AgentRef | None, None),
    # NeMo Gym 0.7.0: which environment server made the row (what groups it when agent_ref is absent),
    # the result type it wrote, and a diagnosis that does not by itself mask the row
    ("environment_server", str | None, field(default=None, name="_ng_environment_server")),
    ("result_type", str | None, field(default=None, name="_ng_result_type")),
    ("failure_kind", str | None, None),
    ("failure_reason", str | None, None),
    ("usersim_result", UserSim | None, None),
]

_RESERVED = {"responses_create_params", "response", "output", "reward", "mask_sample", "_ng_task_index",
             "agent_ref", "_ng_environment_server", "_ng_result_type", "failure_kind", "failure_reason",
             "usersim_result"}


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
        row = from_episode(self.row_decoder.decode(line))
        if row.responses_create_params is None:
            raise msgspec.ValidationError("Object missing required field `responses_create_params`")
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


_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_ITEMS = msgspec.json.Decoder(list[Item])
OPENING_ROLES = ("system", "developer", "user")


def from_episode(row):
    """A user-simulation episode (NeMo Gym 0.7.0's `nemo_user_sim`: no responses_create_params or
    response, the conversation in `usersim_result.conversation_messages`) read as an agent row: its
    opening system/user turns are the request (their bytes as written: the context's identity),
    the rest, from the model's first turn on, the response. Any other row is returned as it is.
    Raises msgspec.ValidationError when the conversation is not a list of items."""
    episode = row.usersim_result
    if getattr(row, "responses_create_params", None) is not None or episode is None \
            or bytes(episode.conversation_messages) == b"null":
        return row
    items = _ITEMS.decode(episode.conversation_messages)
    first = next((i for i, item in enumerate(items)
                  if item.role not in OPENING_ROLES or item.type not in (None, "message")), len(items))
    if "responses_create_params" in row.__struct_fields__:  # `Output` has no request
        raws = _RAW_ITEMS.decode(episode.conversation_messages)
        row.responses_create_params = Params(input=msgspec.Raw(b"[" + b",".join(map(bytes, raws[:first])) + b"]"))
    row.response = Response(output=items[first:])
    return row


def explain_layout(obj: dict) -> tuple[str, str] | None:
    """(reason, detail) for a row in none of the layouts gym-dpo reads (an agent row's request, a
    user-simulation episode's conversation), naming the layout it is in and what it lacks; None
    for a row in one of them (its errors are the schema's to explain)."""
    episode = obj.get("usersim_result")
    if "responses_create_params" in obj or (isinstance(episode, dict) and "conversation_messages" in episode):
        return None
    kind = obj.get("_ng_result_type")
    named = f" ({kind} result)" if isinstance(kind, str) else ""
    wanted = "no responses_create_params (agent rows) and no usersim_result.conversation_messages (episode rows)"
    if "sample" in obj and any("/" in key for key in obj):
        return "not_a_rollout", ("a reward-profiling summary (mean/reward, ..., sample: NeMo Gym's "
                                 "*_reward_profiling layout), not a rollout: give prepare the rollouts file")
    if "policy_response" in obj:
        return "episode_no_prompt", (f"an episode row{named} with the reply (policy_response) but not the prompt "
                                     f"it answers (NeMo Gym 0.7.0's bbq layout): {wanted}, so there is no context "
                                     "to pair replies on")
    if isinstance(episode, dict):
        return "episode_no_conversation", f"an episode row{named} whose usersim_result has no conversation_messages"
    keys = ", ".join(sorted(obj)[:8])
    return "no_request", f"a row{named} with {wanted}; its keys: {keys}"


def explain_steps(obj: dict) -> tuple[str, str] | None:
    """(reason, detail) for a response whose output is a list of steps, each a list of items."""
    response = obj.get("response")
    output = response.get("output") if isinstance(response, dict) else None
    if isinstance(output, list) and output and all(isinstance(step, list) for step in output):
        return "steps_output", ("response.output is a list of steps, each a list of items repeating the "
                                "conversation so far (NeMo Gym's aviary agent layout, the prompt inside it and "
                                "responses_create_params.input empty): gym-dpo reads one list of items")
    return None


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
    layout = explain_layout(obj) or explain_steps(obj)
    if layout is not None:
        return layout
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
