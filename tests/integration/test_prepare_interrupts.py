"""Ctrl-C and SIGTERM during prepare: one line, exit 130 / 143, no file written, no process left.

The stage runs as users run it (`python -m recipe`, a process group of its own, as a terminal
gives it), on an input large enough to be stopped in the middle of reading it.
"""

from __future__ import annotations

import os
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


def interrupt(tmp_path: Path, big_input: Path, signum: int, whole_group: bool) -> tuple[int, str, list[psutil.Process]]:
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={big_input}",
                                f"data.output_dir={out}", f"output_root={tmp_path / 'runs'}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=tmp_path)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(parent.children(recursive=True)) < 3:  # the reading workers and the hashing process
        assert time.monotonic() < deadline and process.poll() is None, "prepare never started its workers"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside read+validate
    children = parent.children(recursive=True)
    if whole_group:  # what a terminal's Ctrl-C does
        os.killpg(process.pid, signum)
    else:  # what `kill PID` or a container stop does
        os.kill(process.pid, signum)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, (stdout + stderr).decode(), children


@pytest.mark.parametrize("signum, code, whole_group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupted_prepare_says_so_in_one_line_and_leaves_nothing(tmp_path, big_input, signum, code, whole_group):
    returncode, output, children = interrupt(tmp_path, big_input, signum, whole_group)
    assert returncode == code, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted ({signal.Signals(signum).name}): nothing was written to {tmp_path / 'out'}"]
    assert not (tmp_path / "out").exists()  # not even the folder it made
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
