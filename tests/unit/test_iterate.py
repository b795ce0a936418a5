"""stage=iterate without servers: round bookkeeping and resume, eval statistics, what is handed
to the stages, stopping process trees, and the GPU path's commands (dry run)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from recipe import processes
from recipe.errors import RecipeError
from recipe.iterate import gym, plan, report, state, stats

REPO = Path(__file__).resolve().parents[2]


def row(task: int, reward, tokens: int = 5, text: str = "Answer: A") -> dict:
    return {"_ng_task_index": task, "reward": reward,
            "response": {"output": [{"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": text}]}],
                         "usage": {"output_tokens": tokens}}}


# -- statistics -----------------------------------------------------------------------------------
def test_summary_clusters_the_standard_error_by_task():
    rows = [row(0, 1.0), row(0, 1.0), row(1, 0.0), row(1, 1.0), row(2, 0.0), row(2, 0.0)]
    s = stats.summarize(rows)
    assert (s["n"], s["tasks"]) == (6, 3)
    assert s["mean"] == pytest.approx(0.5)
    means = [1.0, 0.5, 0.0]  # per task; se = std(ddof=1) / sqrt(3)
    assert s["se"] == pytest.approx(math.sqrt(sum((m - 0.5) ** 2 for m in means) / 2 / 3))
    assert s["pass_rate"] == pytest.approx(0.5)
    assert s["pass_at_k"] == {"k": 2, "rate": pytest.approx(2 / 3)}
    assert s["mean_response_tokens"] == 5
    assert s["mean_response_chars"] == len("Answer: A")


def test_summary_without_binary_rewards_or_usage_and_with_unscored_rows():
    rows = [row(0, 0.5), row(1, 2.0), {"_ng_task_index": 2, "reward": None}]
    del rows[0]["response"]["usage"]
    s = stats.summarize(rows, failures=3)
    assert "pass_rate" not in s and "mean_response_tokens" not in s
    assert (s["n"], s["unscored"], s["failures"]) == (2, 1, 3)
    assert stats.summarize([])["mean"] is None


def test_ng_run_is_ready_only_once_all_its_servers_are():
    assert gym.ALL_READY.search("All 3 / 3 servers ready! Polling every 60s")
    assert not gym.ALL_READY.search("0 / 3 servers ready. Waiting for servers to spin up: ['math_with_judge']")
    assert not gym.ALL_READY.search("All 2 / 3 servers ready")


def test_two_setups_install_one_at_a_time(tmp_path, monkeypatch):
    import fcntl
    import threading

    from recipe.iterate import setup

    monkeypatch.setenv("GYM_DPO_CACHE", str(tmp_path))
    folder = setup.cache_root() / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / setup.STAMP).write_text("done\n")
    lock = setup.cache_root() / ".install.lock"
    found = []
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another setup is installing
        waiting = threading.Thread(target=lambda: found.append(setup.smollm2_base()))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and not found
    waiting.join(10)
    assert found == [folder]
    assert setup.smollm2_base() == folder  # and the lock is free again


def test_read_rows_names_the_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"reward": 1}\n\n{oops\n')
    with pytest.raises(ValueError, match=r"r.jsonl:3"):
        stats.read_rows(path)


# -- bookkeeping and resume -----------------------------------------------------------------------
def done(run_dir: Path, k: int, *steps: str) -> None:
    for step in steps:
        state.mark_done(run_dir, k, step, 1.0)


def test_pending_lists_every_step_of_every_round_on_a_new_run(tmp_path):
    todo = state.pending(tmp_path, 2)
    assert todo[:2] == [(0, "export"), (0, "eval")]
    assert todo[2:7] == [(1, s) for s in state.ROUND_STEPS] and len(todo) == 12


def test_pending_resumes_at_the_first_unfinished_step_of_the_first_unfinished_round(tmp_path):
    done(tmp_path, 0, "export", "eval")
    done(tmp_path, 1, "collect", "prepare")
    done(tmp_path, 1, "export")  # stale: after an unfinished step, it is redone
    done(tmp_path, 2, "collect")  # stale: a later round than the unfinished one
    todo = state.pending(tmp_path, 2)
    assert todo[0] == (1, "train")
    assert todo[:3] == [(1, "train"), (1, "export"), (1, "eval")]
    assert todo[3:] == [(2, s) for s in state.ROUND_STEPS]


def test_pending_is_empty_when_done_and_grows_with_more_rounds(tmp_path):
    done(tmp_path, 0, *state.ROUND0_STEPS)
    done(tmp_path, 1, *state.ROUND_STEPS)
    assert state.pending(tmp_path, 1) == []
    assert state.pending(tmp_path, 2) == [(2, s) for s in state.ROUND_STEPS]


def test_a_step_record_is_written_whole(tmp_path):
    entry = state.mark_done(tmp_path, 1, "train", 12.34, train_dir="x")
    assert state.record(tmp_path, 1, "train") == entry and entry["seconds"] == 12.3
    assert not list((tmp_path / "round_1" / "steps").glob(".*partial"))


def test_check_plan_refuses_other_eval_settings(tmp_path):
    assert state.check_plan(tmp_path, {"eval_repeats": 4, "model": "m"}) == []
    assert state.check_plan(tmp_path, {"eval_repeats": 4, "model": "m"}) == []
    changed = state.check_plan(tmp_path, {"eval_repeats": 8, "model": "m"})
    assert changed == ["eval_repeats: 4 then, 8 now"]


def test_clear_removes_only_the_step_outputs(tmp_path):
    from recipe.iterate.stage import Loop

    p = build_plan(f"run_dir={tmp_path}")
    loop = Loop(p)
    rd = state.round_dir(tmp_path, 1)
    for name in ("rollouts/train.jsonl", "rollouts/train_failures.jsonl", "rollouts/eval.jsonl",
                 "tasks/train.jsonl", "prepare/data/manifest.json"):
        (rd / name).parent.mkdir(parents=True, exist_ok=True)
        (rd / name).write_text("x")
    done(tmp_path, 1, "collect", "prepare")
    loop.clear(1, "collect")
    assert not (rd / "rollouts" / "train.jsonl").exists() and not (rd / "tasks" / "train.jsonl").exists()
    assert not (rd / "rollouts" / "train_failures.jsonl").exists()
    assert (rd / "rollouts" / "eval.jsonl").exists() and (rd / "prepare").exists()
    assert state.record(tmp_path, 1, "collect") is None and state.record(tmp_path, 1, "prepare")


def test_task_file_takes_the_next_tasks_each_round(tmp_path):
    from recipe.iterate.stage import Loop

    source = tmp_path / "tasks.jsonl"
    source.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(5)))
    loop = Loop(build_plan(f"run_dir={tmp_path}"))
    first = loop._task_file(source, tmp_path / "a.jsonl", 0, 3)
    second = loop._task_file(source, tmp_path / "b.jsonl", 3, 3)
    read = lambda p: [json.loads(line)["i"] for line in p.read_text().splitlines()]  # noqa: E731
    assert read(first) == [0, 1, 2] and read(second) == [3, 4, 0]
    assert read(loop._task_file(source, tmp_path / "c.jsonl", 0, None)) == [0, 1, 2, 3, 4]


# -- what the stages get --------------------------------------------------------------------------
def compose_cfg(*overrides: str):
    with initialize_config_module("recipe.configs", version_base="1.3"):
        return compose("recipe", overrides=["stage=iterate", *overrides], return_hydra_config=False)


def build_plan(*overrides: str, choices: dict | None = None, task: list[str] | None = None) -> plan.Plan:
    cfg = compose_cfg(*overrides)
    os.chdir(REPO)  # the bundled task files are relative to the repository root
    original = plan._choices
    plan._choices = lambda: (choices or {"model": "tiny", "launcher": "local_cpu", "dpo": "tiny",
                                         "data_prep": "same_prompt", "container": "nemo_rl"}, task or [])
    try:
        return plan.build(cfg)
    finally:
        plan._choices = original


def test_flatten_writes_hydra_overrides():
    assert plan.flatten({"policy": {"lr": 1e-5, "on": True, "ms": [5], "x": None, "scheduler": {0: {"a": 1}}}}) == [
        "policy.lr=1e-05", "policy.on=true", "policy.ms=[5]", "policy.x=null", "policy.scheduler.0.a=1"]


def test_forwarded_keeps_the_users_stage_overrides_only():
    task = ["stage=iterate", "iterate.rounds=2", "gym=mcqa", "policy.max_total_sequence_length=1024",
            "+policy.dtensor_cfg.cpu_offload=true", "launcher=single_gpu", "launcher.gpus_per_node=2",
            "data_prep.min_gap=0.5", "data.input=x.jsonl", "policy.model_name=/m", "data.val_fraction=0.2"]
    assert plan.forwarded(task, plan.TRAIN_KEYS, plan.TRAIN_GROUPS) == [
        "policy.max_total_sequence_length=1024", "+policy.dtensor_cfg.cpu_offload=true", "launcher.gpus_per_node=2"]
    assert plan.forwarded(task, plan.PREPARE_KEYS, plan.PREPARE_GROUPS) == [
        "data_prep.min_gap=0.5", "data.val_fraction=0.2"]


def test_the_default_model_replaces_tiny_and_comes_from_the_wheel(tmp_path):
    p = build_plan(f"run_dir={tmp_path}")
    assert p.model_preset == "smollm2-135m" and p.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert p.base_source == "offline:smollm2_base" and p.notes
    argv = p.train_argv(tmp_path / "pairs", tmp_path / "train", "/models/base")
    assert argv[:3] == [sys.executable, "-m", "recipe"] and "stage=train" in argv
    assert "model=smollm2-135m" in argv and "policy.model_name=/models/base" in argv
    assert "launcher=local_cpu" in argv and "policy.optimizer.kwargs.lr=2e-05" in argv
    assert not [a for a in argv if a.startswith("dpo=")]  # dpo/<model> follows the model there
    prepare = p.prepare_argv(tmp_path / "r.jsonl", tmp_path / "prep")
    assert f"data.output_dir={tmp_path / 'prep' / 'data'}" in prepare and "data_prep=same_prompt" in prepare


def test_an_explicit_dpo_choice_is_passed_on(tmp_path):
    choices = {"model": "tiny", "launcher": "local_cpu", "dpo": "smoke", "container": "nemo_rl"}
    p = build_plan(f"run_dir={tmp_path}", "dpo=smoke", choices=choices, task=["dpo=smoke"])
    assert "dpo=smoke" in p.train_argv(tmp_path, tmp_path, "m")


def test_an_explicit_tiny_model_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="cannot be"):
        build_plan(f"run_dir={tmp_path}", "model=tiny", task=["model=tiny"])


def test_user_overrides_come_after_the_iterate_training_values(tmp_path):
    p = build_plan(f"run_dir={tmp_path}", "policy.optimizer.kwargs.lr=1e-6",
                   task=["policy.optimizer.kwargs.lr=1e-6"])
    lr = [o for o in p.train_argv(tmp_path, tmp_path, "m") if "optimizer.kwargs.lr" in o]
    assert lr == ["policy.optimizer.kwargs.lr=2e-05", "policy.optimizer.kwargs.lr=1e-6"]  # last wins


def test_missing_task_files_are_named(tmp_path):
    with pytest.raises(RecipeError, match="gym.train_tasks=nope.jsonl"):
        build_plan(f"run_dir={tmp_path}", "gym.train_tasks=nope.jsonl")


def test_the_gpu_path_dry_run_lists_each_rounds_commands(tmp_path):
    choices = {"model": "qwen2.5-1.5b", "launcher": "single_gpu", "dpo": "default",
               "data_prep": "same_prompt", "container": "nemo_rl"}
    p = build_plan(f"run_dir={tmp_path}", "model=qwen2.5-1.5b", "launcher=single_gpu", "serving=vllm",
                   "iterate.rounds=2", choices=choices, task=["model=qwen2.5-1.5b", "launcher=single_gpu"])
    assert p.base_source == "hub" and p.model_name == "Qwen/Qwen2.5-1.5B-Instruct"
    text = "\n".join(report.dry_run_lines(p))
    assert text.count("## round") == 3
    # vLLM is not on PATH in NeMo RL's image: its worker venv's Python starts the server
    server = ("/opt/ray_venvs/nemo_rl.models.generation.vllm.vllm_worker.VllmGenerationWorker/bin/python "
              "-m vllm.entrypoints.openai.api_server --model")
    assert "vllm serve" not in text and text.count(server) == 5  # eval x3, collection x2
    # what vLLM serves is the policy folder itself, never llama.cpp's serve/<artifact>
    assert f"{server} Qwen/Qwen2.5-1.5B-Instruct --host 127.0.0.1" in text  # round 0: the base
    assert f"{server} {tmp_path}/round_2/policy --host" in text and "serve/" not in text
    assert "--served-model-name policy-round-2" in text and "--generation-config vllm" in text
    assert text.count("convert_dcp_to_hf.py --config") == 2
    assert f"--dcp-ckpt-path {tmp_path}/round_1/train/checkpoints/step_N/policy/weights" in text
    assert "launcher=single_gpu" in text and "model=qwen2.5-1.5b" in text
    assert "policy.model_name=Qwen/Qwen2.5-1.5B-Instruct" in text  # round 1 starts from the base
    assert f"policy.model_name={tmp_path}/round_1/policy" in text  # round 2 from round 1's policy
    # eval x3, train collection x2; the probe and the two other environments in rounds 0 and 2 only
    assert text.count("ng_collect_rollouts") == 5 + 2 + 2 * 2
    assert text.count("++responses_create_params.top_p=1.0") == 11
    for k, suites in ((0, ["eval", "probe", "cross-reasoning_gym", "cross-multi_turn"]), (1, ["eval"]),
                      (2, ["eval", "probe", "cross-reasoning_gym", "cross-multi_turn"])):
        block = text.split(f"## round {k}\n")[1].split("## round")[0]
        assert [line.split()[3].rstrip(":") for line in block.splitlines()
                if line.startswith("# held-out suite")] == suites
    assert text.count("+agent_name=example_multi_turn_gymnasium_agent") == 2
    # one ng_run serves every environment: the trained one's servers and the other two
    assert "resources_servers/math_with_judge/configs/math_with_judge.yaml,resources_servers/reasoning_gym" in text


def test_dry_run_stage_writes_the_commands_and_runs_nothing(tmp_path, capsys):
    from recipe.iterate import stage

    path = stage.dry_run(build_plan(f"run_dir={tmp_path}", "iterate.dry_run=true"))
    assert path == tmp_path / "dry_run.txt" and "llama-server" in path.read_text()
    assert not (tmp_path / "round_0").exists()


# -- NeMo Gym's environment -----------------------------------------------------------------------
def test_nemo_gym_runs_with_a_home_and_ray_state_of_its_own(tmp_path):
    from recipe.iterate import setup

    tools = setup.NemoGym(tmp_path / "venv", Path("/usr/bin/python3.12"), tmp_path / "sv", tmp_path / "uv")
    cfg = compose_cfg()
    g = gym.Gym(cfg.gym, cfg.serving, tmp_path / "gym", "http://127.0.0.1:1/v1", "p", tools, head_port=4321)
    env = g.environment()
    try:
        assert env["HOME"] == str(tmp_path / "gym" / "home") and Path(env["HOME"]).is_dir()
        assert env["RAY_TMPDIR"].startswith(("/tmp", os.environ.get("TMPDIR", "/tmp")))
        assert len(env["RAY_TMPDIR"]) < 40  # Ray's socket paths live under it
        assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 32
        assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert env["PATH"].split(os.pathsep)[0] == str(tools.bin)
        config = g.write_config().read_text()
        assert "uses_reasoning_parser: false" in config and env["RAY_AUTH_TOKEN"] not in config
        argv = g.run_argv() + g.collect_argv(tmp_path / "t.jsonl", tmp_path / "o.jsonl", 2,
                                             OmegaConf.create({"parallel": 4, "temperature": 1.0,
                                                               "max_output_tokens": 64}))
        assert "++head_server.port=4321" in argv and "+num_repeats=2" in argv
        assert not any(env["RAY_AUTH_TOKEN"] in a for a in argv)
    finally:
        g.cleanup()
    assert not Path(env["RAY_TMPDIR"]).exists()


# -- stopping what was started --------------------------------------------------------------------
def test_stop_session_ends_a_tree_that_ignores_sigterm(tmp_path):
    script = "trap '' TERM; (trap '' TERM; sleep 300) & sleep 300"
    process = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(processes.session_members(process.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(processes.session_members(process.pid)) >= 3
    started = time.monotonic()
    processes.stop_session(process, grace=1.0)
    assert processes.session_members(process.pid) == [] and process.returncode is not None
    assert time.monotonic() - started < 15


def test_service_is_stopped_when_the_block_raises(tmp_path):
    service = processes.Service("sleeper", ["sleep", "300"], tmp_path / "s.log", ready=lambda s: True,
                                timeout=5)
    with pytest.raises(RuntimeError):
        with service:
            pid = service.process.pid
            raise RuntimeError("boom")
    assert processes.session_members(pid) == []


def test_service_that_exits_before_ready_reports_its_output(tmp_path):
    service = processes.Service("bad", ["bash", "-c", "echo no such model; exit 3"], tmp_path / "b.log",
                                ready=lambda s: False, timeout=30)
    with pytest.raises(RecipeError, match="exited with code 3 before it was ready(.|\n)*no such model"):
        with service:
            pass


def test_run_raises_with_the_log_tail(tmp_path):
    with pytest.raises(RecipeError, match="exited with code 2(.|\n)*last words"):
        processes.run(["bash", "-c", "echo last words; exit 2"], tmp_path / "x.log", echo=False)


def test_signals_raise_turns_sigterm_into_interrupted():
    with pytest.raises(processes.Interrupted) as caught:
        with processes.signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_hub_name_is_served_only_by_an_engine_that_fetches_it(tmp_path):
    from recipe.iterate.stage import Loop

    choices = {"model": "qwen2.5-1.5b", "launcher": "single_gpu", "dpo": "default", "container": "nemo_rl"}
    for engine, works in (("vllm", True), ("llama_cpp", False)):
        p = build_plan(f"run_dir={tmp_path / engine}", "model=qwen2.5-1.5b", f"serving={engine}",
                       choices=choices, task=["model=qwen2.5-1.5b"])
        if works:
            assert Loop(p).step_export(0) == {"policy": "Qwen/Qwen2.5-1.5B-Instruct",
                                              "artifact": "Qwen/Qwen2.5-1.5B-Instruct"}
        else:
            with pytest.raises(RecipeError, match="serves local files only"):
                Loop(p).step_export(0)


def test_the_bundled_tasks_are_generated_and_the_eval_file_is_held_out():
    result = subprocess.run([sys.executable, "samples/gym/make_tasks.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    read = lambda name: [json.loads(line) for line in (REPO / "samples" / "gym" / name).read_text().splitlines()]  # noqa: E731
    train, held_out = read("mcqa_train.jsonl"), read("mcqa_eval.jsonl")
    prompt = lambda r: r["responses_create_params"]["input"][0]["content"]  # noqa: E731
    assert not {prompt(r) for r in train} & {prompt(r) for r in held_out}
    key = lambda r: (r["metadata"]["question"], r["options"][ord(r["expected_answer"]) - 65][r["expected_answer"]])  # noqa: E731
    same_question = {key(r) for r in train} & {key(r) for r in held_out}  # another wording of the same answer
    assert all(q.startswith("Which number is the") for q, _ in same_question)  # only their option sets differ
    for r in train + held_out:  # what NeMo Gym's mcqa server grades with
        assert r["expected_answer"] in {k for o in r["options"] for k in o} and r["template_metadata"]["output_regex"]


def test_the_math_eval_shares_no_question_with_train_up_to_commutation_and_asks_for_the_format():
    read = lambda name: [json.loads(line) for line in (REPO / "samples" / "gym" / name).read_text().splitlines()]  # noqa: E731
    train, held_out, probe = read("math_train.jsonl"), read("math_eval.jsonl"), read("math_probe.jsonl")

    def question(r):
        operation, a, b = r["metadata"]["operands"]
        return (operation, *sorted((a, b))) if operation in ("+", "x", "max") else (operation, a, b)

    assert not {question(r) for r in train} & {question(r) for r in held_out}   # "3 x 7" vs "7 x 3" too
    assert len({question(r) for r in held_out}) == len(held_out)
    for r in train + held_out:  # every prompt asks for \boxed{}, which the reward requires (configs/gym/math.yaml)
        assert all("\\boxed{}" in m["content"] for m in r["responses_create_params"]["input"] if m["role"] == "user")
    # the probe: the same held-out questions and answers, in other words and with no format line
    asked = lambda rows: [(question(r), r["expected_answer"]) for r in rows]  # noqa: E731
    assert asked(probe) == asked(held_out)
    assert not any("boxed" in r["question"] or r["question"] == e["question"] for r, e in zip(probe, held_out))


STAND_IN_CONVERTER = """import json, os, pathlib, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = pathlib.Path(args['--hf-ckpt-path'])
if out.exists():  # as NeMo RL's convert_dcp_to_hf does
    raise FileExistsError(out)
out.mkdir(parents=True)
(out / 'pytorch_model.bin').write_text('w')
(out / 'config.json').write_text(json.dumps({**args, 'cwd': str(pathlib.Path.cwd())}))
if os.environ.get('FAIL_AFTER_CONFIG'):
    sys.exit(1)
(out / 'tokenizer_config.json').write_text('{}')
"""


def nemo_rl_round(tmp_path, steps=(2, 10, 9)):
    converter = tmp_path / "convert_dcp_to_hf.py"
    converter.write_text(STAND_IN_CONVERTER)
    choices = {"model": "qwen2.5-1.5b", "launcher": "single_gpu", "dpo": "default", "container": "nemo_rl"}
    p = build_plan(f"run_dir={tmp_path / 'run'}", "model=qwen2.5-1.5b", "launcher=single_gpu", "serving=vllm",
                   f"iterate.dcp_to_hf.runner=[{sys.executable},{converter}]",
                   f"container.nemo_rl_dir={tmp_path}", choices=choices, task=["model=qwen2.5-1.5b"])
    checkpoints = tmp_path / "run" / "round_1" / "train" / "checkpoints"
    for step in steps:
        (checkpoints / f"step_{step}" / "policy" / "weights").mkdir(parents=True)
    return p, checkpoints


def test_a_nemo_rl_round_is_exported_with_the_converter_from_its_latest_step(tmp_path):
    """Up to the boundary: NeMo RL's DCP checkpoints -> the converter's command line, run in
    the launcher's workdir (container.nemo_rl_dir); a stand-in converter here, NeMo RL's own in
    tests/integration/test_nemo_rl_converter.py."""
    from recipe.iterate.stage import Loop

    p, checkpoints = nemo_rl_round(tmp_path)
    (checkpoints / "step_11").mkdir()  # no policy/weights: not a NeMo RL checkpoint
    (tmp_path / "run" / "round_1" / "train" / "model").mkdir(parents=True)  # a CPU runner's extra: not used
    (tmp_path / "run" / "round_1" / "train" / "model" / "config.json").write_text("{}")
    policy = Loop(p).trained_policy(1)
    assert policy == tmp_path / "run" / "round_1" / "policy"
    seen = json.loads((policy / "config.json").read_text())
    assert seen["--config"] == str(checkpoints / "step_10" / "config.yaml")
    assert seen["--dcp-ckpt-path"] == str(checkpoints / "step_10" / "policy" / "weights")
    assert seen["--hf-ckpt-path"] == str(tmp_path / "run" / "round_1" / ".policy.partial")
    assert seen["cwd"] == str(tmp_path)
    assert not (tmp_path / "run" / "round_1" / ".policy.partial").exists()
    assert Loop(p).step_export(1) == {"policy": str(policy), "artifact": str(policy)}  # vLLM serves it as is


def test_an_interrupted_export_never_blocks_the_rerun(tmp_path, monkeypatch):
    """The converter raises FileExistsError on an existing output folder and writes it piece by
    piece: a failed export leaves no policy/, a half-written one is not taken as done."""
    from recipe.iterate.stage import Loop

    p, _ = nemo_rl_round(tmp_path)
    round_1 = tmp_path / "run" / "round_1"
    monkeypatch.setenv("FAIL_AFTER_CONFIG", "1")
    with pytest.raises(RecipeError, match="convert_dcp_to_hf.py exited with code 1"):
        Loop(p).trained_policy(1)
    assert not (round_1 / "policy").exists() and not (round_1 / ".policy.partial").exists()
    # what an export that wrote in place left when it was killed: config.json, no tokenizer
    (round_1 / "policy").mkdir()
    (round_1 / "policy" / "config.json").write_text("{}")
    (round_1 / ".policy.partial").mkdir()
    monkeypatch.delenv("FAIL_AFTER_CONFIG")
    policy = Loop(p).trained_policy(1)
    assert (policy / "tokenizer_config.json").is_file() and "--config" in (policy / "config.json").read_text()
    assert Loop(p).trained_policy(1) == policy  # whole: not converted again


def test_launcher_dry_run_makes_the_whole_loop_a_dry_run(tmp_path):
    from recipe.iterate import stage

    os.chdir(REPO)
    assert stage.run(compose_cfg(f"run_dir={tmp_path}", "launcher=dry_run")) == 0
    assert (tmp_path / "dry_run.txt").is_file() and not (tmp_path / "round_0").exists()


# -- one sampler for every round ------------------------------------------------------------------
def test_every_round_samples_with_one_pinned_sampler_written_in_plan_json(tmp_path):
    """Round 0 serves the base folder (whose generation_config.json vLLM's default `auto` would
    apply), later rounds NeMo RL's converted folder (which has none): the sampler comes from
    iterate.sampler, in every request and as the server's defaults, never from the folder."""
    from recipe.iterate import serving, setup

    tools = setup.NemoGym(tmp_path / "venv", Path("/usr/bin/python3.12"), tmp_path / "sv", tmp_path / "uv")
    for engine in ("vllm", "llama_cpp"):
        p = build_plan(f"run_dir={tmp_path / engine}", f"serving={engine}", "iterate.sampler.top_p=0.9")
        doc = p.fingerprint()["sampling"]
        assert doc["sampler"] == {"top_p": 0.9, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
        assert doc["collect"] == doc["eval"] == {"temperature": 1.0, "max_output_tokens": 128}
        g = gym.Gym(p.gym, p.serving, tmp_path / engine / "gym", "http://h:1/v1", "p", tools, sampler=p.sampler)
        sent = yaml.safe_load(g.write_config().read_text())["policy_model"]["responses_api_models"]["vllm_model"]
        assert sent["extra_body"] == doc["request_extra"] and sent["extra_body"]["top_k"] == 0
        for sampling in (p.it.collect.sampling, p.it.eval.sampling):
            assert "++responses_create_params.top_p=0.9" in g.collect_argv(tmp_path, tmp_path, 1, sampling)
        argvs = [serving.server_argv(p.serving, f"/m/round_{k}", 1, f"policy-round-{k}", p.sampler, install=False)
                 for k in (0, 1)]
        assert [a for a in argvs[0] if "round" not in a] == [a for a in argvs[1] if "round" not in a]
        if engine == "vllm":
            assert argvs[0][argvs[0].index("--generation-config") + 1] == "vllm"
            assert doc["request_extra"] == {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
        else:  # llama-server's own defaults are top_k 40, top_p 0.95, min_p 0.05
            assert " ".join(argvs[0]).endswith("--top-k 0 --top-p 0.9 --min-p 0.0 --repeat-penalty 1.0")
            assert doc["request_extra"] == {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
        from recipe.iterate import state

        (tmp_path / engine).mkdir(exist_ok=True)
        assert state.check_plan(tmp_path / engine, p.fingerprint()) == []
        assert json.loads((tmp_path / engine / "plan.json").read_text())["sampling"]["sampler"]["top_p"] == 0.9
        changed = build_plan(f"run_dir={tmp_path / engine}", f"serving={engine}", "iterate.sampler.top_p=0.8")
        assert [c for c in state.check_plan(tmp_path / engine, changed.fingerprint()) if c.startswith("sampling")]


def test_the_cpu_build_of_vllm_differs_from_the_gpu_path_in_the_device_only(tmp_path):
    gpu = build_plan(f"run_dir={tmp_path}", "serving=vllm")
    cpu = build_plan(f"run_dir={tmp_path}", "serving=vllm_cpu")
    from recipe.iterate import serving, setup

    a, b = (serving.server_argv(p.serving, "/m", 1, "n", p.sampler, install=False) for p in (gpu, cpu))
    python = 5  # bash -c ACTIVATE vllm-venv <venv> <python>: each venv's Python with its venv's PATH
    assert a[python].startswith("/opt/ray_venvs/") and b[python] == str(setup.vllm_cpu(install=False))
    assert a[:4] == b[:4] and a[4] == str(Path(a[python]).parent.parent) and b[4] == str(Path(b[python]).parent.parent)
    assert a[6:8] == b[6:8] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert a[8:] == b[8:] + ["--gpu-memory-utilization", "0.85"]
    assert gpu.fingerprint()["sampling"] == cpu.fingerprint()["sampling"]
    assert OmegaConf.to_container(gpu.serving.nemo_gym_model) == OmegaConf.to_container(cpu.serving.nemo_gym_model)


# -- checked before the first collection ----------------------------------------------------------
def gpu_choices(launcher: str) -> dict:
    return {"model": "qwen2.5-1.5b", "launcher": launcher, "dpo": "default", "data_prep": "same_prompt",
            "container": "nemo_rl"}


def test_the_micro_batch_follows_the_gpus_and_a_batch_they_cannot_split_is_refused_at_plan_time(tmp_path):
    """8 GPUs with the loop's global batch 8 and micro batch 8 were refused by the train stage
    only after round 1's collection and prepare; now the micro batch is derived (8 / 8 ranks) and
    a batch the GPUs cannot split fails before anything runs."""
    common = ["model=qwen2.5-1.5b", "serving=vllm"]
    p = build_plan(f"run_dir={tmp_path}", *common, "launcher=multi_gpu", choices=gpu_choices("multi_gpu"),
                   task=common + ["launcher=multi_gpu"])
    argv = p.train_argv(tmp_path, tmp_path, "m")
    assert "policy.train_micro_batch_size=1" in argv and "policy.train_global_batch_size=8" in argv
    cpu = build_plan(f"run_dir={tmp_path}")
    assert "policy.train_micro_batch_size=8" in cpu.train_argv(tmp_path, tmp_path, "m")  # one pass on the CPU
    with pytest.raises(RecipeError, match="cannot be split over the 16 data-parallel ranks"):
        build_plan(f"run_dir={tmp_path}", *common, "launcher=slurm", "launcher.nodes=2",
                   choices=gpu_choices("slurm"), task=common + ["launcher=slurm", "launcher.nodes=2"])
    # a micro batch the user gave is kept, and checked
    given = ["iterate.train.policy.train_micro_batch_size=4"]
    with pytest.raises(RecipeError, match="found before any collection(.|\n)*4 x 8"):
        build_plan(f"run_dir={tmp_path}", *common, "launcher=multi_gpu", *given,
                   choices=gpu_choices("multi_gpu"), task=common + ["launcher=multi_gpu", *given])
    fine = build_plan(f"run_dir={tmp_path}", *common, "launcher=multi_gpu", "policy.train_micro_batch_size=1",
                      "iterate.train.policy.train_global_batch_size=16", choices=gpu_choices("multi_gpu"),
                      task=common + ["launcher=multi_gpu", "policy.train_micro_batch_size=1"])
    assert fine.train_argv(tmp_path, tmp_path, "m")[-1] == "policy.train_micro_batch_size=1"


def test_the_iterate_stage_refuses_an_impossible_batch_before_any_collection(tmp_path, monkeypatch):
    from recipe.iterate import stage

    os.chdir(REPO)
    task = ["model=qwen2.5-1.5b", "launcher=multi_gpu", "iterate.train.policy.train_global_batch_size=12",
            "serving=vllm"]
    cfg = compose_cfg(f"run_dir={tmp_path}", *task)
    monkeypatch.setattr(plan, "_choices", lambda: (gpu_choices("multi_gpu"), task))
    with pytest.raises(RecipeError, match="train_global_batch_size=12 cannot be split over the 8"):
        stage.run(cfg)
    assert not (tmp_path / "round_0").exists() and not (tmp_path / "plan.json").exists()


# -- launcher=slurm and executor=docker in the loop -----------------------------------------------
def test_slurm_waits_for_the_job_and_converts_and_serves_in_a_slurm_step_in_the_image(tmp_path):
    common = ["model=qwen2.5-1.5b", "serving=vllm", "launcher=slurm", "launcher.gpus_per_node=2",
              "launcher.partition=batch", "launcher.container=/shared/nemo-rl.sqsh", "launcher.hf_cache=/shared/hf"]
    p = build_plan(f"run_dir={tmp_path}", *common, "launcher.wait=false", choices=gpu_choices("slurm"),
                   task=common + ["launcher.wait=false"])
    assert p.train_argv(tmp_path, tmp_path, "m")[-1] == "launcher.wait=true"  # the job's end, not sbatch's
    text = "\n".join(report.dry_run_lines(p))
    srun = ("srun --job-name=gym-dpo-dcp-to-hf-1 --nodes=1 --ntasks=1 --time=04:00:00 --kill-on-bad-exit=1 "
            f"--partition=batch --cpus-per-task=4 --container-image=/shared/nemo-rl.sqsh --container-mounts="
            f"{tmp_path}:{tmp_path},/shared/hf:/shared/hf --no-container-mount-home --container-env=HF_HOME "
            "--container-workdir=/opt/nemo-rl "
            "bash -c")
    assert srun in text and "cd /opt/nemo-rl\nexec uv run python examples/converters/convert_dcp_to_hf.py" in text
    # one server without tensor parallelism: one GPU, not the node's two (tests/unit/test_iterate_gpu.py)
    serve = [line for line in text.splitlines() if "--gpus-per-node=1" in line]
    assert serve and all(line.startswith("srun --job-name=gym-dpo-serve-policy-round-") for line in serve)
    assert "--host 0.0.0.0" in text and "SLURMD_NODENAME" in text
    where = p.place
    node = tmp_path / "node"
    assert where.address(node) is None  # the step has not started
    node.write_text("localhost\n")
    assert where.address(node) == "127.0.0.1"


def test_executor_docker_is_refused_at_plan_time_with_one_message(tmp_path):
    common = ["model=qwen2.5-1.5b", "serving=vllm", "launcher=single_gpu", "launcher.executor=docker"]
    with pytest.raises(RecipeError, match="executor=docker is not supported(.|\n)*inside the NeMo RL container"):
        build_plan(f"run_dir={tmp_path}", *common, choices=gpu_choices("single_gpu"), task=common)


def test_nemo_gym_takes_any_python_it_supports(tmp_path):
    """NeMo Gym 0.4.0 asks for Python >= 3.12; NeMo RL's image ships uv's 3.13."""
    from recipe.iterate import setup

    py313 = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions" / "3.13.0" / "bin" / "python3.13"
    fake = tmp_path / "python3.13"  # answers as a 3.13 would, wherever the test runs
    fake.write_text(f"#!/bin/sh\nprintf '%s\\nTrue\\n' '{fake}'\n")
    fake.chmod(0o755)
    for python in ([py313] if py313.is_file() else []) + [fake]:
        assert setup.find_python(str(python)) == python
    with pytest.raises(RecipeError, match=r"is not a Python >= 3.12"):
        setup.find_python(sys.executable if sys.version_info < (3, 12) else "/bin/false")
    with pytest.raises(RecipeError, match="no such file"):
        setup.find_python(str(tmp_path / "nope"))


def test_a_server_that_stops_fails_the_command_that_needs_it_with_its_name(tmp_path):
    """ng_collect_rollouts retries a dead server forever: the watch stops it within a second."""
    died = "echo ready; sleep 0.5; echo 'Process `math_with_judge` finished unexpectedly!'; exit 1"
    with processes.Service("ng_run", ["bash", "-c", died], tmp_path / "ng_run.log",
                           ready=lambda s: any("ready" in line for line in s.output), timeout=10,
                           explain=gym.server_stopped):
        started = time.monotonic()
        with pytest.raises(RecipeError, match=r"ng_run exited with code 1: NeMo Gym's server math_with_judge stopped"):
            processes.run(["sleep", "60"], tmp_path / "collect.log", watch=processes.check_services)
        assert time.monotonic() - started < 10
    processes.check_services()  # a stopped service is no longer watched
    assert gym.server_stopped(["All 3 / 3 servers ready!"]) is None
