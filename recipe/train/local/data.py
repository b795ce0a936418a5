"""Pair files as NeMo RL reads them -> the token ids TRL's DPOTrainer trains on, cut NeMo RL's way.

The pairs are read as conversations by recipe.train.prepared.read_pairs (prompt, chosen and
rejected messages: TRL's conversational format); this module tokenizes them.

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

from recipe.errors import RecipeError
from recipe.train.prepared import Dataset, read_pairs


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
