"""Rollout items -> chat messages: context, single-turn text, trajectories, rejects."""

import msgspec
import pytest

from recipe.prepare import chat, rollouts, scan
from tests.conftest import message, rollout

OPTIONS = scan.ScanOptions()


def convert(row, options=OPTIONS):
    decoded = rollouts.Reader(options.group_by).decode(msgspec.json.encode(row))
    return scan.convert(*decoded, options)


def test_single_turn_text_joins_output_text_parts_and_drops_reasoning():
    row = rollout(output=[
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "The answer "}, {"type": "output_text", "text": "is 4."}]}])
    context, response = convert(row)
    assert context == [{"role": "user", "content": "What is 2+2?"}]
    assert response == "The answer is 4."


def test_reasoning_included_on_request():
    row = rollout(answer="4")
    _, response = convert(row, scan.ScanOptions(chat=chat.ChatOptions(include_reasoning=True)))
    assert response == "<think>\nhmm\n</think>\n4"


def test_input_as_string_instructions_and_developer_role():
    row = rollout()
    row["responses_create_params"] = {"input": "hi", "instructions": "be brief"}
    assert convert(row)[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    row["responses_create_params"] = {"input": [message("developer", "rules", typed=False),
                                                message("user", "q", parts=True)]}
    assert convert(row)[0] == [{"role": "system", "content": "rules"}, {"role": "user", "content": "q"}]
    developer = scan.ScanOptions(chat=chat.ChatOptions(developer_role="developer"))
    assert convert(row, developer)[0][0] == {"role": "developer", "content": "rules"}


def test_tool_items_in_input_become_tool_calls_and_tool_messages():
    row = rollout()
    row["responses_create_params"]["input"] = [
        message("user", "weather?"),
        {"type": "function_call", "name": "get_weather", "arguments": '{"city": "Paris"}', "call_id": "c1"},
        {"type": "function_call_output", "call_id": "c1", "output": "20C"},
        message("user", "thanks, and tomorrow?")]
    context, _ = convert(row)
    assert context == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "20C"},
        {"role": "user", "content": "thanks, and tomorrow?"}]


def test_a_tool_call_without_a_name_is_a_reject_in_the_input_and_in_the_output():
    nameless = {"type": "function_call", "name": "", "arguments": "{}", "call_id": "c"}
    row = rollout(output=[nameless, {"type": "message", "role": "assistant", "content": "done"}])
    with pytest.raises(chat.Unusable) as raised:
        convert(row)
    assert raised.value.reason == "tool_call_without_name"
    row = rollout()
    row["responses_create_params"]["input"] = [message("user", "q"), {**nameless, "name": None}]
    with pytest.raises(chat.Unusable) as raised:
        convert(row)
    assert raised.value.reason == "tool_call_without_name"


def test_tool_call_output_is_a_trajectory():
    row = rollout(output=[
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]}])
    _, response = convert(row)
    assert response == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
        {"role": "assistant", "content": "done"}]


@pytest.mark.parametrize("written, kept", [
    ('{"city": "Paris", "days": [1, 2]}', {"city": "Paris", "days": [1, 2]}),
    ("", {}), (None, {}),
    ("[1, 2]", "[1, 2]"), ('"Paris"', '"Paris"'), ("{not json", "{not json"), ("3", "3")])
def test_tool_call_arguments_become_a_json_object_or_stay_as_written(written, kept):
    row = rollout(output=[{"type": "function_call", "name": "f", "arguments": written, "call_id": "c"}])
    _, response = convert(row)
    assert response[0]["tool_calls"][0]["function"]["arguments"] == kept

def test_environment_user_turns_stay_in_the_output():
    row = rollout(output=[
        message("assistant", "hit", parts=True), message("user", "you have 18"),
        message("assistant", "stand", parts=True), message("user", "you win")])
    _, response = convert(row)  # the trailing turn too: the cut decides what a pair learns from it
    assert [m["role"] for m in response] == ["assistant", "user", "assistant", "user"]
    assert response[2]["content"] == "stand"


def test_assistant_messages_with_nothing_in_them_are_left_out():
    row = rollout(output=[message("assistant", " \ufeff\n"),
                          {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
                          {"type": "function_call_output", "call_id": "c", "output": ""},
                          message("assistant", "done")])
    _, response = convert(row)  # U+FEFF is whitespace by the pair schema's rule
    assert [(m["role"], m["content"]) for m in response] == [("assistant", ""), ("tool", ""), ("assistant", "done")]
    assert "tool_calls" in response[0]


def test_legacy_top_level_output():
    row = rollout()
    del row["response"]
    row["output"] = [message("assistant", "legacy answer")]
    assert convert(row)[1] == "legacy answer"


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.update(mask_sample=True), "mask_sample"),
    (lambda r: r.update(reward=None), "reward_null"),
    (lambda r: r.pop("reward"), "reward_missing"),
    (lambda r: r["responses_create_params"].update(input=[]), "empty_context"),
    (lambda r: r["responses_create_params"].update(input=None), "empty_context"),
    (lambda r: r["response"].update(output=[]), "no_assistant_output"),
    (lambda r: r["response"].update(output=[message("assistant", "  ")]), "empty_response"),
    (lambda r: r["response"].update(output=[message("assistant", "\ufeff")]), "empty_response"),
    (lambda r: r["response"].update(output=[message("assistant", " "), message("user", "hello?")]), "empty_response"),
    (lambda r: r["response"].update(output=[message("user", "env only")]), "no_assistant_output"),
    (lambda r: r["responses_create_params"].update(input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": "x"}]}]), "non_text_content"),
    (lambda r: r["responses_create_params"].update(input=[message("critic", "x")]), "unknown_role"),
])
def test_unusable_rollouts_are_rejected_with_their_reason(mutate, reason):
    row = rollout()
    mutate(row)
    with pytest.raises(chat.Unusable) as caught:
        convert(row)
    assert caught.value.reason == reason


def test_binary_format_reads_trajectories_too():  # where they part decides (cut.py)
    row = rollout(output=[message("assistant", "a"), message("user", "b"), message("assistant", "c")])
    _, response = convert(row, scan.ScanOptions(binary=True))
    assert [m["content"] for m in response] == ["a", "b", "c"]


def test_int_rewards_and_unknown_keys_are_fine():
    row = rollout(reward=3, something_else={"deep": [1, 2]}, reward_components={"a": 1})
    decoded, _ = rollouts.Reader().decode(msgspec.json.encode(row))
    assert decoded.reward == 3.0
