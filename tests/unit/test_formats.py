"""recipe.iterate.formats: the answer formats a prompt asks for, adherence, and the reward rule."""

import json

import pytest

from recipe.errors import RecipeError
from recipe.iterate import formats


def row(*turns, reward=1.0, extracted="7"):
    output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": t}]} for t in turns]
    return {"_ng_task_index": 0, "reward": reward, "extracted_answer": extracted, "response": {"output": output}}


@pytest.mark.parametrize("text, inside", [
    ("so \\boxed{7}.", "7"), ("\\boxed{\\frac{1}{2}} then \\boxed{3}", "3"), ("\\boxed{}", ""),
    ("\\boxed{7", None), ("no box", None), ("\\boxed{a{b}c} end", "a{b}c"),
])
def test_last_boxed_takes_the_last_complete_one(text, inside):
    assert formats.last_boxed(text) == inside


@pytest.mark.parametrize("name, text, follows", [
    ("boxed", "3 + 4 = \\boxed{7}", True), ("boxed", "\\boxed{ }", False), ("boxed", "\\Boxed{7}", False),
    ("boxed", "36 + 4 = 30", False),
    ("answer_tag", "<answer>7</answer>", True), ("answer_tag", "<answer> </answer>", False),
    ("answer_tag", "answer: 7", False),
    ("answer_line", "blah\nAnswer: B", True), ("answer_line", "The answer is B", False),
    ("action_tag", "<action>Up</action>", True), ("action_tag", "<action> left </action>", True),
    ("action_tag", "Up", False), ("action_tag", "<action>jump</action>", False),
    ("regex:^\\d+$", "42", True), ("regex:^\\d+$", "42 apples", False),
])
def test_a_reply_follows_the_format_or_not(name, text, follows):
    assert formats.followed(name, row(text)) == (1.0 if follows else 0.0)


def test_a_multi_turn_reply_follows_in_the_share_of_its_turns():
    assert formats.followed("action_tag", row("<action>Up</action>", "Down", "<action>Left</action>", "x")) == 0.5
    assert formats.followed("action_tag", row()) == 0.0          # no assistant turn: nothing followed
    assert formats.followed(None, row("anything")) is None       # no format stated


def test_an_unknown_format_is_refused_with_the_known_ones():
    with pytest.raises(RecipeError, match="boxed, answer_tag"):
        formats.check("xml")
    with pytest.raises(RecipeError, match="not a regular expression"):
        formats.check("regex:(")


def test_the_rule_zeroes_a_reply_without_the_format_and_keeps_the_verifiers_reward():
    bare = formats.require("boxed", row("The answer is 7."))
    assert bare["reward"] == 0.0 and bare["extracted_answer"] is None
    assert bare[formats.GATED_KEY] == 1.0 and bare[formats.FOLLOWS_KEY] == 0.0
    boxed = formats.require("boxed", row("\\boxed{7}"))
    assert boxed["reward"] == 1.0 and boxed["extracted_answer"] == "7"
    assert formats.require("boxed", bare) == bare                 # twice is once
    wrong = formats.require("boxed", row("\\boxed{8}", reward=0, extracted="8"))
    assert wrong["reward"] == 0 and wrong["extracted_answer"] == "8"
    unscored = formats.require("boxed", row("x", reward=None))
    assert unscored["reward"] is None and formats.GATED_KEY not in unscored


def test_the_rule_rewrites_a_rollouts_file_whole(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [row("\\boxed{7}"), row("7")]))
    formats.require_file("boxed", path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["reward"] for r in rows] == [1.0, 0.0]
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]   # no partial file left


@pytest.mark.parametrize("name, text, said", [
    ("boxed", "so \\boxed{ 12 }", "12"), ("answer_tag", "<answer>leD</answer>", "leD"),
    ("answer_line", "blah\nAnswer: **B**", "B"), ("action_tag", "<action>up</action> <action>Left</action>", "Left"),
    ("boxed", "no box", None), ("regex:x", "x", None), (None, "\\boxed{1}", None),
])
def test_the_answer_a_reply_states_in_its_format(name, text, said):
    assert formats.stated(name, row("first \\boxed{9}", text)) == said  # the last turn's


@pytest.mark.parametrize("said, expected, same", [
    ("12", "12", True), ("12.", "12", True), ("12.0", "12", True), ("1,200", "1200", True), ("B", "b", True),
    ("156", "5", False), ("15", "5", False), (None, "5", False), ("x", None, False),
])
def test_a_stated_answer_is_the_expected_one_as_text_or_number_not_as_a_substring(said, expected, same):
    assert formats.same_answer(said, expected) is same
