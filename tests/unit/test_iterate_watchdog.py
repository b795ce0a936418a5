"""A collection never waits for ever (iterate.watchdog): NeMo Gym's HTTP client has no timeout, so a
policy server that stops answering (SIGSTOP here; a wedged GPU server alike) held the loop with no
message. Stand-ins: a small HTTP server for the policy, a shell script for ng_collect_rollouts;
tests/integration/test_iterate_loop.py stops the real llama-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe import processes
from recipe.errors import RecipeError
from recipe.iterate import gym, serving, watchdog

POLICY = """import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"status": "ok"}')
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self.send_response(200); self.end_headers(); self.wfile.write(json.dumps({"choices": []}).encode())
    def log_message(self, *args):
        pass
print('policy up', flush=True)
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Handler).serve_forever()
"""

# ng_collect_rollouts' stand-in: two rows, then it waits on a server that never answers
TWO_ROWS_THEN_NOTHING = 'echo "{\\"reward\\": 1}" >> "$1"; echo "{\\"reward\\": 0}" >> "$1"; echo waiting; sleep 600'

SAMPLING = OmegaConf.create({"parallel": 1, "temperature": 1.0, "max_output_tokens": 10})
WATCHDOG = OmegaConf.create({"min_tokens_per_s": 5, "slack_s": 2, "stall_s": 2})  # 3 rows: a deadline of 8 s


class StandIn(gym.Gym):
    """NeMo Gym's commands replaced by a script; everything else as the loop runs it."""

    def __init__(self, work: Path, base_url: str, script: str):
        self.work, self.base_url, self.model_name, self.script = work, base_url, "policy-round-0", script
        self.serving = OmegaConf.create({"name": "llama_cpp"})

    def collect_argv(self, tasks, out, repeats, sampling, agent=None):
        return ["bash", "-c", self.script, "collect", str(out)]

    def environment(self):
        return dict(os.environ)


def policy_server(tmp_path: Path):
    port = serving.free_port()
    (tmp_path / "policy.py").write_text(POLICY)
    return port, processes.Service("serve:llama_cpp", [sys.executable, str(tmp_path / "policy.py"), str(port)],
                                   tmp_path / "serve.log", ready=lambda s: serving.answers(
                                       f"http://127.0.0.1:{port}/health"), timeout=30)


def tasks(tmp_path: Path, count: int = 3) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("{}\n" * count)
    return path


def test_limits_follow_the_work():
    sampling = OmegaConf.create({"parallel": 8, "max_output_tokens": 128})
    floor = OmegaConf.create({"min_tokens_per_s": 10, "slack_s": 300, "stall_s": 300})
    limits = watchdog.Limits.of(floor, 512, sampling)
    assert limits.deadline == pytest.approx(300 + 512 * 128 / 10)
    assert (limits.stall, limits.first) == (300, 600)
    long_replies = OmegaConf.create({"parallel": 8, "max_output_tokens": 4096})  # 8 replies at the floor: 3277 s
    assert watchdog.Limits.of(OmegaConf.create({"min_tokens_per_s": 10, "slack_s": 0, "stall_s": 300}), 8,
                         long_replies).stall == pytest.approx(8 * 4096 / 10)


def test_progress_is_stuck_without_a_new_row_or_past_the_deadline():
    now = [0.0]
    progress = watchdog.Progress(watchdog.Limits(deadline=100, stall=10, first=30), clock=lambda: now[0])
    now[0] = 29
    assert progress.update(0) is None  # NeMo Gym starting: the first row gets the slack
    now[0] = 31
    assert "made no new row for 31s" in progress.update(0)
    now[0] = 32
    assert progress.update(1) is None
    now[0] = 41
    assert progress.update(1) is None
    now[0] = 43
    assert "made no new row for 11s" in progress.update(1)
    for step in range(1, 14):  # rows keep coming, too slowly for the deadline
        now[0] = 43 + step * 5
        why = progress.update(1 + step)
    assert "passed its deadline of 100s" in why


def test_a_policy_server_that_stops_answering_fails_the_collection_with_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(watchdog, "PROBE_TIMEOUT", 2.0)
    port, server = policy_server(tmp_path)
    with server:
        os.kill(server.process.pid, signal.SIGSTOP)
        stand_in = StandIn(tmp_path, f"http://127.0.0.1:{port}/v1", TWO_ROWS_THEN_NOTHING)
        out = tmp_path / "rollouts" / "eval.jsonl"
        with pytest.raises(watchdog.Stuck) as stuck:
            gym.collect(stand_in, tasks(tmp_path), out, 1, SAMPLING, tmp_path / "collect.log", watchdog=WATCHDOG)
        said = str(stuck.value)
        assert said.startswith("ng_collect_rollouts made no new row for ") and "at 2 of 3 eval rows" in said
        assert (f"the policy server (policy-round-0, serving=llama_cpp) does not answer "
                f"http://127.0.0.1:{port}/health: its process {server.process.pid} is stopped") in said
        assert f"(log: {tmp_path / 'serve.log'})\npolicy up" in said
        assert said.endswith("rerun the same command to resume at this step")
        assert not out.exists() and not list((tmp_path / "rollouts").glob(".partial-*"))  # nothing half-written
        pid = server.process.pid
    assert processes.session_members(pid) == []


def test_nemo_gym_is_named_when_the_policy_server_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(watchdog, "PROBE_TIMEOUT", 5.0)
    port, server = policy_server(tmp_path)
    with server:
        stand_in = StandIn(tmp_path, f"http://127.0.0.1:{port}/v1", TWO_ROWS_THEN_NOTHING)
        with pytest.raises(watchdog.Stuck, match=r"NeMo Gym does not finish rollouts, though the policy server answers "
                                            r"\(logs: .*collect.log\)\nwaiting"):
            gym.collect(stand_in, tasks(tmp_path), tmp_path / "r" / "train.jsonl", 1, SAMPLING,
                        tmp_path / "collect.log", watchdog=WATCHDOG)


def test_a_collection_that_makes_its_rows_is_left_alone(tmp_path):
    port, server = policy_server(tmp_path)
    steady = 'for i in 1 2 3; do sleep 1; echo "{\\"reward\\": 1}" >> "$1"; done'
    with server:
        stand_in = StandIn(tmp_path, f"http://127.0.0.1:{port}/v1", steady)
        out = gym.collect(stand_in, tasks(tmp_path), tmp_path / "r" / "train.jsonl", 1, SAMPLING,
                          tmp_path / "collect.log", watchdog=WATCHDOG)
    assert len(out.read_text().splitlines()) == 3


def test_stopping_a_stopped_process_continues_it_so_sigterm_ends_it():
    """A SIGSTOPped server acts on SIGTERM only once continued: it was left to SIGKILL after two
    grace periods (40 s for each server), with no chance to clean up."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    os.kill(process.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    processes.stop_session(process, grace=2.0)
    assert process.returncode == -signal.SIGTERM


def test_a_recipe_error_is_what_the_cli_reports():
    assert issubclass(watchdog.Stuck, RecipeError)
