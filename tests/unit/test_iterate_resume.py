"""stage=iterate reruns: a setting that changes what a round is made of is refused, one setting at
a time, with the difference shown; what a rerun may change is said and recorded per round; a round
that could never finish (fewer pairs than a batch, no rollout) says what to do instead of failing
at the same step on every rerun."""

from __future__ import annotations

import json
import shutil

import pytest
from test_iterate import REPO, build_plan, gpu_choices

from recipe import processes
from recipe.errors import RecipeError
from recipe.iterate import report, round_checks, stage, state

# (what the rerun changes, the command line for build_plan, Hydra's choices or None, the key it shows)
REFUSED = [
    ("tasks per round", ["iterate.collect.tasks=32"], None, "collect.tasks: 64 then, 32 now"),
    ("repeats per task", ["iterate.collect.repeats=4"], None, "collect.repeats: 8 then, 4 now"),
    ("collect temperature", ["iterate.collect.sampling.temperature=0.7"], None,
     "sampling.collect.temperature: 1.0 then, 0.7 now"),
    ("pairing strategy", ["data_prep=stratified"], "stratified", "prepare.data_prep.name: 'same_prompt' then, "
                                                                 "'stratified' now"),
    ("a pairing setting", ["data_prep.min_gap=0.2"], None, "prepare.data_prep.min_gap: 0.0 then, 0.2 now"),
    ("a prepare override", ["iterate.prepare=['data.val_fraction=0.2']"], None, "prepare.overrides: [] then"),
    ("the learning rate", ["iterate.train.policy.optimizer.kwargs.lr=1e-5"], None,
     "train.policy.optimizer.kwargs.lr: 2e-05 then, 1e-05 now"),
    ("beta", ["iterate.train.dpo.reference_policy_kl_penalty=0.05"], None,
     "train.dpo.reference_policy_kl_penalty: 0.1 then, 0.05 now"),
    ("the global batch", ["iterate.train.policy.train_global_batch_size=4"], None,
     "train.policy.train_global_batch_size: 8 then, 4 now"),
    ("a forwarded train key", ["policy.max_grad_norm=0.5"], None, "train.policy.max_grad_norm: 1.0 then, 0.5 now"),
    ("the dpo preset", ["dpo=smoke"], "dpo:smoke", "train.dpo."),
]


def said_by(capsys) -> str:
    """What the loop printed (its console writes to stderr), as one line."""
    captured = capsys.readouterr()
    return (captured.out + captured.err).replace("\n", "")


def plan_for(run_dir, overrides: list[str], choice: str | None):
    choices = {"model": "tiny", "launcher": "local_cpu", "dpo": "tiny", "data_prep": "same_prompt",
               "container": "nemo_rl"}
    if choice == "stratified":
        choices["data_prep"] = "stratified"
    elif choice and choice.startswith("dpo:"):
        choices["dpo"] = choice.split(":")[1]
    task = [o for o in overrides if not o.startswith("iterate.")]  # what the command line forwards
    return build_plan(f"run_dir={run_dir}", *overrides, choices=choices, task=task)


def refused(run_dir, plan) -> list[str]:
    """What a rerun with `plan` would be refused for (plan.json is written by the first)."""
    return state.check_plan(run_dir, plan.fingerprint())


@pytest.mark.parametrize("what, overrides, choice, shown", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_rerun_that_changes_one_setting_of_what_rounds_are_made_of_is_refused(tmp_path, what, overrides,
                                                                                  choice, shown):
    assert refused(tmp_path, plan_for(tmp_path, [], None)) == []  # the run as started: plan.json
    changed = refused(tmp_path, plan_for(tmp_path, overrides, choice))
    assert [line for line in changed if shown in line], changed
    assert refused(tmp_path, plan_for(tmp_path, [], None)) == []  # the same settings go on


def test_the_loop_refuses_with_every_difference_and_what_to_do(tmp_path):
    stage.Loop(plan_for(tmp_path, [], None)).check_settings()
    with pytest.raises(RecipeError, match="was started with other settings(.|\n)*use a new run_dir, or the settings "
                                          "it has(.|\n)*\n  collect.tasks: 64 then, 32 now\n  train.policy"):
        stage.Loop(plan_for(tmp_path, ["iterate.collect.tasks=32", "iterate.train.policy.optimizer.kwargs.lr=1e-5"],
                            None)).check_settings()


def test_another_train_task_file_is_refused(tmp_path):
    other = tmp_path / "tasks.jsonl"
    source = REPO / "samples" / "gym" / "math_train.jsonl"
    shutil.copy(source, other)
    run_dir = tmp_path / "run"
    assert refused(run_dir, plan_for(run_dir, [f"gym.train_tasks={other}"], None)) == []
    with open(other, "a") as handle:  # the same path, other tasks: round K's offset would point elsewhere
        handle.write(source.read_text().splitlines()[0] + "\n")
    assert [line for line in refused(run_dir, plan_for(run_dir, [f"gym.train_tasks={other}"], None))
            if line.startswith("train_tasks_sha256: ")]
    assert [line for line in refused(run_dir, plan_for(run_dir, [], None)) if line.startswith("train_tasks: ")]


ACCEPTED = [
    (["iterate.collect.sampling.parallel=4"], "collect_parallel: 8 then, 4 now"),
    (["iterate.watchdog.stall_s=60"], "watchdog.stall_s: 300 then, 60 now"),
    (["iterate.train_small_rounds=true"], "train_small_rounds: False then, True now"),
    (["iterate.train.checkpointing.save_period=10"],
     "train_runs_with.checkpointing.save_period: '1000' then, '10' now"),
]


@pytest.mark.parametrize("overrides, said", ACCEPTED, ids=[a[0][0] for a in ACCEPTED])
def test_a_setting_a_rerun_may_change_is_said_and_recorded(tmp_path, capsys, overrides, said):
    stage.Loop(plan_for(tmp_path, [], None)).check_settings()
    capsys.readouterr()
    changed = plan_for(tmp_path, overrides, None)
    stage.Loop(changed).check_settings()
    assert said in said_by(capsys)
    assert json.loads((tmp_path / "plan.json").read_text())["accepted"] == changed.accepted()
    stage.Loop(changed).check_settings()
    assert said_by(capsys) == ""  # said once, when it changed


def test_more_rounds_are_no_change_and_launcher_env_values_are_never_written(tmp_path, capsys):
    stage.Loop(plan_for(tmp_path, ["iterate.rounds=1", "+launcher.env.SOME_VALUE=canary-9731"], None)).check_settings()
    stage.Loop(plan_for(tmp_path, ["iterate.rounds=5", "+launcher.env.SOME_VALUE=canary-9731"], None)).check_settings()
    assert said_by(capsys) == ""
    assert "canary-9731" not in (tmp_path / "plan.json").read_text()


def test_a_plan_json_of_an_older_gym_dpo_is_completed_and_said(tmp_path, capsys):
    p = plan_for(tmp_path, [], None)
    older = {k: v for k, v in p.fingerprint().items() if k not in ("train_tasks", "train_tasks_sha256", "collect",
                                                                  "prepare", "train")}
    state.write_json(tmp_path / "plan.json", older)
    stage.Loop(p).check_settings()
    said = said_by(capsys)
    assert "did not record train_tasks, train_tasks_sha256, collect, prepare, train" in said
    assert json.loads((tmp_path / "plan.json").read_text())["collect"] == {"tasks": 64, "repeats": 8}
    with pytest.raises(RecipeError, match="collect.tasks: 64 then, 32 now"):
        stage.Loop(plan_for(tmp_path, ["iterate.collect.tasks=32"], None)).check_settings()


def test_each_round_records_what_it_ran_with_in_iterate_json(tmp_path):
    p = plan_for(tmp_path, [], None)
    state.mark_done(tmp_path, 0, "export", 1.0, policy="base", artifact="a", settings=p.accepted())
    faster = plan_for(tmp_path, ["iterate.collect.sampling.parallel=4"], None)
    state.mark_done(tmp_path, 0, "eval", 1.0, rollouts=str(tmp_path / "none.jsonl"), stats={"n": 0},
                    settings=faster.accepted())
    (tmp_path / "none.jsonl").write_text("")
    entry = report.summary(p)["rounds"][0]
    assert entry["settings"]["export"]["collect_parallel"] == 8
    assert entry["settings"]["eval"]["collect_parallel"] == 4


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
