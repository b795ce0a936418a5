"""Multi-turn and tool-use pairs, cut where the trajectories part (recipe/prepare/cut.py).

NeMo RL trains only the final message of a completion: every written completion must be the one
assistant message where the two rollouts first differ, with what both share in the context.
"""

import json

import jsonschema
import numpy as np
import pytest

from recipe.prepare import cut, rollouts
from tests.conftest import message, read_jsonl, rollout, write_jsonl

PAIR = jsonschema.Draft202012Validator(rollouts.schema("pair"))


def call(name="search", arguments='{"q": "x"}', call_id="c1"):
    return {"type": "function_call", "name": name, "arguments": arguments, "call_id": call_id,
            "id": f"fc_{call_id}", "status": "completed"}


def result(output="found", call_id="c1"):
    return {"type": "function_call_output", "call_id": call_id, "output": output, "status": "completed"}


def say(text):
    return message("assistant", text, parts=True)


def pairs_and_manifest(tmp_path, prepare, *outputs_and_rewards, overrides=(), out="out"):
    rows = [rollout(prompt="q", output=output, reward=reward, task=0, agent="env")
            for output, reward in outputs_and_rewards]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0", *overrides, out=out)
    pairs = read_jsonl(out / "train.jsonl")
    for pair in pairs:
        assert PAIR.is_valid(pair)
    return pairs, manifest, read_jsonl(out / "rejects.jsonl")


def completions(pair):
    return [c["completion"] for c in pair["completions"]]


def calls(message):
    return [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]


def test_divergence_at_the_first_action_the_tool_call_against_a_direct_answer(tmp_path, prepare):
    (pair,), manifest, _ = pairs_and_manifest(tmp_path, prepare,
                                              ([call(), result(), say("It is x.")], 1.0), ([say("No idea.")], 0.0))
    chosen, rejected = completions(pair)
    assert len(chosen) == len(rejected) == 1  # one message each: the tool call gets the gradient
    assert calls(chosen[0]) == [("search", {"q": "x"})] and chosen[0]["content"] == ""
    assert rejected == [{"role": "assistant", "content": "No idea."}]
    assert pair["context"] == [{"role": "user", "content": "q"}]
    assert manifest["cut"]["pairs_with_shared_turns"] == 0


def test_divergence_at_a_tool_calls_arguments(tmp_path, prepare):
    (pair,), _, _ = pairs_and_manifest(
        tmp_path, prepare, ([call(arguments='{"q": "paris"}'), result(), say("20C")], 1.0),
        ([call(arguments='{"q": "parsi"}', call_id="c9"), result("no such city", "c9"), say("?")], 0.0))
    chosen, rejected = completions(pair)
    assert calls(chosen[0]) == [("search", {"q": "paris"})]
    assert calls(rejected[0]) == [("search", {"q": "parsi"})]
    assert pair["context"] == [{"role": "user", "content": "q"}]


def test_arguments_equal_as_json_values_are_the_same_call(tmp_path, prepare):
    """`{"mass1": 1.0, "mass2": 2}` and `{"mass2":2,"mass1":1}`: one call, so the pair parts at
    the answer after it, not at the call (and gets no credit for what came later)."""
    (pair,), manifest, _ = pairs_and_manifest(
        tmp_path, prepare,
        ([call("force", '{"mass1": 1.0, "mass2": 2}'), result("2 N"), say("F = 2 N")], 1.0),
        ([call("force", '{"mass2":2,"mass1":1}', "c7"), result("2 N", "c7"), say("no idea")], 0.0))
    assert [c[0]["content"] for c in completions(pair)] == ["F = 2 N", "no idea"]
    assert [m["role"] for m in pair["context"]] == ["user", "assistant", "tool"]
    assert manifest["cut"]["pairs_with_shared_turns"] == 1


def test_what_counts_as_the_same_call():
    def key(arguments, name="f"):
        return cut.message_key({"role": "assistant", "content": "", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": name, "arguments": arguments}}]})
    same = key('{"a": 1.0, "b": [2.0, {"c": 3}]}')
    assert same == key('{"b":[2,{"c":3}],"a":1}') == key({"a": 1, "b": [2, {"c": 3.0}]})
    assert key('{"a": 1.5}') != key('{"a": 1}')            # another value
    assert key('{"a": "1"}') != key('{"a": 1}')            # a string is not a number
    assert key("tomorrow") != key('"tomorrow"') and key("tomorrow") == key("tomorrow")  # text vs a JSON string
    assert key('{"a": 1}', name="g") != key('{"a": 1}')   # another tool


def test_after_a_shared_tool_call_and_result_the_answers_are_the_completions(tmp_path, prepare):
    (pair,), manifest, _ = pairs_and_manifest(
        tmp_path, prepare, ([call(), result("20C"), say("It is 20C.")], 1.0),
        ([call(), result("20C"), say("Cold.")], 0.0))
    assert completions(pair) == [[{"role": "assistant", "content": "It is 20C."}],
                                 [{"role": "assistant", "content": "Cold."}]]
    assert pair["context"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": {"q": "x"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "20C"}]
    assert manifest["cut"]["pairs_with_shared_turns"] == 1


def test_after_a_user_simulator_turn(tmp_path, prepare):
    user = message("user", "I need a refund")
    (pair,), _, _ = pairs_and_manifest(tmp_path, prepare, ([say("Hello!"), user, say("Sure, done.")], 1.0),
                                       ([say("Hello!"), user, say("No.")], 0.0))
    assert pair["context"][1:] == [{"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": "I need a refund"}]
    assert [c[0]["content"] for c in completions(pair)] == ["Sure, done.", "No."]


def test_call_ids_that_differ_but_nothing_else_are_shared(tmp_path, prepare):
    (pair,), _, _ = pairs_and_manifest(tmp_path, prepare,
                                       ([call(call_id="a1"), result(call_id="a1"), say("good")], 1.0),
                                       ([call(call_id="b2"), result(call_id="b2"), say("bad")], 0.0))
    assert [m["role"] for m in pair["context"]] == ["user", "assistant", "tool"]
    assert pair["context"][1]["tool_calls"][0]["id"] == "a1"  # the chosen rollout's ids
    assert [c[0]["content"] for c in completions(pair)] == ["good", "bad"]


def test_environment_divergence_gives_no_pair_and_is_counted(tmp_path, prepare):
    pairs, manifest, rejects = pairs_and_manifest(tmp_path, prepare,
                                                  ([call(), result("20C"), say("It is 20C.")], 1.0),
                                                  ([call(), result("error 503"), say("It failed.")], 0.0))
    assert pairs == []
    assert manifest["counts"]["unpaired"]["environment_diverged"] == 2
    assert manifest["cut"]["refused_candidates"] == {"environment_diverged": 1}
    assert [(r["line"], r["reason"]) for r in rejects] == [(1, "environment_diverged"), (2, "environment_diverged")]
    assert rejects[0]["detail"].startswith("paired with ") and "r.jsonl:2" in rejects[0]["detail"]


def test_equal_final_messages_after_an_environment_divergence_give_no_pair(tmp_path, prepare):
    """The case a whole-trajectory pair gets wrong: both end in the same answer."""
    pairs, manifest, _ = pairs_and_manifest(tmp_path, prepare, ([call(), result("a"), say("Done.")], 1.0),
                                            ([call(), result("b"), say("Done.")], 0.0))
    assert pairs == [] and manifest["counts"]["unpaired"]["environment_diverged"] == 2


def test_trajectories_that_differ_only_after_the_models_last_turn_give_no_pair(tmp_path, prepare):
    pairs, manifest, rejects = pairs_and_manifest(
        tmp_path, prepare, ([say("stand"), message("user", "you win")], 1.0),
        ([say("stand"), message("user", "you lose")], -1.0),
        ([say("stand")], 0.0))
    assert pairs == []
    assert manifest["counts"]["unpaired"]["differs_after_last_turn"] == 3
    assert {r["reason"] for r in rejects} == {"differs_after_last_turn"}


def test_one_trajectory_stops_where_the_environment_goes_on_in_the_other(tmp_path, prepare):
    pairs, manifest, _ = pairs_and_manifest(tmp_path, prepare,
                                            ([say("hit"), message("user", "18"), say("stand")], 1.0),
                                            ([say("hit")], 0.0))
    assert pairs == [] and manifest["counts"]["unpaired"]["environment_diverged"] == 2


def test_a_strategy_takes_its_next_candidate_when_a_pair_cannot_be_cut(tmp_path, prepare):
    best = ([call(), result("20C"), say("It is 20C.")], 1.0)
    env_diverged = ([call(), result("timeout"), say("Sorry.")], 0.0)  # the worst: cannot be cut
    next_worst = ([say("Probably warm.")], 0.5)
    pairs, manifest, rejects = pairs_and_manifest(tmp_path, prepare, best, env_diverged, next_worst)
    (pair,) = pairs
    assert (pair["chosen_reward"], pair["rejected_reward"]) == (1.0, 0.5)
    assert calls(completions(pair)[0][0]) == [("search", {"q": "x"})]
    assert manifest["counts"]["unpaired"]["environment_diverged"] == 1
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "environment_diverged")]


@pytest.mark.parametrize("strategy", ["stratified", "all_pairs", "distribution", "best_vs_subset_worst"])
def test_every_strategy_writes_only_pairs_that_can_be_cut(tmp_path, prepare, strategy):
    outputs = [([call(), result("20C"), say("It is 20C.")], 1.0), ([call(), result("timeout"), say("Sorry.")], 0.0),
               ([say("Probably warm.")], 0.2), ([call(), result("20C"), say("Cold.")], 0.1)]
    pairs, manifest, _ = pairs_and_manifest(tmp_path, prepare, *outputs, overrides=[f"data_prep={strategy}"])
    assert pairs
    for pair in pairs:
        chosen, rejected = completions(pair)
        assert len(chosen) == len(rejected) == 1
        assert cut.message_key(chosen[0]) != cut.message_key(rejected[0])
    assert manifest["cut"]["refused_candidates"].get("environment_diverged", 0) >= 1


def test_arguments_are_objects_in_context_and_completions_and_strings_are_counted(tmp_path, prepare):
    shared = [call(arguments='{"city": "Paris"}'), result("20C")]
    (pair,), manifest, _ = pairs_and_manifest(
        tmp_path, prepare, ([*shared, call("book", '{"day": 2}', "c2"), result("ok", "c2"), say("booked")], 1.0),
        ([*shared, call("book", "tomorrow", "c3"), result("bad args", "c3"), say("failed")], 0.0))
    assert pair["context"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    chosen, rejected = completions(pair)
    assert calls(chosen[0]) == [("book", {"day": 2})] and calls(rejected[0]) == [("book", "tomorrow")]
    assert manifest["cut"]["tool_call_arguments_as_written"] == 1


def test_binary_format_puts_the_shared_turns_in_the_prompt_and_refuses_a_tool_call_divergence(tmp_path, prepare):
    binary = ["data.format=binary", "data.keep_extra_fields=false"]
    (pair,), _, _ = pairs_and_manifest(tmp_path, prepare, ([call(), result("20C"), say("It is 20C.")], 1.0),
                                       ([call(), result("20C"), say("Cold.")], 0.0), overrides=binary)
    assert pair["chosen"] == "It is 20C." and pair["rejected"] == "Cold."
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "tool"]
    pairs, manifest, rejects = pairs_and_manifest(tmp_path, prepare, ([call(), result(), say("It is x.")], 1.0),
                                                  ([say("No idea.")], 0.0), overrides=binary, out="o2")
    assert pairs == []
    assert manifest["counts"]["unpaired"]["tool_call_in_binary_format"] == 2
    assert "data.format=preference" in rejects[0]["detail"]


def test_single_turn_text_pairs_are_unchanged(tmp_path, prepare):
    (pair,), _, _ = pairs_and_manifest(tmp_path, prepare, ([say("4")], 1.0), ([say("5")], 0.0))
    assert completions(pair) == [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]


# -- the cut itself, on messages ----------------------------------------------------------------
def assistant(text="", *tool_calls):
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = [{"id": f"id{i}", "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, (n, a) in enumerate(tool_calls)]
    return message


def tool(text, call_id="id0"):
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def test_cut_on_messages():
    parted = cut.cut([assistant("", ("f", {"x": 1})), tool("r"), assistant("A")],
                     [assistant("", ("f", {"x": 1})), tool("r", "other id"), assistant("B")])
    assert parted.shared == [assistant("", ("f", {"x": 1})), tool("r")]
    assert (parted.chosen["content"], parted.rejected["content"]) == ("A", "B")
    assert cut.cut("A", [assistant("A"), {"role": "user", "content": "ok"}]) == "differs_after_last_turn"
    assert cut.cut("A", "A") == "differs_after_last_turn"
    assert cut.cut([assistant("", ("f", {}))], "B", binary=True) == "tool_call_in_binary_format"
    assert cut.cut([{"role": "user", "content": "x"}, assistant("A")],
                   [{"role": "user", "content": "y"}, assistant("A")]) == "environment_diverged"
    # the key ignores ids, and arguments are JSON values: their key order carries nothing
    assert (cut.message_key(assistant("", ("f", {"a": 1, "b": 2})))
            == cut.message_key(assistant("", ("f", {"b": 2, "a": 1}))))


def test_what_the_records_settle_agrees_with_the_cut():
    outputs = ["A", "B", [assistant("", ("f", {"x": 1})), tool("r"), assistant("C")],
               [assistant("", ("f", {"x": 2})), tool("r"), assistant("C")],
               [assistant("", ("f", {"x": 1})), tool("s"), assistant("D")],
               [assistant("A"), {"role": "user", "content": "more"}, assistant("E")],
               [{"role": "user", "content": "env first"}, assistant("A")]]
    for binary in (False, True):
        for a in outputs:
            for b in outputs:
                whole_a, first_a, shape_a = cut.identity(a)
                whole_b, first_b, shape_b = cut.identity(b)
                if whole_a == whole_b:
                    continue
                settled = cut.settled_without_reading(first_a, shape_a, first_b, shape_b, binary)
                parted = cut.cut(a, b, binary)
                if settled is not None:
                    assert settled == (parted if isinstance(parted, str) else ""), (a, b, binary)
                vectorised = cut.cuttable_by_records(np.array([first_a], np.uint64), np.array([shape_a], np.uint8),
                                                     np.array([first_b], np.uint64), np.array([shape_b], np.uint8),
                                                     binary)
                assert bool(vectorised[0]) == (settled == ""), (a, b, binary)


# -- what a chat template renders -----------------------------------------------------------------
# A template written for this test in the style of the Hugging Face ones (Qwen2.5, Llama 3.x): it
# renders a tool call's arguments with `tojson`, so a string would come out encoded twice.
TOJSON_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call>{\"name\": {{ c.function.name | tojson }}, "
    "\"arguments\": {{ c.function.arguments | tojson }}}</call>{% endfor %}<|end|>{% endfor %}")


def test_a_tojson_chat_template_renders_the_arguments_once_encoded(tmp_path, prepare):
    from transformers.utils.chat_template_utils import render_jinja_template

    (pair,), _, _ = pairs_and_manifest(tmp_path, prepare,
                                       ([call(arguments='{"city": "Paris"}'), result("20C"), say("20C.")], 1.0),
                                       ([say("No idea.")], 0.0))
    rendered, _ = render_jinja_template([pair["context"] + completions(pair)[0]], chat_template=TOJSON_TEMPLATE)
    rendered = rendered[0]
    assert '"arguments": {"city": "Paris"}' in rendered
    assert '\\"city\\"' not in rendered  # what a JSON string argument renders as
    whole_trajectory = json.loads(json.dumps(pair["context"] + completions(pair)[0]))
    whole_trajectory[-1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    twice, _ = render_jinja_template([whole_trajectory], chat_template=TOJSON_TEMPLATE)
    assert '\\"city\\"' in twice[0]  # the test would see a string argument
