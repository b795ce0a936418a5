"""prepare reads NeMo Gym 0.7.0's rows (tests/data/nemo_gym_070/, lines of the 0.7.0 wheel's own
example rollouts): the agent layout with 0.7.0's keys, user-simulation episodes read from their
conversation, and the layouts it cannot train on rejected with a reason that names them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import msgspec
import pytest

from recipe.prepare import rollouts, scan
from tests.conftest import read_jsonl, rollout, write_jsonl

DATA = Path(__file__).resolve().parents[1] / "data" / "nemo_gym_070"
ROLLOUT = jsonschema.Draft202012Validator(rollouts.schema("rollout"))


def row(name: str) -> dict:
    return json.loads((DATA / f"{name}.jsonl").read_text())


def second_rollout(episode: dict, reward: float, reply: str) -> dict:
    """Another rollout of the same episode task: the same opening turn, another reply."""
    other = copy.deepcopy(episode)
    other["_ng_rollout_index"], other["reward"] = 1, reward
    other["usersim_result"]["conversation_messages"][1]["content"] = reply
    return other


def test_an_episode_row_is_read_from_its_conversation():
    episode = row("nemo_user_sim")
    assert "responses_create_params" not in episode and "response" not in episode
    decoded, params_input = rollouts.Reader().decode(json.dumps(episode).encode())
    context, response = scan.convert(decoded, params_input, scan.ScanOptions())
    messages = episode["usersim_result"]["conversation_messages"]
    assert context == [{"role": "user", "content": messages[0]["content"]}]
    assert response == messages[1]["content"]
    assert decoded.environment_server == "nemo_user_sim_environment" and decoded.result_type == "nemo_user_sim"
    assert ROLLOUT.is_valid(episode)  # the schema and the typed decoder agree


@pytest.mark.parametrize("name, reason, words", [
    ("bbq", "episode_no_prompt", ["policy_response", "bbq layout", "no context"]),
    ("aviary", "steps_output", ["list of steps", "aviary"]),
    ("ether0_reward_profiling", "not_a_rollout", ["reward-profiling", "mean/reward"]),
])
def test_a_layout_prepare_cannot_train_on_is_rejected_with_its_own_reason(name, reason, words):
    line = json.dumps(row(name)).encode()
    with pytest.raises(msgspec.ValidationError):
        rollouts.Reader().decode(line)
    assert not ROLLOUT.is_valid(json.loads(line))
    said, detail = rollouts.explain_invalid(line)
    assert said == reason and all(w in detail for w in words), detail


def test_an_episode_without_its_conversation_is_named():
    episode = row("nemo_user_sim")
    del episode["usersim_result"]["conversation_messages"]
    assert rollouts.explain_invalid(json.dumps(episode).encode())[0] == "episode_no_conversation"
    episode["usersim_result"] = {"conversation_messages": [5]}  # there but not items: the schema says where
    reason, detail = rollouts.explain_invalid(json.dumps(episode).encode())
    assert reason == "schema" and "conversation_messages" in detail


def test_0_7_rows_pair_group_and_count_their_rejects(tmp_path, prepare):
    """A file of 0.7.0 rows: the episodes of one task pair (grouped by their environment server and
    task index), an agent row with the 0.7.0 keys reads, the masked row is counted with its
    failure_kind, and each layout prepare cannot train on has its own reason."""
    episode = row("nemo_user_sim")
    masked = rollout(task=3, agent="a", reward=0.0, mask_sample=True, failure_kind="judge_failed",
                     failure_reason="the judge timed out", _ng_environment_server="a_environment",
                     _ng_result_type="legacy_agent")
    rows = [episode, second_rollout(episode, 1.0, "Done: $500.00 moved to checking."), row("math_with_judge"),
            masked, row("bbq"), row("aviary"), row("ether0_reward_profiling")]
    manifest, out = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "data.val_fraction=0")
    pairs = [json.loads(line) for path in sorted((out).rglob("*.jsonl")) if path.name.startswith("train")
             for line in path.read_text().splitlines()]
    assert len(pairs) == 1
    rejects = {r["line"]: (r["reason"], r["detail"]) for r in read_jsonl(out / "rejects.jsonl")}
    assert {line: reason for line, (reason, _) in rejects.items()} == {
        4: "mask_sample", 5: "episode_no_prompt", 6: "steps_output", 7: "not_a_rollout"}
    assert "(judge_failed: the judge timed out)" in rejects[4][1]
    counts = manifest["counts"]
    assert counts["rejected"].get("schema", 0) == 0 and counts["lines"] == len(rows)
