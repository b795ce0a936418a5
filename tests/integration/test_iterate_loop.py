"""stage=iterate end to end with the real tools: NeMo Gym 0.4.0 (ng_run, ng_collect_rollouts, the
mcqa server), llama.cpp's llama-server on SmolLM2-135M-Instruct, prepare and a one-step CPU
training round, on a few tasks. tests/infra/iterate_up.sh installs the tools (CI does, as root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from engines import REPO, gym_dpo_cli, run, unavailable

pytestmark = pytest.mark.integration

TINY = ["gym=mcqa", "iterate.collect.tasks=32", "iterate.collect.repeats=6", "iterate.eval.tasks=8",
        "iterate.eval.repeats=2",
        "iterate.collect.sampling.max_output_tokens=48", "iterate.eval.sampling.max_output_tokens=48",
        "iterate.train.policy.train_global_batch_size=2", "iterate.train.policy.train_micro_batch_size=2",
        "iterate.train.dpo.max_num_steps=1",
        "iterate.cross_eval.environments=[]"]  # the suites have their own test (test_iterate_envs.py)


@pytest.fixture(scope="module")
def tools():
    """The installed tools, or skip (fail in CI) saying how to install them."""
    from recipe.iterate import setup

    root = setup.cache_root()
    missing = setup.missing()
    if missing:
        unavailable(f"stage=iterate's tools are not installed ({', '.join(missing)}): run "
                    "bash tests/infra/iterate_up.sh (python -m recipe.iterate.setup)")
    return root


def ours(run_dir: Path) -> list[str]:
    """Processes of this run still alive: NeMo Gym's (HOME inside the run folder) or any whose
    command line names the run folder (the policy server, the stages)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(run_dir) in cmdline or f"HOME={run_dir}".encode() in environ):
            found.append(f"{entry}: {cmdline[:150]}")
    return found


def iterate(run_dir: Path, *overrides: str, timeout: int = 1500, check: bool = True):
    return run([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", *TINY, *overrides],
               cwd=REPO, timeout=timeout, check=check)


def test_two_rounds_resume_and_leave_nothing_behind(tools, tmp_path):
    token = Path.home() / ".ray" / "auth_token"
    had_token = token.exists()
    run_dir = tmp_path / "run"

    first = iterate(run_dir, "iterate.rounds=0")
    doc = json.loads((run_dir / "iterate.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [0] and doc["rounds"][0]["done"]
    base = doc["rounds"][0]["eval"]
    assert base["n"] == 16 and base["tasks"] == 8 and base["pass_at_k"]["k"] == 2
    assert "model=smollm2-135m" in first.stdout + first.stderr and not ours(run_dir)

    second = iterate(run_dir, "iterate.rounds=1")
    said = second.stdout + second.stderr
    assert "resuming" in said and "round 1, step collect" in said
    doc = json.loads((run_dir / "iterate.json").read_text())
    r0, r1 = doc["rounds"]
    assert r0["eval"] == base  # round 0 was not redone
    assert r1["done"] and r1["pairs"]["train"] >= 2 and r1["eval"]["n"] == 16
    questions = {json.loads(line)["metadata"]["question_id"]
                 for line in (run_dir / "round_1" / "tasks" / "eval.jsonl").read_text().splitlines()}
    assert r1["gain_vs_round_0"]["reward"]["tasks"] == len(questions) and r1["train"]["step"] == 1
    # the decomposition: format (gradable rate) and skill (accuracy among gradable), per round
    for entry in (r0, r1):
        ev = entry["eval"]
        assert 0 <= ev["gradable_rate"] <= 1 and ev["chance"] == pytest.approx(0.25)
        assert ev["gym_metrics"] and set(ev["answer_distribution"]) == {"extracted", "expected", "distinct_extracted"}
        assert set(ev["families"]) <= {"largest", "arithmetic", "category", "count_letters", "opposite"}
    assert {"reward", "gradable_rate", "accuracy_gradable", "response_tokens_ratio"} <= set(r1["gain_vs_round_0"])
    assert r1["train_rollouts"]["gradable_rate"] is not None
    assert set(r1["pairs"]["kinds"]) == {"skill", "format", "other"}
    assert sum(r1["pairs"]["kinds"].values()) == r1["pairs"]["train"] + r1["pairs"]["val"]
    assert (run_dir / "iterate.html").read_text().count("<img") >= 2
    assert r1["policy"] == str(run_dir / "round_1" / "train" / "model")
    assert (run_dir / "round_1" / "serve" / "policy-f16.gguf").stat().st_size > 100_000_000
    assert "| 1 |" in (run_dir / "iterate.md").read_text()

    # real NeMo Gym rows, from the served policy, graded by the mcqa server
    rows = [json.loads(line) for line in (run_dir / "round_1" / "rollouts" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 32 * 6
    assert {r["agent_ref"]["name"] for r in rows} == {"mcqa_simple_agent"}
    assert {r["response"]["model"] for r in rows} == {"policy-round-0"}
    assert {r["_ng_rollout_index"] for r in rows} == set(range(6)) and {r["reward"] for r in rows} <= {0.0, 1.0}
    evals = [json.loads(line) for line in (run_dir / "round_1" / "rollouts" / "eval.jsonl").read_text().splitlines()]
    assert {r["response"]["model"] for r in evals} == {"policy-round-1"}

    # nothing left running, nothing in the user's home, a rerun has nothing to do
    assert not ours(run_dir)
    assert token.exists() == had_token
    third = iterate(run_dir, "iterate.rounds=1")
    assert "are done" in third.stdout + third.stderr and not ours(run_dir)


def test_other_settings_are_refused_on_resume(tools, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "plan.json").write_text(json.dumps({"eval_repeats": 9, "collect": {"tasks": 16, "repeats": 6}}))
    result = iterate(run_dir, "iterate.rounds=0", check=False, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "was started with other settings" in said
    assert "eval_repeats: 9 then, 2 now" in said and "collect.tasks: 16 then, 32 now" in said


def test_ctrl_c_with_the_servers_up_stops_everything(tools, tmp_path):
    run_dir = tmp_path / "run"
    argv = [*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", "iterate.rounds=0", *TINY,
            "iterate.eval.tasks=64", "iterate.eval.repeats=8"]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    log = run_dir / "round_0" / "logs" / "collect_eval.log"
    deadline = time.monotonic() + 900
    try:
        while not log.is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
        assert process.poll() is None, process.stdout.read()
        time.sleep(3)  # collection under way: the policy server, NeMo Gym's servers and Ray are up
        assert ours(run_dir)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    said = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert said == [f"interrupted (SIGINT): every process the loop started was stopped; rerun the same command "
                    f"(run_dir={run_dir}) to resume"], output
    assert not ours(run_dir)
    assert not (run_dir / "round_0" / "steps" / "eval.json").exists()
    assert not (run_dir / "round_0" / "rollouts" / "eval.jsonl").exists()  # no half-written rollouts


def test_a_round_without_pairs_does_not_train_and_the_loop_goes_on(tools, tmp_path):
    """One rollout per task: no task has two rewards to compare, so prepare makes no pair. The
    round says so, keeps its starting policy (and round 0's eval: same policy, tasks and seeds),
    and the next round collects the next tasks."""
    run_dir = tmp_path / "run"
    result = iterate(run_dir, "iterate.rounds=2", "iterate.collect.tasks=8", "iterate.collect.repeats=1")
    said = result.stdout + result.stderr
    assert said.count("prepare made no training pair") == 2, said
    assert "round 1 does not train, its policy is policy 0, and round 2 collects the next tasks" in said
    doc = json.loads((run_dir / "iterate.json").read_text())
    r0, r1, r2 = doc["rounds"]
    assert r1["done"] and r2["done"] and r1["pairs"]["train"] == 0 and "no training pair" in r1["skipped"]
    assert r1["eval"] == r0["eval"] and r1["gain_vs_round_0"]["reward"]["gain"] == 0
    assert not (run_dir / "round_1" / "train").exists() and not (run_dir / "round_1" / "serve").exists()
    tasks = [(run_dir / f"round_{k}" / "tasks" / "train.jsonl").read_text().splitlines() for k in (1, 2)]
    assert len(tasks[0]) == len(tasks[1]) == 8 and not set(tasks[0]) & set(tasks[1])
    assert "| 1 |" in (run_dir / "iterate.md").read_text() and not ours(run_dir)


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([*gym_dpo_cli(), "stage=iterate", f"run_dir={run_dir}", *TINY, *overrides], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_when(process: subprocess.Popen, log: Path, text: str, find) -> tuple[int, str]:
    """Once `log` says `text`, SIGKILL the process `find()` names; the run's exit code and output."""
    deadline = time.monotonic() + 900
    try:
        while process.poll() is None and time.monotonic() < deadline and not (
                log.is_file() and text in log.read_text(errors="replace")):
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
        os.kill(find(), signal.SIGKILL)
        output, _ = process.communicate(timeout=240)  # ng_run notices a dead server within 60 s
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, output


def _process(run_dir: Path, program: str, cwd_ends: str | None = None) -> int:
    for pid in (int(entry.split(":")[0]) for entry in ours(run_dir)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if program in cmdline and (cwd_ends is None or cwd.endswith(cwd_ends)):
            return pid
    raise AssertionError(f"no {program} of {run_dir} running: {ours(run_dir)}")


def test_the_policy_server_killed_during_collection_fails_the_step_and_a_rerun_finishes(tools, tmp_path):
    run_dir = tmp_path / "run"
    token = Path.home() / ".ray" / "auth_token"
    had_token = token.exists()
    process = _start(run_dir, "iterate.rounds=1")
    code, output = _kill_when(process, run_dir / "round_1" / "logs" / "collect_train.log", "Collecting rollouts",
                              lambda: _process(run_dir, "llama-server"))
    assert code == 2, output
    assert "the policy server (policy-round-0, serving=llama_cpp) stopped" in output
    assert "Traceback" not in output and not ours(run_dir)
    assert not (run_dir / "round_1" / "steps" / "collect.json").exists()
    again = iterate(run_dir, "iterate.rounds=1")
    said = again.stdout + again.stderr
    assert "resuming" in said and "round 1, step collect" in said
    doc = json.loads((run_dir / "iterate.json").read_text())
    assert all(entry["done"] for entry in doc["rounds"]) and not ours(run_dir)
    assert token.exists() == had_token


def test_a_nemo_gym_server_killed_during_eval_fails_the_step_and_a_rerun_finishes(tools, tmp_path):
    run_dir = tmp_path / "run"
    process = _start(run_dir, "iterate.rounds=0")
    code, output = _kill_when(process, run_dir / "round_0" / "logs" / "ng_run.log", "servers ready!",
                              lambda: _process(run_dir, "app.py", "resources_servers/mcqa"))
    assert code == 2, output
    assert "ng_run exited with code" in output and "NeMo Gym's server mcqa stopped" in output
    assert "Traceback" not in output.split("ng_run exited")[0] and not ours(run_dir)
    assert not (run_dir / "round_0" / "rollouts" / "eval.jsonl").exists()
    iterate(run_dir, "iterate.rounds=0")
    doc = json.loads((run_dir / "iterate.json").read_text())
    assert doc["rounds"][0]["done"] and doc["rounds"][0]["eval"]["n"] == 16 and not ours(run_dir)


# a short stall limit (this machine's loaded llama-server can take 25 s a row), a deadline of 454 s
WATCHDOG = ["iterate.watchdog.stall_s=60", "iterate.watchdog.slack_s=300", "iterate.watchdog.min_tokens_per_s=5"]


def _rows_in(folder: Path) -> int:
    """Rows (and failures) NeMo Gym has written so far into the eval's partial folder."""
    return sum(len(p.read_bytes().splitlines()) for p in (folder / ".partial-eval" / "eval.jsonl",
                                                           folder / ".partial-eval" / "eval_failures.jsonl")
               if p.is_file())


def test_a_policy_server_stopped_mid_collection_fails_the_step_with_its_name_and_a_rerun_finishes(tools, tmp_path):
    """kill -STOP of llama-server during round 0's eval held the loop for ever, with no message
    (NeMo Gym's HTTP client has no timeout): now the watchdog stops the collection, names the
    policy server and its stopped pid, nothing is left running, and the rerun finishes."""
    run_dir = tmp_path / "run"
    process = _start(run_dir, "iterate.rounds=0", *WATCHDOG)
    rollouts = run_dir / "round_0" / "rollouts"
    deadline = time.monotonic() + 900
    stopped = None
    try:
        while process.poll() is None and time.monotonic() < deadline and _rows_in(rollouts) < 2:
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
        stopped = _process(run_dir, "llama-server")
        os.kill(stopped, signal.SIGSTOP)
        output, _ = process.communicate(timeout=300)  # 60 s without a row, 30 s of probe, the stops
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert process.returncode == 2, output
    assert "ng_collect_rollouts made no new row for" in output, output
    assert "the policy server (policy-round-0, serving=llama_cpp) does not answer" in output
    assert f"its process {stopped} is stopped" in output
    assert "rerun the same command to resume at this step" in output
    assert "Traceback" not in output and not ours(run_dir)
    assert not (run_dir / "round_0" / "steps" / "eval.json").exists() and not list(rollouts.glob(".partial-*"))
    again = iterate(run_dir, "iterate.rounds=0")  # the default limits: a rerun may change them, and says so
    said = again.stdout + again.stderr
    assert "resuming" in said and "round 0, step eval" in said and "watchdog.stall_s: 60 then, 300 now" in said
    doc = json.loads((run_dir / "iterate.json").read_text())
    assert doc["rounds"][0]["done"] and doc["rounds"][0]["eval"]["n"] == 16 and not ours(run_dir)
    assert doc["rounds"][0]["settings"]["export"]["watchdog"]["stall_s"] == 60  # what each step ran with
    assert doc["rounds"][0]["settings"]["eval"]["watchdog"]["stall_s"] == 300
