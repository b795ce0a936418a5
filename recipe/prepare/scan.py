"""First pass, run in worker processes: one chunk of input lines -> fixed-size records + rejects.

Each line is decoded and validated (the typed msgspec decoder of `rollouts`), checked for what
DPO needs (a finite reward, not masked, a context, assistant text) and reduced to a
`grouping.RECORD`. Texts are not kept and context messages are not built here: `convert` builds
them later, only for the lines that end up in a pair, and it runs the very same checks.

Speed comes from the libraries doing the per-line work in bulk: line boundaries from numpy, many
lines decoded in one msgspec call (`decode_lines`; a block with a bad line is read again line by
line, so every line gets its own outcome), and the request, which the rollouts of a task share
byte for byte, decoded, checked and hashed once per chunk.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from functools import lru_cache

import msgspec
import numpy as np

from recipe.prepare import chat, cut, grouping, rollouts

OPEN_BRACE, NEWLINE = ord("{"), ord("\n")


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
        raise chat.Unusable("mask_sample", "mask_sample is true: the environment says do not train on it")
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


def line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every line of `data` (end excludes the newline; a last line without one counts)."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == NEWLINE)
    ends = newlines if data.endswith(b"\n") or not data else np.append(newlines, len(data))
    starts = np.concatenate(([0], newlines[: len(ends) - 1] + 1)) if len(ends) else ends
    return starts.astype(np.int64), ends.astype(np.int64)


def _scan(chunk: rollouts.Chunk, options: ScanOptions) -> ChunkResult:
    data = rollouts.read_chunk(chunk)
    starts, ends = line_bounds(data)
    reader = LineReader(chunk, options)
    first_bytes = np.frombuffer(data, dtype=np.uint8)[np.minimum(starts, max(len(data) - 1, 0))] if len(data) else starts
    # a block goes to msgspec in one call when every line of it starts an object (no blank lines:
    # decode_lines skips those) and it is UTF-8 (msgspec skips the values it ignores unchecked)
    objects = (ends > starts) & (first_bytes == OPEN_BRACE)
    for first in range(0, len(starts), BLOCK_LINES):
        last = min(first + BLOCK_LINES, len(starts))
        block = data[starts[first]:ends[last - 1]]
        rows = None
        if objects[first:last].all() and rollouts.is_utf8(block):
            try:
                rows = reader.decoder.decode_lines(block)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                rows = None  # some line of the block is bad: each line on its own says which
        for index in range(first, last):
            start, end = int(starts[index]), int(ends[index])
            if rows is None:
                reader.read(data[start:end], index + 1, start)
            else:
                reader.accept(rows[index - first], data, index + 1, start, end)
    return ChunkResult(chunk, len(starts), reader.records(), reader.rejects)


@dataclass
class _Request:
    """What a request gives every rollout that carries it: its typed input and its checks'
    outcome (None or the Unusable it raised), its context hash and identity."""

    params_input: object
    unusable: chat.Unusable | None
    context_hash: int
    context: bytes


class LineReader:
    """The rollouts of one chunk: a record for a usable line, a `Reject` otherwise."""

    def __init__(self, chunk: rollouts.Chunk, options: ScanOptions):
        self.chunk = chunk
        self.options = options
        self.rollouts = rollouts.Reader(options.group_by)
        self.decoder = self.rollouts.row_decoder
        self.measure = length_measure(options.tokenizer)
        self.requests: dict[tuple[bytes, str | None], _Request] = {}
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
        params = row.responses_create_params
        request = self._request(params.input, params.instructions)
        try:
            if request is None or not self.rollouts.check_task_index(row):
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
        agent = row.agent_ref.name if row.agent_ref is not None else None
        group_value = row.group_value if self.options.group_by is not None else msgspec.UNSET
        task = grouping.identity(self.chunk.file_index, agent, row.task_index, group_value)
        key_hi, key_lo = grouping.group_key(request.context, task)
        self.rows.append((key_hi, key_lo, request.context_hash, *cut.identity(response),
                          row.reward, chat.response_length(response, self.measure),
                          self.chunk.file_index, end - start, self.chunk.start + base + start, number))

    def _request(self, raw_input, instructions: str | None) -> _Request | None:
        """The request's `_Request`, made once per distinct request of the chunk; None when its
        input fails the typed decode (the line is then a schema reject)."""
        key = (bytes(raw_input), instructions)
        request = self.requests.get(key)
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
            request = _Request(params_input, unusable, *grouping.context_key(key[0], instructions))
            self.requests[key] = request
        return request
