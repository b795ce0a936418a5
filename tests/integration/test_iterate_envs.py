"""Environments nobody here wrote, through the loop with the real tools (NeMo Gym 0.4.0's own
servers, llama-server, SmolLM2): one added by a config file alone, outside the repository, and
trained on while another is cross-evaluated in the same ng_run; the bundled multi-turn one, whose
rows hold two turns of the model. tests/infra/iterate_up.sh installs the tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engines import REPO, gym_dpo_cli, run
from test_iterate_loop import ours, tools  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

SMALL = ["iterate.eval.repeats=2", "iterate.collect.sampling.max_output_tokens=32",
         "iterate.eval.sampling.max_output_tokens=32", "iterate.train.policy.train_global_batch_size=2",
         "iterate.train.policy.train_micro_batch_size=2", "iterate.train.dpo.max_num_steps=1", "serving.threads=1"]


def nemo_gym_package() -> Path:
    from recipe.iterate import setup

    return next((setup.nemo_gym(install=False).venv / "lib").glob("python3*/site-packages"))


def test_an_environment_added_by_a_config_file_alone(tools, tmp_path):  # noqa: F811
    """NeMo Gym's example_multi_turn_gymnasium (a scripted user asks follow-ups; the reward is
    whether the last reply holds the expected answer), with NeMo Gym's own example tasks: a
    configs/gym/<name>.yaml in a folder of the user's, found through Hydra's search path, trained
    on; mcqa cross-evaluated in the same NeMo Gym session."""
    examples = nemo_gym_package() / "resources_servers" / "example_multi_turn_gymnasium" / "data" / "example.jsonl"
    configs = tmp_path / "my_configs" / "gym"
    configs.mkdir(parents=True)
    (configs / "follow_ups.yaml").write_text(
        "name: follow_ups\n"
        "config_paths: [resources_servers/example_multi_turn_gymnasium/configs/example_multi_turn_gymnasium.yaml]\n"
        "agent_name: example_multi_turn_gymnasium_agent\n"
        f"train_tasks: {examples}\neval_tasks: {examples}\neval_repeats: 2\n"
        "gradable: none\nanswer_format: null\nnemo_gym_overrides: []\n")
    run_dir = tmp_path / "run"
    search = f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]"
    result = run([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", search, "gym=follow_ups", "iterate.rounds=1",
                  "iterate.collect.tasks=5", "iterate.collect.repeats=4", "iterate.cross_eval.environments=[mcqa]",
                  "iterate.cross_eval.tasks=4", *SMALL],
                 cwd=REPO, timeout=2400, check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    assert "ng_run, follow_ups, mcqa" in said
    doc = json.loads((run_dir / "iterate.json").read_text())
    r0, r1 = doc["rounds"]
    assert r0["eval"]["n"] == 10 and r0["suites"]["cross-mcqa"]["n"] == 8 and r1["done"]
    assert set(doc["cross_eval"]) == {"eval", "cross-mcqa"} and "reward" in doc["cross_eval"]["eval"]["rounds"]["1"]
    rows = [json.loads(line) for line in (run_dir / "round_1" / "rollouts" / "train.jsonl").read_text().splitlines()]
    turns = [sum(1 for item in r["response"]["output"] if item.get("role") == "assistant") for r in rows]
    assert len(rows) == 20 and min(turns) >= 2  # every task asks at least one follow-up
    assert r1.get("skipped") or r1["pairs"]["train"] >= 1  # pairs, or one line saying why not
    assert not ours(run_dir)


def test_a_multi_turn_environment_runs_through_the_loop(tools, tmp_path):  # noqa: F811
    """gym=multi_turn: the policy answers, NeMo Gym's scripted user follows up, the policy answers
    again; the rollouts of a task start alike, so they are paired where they part; every turn's
    format is measured and required."""
    run_dir = tmp_path / "run"
    result = run([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", "gym=multi_turn", "iterate.rounds=1",
                  "iterate.collect.tasks=8", "iterate.collect.repeats=4", "iterate.eval.tasks=4",
                  "iterate.cross_eval.environments=[]", *SMALL], cwd=REPO, timeout=2400, check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    doc = json.loads((run_dir / "iterate.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "round_1" / "rollouts" / "train.jsonl").read_text().splitlines()]
    turns = [sum(1 for item in r["response"]["output"] if item.get("role") == "assistant") for r in rows]
    assert len(rows) == 32 and min(turns) == 2  # the question, then the follow-up
    assert all("gym_dpo_verifier_reward" in r for r in rows)  # the reward requires \boxed{} on every turn
    for r in rows:
        if r["gym_dpo_format_followed"] < 1:
            assert r["reward"] == 0
    ev = doc["rounds"][0]["eval"]
    assert 0 <= ev["adherence"] <= 1 and ev["n"] == 4 * 2 and set(ev["families"]) <= {
        "add_then_add", "add_then_subtract", "add_then_double", "multiply_then_add"}
    assert doc["rounds"][0]["suites"]["probe"]["n"] == 4 * 2 and "adherence" not in doc["rounds"][0]["suites"]["probe"]
    manifest = json.loads((run_dir / "round_1" / "prepare" / "data" / "manifest.json").read_text())
    assert manifest["counts"]["unpaired"]["no_comparable_rollout"] == 0  # a task's rollouts start alike
    assert doc["rounds"][1]["done"] and not ours(run_dir)
