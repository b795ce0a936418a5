"""Ctrl-C and SIGTERM during prepare: one line, exit 130 / 143, no file written, no process left.

The stage runs as users run it (`python -m recipe`, a process group of its own, as a terminal
gives it), on an input large enough to be stopped in the middle of reading it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "rollouts.jsonl"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_rollouts.py"), str(path), "--rollouts", "300000",
                    "--per-task", "5", "--seed", "1"], check=True, capture_output=True)
    return path


def start(tmp_path: Path, big_input: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """prepare on the big input, once its workers are well inside read+validate."""
    process = subprocess.Popen([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={big_input}",
                                f"data.output_dir={tmp_path / 'out'}", f"output_root={tmp_path / 'runs'}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=tmp_path)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(parent.children(recursive=True)) < 3:  # the reading workers and the hashing process
        assert time.monotonic() < deadline and process.poll() is None, "prepare never started its workers"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside read+validate
    return process, parent.children(recursive=True)


def interrupt(tmp_path: Path, big_input: Path, signum: int, whole_group: bool,
              again: int | None = None) -> tuple[int, str, list[psutil.Process]]:
    process, children = start(tmp_path, big_input)
    send = (lambda s: os.killpg(process.pid, s)) if whole_group else (lambda s: os.kill(process.pid, s))
    send(signum)  # whole group: what a terminal's Ctrl-C (or hang-up) does; else `kill PID`, a container stop
    if again is not None:  # a second one while it cleans up
        time.sleep(0.05)
        try:
            send(again)
        except ProcessLookupError:
            pass
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, (stdout + stderr).decode(), children


@pytest.mark.parametrize("signum, code, whole_group, again", [
    (signal.SIGINT, 130, True, None), (signal.SIGTERM, 143, False, None), (signal.SIGHUP, 129, True, None),
    (signal.SIGINT, 130, True, signal.SIGINT), (signal.SIGTERM, 143, False, signal.SIGINT)],
    ids=["ctrl-c", "sigterm", "sighup", "ctrl-c-twice", "sigterm-then-ctrl-c"])
def test_an_interrupted_prepare_says_so_in_one_line_and_leaves_nothing(tmp_path, big_input, signum, code, whole_group,
                                                                       again):
    returncode, output, children = interrupt(tmp_path, big_input, signum, whole_group, again)
    assert returncode == code, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted ({signal.Signals(signum).name}): nothing was written to {tmp_path / 'out'}"]
    assert not (tmp_path / "out").exists()  # not even the folder it made
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_killed_prepare_leaves_no_process_and_its_scratch_goes_with_the_next_run(tmp_path, big_input):
    """kill -9: nothing can clean up, yet its workers (the nice-19 hashing process too) die with it,
    and the next run, in a folder of its own as the default config gives it, removes its scratch."""
    process, children = start(tmp_path, big_input)
    process.kill()
    process.communicate(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [c.pid for c in alive]
    left = list((tmp_path / "out").glob(".gym-dpo-tmp-*"))
    assert left, "the killed run left no scratch to sweep"
    sample = REPO / "samples" / "rollouts.jsonl"
    done = subprocess.run([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={sample}",
                           f"output_root={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [p for p in left if p.exists()]


def test_a_worker_killed_under_it_is_one_error_naming_it_and_nothing_is_written(tmp_path, big_input):
    """The system's OOM killer (or a person) kills a reading worker: one error line that names it,
    exit 2, no traceback, no file and no process left."""
    process, children = start(tmp_path, big_input)
    workers = [c for c in children if c.nice() == psutil.Process(process.pid).nice()]  # not the nice-19 hashing
    workers[0].kill()
    stdout, stderr = process.communicate(timeout=120)
    output = (stdout + stderr).decode()
    assert process.returncode == 2, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    assert re.search(r"error: gym-dpo-prepare-\d died \(signal SIGKILL", output), output[-2000:]
    assert not (tmp_path / "out").exists()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_a_prepare_stopped_and_continued_writes_what_an_undisturbed_one_writes(tmp_path, big_input):
    """Ctrl-Z then fg (SIGSTOP / SIGCONT to the whole group): the run goes on where it was."""
    process, _ = start(tmp_path, big_input)
    os.killpg(process.pid, signal.SIGSTOP)
    time.sleep(2)
    os.killpg(process.pid, signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, (stdout + stderr).decode()[-2000:]
    undisturbed = subprocess.run([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={big_input}",
                                  f"data.output_dir={tmp_path / 'again'}", f"output_root={tmp_path / 'runs'}"],
                                 cwd=tmp_path, capture_output=True, timeout=900)
    assert undisturbed.returncode == 0
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
