"""stage=iterate reruns: a round that could never finish (fewer pairs than a batch, no rollout)
says what to do instead of failing at the same step on every rerun."""

from __future__ import annotations

import json

import pytest
from test_iterate import build_plan, gpu_choices

from recipe import processes
from recipe.errors import RecipeError
from recipe.iterate import round_checks, stage, state


def said_by(capsys) -> str:
    """What the loop printed (its console writes to stderr), as one line."""
    captured = capsys.readouterr()
    return (captured.out + captured.err).replace("\n", "")


def plan_for(run_dir, overrides: list[str], choice: str | None):
    choices = {"model": "tiny", "launcher": "local_cpu", "dpo": "tiny", "data_prep": "same_prompt",
               "container": "nemo_rl"}
    task = [o for o in overrides if not o.startswith("iterate.")]  # what the command line forwards
    return build_plan(f"run_dir={run_dir}", *overrides, choices=choices, task=task)


# -- a round that could never finish --------------------------------------------------------------
def prepared(run_dir, k: int, train: int, val: int = 0) -> None:
    state.mark_done(run_dir, k, "prepare", 1.0, pairs_dir=str(run_dir / f"round_{k}" / "prepare" / "data"),
                    pairs={"train": train, "val": val})


def no_training(*args, **kwargs):
    raise AssertionError(f"the train stage was started: {args}")


def test_a_round_of_fewer_pairs_than_a_batch_is_skipped_with_what_to_do(tmp_path, monkeypatch, capsys):
    """The train stage refuses fewer pairs than the global batch, so every rerun failed at the
    same step; now the round is skipped like a round without pairs, with the reason recorded."""
    monkeypatch.setattr(processes, "run", no_training)
    loop = stage.Loop(plan_for(tmp_path, [], None))
    monkeypatch.setattr(loop, "policy", lambda k: "/base")
    prepared(tmp_path, 1, train=5)
    done = loop.step_train(1)
    said = said_by(capsys)
    assert "5 training pair(s) of round 1's rollouts, fewer than a batch (policy.train_global_batch_size=8)" in said
    assert "iterate.train_small_rounds=true trains such a round on a smaller batch" in said
    assert "5 training pair(s)" in done["skipped"]
    state.mark_done(tmp_path, 1, "train", 1.0, **done)
    assert loop.skipped(1) == done["skipped"]


def test_with_train_small_rounds_a_small_round_trains_on_the_batch_its_pairs_fill(tmp_path, monkeypatch):
    from recipe.iterate import plan as plan_mod

    ran = []
    monkeypatch.setattr(processes, "run", lambda argv, *a, **k: ran.append(argv))
    loop = stage.Loop(plan_for(tmp_path, ["iterate.train_small_rounds=true"], None))
    monkeypatch.setattr(loop, "policy", lambda k: "/base")
    prepared(tmp_path, 1, train=5)
    done = loop.step_train(1)
    argv = ran[0]
    assert done["small_round_batch"] == 5 and "skipped" not in done
    train = plan_mod.compose_train(argv[3:])  # what the train stage composes of it
    assert (train.policy.train_global_batch_size, train.policy.train_micro_batch_size) == (5, 5)
    assert "policy.train_global_batch_size=8" not in argv
    # 8 GPUs: the batch must split over the 8 data-parallel ranks
    common = ["model=qwen2.5-1.5b", "serving=vllm", "launcher=multi_gpu", "iterate.train_small_rounds=true",
              "iterate.train.policy.train_global_batch_size=16"]
    gpu = stage.Loop(build_plan(f"run_dir={tmp_path / 'gpu'}", *common, choices=gpu_choices("multi_gpu"),
                                task=common[:3]))
    assert round_checks.small_round(gpu.plan, 1, 11) == (None, 8)
    why, batch = round_checks.small_round(gpu.plan, 1, 7)
    assert batch is None and "a batch must be a multiple of 8" in why
    assert round_checks.small_round(gpu.plan, 1, 16) == (None, None)


def test_a_collection_without_a_single_rollout_is_not_a_step_done(tmp_path, monkeypatch):
    """NeMo Gym wrote every rollout to its failures file: prepare refuses the empty file on every
    rerun, so the collection fails (no record) with NeMo Gym's failure classes instead."""
    from recipe.iterate import gym as gym_mod

    loop = stage.Loop(plan_for(tmp_path, [], None))
    state.mark_done(tmp_path, 0, "export", 1.0, policy="base", artifact=str(tmp_path / "base.gguf"))

    def collect(gym, tasks, out, *args, **kwargs):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
        failure = {"_ng_failure_class": "http_error", "_ng_task_index": 0}
        out.with_name(f"{out.stem}_failures.jsonl").write_text(json.dumps(failure) + "\n" + json.dumps(failure) + "\n")

    monkeypatch.setattr(loop.servers, "open", lambda *a: None)
    monkeypatch.setattr(gym_mod, "collect", collect)
    with pytest.raises(RecipeError, match=r"round 1: NeMo Gym made no train rollout \(2 failed: 2 http_error"):
        loop.step_collect(1)
    # a run folder whose collect record points at an empty file (an older gym-dpo): collected again
    state.mark_done(tmp_path, 1, "collect", 1.0, rollouts=str(tmp_path / "round_1" / "rollouts" / "train.jsonl"),
                    stats={"n": 0})
    monkeypatch.setattr(processes, "run", no_training)
    with pytest.raises(RecipeError, match="rerun the same command to collect again"):
        loop.step_prepare(1)
    state.mark_done(tmp_path, 0, "eval", 1.0)
    assert state.record(tmp_path, 1, "collect") is None and state.pending(tmp_path, 1)[0] == (1, "collect")
