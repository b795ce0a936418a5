"""The CPU trainer trains the tokens NeMo RL trains: each completion's final message, nothing else.

NeMo RL v0.7.0 (`get_formatted_message_log`, `only_unmask_final=True`) trains the tokens the chat
template adds for a completion's final message, its role header and end-of-turn included. The
test reads what TRL's DPOTrainer really receives (its train dataloader's `completion_mask`,
which becomes the labels), not what the code says it sends.
"""

from __future__ import annotations

import json

import pytest
from train_helpers import make_prepared, preference_pair

from recipe.errors import RecipeError
from recipe.train import prepared, tiny_model
from recipe.train.local import data
from recipe.train.prepared import Dataset

pytest.importorskip("trl")
# TRL 1.16 still sets the argument transformers 5 renamed (the CPU runner filters it the same way)
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
CONTEXT = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo?"}]
SHARED = [{"role": "assistant", "content": "", "tool_calls": [CALL]},
          {"role": "tool", "tool_call_id": "c1", "content": '{"t": 3}'}]


def pair_with(chosen: list[dict], rejected: list[dict]) -> dict:
    return {"context": CONTEXT, "completions": [{"rank": 0, "completion": chosen}, {"rank": 1, "completion": rejected}]}


@pytest.fixture(scope="module")
def trainer_batch(tmp_path_factory):
    """(the tokenizer, the first train batch TRL builds) for two pairs: one-message completions,
    and completions that share their earlier messages (a tool call and its result)."""
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from recipe.train.local.trainer import NemoStyleDPOTrainer

    tmp = tmp_path_factory.mktemp("tokens")
    pairs = [pair_with([{"role": "assistant", "content": "Oslo: 3°C."}],
                       [{"role": "assistant", "content": "No idea."}]),
             pair_with([*SHARED, {"role": "assistant", "content": "It is 3 degrees."}],
                       [*SHARED, {"role": "assistant", "content": "Cold, I guess."}])]
    folder = make_prepared(tmp / "data", train=pairs + [preference_pair(i) for i in range(4)])
    model = tiny_model.resolve_model_name("gym-dpo/tiny", tmp / "run", folder / "train.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(model)
    dataset = data.load(Dataset("PreferenceDataset", folder / "train.jsonl"), tokenizer)
    args = DPOConfig(output_dir=str(tmp / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=2,
                     max_length=512, seed=0)

    class Settings:  # what the trainer subclass reads while building its sampler
        train_global_batch_size, shuffle, seed = 2, False, 0

    trainer = NemoStyleDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                  settings=Settings())
    return tokenizer, next(iter(trainer.get_train_dataloader()))


def trained_text(tokenizer, batch, row: int) -> str:
    ids, mask = batch["input_ids"][row], batch["completion_mask"][row]
    return tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)


def context_text(tokenizer, batch, row: int) -> str:
    ids, mask, attention = batch["input_ids"][row], batch["completion_mask"][row], batch["attention_mask"][row]
    return tokenizer.decode(ids[(attention.bool()) & ~mask.bool()], skip_special_tokens=False)


def test_only_the_final_message_of_each_completion_is_trained_its_header_included(trainer_batch):
    tokenizer, batch = trainer_batch  # rows: chosen of pair 0, chosen of pair 1, rejected 0, rejected 1
    assert trained_text(tokenizer, batch, 0) == "<|im_start|>assistant\nOslo: 3°C.<|im_end|>\n"
    assert trained_text(tokenizer, batch, 2) == "<|im_start|>assistant\nNo idea.<|im_end|>\n"
    assert trained_text(tokenizer, batch, 1) == "<|im_start|>assistant\nIt is 3 degrees.<|im_end|>\n"
    assert trained_text(tokenizer, batch, 3) == "<|im_start|>assistant\nCold, I guess.<|im_end|>\n"
    # the shared tool call and its result condition both answers and are not trained
    for row in (1, 3):
        context = context_text(tokenizer, batch, row)
        assert context.endswith('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
                                '<|im_end|>\n<|im_start|>tool\n{"t": 3}<|im_end|>\n')
        assert context.startswith("<|im_start|>system\nUse tools.")


def test_the_tokens_are_nemo_rls_message_by_message_cut(trainer_batch):
    """NeMo RL tokenizes each message's text on its own: the trained ids are those of the final
    message's text alone, not a slice of the whole conversation's tokenization."""
    tokenizer, batch = trainer_batch
    final = "<|im_start|>assistant\nOslo: 3°C.<|im_end|>\n"
    ids, mask = batch["input_ids"][0], batch["completion_mask"][0]
    assert ids[mask.bool()].tolist() == tokenizer(final, add_special_tokens=False)["input_ids"]


def test_completions_that_differ_before_their_final_message_are_refused(tmp_path):
    pair = pair_with([*SHARED, {"role": "assistant", "content": "A"}], [{"role": "assistant", "content": "B"}])
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(pair) + "\n")
    with pytest.raises(RecipeError, match=r"train.jsonl:1: .*differ before their final message"):
        list(prepared.read_pairs(Dataset("PreferenceDataset", path)))
