"""Pair files as NeMo RL reads them -> TRL's conversational preference records.

NeMo RL's PreferenceDataset record (`context`, two ranked `completions`) maps straight onto TRL's
conversational format: `prompt` = the context messages, `chosen` = the lower-ranked completion's
messages, `rejected` = the other. A BinaryPreferenceDataset record (`prompt`, `chosen`,
`rejected` under configurable keys) becomes one user turn and two assistant answers.

One difference stays: NeMo RL trains only on a completion's final message, TRL on every message of
the completion (a tool call and its result included). Pairs whose answers are one message (most
pairs) train the same.
"""

from __future__ import annotations

import json
from typing import Iterator

from recipe.errors import RecipeError
from recipe.train.local.settings import Dataset


def _messages(value, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [_message(m) for m in value]
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def _message(message: dict) -> dict:
    """A chat message with the keys chat templates read (content always a string)."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def to_trl(record: dict, dataset: Dataset) -> dict:
    """One pair as {"prompt": [...], "chosen": [...], "rejected": [...]} (message lists)."""
    if dataset.name == "PreferenceDataset":
        completions = sorted(record["completions"], key=lambda c: c["rank"])
        if len(completions) != 2 or completions[0]["rank"] == completions[1]["rank"]:
            raise ValueError("a PreferenceDataset record needs two completions of different rank")
        return {"prompt": _messages(record["context"], "user"),
                "chosen": _messages(completions[0]["completion"], "assistant"),
                "rejected": _messages(completions[1]["completion"], "assistant")}
    return {"prompt": _messages(record[dataset.prompt_key], "user"),
            "chosen": _messages(record[dataset.chosen_key], "assistant"),
            "rejected": _messages(record[dataset.rejected_key], "assistant")}


def read_pairs(dataset: Dataset) -> Iterator[dict]:
    with open(dataset.path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield to_trl(json.loads(line), dataset)
            except (ValueError, KeyError, TypeError) as exc:
                raise RecipeError(f"{dataset.path}:{number}: not a {dataset.name} record "
                                  f"({type(exc).__name__}: {exc})") from None


def load(dataset: Dataset, limit: int | None = None):
    """The pairs as a `datasets.Dataset` (the first `limit` only, when given)."""
    from datasets import Dataset as HFDataset

    rows = []
    for row in read_pairs(dataset):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(row)
    if not rows:
        raise RecipeError(f"{dataset.path} holds no pairs")
    # Arrow gives every message the union of the keys seen (tool_calls=None where absent);
    # chat templates test `message.get('tool_calls')`, which None passes as "no calls".
    return HFDataset.from_list(rows)
