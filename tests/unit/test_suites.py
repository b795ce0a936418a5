"""Looking past the trained verifier: the held-out suites of a run (the environment's eval, its
probe in other words, other environments' eval tasks), the reward rule an environment asks for,
their figures in iterate.json / iterate.md / iterate.html, and why a round made no pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_iterate import REPO, build_plan

from recipe.errors import RecipeError
from recipe.iterate import formats, page, report, state
from recipe.iterate.stage import Loop, no_pairs_reason

REFERENCE = Path(os.environ.get("GYM_DPO_REFERENCE", REPO.parent / "shared" / "reference"))


def test_a_run_evaluates_its_environment_its_probe_and_the_other_environments(tmp_path):
    p = build_plan(f"run_dir={tmp_path}")
    assert [s.name for s in p.suites] == ["eval", "probe", "cross-reasoning_gym", "cross-multi_turn"]
    assert [str(g.name) for g in p.gyms] == ["math", "reasoning_gym", "multi_turn"]  # one ng_run for all three
    by = {s.name: s for s in p.suites}
    assert p.require_format == "boxed" and by["eval"].require_format == "boxed"
    assert by["probe"].require_format is None and by["probe"].reading.answer_format is None
    assert by["cross-reasoning_gym"].reading.gradable == "tagged" and by["cross-reasoning_gym"].limit == 64
    assert by["cross-multi_turn"].require_format == "boxed" and by["cross-multi_turn"].repeats == 2
    assert by["cross-multi_turn"].reading.gradable == "none"
    # the probe and the other environments: round 0 and the last round, unless asked for every round
    assert [s.name for s in p.suites_of(1)] == ["eval"] and len(p.suites_of(3)) == 4
    every = build_plan(f"run_dir={tmp_path}", "iterate.extra_eval_rounds=all")
    assert len(every.suites_of(1)) == 4
    # and all of them are in what a rerun must not change
    assert [s["name"] for s in p.fingerprint()["suites"]] == [s.name for s in p.suites]
    # the probe asks the eval's rows in other words: as many of them as the eval has
    assert by["eval"].limit is None and by["probe"].limit is None
    few = {s.name: s for s in build_plan(f"run_dir={tmp_path / 'few'}", "iterate.eval.tasks=4").suites}
    assert few["eval"].limit == 4 and few["probe"].limit == 4 and few["cross-reasoning_gym"].limit == 64


def test_the_trained_environment_is_not_its_own_cross_eval_and_none_can_be_asked(tmp_path):
    p = build_plan(f"run_dir={tmp_path}", "gym=sokoban", "iterate.cross_eval.environments=[sokoban,math]",
                   "iterate.probe=false")
    assert [s.name for s in p.suites] == ["eval", "cross-math"] and p.require_format is None
    assert p.collect_sampling().max_output_tokens == 32  # the environment's own sampling for its turns
    assert p.suites[0].reading.answer_format == "action_tag"
    alone = build_plan(f"run_dir={tmp_path}", "iterate.cross_eval.environments=[]")
    assert [s.name for s in alone.suites] == ["eval", "probe"] and len(alone.gyms) == 1


@pytest.mark.parametrize("override, message", [
    ("iterate.cross_eval.environments=[nowhere]", "no configs/gym/nowhere.yaml"),
    ("iterate.extra_eval_rounds=sometimes", "last .round 0 and the last round. or all"),
    ("gym.answer_format=xml", "not a known format"),
    ("gym.answer_format=null", "reward_requires_format is set but answer_format names no format"),
    ("gym.probe.tasks=missing.jsonl", "gym.probe.tasks=missing.jsonl: no such file"),
])
def test_a_wrong_suite_setting_is_refused_before_anything_runs(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        build_plan(f"run_dir={tmp_path}", override)


# -- figures ---------------------------------------------------------------------------------------
def reply(task: int, reward: float, text: str) -> dict:
    return {"_ng_task_index": task, "reward": reward, "extracted_answer": text if "boxed" in text else None,
            "response": {"output": [{"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": text}]}]}}


def collection(run_dir: Path, k: int, name: str, rows: list[dict], tasks: int) -> dict:
    rd = state.round_dir(run_dir, k)
    (rd / "tasks").mkdir(parents=True, exist_ok=True)
    (rd / "rollouts").mkdir(parents=True, exist_ok=True)
    (rd / "tasks" / f"{name}.jsonl").write_text("".join(json.dumps({"metadata": {"family": "f"}}) + "\n"
                                                        for _ in range(tasks)))
    path = rd / "rollouts" / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"rollouts": str(path), "stats": {"n": len(rows), "mean": sum(r["reward"] for r in rows) / len(rows)}}


def test_the_report_gives_every_suite_its_gains_and_the_heat_map_its_cells(tmp_path):
    p = build_plan(f"run_dir={tmp_path}", "iterate.rounds=1", "iterate.cross_eval.environments=[sokoban]")
    base = [reply(t, 0.0, "7") for t in range(6)]
    better = [reply(t, 1.0, "\\boxed{7}") for t in range(5)] + [reply(5, 0.0, "7")]
    for k, rows in ((0, base), (1, better)):
        main = collection(tmp_path, k, "eval", rows, 6)
        others = {name: collection(tmp_path, k, name, rows if name == "probe" else base, 6)
                  for name in ("probe", "cross-sokoban")}
        state.mark_done(tmp_path, k, "export", 1.0, policy=f"policy-{k}")
        state.mark_done(tmp_path, k, "eval", 1.0, **main, suites=others)
    doc = report.summary(p)
    r1 = doc["rounds"][1]
    assert r1["gain_vs_round_0"]["reward"]["gain"] == pytest.approx(5 / 6)
    assert r1["gain_vs_round_0"]["adherence"]["gain"] == pytest.approx(5 / 6)  # \boxed{} asked for and given
    assert r1["suites"]["probe"]["gain_vs_round_0"]["reward"]["gain"] == pytest.approx(5 / 6)
    assert "adherence" not in r1["suites"]["probe"]  # the probe states no format
    assert r1["suites"]["cross-sokoban"]["gain_vs_round_0"]["reward"]["gain"] == 0
    cells = doc["cross_eval"]
    assert set(cells) == {"eval", "probe", "cross-sokoban"} and cells["cross-sokoban"]["environment"] == "sokoban"
    assert cells["eval"]["rounds"]["1"]["reward"]["gain"] == pytest.approx(5 / 6)
    rows, rounds, gains, _ = page.heatmap_data(doc)
    assert rounds == [1] and rows[0] == "math (trained here): reward" and len(gains) == len(rows)
    text = report.markdown(doc)
    assert "| probe | 1 |" in text and "| cross-sokoban | 1 |" in text and "instruction adherence" in text
    report.write(p)
    assert (tmp_path / "iterate.html").read_text().count("<img") >= 3  # rounds, heat-map, lengths


def test_the_reward_rule_is_applied_to_the_collection_before_it_is_in_place(tmp_path):
    rows = [reply(0, 1.0, "The answer is 7"), reply(1, 1.0, "so \\boxed{7}")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    formats.require_file("boxed", path)
    assert [json.loads(line)["reward"] for line in path.read_text().splitlines()] == [0.0, 1.0]


# -- a round without pairs says why ----------------------------------------------------------------
def prepare_manifest(tmp_path: Path, source: Path) -> Path:
    out = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={source}",
                    f"data.output_dir={out}", f"run_dir={tmp_path / 'run'}"], cwd=REPO, check=True,
                   capture_output=True)
    return out / "manifest.json"


def test_unseeded_resets_are_never_paired_and_the_round_says_what_would_give_pairs(tmp_path):
    """NeMo Gym's blackjack deals every rollout of a task another hand (an unseeded reset): its
    rollouts part at the environment's turn, not the model's."""
    source = REFERENCE / "nemo-gym" / "blackjack.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} is missing (GYM_DPO_REFERENCE)")
    manifest = json.loads(prepare_manifest(tmp_path, source).read_text())
    assert manifest["pairs"]["train"] + manifest["pairs"]["val"] == 0
    why = no_pairs_reason(tmp_path / "data" / "manifest.json")
    assert "reset is not seeded" in why and "seeded resets would give pairs" in why and "\n" not in why


def test_all_ties_and_nothing_usable_have_their_own_reasons(tmp_path):
    tie = tmp_path / "tie.jsonl"
    tie.write_text("".join(json.dumps({**reply(0, 1.0, "x"), "responses_create_params": {"input": "q"}}) + "\n"
                           for _ in range(3)))
    assert "got two different rewards" in no_pairs_reason(prepare_manifest(tmp_path / "a", tie))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{}\n")
    assert no_pairs_reason(prepare_manifest(tmp_path / "b", empty)).startswith("no usable rollout")


def test_a_round_that_did_not_train_keeps_its_collections_and_adds_what_is_missing(tmp_path, monkeypatch):
    p = build_plan(f"run_dir={tmp_path}", "iterate.rounds=1", "iterate.cross_eval.environments=[sokoban]")
    loop = Loop(p)
    rows = [reply(0, 1.0, "\\boxed{7}")]
    state.mark_done(tmp_path, 0, "eval", 1.0, **collection(tmp_path, 0, "eval", rows, 1), suites={})
    state.mark_done(tmp_path, 1, "train", 1.0, skipped="no pairs")
    asked = []
    monkeypatch.setattr(loop, "_collect", lambda *a, **k: asked.append(a[3]) or {"rollouts": a[3], "stats": {}})
    done = loop.step_eval(1)
    assert asked == ["probe", "cross-sokoban"] and done["same_as_round"] == 0
    assert done["rollouts"] == str(tmp_path / "round_0" / "rollouts" / "eval.jsonl")
