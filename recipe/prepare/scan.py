"""First pass, run in worker processes: one chunk of input lines -> fixed-size records + rejects.

Each line is decoded and validated (the typed msgspec decoder of `rollouts`), checked for what
DPO needs (a finite reward, not masked, a context, assistant text) and reduced to a
`grouping.RECORD`. Texts are not kept and context messages are not built here: `convert` builds
them later, only for the lines that end up in a pair, and it runs the very same checks.

Speed comes from the libraries doing the per-line work in bulk: many lines decoded in one msgspec
call (`decode_lines`; a block with a bad line is read again line by line, so every line gets its
own outcome), and the request, which the rollouts of a task share byte for byte, decoded and
checked once per chunk.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from functools import lru_cache

import msgspec
import numpy as np

from recipe.prepare import chat, cut, grouping, rollouts

OPEN_BRACE = ord("{")


@dataclass(frozen=True)
class ScanOptions:
    group_by: str | None = None
    chat: chat.ChatOptions = chat.ChatOptions()
    binary: bool = False  # BinaryPreferenceDataset: completions must be plain text (`cut`)
    tokenizer: str | None = None  # a local tokenizer.json: response lengths in tokens


@lru_cache(maxsize=2)
def length_measure(tokenizer: str | None):
    """How a response's length is counted: characters, or tokens of a local tokenizer."""
    if tokenizer is None:
        return len
    from tokenizers import Tokenizer  # the `local` extra; checked when the config is read

    encode = Tokenizer.from_file(tokenizer).encode
    return lambda text: len(encode(text, add_special_tokens=False).ids)


@dataclass
class Reject:
    file: int
    line: int  # 1-based in its file (chunk-local until the parent fixes it up)
    reason: str
    detail: str


@dataclass
class ChunkResult:
    chunk: rollouts.Chunk
    lines: int
    records: np.ndarray
    rejects: list[Reject] = field(default_factory=list)


def checked_response(row, params_input, options: ScanOptions) -> str | list[dict]:
    """The output of a usable rollout (`chat.output_of`), or `chat.Unusable` with the reason it
    is not usable."""
    check_row(row)
    chat.check_context(params_input, row.responses_create_params.instructions)
    return output_of(row, options)


def check_row(row) -> None:
    """What a row says about itself: masked, or no usable reward (`chat.Unusable`)."""
    if row.mask_sample:
        why = f" ({row.failure_kind}: {row.failure_reason})" if getattr(row, "failure_kind", None) else ""
        raise chat.Unusable("mask_sample", f"mask_sample is true: the environment says do not train on it{why}")
    if row.reward is msgspec.UNSET:
        raise chat.Unusable("reward_missing", "no reward key (the judge did not run)")
    if row.reward is None:
        raise chat.Unusable("reward_null", "reward is null (the judge did not run)")
    if not math.isfinite(row.reward):
        raise chat.Unusable("reward_not_finite", f"reward is {row.reward}")


def output_of(row, options: ScanOptions) -> str | list[dict]:
    output = row.response.output if row.response is not None else None
    if output is None:
        output = row.output  # legacy layout: items at the top level
    return chat.output_of(output, options.chat)


def convert(row, params_input, options: ScanOptions) -> tuple[list[dict], str | list[dict]]:
    """(context messages, output) of a decoded rollout, or `chat.Unusable`."""
    response = checked_response(row, params_input, options)
    return chat.context_of(params_input, row.responses_create_params.instructions, options.chat), response


def scan_chunk(chunk: rollouts.Chunk, options: ScanOptions) -> ChunkResult:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived acyclic objects: reference counting frees them all
    try:
        return _scan(chunk, options)
    finally:
        if gc_was_enabled:
            gc.enable()


BLOCK_LINES = 256  # lines decoded in one msgspec call


def line_bounds(data: bytes) -> tuple[list[int], list[int]]:
    """(start, end) of every line of `data` (end excludes the newline; a last line without one
    counts). bytes.find (memchr) per line costs less than a numpy pass over every byte."""
    starts, ends = [], []
    find, position, size = data.find, 0, len(data)
    while position < size:
        end = find(b"\n", position)
        if end < 0:
            end = size
        starts.append(position)
        ends.append(end)
        position = end + 1
    return starts, ends


def _scan(chunk: rollouts.Chunk, options: ScanOptions) -> ChunkResult:
    data = rollouts.read_chunk(chunk)
    starts, ends = line_bounds(data)
    reader = LineReader(chunk, options)
    decode_lines = reader.decoder.decode_lines
    for first in range(0, len(starts), BLOCK_LINES):
        last = min(first + BLOCK_LINES, len(starts))
        block = data[starts[first]:ends[last - 1]]
        rows = None
        # one msgspec call for the block when every line of it starts an object (no blank lines:
        # decode_lines skips those) and it is UTF-8 (msgspec leaves the values it skips unchecked)
        if all(s < e and data[s] == OPEN_BRACE for s, e in zip(starts[first:last], ends[first:last])) \
                and rollouts.is_utf8(block):
            try:
                rows = decode_lines(block)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                rows = None  # some line of the block is bad: each line on its own says which
        if rows is None:
            for index in range(first, last):
                reader.read(data[starts[index]:ends[index]], index + 1, starts[index])
        else:
            accept = reader.accept
            for index, row in enumerate(rows, first):
                accept(row, data, index + 1, starts[index], ends[index])
    return ChunkResult(chunk, len(starts), reader.records(), reader.rejects)


@dataclass
class _Request:
    """What a request gives every rollout that carries it: its checks' outcome (None or the
    Unusable it raised), its context hash and identity, and its group key under each task."""

    unusable: chat.Unusable | None
    context_hash: int
    context: bytes
    group_keys: dict = field(default_factory=dict)  # (agent, task index) -> (key high, key low)


class LineReader:
    """The rollouts of one chunk: a record for a usable line, a `Reject` otherwise."""

    def __init__(self, chunk: rollouts.Chunk, options: ScanOptions):
        self.chunk = chunk
        self.options = options
        self.rollouts = rollouts.Reader(options.group_by)
        self.decoder = self.rollouts.row_decoder
        self.measure = length_measure(options.tokenizer)
        self.requests: dict[int, _Request] = {}
        self.rows: list[tuple] = []
        self.rejects: list[Reject] = []

    def records(self) -> np.ndarray:
        return np.array(self.rows, dtype=grouping.RECORD)

    def reject(self, number: int, reason: str, detail: str) -> None:
        self.rejects.append(Reject(self.chunk.file_index, number, reason, detail))

    def read(self, line: bytes, number: int, start: int) -> None:
        """One line on its own: decoded, then `accept`ed, or rejected with its reason."""
        if not line or line[0] != OPEN_BRACE:
            if not line.strip():
                self.reject(number, "blank_line", "the line is empty")
                return
        if not rollouts.is_utf8(line):
            self.reject(number, *rollouts.explain_invalid(line))
            return
        try:
            row = self.decoder.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            self.reject(number, *rollouts.explain_invalid(line))
            return
        except RecursionError:
            self.reject(number, *rollouts.TOO_DEEP)
            return
        self.accept(row, line, number, 0, len(line), base=start)

    def accept(self, row, data: bytes, number: int, start: int, end: int, base: int = 0) -> None:
        """A decoded row (line `number`, at data[start:end]; `base` + start in the chunk)."""
        try:
            params = rollouts.from_episode(row).responses_create_params
            request = self._request(params.input, params.instructions) if params is not None else None
            if request is None or (type(row.task_index) is float and not self.rollouts.check_task_index(row)):
                raise msgspec.ValidationError
            check_row(row)
            if request.unusable is not None:
                raise request.unusable
            response = output_of(row, self.options)
        except msgspec.ValidationError:
            self.reject(number, *rollouts.explain_invalid(data[start:end]))
            return
        except RecursionError:
            self.reject(number, *rollouts.TOO_DEEP)
            return
        except chat.Unusable as exc:
            self.reject(number, exc.reason, exc.detail)
            return
        # NeMo Gym's own grouping: the agent, else (0.7.0's episode rows) the environment server
        agent = row.agent_ref.name if row.agent_ref is not None else row.environment_server
        if self.options.group_by is None:
            task = (agent, row.task_index)
            keys = request.group_keys.get(task)
            if keys is None:
                identity = grouping.identity(self.chunk.file_index, agent, row.task_index, msgspec.UNSET)
                keys = request.group_keys[task] = grouping.group_key(request.context, identity)
        else:  # the user's field may be any JSON value: its encoding is the key
            identity = grouping.identity(self.chunk.file_index, agent, row.task_index, row.group_value)
            keys = grouping.group_key(request.context, identity)
        self.rows.append((*keys, request.context_hash, *cut.identity(response),
                          row.reward, chat.response_length(response, self.measure),
                          self.chunk.file_index, end - start, self.chunk.start + base + start, number))

    def _request(self, raw_input, instructions: str | None) -> _Request | None:
        """The request's `_Request`, made once per distinct request of the chunk (found by its
        context hash); None when its input fails the typed decode (the line is then a schema
        reject)."""
        context_hash = grouping.context_hash(raw_input, instructions)
        request = self.requests.get(context_hash)
        if request is None:
            try:
                params_input = self.rollouts.input_decoder.decode(raw_input)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                return None
            unusable = None
            try:
                chat.check_context(params_input, instructions)
            except chat.Unusable as exc:
                unusable = exc
            request = self.requests[context_hash] = _Request(
                unusable, context_hash, grouping.context_identity(raw_input, instructions, context_hash))
        return request
