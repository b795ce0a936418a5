"""Environments nobody here wrote, through the loop with the real tools (NeMo Gym 0.4.0's own
servers, llama-server, SmolLM2): NeMo Gym's multi-turn `example_multi_turn_gymnasium`, added by a
config file alone outside the repository (found through Hydra's search path) and trained on, while
`mcqa` is cross-evaluated in the same ng_run. Its rows hold two turns of the model, the reward
requires the format on every turn, and a task's rollouts start alike, so they are paired where they
part. One loop for all of it (a loop is minutes here). tests/infra/iterate_up.sh installs the tools."""

from __future__ import annotations

import json

import pytest
from engines import REPO, gym_dpo_cli, run
from test_iterate_loop import ours, tools  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

SMALL = ["iterate.eval.repeats=2", "iterate.collect.sampling.max_output_tokens=32",
         "iterate.eval.sampling.max_output_tokens=32", "iterate.train.policy.train_global_batch_size=2",
         "iterate.train.policy.train_micro_batch_size=2", "iterate.train.dpo.max_num_steps=1", "serving.threads=1"]
SAMPLES = REPO / "samples" / "gym"


def test_an_environment_added_by_a_config_file_alone_runs_through_the_loop(tools, tmp_path):  # noqa: F811
    configs = tmp_path / "my_configs" / "gym"
    configs.mkdir(parents=True)
    (configs / "follow_ups.yaml").write_text(  # what docs/environments.md "your environment" asks for
        "name: follow_ups\n"
        "config_paths: [resources_servers/example_multi_turn_gymnasium/configs/example_multi_turn_gymnasium.yaml]\n"
        "agent_name: example_multi_turn_gymnasium_agent\n"
        f"train_tasks: {SAMPLES / 'multi_turn_train.jsonl'}\neval_tasks: {SAMPLES / 'multi_turn_eval.jsonl'}\n"
        "eval_repeats: 2\nfamily_key: metadata.family\ngradable: none\n"
        "answer_format: boxed\nreward_requires_format: true\n"
        f"probe: {{tasks: {SAMPLES / 'multi_turn_probe.jsonl'}, repeats: 2, answer_format: null}}\n"
        "nemo_gym_overrides: []\n")
    run_dir = tmp_path / "run"
    search = f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]"
    result = run([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", search, "gym=follow_ups", "iterate.rounds=1",
                  "iterate.collect.tasks=8", "iterate.collect.repeats=4", "iterate.eval.tasks=4",
                  "iterate.cross_eval.environments=[mcqa]", "iterate.cross_eval.tasks=4", *SMALL],
                 cwd=REPO, timeout=2400, check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    assert "ng_run, follow_ups, mcqa" in said  # one NeMo Gym session for both environments
    doc = json.loads((run_dir / "iterate.json").read_text())
    r0, r1 = doc["rounds"]
    assert r1["done"] and not ours(run_dir)
    # the policy answers, NeMo Gym's scripted user follows up, the policy answers again
    rows = [json.loads(line) for line in (run_dir / "round_1" / "rollouts" / "train.jsonl").read_text().splitlines()]
    turns = [sum(1 for item in r["response"]["output"] if item.get("role") == "assistant") for r in rows]
    assert len(rows) == 32 and min(turns) == 2
    assert all("gym_dpo_verifier_reward" in r for r in rows)  # the reward requires \boxed{} on every turn
    assert all(r["reward"] == 0 for r in rows if r["gym_dpo_format_followed"] < 1)
    # the held-out suites: its eval, its probe (as many rows as the eval), mcqa's tasks
    ev = r0["eval"]
    assert 0 <= ev["adherence"] <= 1 and ev["n"] == 4 * 2 and set(ev["families"]) <= {
        "add_then_add", "add_then_subtract", "add_then_double", "multiply_then_add"}
    assert r0["suites"]["probe"]["n"] == 4 * 2 and "adherence" not in r0["suites"]["probe"]
    assert r0["suites"]["cross-mcqa"]["n"] == 4 * 2
    assert set(doc["cross_eval"]) == {"eval", "probe", "cross-mcqa"}
    assert "reward" in doc["cross_eval"]["eval"]["rounds"]["1"]
    # a task's rollouts start alike: paired where they part, or the round says why it has no pair
    manifest = json.loads((run_dir / "round_1" / "prepare" / "data" / "manifest.json").read_text())
    assert manifest["counts"]["unpaired"]["no_comparable_rollout"] == 0
    assert r1.get("skipped") or r1["pairs"]["train"] >= 1
