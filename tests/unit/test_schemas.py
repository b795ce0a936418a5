"""The shipped JSON Schemas, and agreement between the fast decoder and jsonschema."""

import json

import jsonschema
import msgspec
import pytest

from recipe.prepare import rollouts
from tests.conftest import REFERENCE, read_jsonl, rollout, write_jsonl

ROLLOUT = jsonschema.Draft202012Validator(rollouts.schema("rollout"))
PAIR = jsonschema.Draft202012Validator(rollouts.schema("pair"))


def fast_accepts(record) -> bool:
    try:
        rollouts.Reader().decode(json.dumps(record).encode())
        return True
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False


def test_schemas_are_valid_draft_2020_12():
    for name in ("rollout", "pair"):
        jsonschema.Draft202012Validator.check_schema(rollouts.schema(name))


def valid_records():
    yield rollout()
    yield rollout(reward=2)
    yield rollout(reward=None)
    legacy = rollout()
    legacy["output"] = legacy.pop("response")["output"]
    yield legacy
    no_response = rollout()
    no_response["response"] = None
    yield no_response
    text_input = rollout()
    text_input["responses_create_params"]["input"] = "plain"
    yield text_input
    yield rollout(agent="env", task=3, mask_sample=False, extra={"anything": [1]})
    for path in sorted((REFERENCE / "nemo-gym").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            yield json.loads(line)


def invalid_records():
    yield []
    yield "a string"
    yield {"reward": 1.0}  # no request
    yield rollout(reward="high")
    yield rollout(reward=True)
    yield rollout(mask_sample="yes")
    yield rollout(task="zero")
    bad_input = rollout()
    bad_input["responses_create_params"]["input"] = 5
    yield bad_input
    bad_item = rollout()
    bad_item["responses_create_params"]["input"] = ["not an item"]
    yield bad_item
    bad_content = rollout(output=[{"type": "message", "role": "assistant", "content": 12}])
    yield bad_content
    bad_output = rollout()
    bad_output["response"]["output"] = {"type": "message"}
    yield bad_output
    bad_args = rollout(output=[{"type": "function_call", "name": "f", "arguments": {"a": 1}}])
    yield bad_args
    yield rollout(agent_ref="env")


@pytest.mark.parametrize("record", list(valid_records()))
def test_valid_records_pass_both_validators(record):
    assert ROLLOUT.is_valid(record)
    assert fast_accepts(record)


@pytest.mark.parametrize("record", list(invalid_records()))
def test_invalid_records_fail_both_validators(record):
    assert not ROLLOUT.is_valid(record)
    assert not fast_accepts(record)


def test_explanation_names_the_field():
    reason, detail = rollouts.explain_invalid(json.dumps(rollout(reward="high")).encode())
    assert reason == "schema" and detail.startswith("reward:")
    assert rollouts.explain_invalid(b'{"a": ') [0] == "malformed_json"
    assert rollouts.explain_invalid(b"[1, 2]")[0] == "not_an_object"
    assert rollouts.explain_invalid(b'{"x": "\xff"}')[0] == "not_utf8"
    assert rollouts.explain_invalid(b'{"responses_create_params": {}, "reward": NaN}')[0] == "reward_not_finite"


def test_pair_schema_accepts_what_the_writer_builds_and_refuses_broken_pairs(tmp_path, prepare):
    context = [{"role": "user", "content": "q"}]
    call = [{"type": "function_call", "name": "f", "arguments": '{"x": 1}', "call_id": "c"}]
    rows = [rollout(prompt="q", answer="yes", reward=1), rollout(prompt="q", output=call, reward=0)]
    _, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0")
    (good,) = read_jsonl(out / "train.jsonl")
    assert good["completions"][0] == {"rank": 0, "completion": [{"role": "assistant", "content": "yes"}]}
    assert good["completions"][1]["completion"][0]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert PAIR.is_valid(good)
    as_written = json.loads(json.dumps(good).replace('{"x": 1}', '"not an object"'))
    assert PAIR.is_valid(as_written)  # arguments that were not a JSON object stay a string
    assert PAIR.is_valid({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert PAIR.is_valid({"prompt": [{"role": "system", "content": "s"}] + context, "chosen": "a", "rejected": "b"})
    assert not PAIR.is_valid({**good, "task_name": "x"})  # NeMo RL adds task_name itself
    assert not PAIR.is_valid({"context": context, "completions": good["completions"][:1]})
    swapped = {"context": context, "completions": [good["completions"][1], good["completions"][0]]}
    assert not PAIR.is_valid(swapped)  # ranks must be 0 then 1
    tie = {"context": context, "completions": [good["completions"][0], {**good["completions"][1], "rank": 0}]}
    assert not PAIR.is_valid(tie)
    assert not PAIR.is_valid({"context": [], "completions": good["completions"]})
    assert not PAIR.is_valid({"prompt": "q", "chosen": "a", "rejected": ""})
    assert not PAIR.is_valid({"prompt": "q", "chosen": "a"})
    assert not PAIR.is_valid({"prompt": "q", "chosen": ["a"], "rejected": "b"})
