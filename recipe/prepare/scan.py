"""First pass, run in worker processes: one chunk of input lines -> fixed-size records + rejects.

Each line is decoded and validated (typed fast path), checked for what DPO needs (a finite reward,
not masked, a context, assistant text) and reduced to a `grouping.RECORD`; texts are not kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from recipe.prepare import chat, grouping, rollouts


@dataclass(frozen=True)
class ScanOptions:
    group_by: str | None = None
    chat: chat.ChatOptions = chat.ChatOptions()
    binary: bool = False  # BinaryPreferenceDataset: responses must be plain text


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


def convert(row, options: ScanOptions) -> tuple[list[dict], str | list[dict]]:
    """(context, response) of a decoded rollout, or `chat.Unusable` with the reason."""
    if row.mask_sample:
        raise chat.Unusable("mask_sample", "mask_sample is true: the environment says do not train on it")
    if row.reward is msgspec.UNSET:
        raise chat.Unusable("reward_missing", "no reward key (the judge did not run)")
    if row.reward is None:
        raise chat.Unusable("reward_null", "reward is null (the judge did not run)")
    if not math.isfinite(row.reward):
        raise chat.Unusable("reward_not_finite", f"reward is {row.reward}")
    params = row.responses_create_params
    context = chat.context_of(params.input, params.instructions, options.chat)
    output = row.response.output if row.response is not None else None
    if output is None:
        output = row.output  # legacy layout: items at the top level
    response = chat.response_of(output, options.chat)
    if options.binary and not isinstance(response, str):
        raise chat.Unusable("trajectory_in_binary_format", "data.format=binary holds plain text "
                            "only; this response has tool calls or several turns (use preference)")
    return context, response


def decode_line(line: bytes, decoder: msgspec.json.Decoder):
    """The typed rollout, or (reason, detail) explaining why the line is not one."""
    try:
        return decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return rollouts.explain_invalid(line)


def scan_chunk(chunk: rollouts.Chunk, options: ScanOptions) -> ChunkResult:
    data = rollouts.read_chunk(chunk)
    try:
        data.decode("utf-8")
        utf8_checked = True
    except UnicodeDecodeError:
        utf8_checked = False  # find the offending lines one by one below
    decoder = msgspec.json.Decoder(rollouts.rollout_type(options.group_by))
    rows: list[tuple] = []
    rejects: list[Reject] = []
    pieces = data.split(b"\n")
    if pieces and not pieces[-1]:
        pieces.pop()  # the newline that ends the last line does not start another
    offset = chunk.start
    for number, line in enumerate(pieces, start=1):
        start, offset = offset, offset + len(line) + 1
        if not line.strip():
            rejects.append(Reject(chunk.file_index, number, "blank_line", "the line is empty"))
            continue
        row = decode_line(line, decoder)
        if isinstance(row, tuple):
            rejects.append(Reject(chunk.file_index, number, *row))
            continue
        if not utf8_checked:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.append(Reject(chunk.file_index, number, "not_utf8",
                                      f"byte {exc.start} is not UTF-8"))
                continue
        try:
            context, response = convert(row, options)
        except chat.Unusable as exc:
            rejects.append(Reject(chunk.file_index, number, exc.reason, exc.detail))
            continue
        agent = row.agent_ref.name if row.agent_ref is not None else None
        group_value = getattr(row, "group_value", msgspec.UNSET)
        task = grouping.identity(chunk.file_index, agent, row.task_index, group_value)
        key_hi, key_lo, context_hash = grouping.keys(context, task)
        rows.append((key_hi, key_lo, context_hash, grouping.response_hash(response), row.reward,
                     chat.response_length(response), chunk.file_index, len(line), start, number))
    return ChunkResult(chunk, len(pieces), np.array(rows, dtype=grouping.RECORD), rejects)
