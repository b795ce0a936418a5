"""Where two trajectories part: the one assistant message a pair of rollouts can teach.

NeMo RL's DPO trains only the final message of each completion, conditioned on the context and
the completion's earlier messages. A pair of whole trajectories therefore compares two answers
under two different prompts, and the turn that made one trajectory better (often an early tool
call) gets no gradient. So a pair is cut at the first divergence: the messages both rollouts
share (assistant turns, tool calls with their results, environment turns) join the context, and
each completion is the assistant message where they first differ.

Messages are compared by what the model and the environment said, not by what neither produced
(tool call ids, `tool_call_id`s), and a tool call's arguments as the JSON value they encode, not
as the text the model wrote: `{"mass1": 1.0}` and `{"mass1":1}` call the tool with the same value
(JSON has one number type; key order and spacing carry nothing), so they are the same turn
(`message_key`). Arguments that are not JSON are compared as written. Some pairs cannot be cut:
- the first difference is in what the environment returned (a tool result, a user turn), or one
  trajectory stops while the environment goes on in the other: from there the two do not share a
  context (`environment_diverged`);
- the trajectories differ only after the model's last turn (`differs_after_last_turn`);
- `data.format=binary` and a completion is a tool call, which cannot be a string
  (`tool_call_in_binary_format`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import xxhash

REFUSALS = ("environment_diverged", "differs_after_last_turn", "tool_call_in_binary_format")
_TEXT_SEED = 0x5A17  # hash of an assistant message that is text only: its text, under this seed
_xxh64 = xxhash.xxh64_intdigest

# Record `shape` bits: 0 means a single assistant text message, the common case, which needs no
# cut (two different texts part at their first and only message).
SEVERAL = 1        # more than one message
FIRST_NOT_MODEL = 2  # the first message is not the assistant's
FIRST_CALLS = 4    # the first message holds tool calls


def message_key(message: dict) -> bytes:
    """What two messages must share to be the same turn: everything but ids, a tool call's
    arguments as a JSON value (`arguments_value`)."""
    if message["role"] == "assistant" and "tool_calls" in message:
        calls = [(c["function"]["name"], arguments_value(c["function"]["arguments"])) for c in message["tool_calls"]]
        return orjson.dumps(["assistant", message["content"], calls], option=orjson.OPT_SORT_KEYS)
    return orjson.dumps([message["role"], message["content"]])


def arguments_value(arguments) -> tuple[str, object]:
    """A tool call's arguments in one canonical form: ("json", the value they encode), numbers of
    equal value made equal (1.0 -> 1; keys are sorted where it is serialised), whether they come
    as an object or as its JSON text; ("text", as written) when they are not JSON."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return "text", arguments
    return "json", _canonical(arguments)


def _canonical(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def message_hash(message: dict) -> int:
    if message["role"] == "assistant" and "tool_calls" not in message:
        return text_hash(message["content"])
    return _xxh64(message_key(message))


def text_hash(text: str) -> int:
    """`message_hash` of an assistant message that is `text` alone, without building it."""
    return _xxh64(text.encode(), _TEXT_SEED)


def identity(response: str | list[dict]) -> tuple[int, int, int]:
    """(hash of the whole response, hash of its first message, shape bits) of a rollout's
    output: equal whole hashes = the same turns; the first message and the shape let pairing
    settle most cuts without re-reading the lines."""
    if isinstance(response, str):
        first = text_hash(response)
        return first, first, 0
    hashes = [message_hash(m) for m in response]
    head = response[0]
    shape = (SEVERAL if len(response) > 1 else 0) | (FIRST_NOT_MODEL if head["role"] != "assistant" else 0) \
        | (FIRST_CALLS if "tool_calls" in head else 0)
    whole = hashes[0] if len(hashes) == 1 else _xxh64(b"".join(h.to_bytes(8, "little") for h in hashes))
    return whole, hashes[0], shape


def settled_without_reading(first_a: int, shape_a: int, first_b: int, shape_b: int,
                            binary: bool) -> str | None:
    """The cut of two different responses known from their records alone: "" (cut at the first
    message, possible), a refusal reason, or None (the lines must be read: `cut`)."""
    if (shape_a | shape_b) & FIRST_NOT_MODEL or first_a == first_b:
        return None
    if binary and (shape_a | shape_b) & FIRST_CALLS:
        return "tool_call_in_binary_format"
    return ""


def cuttable_by_records(first_a, shape_a, first_b, shape_b, binary: bool):
    """`settled_without_reading(...) == ""` for arrays of pairs at once: where the records alone
    say the pair can be cut (at the first message)."""
    shapes = shape_a | shape_b
    ok = ((shapes & FIRST_NOT_MODEL) == 0) & (first_a != first_b)
    return ok & ((shapes & FIRST_CALLS) == 0) if binary else ok


@dataclass(frozen=True)
class Cut:
    shared: list[dict]  # messages both trajectories hold before they part (from the chosen one)
    chosen: dict  # the assistant message where each goes its own way
    rejected: dict


def as_messages(response: str | list[dict]) -> list[dict]:
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else response


def cut(chosen: str | list[dict], rejected: str | list[dict], binary: bool = False) -> Cut | str:
    """The pair cut at the first divergence, or the reason it cannot be cut (`REFUSALS`).

    Two identical outputs are never offered (pairing never pairs equal response hashes); if they
    were, the answer would be `differs_after_last_turn`."""
    a, b = as_messages(chosen), as_messages(rejected)
    at = 0
    while at < len(a) and at < len(b) and message_key(a[at]) == message_key(b[at]):
        at += 1
    here_a = a[at] if at < len(a) else None
    here_b = b[at] if at < len(b) else None
    if here_a is not None and here_b is not None and here_a["role"] == here_b["role"] == "assistant":
        if binary and ("tool_calls" in here_a or "tool_calls" in here_b):
            return "tool_call_in_binary_format"
        return Cut(a[:at], here_a, here_b)
    model_goes_on = any(m["role"] == "assistant" for m in a[at:]) or any(m["role"] == "assistant" for m in b[at:])
    return "environment_diverged" if model_goes_on else "differs_after_last_turn"


def explain(refusal: str) -> str:
    """A refusal reason in words, for rejects.jsonl."""
    return {
        "environment_diverged": "the environment's turns differ (a tool result or user turn) before "
                                "the model's do: from there the two share no context",
        "differs_after_last_turn": "the two differ only after the model's last turn: nothing to learn",
        "tool_call_in_binary_format": "they part at a tool call, which data.format=binary cannot hold "
                                      "(chosen/rejected are strings); use data.format=preference",
    }[refusal]


class Cutter:
    """The cut decisions of one bucket's candidate pairs, made once each and remembered.

    `first`, `shape`: the records' columns; `output(i)`: record i's output, read from its line
    (asked only when the records do not settle a cut). `refused` keeps every refused candidate
    pair (record positions, lower first) with its reason, in the order they were met.
    """

    def __init__(self, first, shape, output, binary: bool):
        self.first, self.shape = first, shape
        self.output = output
        self.binary = binary
        self.decided: dict[tuple[int, int], str] = {}  # "" = can be cut
        self.refused: dict[tuple[int, int], str] = {}
        self._outputs: dict[int, str | list[dict]] = {}

    def __call__(self, a: int, b: int) -> bool:
        key = (a, b) if a < b else (b, a)
        verdict = self.decided.get(key)
        if verdict is None:
            verdict = settled_without_reading(int(self.first[a]), int(self.shape[a]),
                                              int(self.first[b]), int(self.shape[b]), self.binary)
            if verdict is None:
                parted = cut(self._output(a), self._output(b), self.binary)
                verdict = parted if isinstance(parted, str) else ""
            self.decided[key] = verdict
            if verdict:
                self.refused[key] = verdict
        return not verdict

    def next_group(self) -> None:
        """Outputs are compared only within a group: let the previous group's go."""
        self._outputs.clear()

    def _output(self, index: int):
        if index not in self._outputs:
            self._outputs[index] = self.output(index)
        return self._outputs[index]
