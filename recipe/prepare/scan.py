"""First pass, run in worker processes: one chunk of input lines -> fixed-size records + rejects.

Each line is decoded and validated (typed fast path), checked for what DPO needs (a finite reward,
not masked, a context, assistant text) and reduced to a `grouping.RECORD`. Texts are not kept and
context messages are not built here: `convert` builds them later, only for the lines that end up
in a pair, and it runs the very same checks.
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
    if row.mask_sample:
        raise chat.Unusable("mask_sample", "mask_sample is true: the environment says do not train on it")
    if row.reward is msgspec.UNSET:
        raise chat.Unusable("reward_missing", "no reward key (the judge did not run)")
    if row.reward is None:
        raise chat.Unusable("reward_null", "reward is null (the judge did not run)")
    if not math.isfinite(row.reward):
        raise chat.Unusable("reward_not_finite", f"reward is {row.reward}")
    chat.check_context(params_input, row.responses_create_params.instructions)
    output = row.response.output if row.response is not None else None
    if output is None:
        output = row.output  # legacy layout: items at the top level
    return chat.output_of(output, options.chat)


def convert(row, params_input, options: ScanOptions) -> tuple[list[dict], str | list[dict]]:
    """(context messages, output) of a decoded rollout, or `chat.Unusable`."""
    response = checked_response(row, params_input, options)
    return chat.context_of(params_input, row.responses_create_params.instructions, options.chat), response


def _invalid(line) -> tuple[str, str]:
    return rollouts.explain_invalid(bytes(line))


def scan_chunk(chunk: rollouts.Chunk, options: ScanOptions) -> ChunkResult:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived acyclic objects: reference counting frees them all
    try:
        return _scan(chunk, options)
    finally:
        if gc_was_enabled:
            gc.enable()


def _scan(chunk: rollouts.Chunk, options: ScanOptions) -> ChunkResult:
    reader = LineReader(chunk, options)
    data = rollouts.read_chunk(chunk)
    view, find, size = memoryview(data), data.find, len(data)
    position = number = 0
    while position < size:
        end = find(b"\n", position)
        if end < 0:
            end = size
        number += 1
        reader.read(view[position:end], number, position)
        position = end + 1
    return ChunkResult(chunk, number, reader.records(), reader.rejects)


class LineReader:
    """The Python path, one line at a time: a record for a usable line, a `Reject` otherwise."""

    def __init__(self, chunk: rollouts.Chunk, options: ScanOptions):
        self.chunk = chunk
        self.options = options
        self.decode = rollouts.Reader(options.group_by).decode
        self.measure = length_measure(options.tokenizer)
        self.rows: list[tuple] = []
        self.rejects: list[Reject] = []

    def records(self) -> np.ndarray:
        return np.array(self.rows, dtype=grouping.RECORD)

    def read(self, line: memoryview, number: int, start: int) -> None:
        chunk, options = self.chunk, self.options
        if not line or line[0] != OPEN_BRACE:
            if not bytes(line).strip():
                self.rejects.append(Reject(chunk.file_index, number, "blank_line", "the line is empty"))
                return
        try:
            row, params_input = self.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            self.rejects.append(Reject(chunk.file_index, number, *_invalid(line)))
            return
        try:
            response = checked_response(row, params_input, options)
        except chat.Unusable as exc:
            self.rejects.append(Reject(chunk.file_index, number, exc.reason, exc.detail))
            return
        agent = row.agent_ref.name if row.agent_ref is not None else None
        group_value = row.group_value if options.group_by is not None else msgspec.UNSET
        task = grouping.identity(chunk.file_index, agent, row.task_index, group_value)
        key_hi, key_lo, context_hash = grouping.keys(
            row.responses_create_params.input, row.responses_create_params.instructions, task)
        self.rows.append((key_hi, key_lo, context_hash, *cut.identity(response),
                          row.reward, chat.response_length(response, self.measure),
                          chunk.file_index, len(line), chunk.start + start, number))
