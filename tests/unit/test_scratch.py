"""recipe.scratch: temporary folders of a run, removed by a later run once their run is dead, wherever the
default config put them, and never while their run lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from recipe import scratch
from tests.conftest import REPO, SAMPLE


def test_a_killed_runs_scratch_is_swept_by_the_next_run_in_another_folder(tmp_path, prepare):
    """With the default config every run has a results/<timestamp>/ of its own: the next run
    still finds and removes what a kill -9 left in an earlier one's folder, and leaves a live
    run's alone."""
    earlier = tmp_path / "runs" / "20261201-000000" / "data"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from recipe.scratch import Scratch
        s = Scratch(Path({str(earlier)!r}), "prepare")
        print(s.path, flush=True)
        time.sleep(120)
    """)
    dead = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    dead_path, live_path = dead.stdout.readline().strip(), live.stdout.readline().strip()
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    try:
        prepare(SAMPLE)
        assert not os.path.exists(dead_path)
        assert os.path.isdir(live_path)
    finally:
        live.kill()
        live.wait()


def test_sweep_keeps_a_folder_in_the_making_and_takes_a_stale_one(tmp_path):
    young = tmp_path / f"{scratch.STAGING}young"
    old = tmp_path / f"{scratch.STAGING}old"
    young.mkdir()
    old.mkdir()
    os.utime(old, (time.time() - 2 * scratch.STAGING_GRACE,) * 2)
    assert scratch.sweep(tmp_path) == [old]
    assert young.is_dir()


def test_sweep_under_another_prefix_leaves_folders_without_a_lock(tmp_path):
    """/tmp/gym-dpo-ray-*: an older gym-dpo's folder has no lock file, and may be in use."""
    legacy = tmp_path / "gym-dpo-ray-abcd1234"
    legacy.mkdir()
    dead = scratch.Scratch(tmp_path, "ray", prefix="gym-dpo-")
    dead._lock.close()  # as a killed run's lock: nobody holds it
    live = scratch.Scratch(tmp_path, "ray", prefix="gym-dpo-")
    assert live.swept == [dead.path]
    assert legacy.is_dir() and live.path.is_dir() and live.path.name.startswith(f"gym-dpo-ray-{os.getpid()}-")
    live.remove()
    assert not live.path.exists()
