"""Pair files as NeMo RL reads them -> the token ids TRL's DPOTrainer trains on, cut NeMo RL's way.

NeMo RL's PreferenceDataset record (`context`, two ranked `completions`) maps onto TRL's
conversational format: `prompt` = the context messages, `chosen` = the lower-ranked completion's
messages, `rejected` = the other. A BinaryPreferenceDataset record (`prompt`, `chosen`,
`rejected` under configurable keys) becomes the prompt's turns and two assistant answers.

The tokens trained are NeMo RL's (v0.7.0 `get_formatted_message_log` + `only_unmask_final`): each
message's tokens are the text the chat template adds for it, the first with the BOS token and the
last with the EOS token when the template leaves them out, and only the final message of each
completion is trained, its role header included. TRL would cut the completion after the
template's generation prompt instead, so the ids are made here (`tokenize`) and the trainer takes
them as they are. Earlier messages of a completion condition it only: when both completions hold
the same ones they join the prompt; when they differ, TRL's one-prompt-per-pair layout cannot
hold the pair and it is refused (gym-dpo's prepare never writes such pairs: it cuts them).
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
    """One pair as {"prompt": [...], "chosen": [...], "rejected": [...]} (message lists), the
    completions' shared earlier messages moved to the prompt: `chosen`/`rejected` hold one
    message each, the one NeMo RL trains."""
    if dataset.name == "PreferenceDataset":
        completions = sorted(record["completions"], key=lambda c: c["rank"])
        if len(completions) != 2 or completions[0]["rank"] == completions[1]["rank"]:
            raise ValueError("a PreferenceDataset record needs two completions of different rank")
        prompt = _messages(record["context"], "user")
        chosen = _messages(completions[0]["completion"], "assistant")
        rejected = _messages(completions[1]["completion"], "assistant")
    else:
        prompt = _messages(record[dataset.prompt_key], "user")
        chosen = _messages(record[dataset.chosen_key], "assistant")
        rejected = _messages(record[dataset.rejected_key], "assistant")
    if not chosen or not rejected:
        raise ValueError("a completion holds no message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("the two completions differ before their final message: NeMo RL conditions each "
                         "final message on its own earlier ones, which TRL's one prompt per pair cannot "
                         "hold (prepare the pairs again with gym-dpo: it cuts them where they part)")
    return {"prompt": prompt + chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


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


def _after(before: str, rendered: str) -> str:
    """What `rendered` adds to `before`, from where the two first differ (NeMo RL's cut)."""
    common = next((k for k, (a, b) in enumerate(zip(before, rendered)) if a != b), min(len(before), len(rendered)))
    return rendered[common:]


def tokenize(pair: dict, tokenizer) -> dict:
    """TRL's pre-tokenized example, NeMo RL's tokens: `prompt_ids` (conditioning only),
    `chosen_ids` and `rejected_ids` (trained). Message i's text is what the chat template
    renders for messages[:i+1] beyond its rendering of messages[:i]; each message is tokenized
    on its own; the BOS token leads the first message and the EOS token ends the answer when the
    template leaves them out. The prompt's messages are the same in both conversations."""
    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    pieces, before = [], ""
    for i in range(len(pair["prompt"])):
        rendered = render(pair["prompt"][: i + 1])
        pieces.append(_after(before, rendered))
        before = rendered
    answers = [_after(before, render(pair["prompt"] + pair[side])) for side in ("chosen", "rejected")]
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if bos and not pieces[0].startswith(bos):
        pieces[0] = bos + pieces[0]
    if eos:
        answers = [a if a.rstrip("\n").endswith(eos) else a + eos for a in answers]
    ids = tokenizer(pieces + answers, add_special_tokens=False)["input_ids"]
    return {"prompt_ids": [t for piece in ids[:-2] for t in piece], "chosen_ids": ids[-2], "rejected_ids": ids[-1]}


def load(dataset: Dataset, tokenizer, limit: int | None = None):
    """The pairs as a `datasets.Dataset` of token ids (the first `limit` only, when given)."""
    from datasets import Dataset as HFDataset

    rows = []
    for number, row in enumerate(read_pairs(dataset), 1):
        if limit is not None and len(rows) >= limit:
            break
        try:
            rows.append(tokenize(row, tokenizer))
        except ValueError as exc:
            raise RecipeError(f"{dataset.path}: pair {number}: {exc}") from None
    if not rows:
        raise RecipeError(f"{dataset.path} holds no pairs")
    return HFDataset.from_list(rows)
