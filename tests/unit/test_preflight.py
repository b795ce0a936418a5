"""Preflight: token lengths against NeMo RL's limit, batches, duplicates; one error, or warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import make_prepared, preference_pair

from recipe.errors import RecipeError
from recipe.train import preflight, tiny_model

OPTIONS = dict(preflight.DEFAULTS)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A real local tokenizer with a chat template (the tiny model's, on a few texts)."""
    pytest.importorskip("transformers")
    texts = ["question answer good bad word " * 5, "another text with words"]
    return str(tiny_model.build(texts, tmp_path_factory.mktemp("cache")))


def doc_for(data: Path, tokenizer: str, limit: int = 512, gbs: int = 4, steps: int = 10, epochs: int = 100) -> dict:
    entry = {"dataset_name": "PreferenceDataset", "split": "train"}
    return {"policy": {"tokenizer": {"name": tokenizer}, "max_total_sequence_length": limit,
                       "train_global_batch_size": gbs},
            "dpo": {"max_num_steps": steps, "max_num_epochs": epochs},
            "data": {"max_input_seq_length": limit,
                     "train": {**entry, "data_path": str(data / "train.jsonl")},
                     "validation": {**entry, "data_path": str(data / "val.jsonl")}}}


def long_pairs(n: int, words: int, start: int = 0) -> list[dict]:
    return [preference_pair(i, chosen="word " * words) for i in range(start, start + n)]


def test_lengths_are_measured_with_the_chat_template_and_kept_for_the_report(tmp_path, tokenizer_dir):
    data = make_prepared(tmp_path / "data", train=8, val=2)
    record = preflight.check(doc_for(data, tokenizer_dir), tmp_path / "run", OPTIONS)
    train = record["splits"]["train"]
    assert record["tokens_checked"] and train["pairs"] == train["tokenized"] == len(train["lengths"]) == 8
    assert train["over_limit"] == 0 and 10 < train["p50"] <= train["max"] < 100  # template tokens included
    assert json.loads((tmp_path / "run" / "preflight.json").read_text())["splits"]["val"]["pairs"] == 2
    assert record["failures"] == []


def test_mostly_over_length_pairs_fail_with_one_message(tmp_path, tokenizer_dir):
    data = make_prepared(tmp_path / "data", train=long_pairs(6, 200) + [preference_pair(i) for i in range(6, 8)], val=2)
    with pytest.raises(RecipeError) as info:
        preflight.check(doc_for(data, tokenizer_dir, limit=100), tmp_path / "run", OPTIONS)
    message = str(info.value)
    assert "6 train pair(s) are longer than 100 tokens" in message and "75%" in message
    assert "policy.max_total_sequence_length" in message and "nothing was launched" in message
    assert json.loads((tmp_path / "run" / "preflight.json").read_text())["failures"]


def test_a_few_over_length_pairs_only_warn(tmp_path, tokenizer_dir):
    data = make_prepared(tmp_path / "data", train=long_pairs(1, 200) + [preference_pair(i) for i in range(1, 8)], val=2)
    record = preflight.check(doc_for(data, tokenizer_dir, limit=100), tmp_path / "run", OPTIONS)
    assert record["splits"]["train"]["over_limit"] == 1 and not record["failures"]
    assert any("masks them" in w for w in record["warnings"])


def test_duplicates_contradictions_and_leaks_are_counted(tmp_path, tokenizer_dir):
    pairs = [preference_pair(i) for i in range(8)]
    flipped = preference_pair(3, chosen="bad 3", rejected="good 3")
    data = make_prepared(tmp_path / "data", train=pairs + [pairs[0], flipped], val=[pairs[5], preference_pair(99)])
    record = preflight.check(doc_for(data, tokenizer_dir), tmp_path / "run", OPTIONS)
    assert record["duplicates"] == {"train_duplicates": 1, "contradicting": 2, "in_train_and_val": 1}
    assert len([w for w in record["warnings"] if "pair(s)" in w]) == 3


def test_batches_left_out_and_unreachable_steps_are_warned(tmp_path, tokenizer_dir):
    data = make_prepared(tmp_path / "data", train=21, val=2)
    record = preflight.check(doc_for(data, tokenizer_dir, gbs=8, steps=100, epochs=1), tmp_path / "run", OPTIONS)
    assert record["batches"] == {"train_pairs": 21, "global_batch": 8, "steps_per_epoch": 2, "steps": 2,
                                 "pairs_left_out_per_epoch": 5}
    assert any("5 of 21 train pairs are left out" in w for w in record["warnings"])
    assert any("ends after 2 step(s)" in w for w in record["warnings"])


def test_a_tokenizer_that_is_not_here_skips_the_length_check_and_says_so(tmp_path):
    data = make_prepared(tmp_path / "data", train=8, val=2)
    record = preflight.check(doc_for(data, "some-org/not-on-this-machine"), tmp_path / "run", OPTIONS)
    assert record["tokens_checked"] is False and record["splits"]["train"]["tokenized"] == 0
    assert any("token lengths not checked" in w for w in record["warnings"]) and not record["failures"]


def test_a_sample_bounds_the_tokenization(tmp_path, tokenizer_dir):
    data = make_prepared(tmp_path / "data", train=40, val=2)
    record = preflight.check(doc_for(data, tokenizer_dir), tmp_path / "run", {**OPTIONS, "sample": 10})
    assert record["splits"]["train"]["pairs"] == 40 and record["splits"]["train"]["tokenized"] == 10
