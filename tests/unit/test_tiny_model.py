"""The default model gym-dpo/tiny: built here from the train pairs, cached, a normal HF folder."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_prepared, preference_pair

from recipe.errors import RecipeError
from recipe.train import tiny_model

pytest.importorskip("transformers")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GYM_DPO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tool_pair() -> dict:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    return {"context": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo?"}],
            "completions": [
                {"rank": 0, "completion": [{"role": "assistant", "content": "", "tool_calls": [call]},
                                           {"role": "tool", "tool_call_id": "c1", "content": '{"t": 3}'},
                                           {"role": "assistant", "content": "Oslo: 3°C."}]},
                {"rank": 1, "completion": [{"role": "assistant", "content": "No idea."}]}]}


def test_builds_a_loadable_model_whose_prompt_is_a_prefix_of_prompt_plus_answer(tmp_path, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = make_prepared(tmp_path / "data", train=[preference_pair(i) for i in range(6)] + [tool_pair()])
    folder = tiny_model.resolve_model_name("gym-dpo/tiny", tmp_path / "run", data / "train.jsonl")
    assert folder == str(tmp_path / "run" / "tiny_model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == tiny_model.ARCHITECTURE["num_hidden_layers"]
    assert model.config.vocab_size == len(tokenizer)
    pair = tool_pair()
    prompt = tokenizer.apply_chat_template(pair["context"], tokenize=False, add_generation_prompt=True)
    rendered = [tokenizer.apply_chat_template(pair["context"] + c["completion"], tokenize=False)
                for c in pair["completions"]]
    assert all(full.startswith(prompt) and full.endswith("<|im_end|>\n") for full in rendered)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in rendered[0]
    assert tokenizer.decode(tokenizer("Weather in Oslo? °C")["input_ids"]) == "Weather in Oslo? °C"


def test_cached_by_the_texts_it_was_trained_on(tmp_path, cache):
    texts = tiny_model.pair_texts(make_prepared(tmp_path / "a", train=4) / "train.jsonl")
    first = tiny_model.build(texts)
    assert tiny_model.build(texts) == first                          # a cache hit, same folder
    assert tiny_model.build(texts + ["another text"]) != first       # other data, other tokenizer
    assert first.parent.parent == cache and json.loads((first / "gym_dpo_tiny.json").read_text())["key"] == first.name


def test_other_names_pass_through_and_missing_pairs_are_a_clear_error(tmp_path, cache):
    assert tiny_model.resolve_model_name("Qwen/Qwen2.5-1.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-1.5B-Instruct"
    with pytest.raises(RecipeError, match="run stage=prepare first"):
        tiny_model.resolve_model_name("gym-dpo/tiny", tmp_path / "empty")
