"""One process at a time in a run folder (prepare's output folder, train's and iterate's run_dir), and a
folder of its own for each run that names none."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from recipe import run_lock
from recipe.errors import RecipeError
from recipe.train import stage as train_stage
from tests.conftest import REPO, SAMPLE
from tests.unit.train_helpers import compose_config, make_prepared, train_overrides

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from recipe import run_lock
    with run_lock.held({folder!r}, "gym-dpo stage=prepare"):
        print("held", flush=True)
        time.sleep(120)
""")


def holder(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), folder=str(folder))],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_folder_another_run_holds_is_refused_naming_the_holder(tmp_path, prepare):
    out = tmp_path / "out"
    other = holder(out)
    try:
        with pytest.raises(run_lock.Busy, match=rf"{out} is in use by gym-dpo stage=prepare \(pid {other.pid} on "
                                                rf"{os.uname().nodename}, since .*\), which holds {out}/.gym-dpo.lock"):
            prepare(SAMPLE)
        assert sorted(p.name for p in out.iterdir()) == [".gym-dpo.lock"]  # nothing of ours in it
    finally:
        other.kill()
        other.wait()
    manifest, _ = prepare(SAMPLE)  # the holder died (kill -9): its lock is taken over
    assert manifest["pairs"]["train"] > 0
    assert not (out / ".gym-dpo.lock").exists()


def test_the_lock_removes_the_folder_it_made_when_nothing_else_is_in_it(tmp_path):
    with run_lock.held(tmp_path / "new", "test") as lock:
        assert lock.created and (tmp_path / "new" / ".gym-dpo.lock").is_file()
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with run_lock.held(tmp_path / "old", "test"):
        (tmp_path / "old" / "kept").write_text("x")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["kept"]


def test_two_runs_in_the_same_second_get_folders_of_their_own(tmp_path):
    names = [run_lock.claim(tmp_path / "results", "20261204-101010") for _ in range(3)]
    assert names == ["20261204-101010", "20261204-101010-2", "20261204-101010-3"]


def test_the_cli_never_puts_a_run_in_a_folder_another_run_has(tmp_path):
    """Two runs started in the same second (default run_name: a one-second timestamp) shared
    results/<timestamp>/: here every timestamp of the next two minutes is another run's folder
    already, and the run gets <timestamp>-2 instead."""
    start = time.time()
    taken = []
    for second in range(120):
        folder = tmp_path / time.strftime("%Y%m%d-%H%M%S", time.localtime(start + second))
        folder.mkdir(exist_ok=True)
        (folder / "another run").write_text("")
        taken.append(folder)
    argv = [sys.executable, "-m", "recipe", "stage=prepare", f"data.input={SAMPLE}", f"output_root={tmp_path}",
            "data.workers=1"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for folder in taken:
        assert [p.name for p in folder.iterdir()] == ["another run"], folder
    new = [p for p in tmp_path.iterdir() if p not in taken]
    assert len(new) == 1 and new[0].name.endswith("-2"), new
    assert (new[0] / "data" / "manifest.json").is_file() and (new[0] / ".hydra" / "config.yaml").is_file()


def test_a_run_folder_another_train_holds_is_refused(tmp_path):
    other = holder(tmp_path / "run")
    try:
        with pytest.raises(RecipeError, match=rf"{tmp_path / 'run'} is in use by .*pid {other.pid}"):
            train_stage.run(compose_config("stage=train", "launcher.dry_run=true", "preflight.enabled=false",
                                           *train_overrides(tmp_path, make_prepared(tmp_path / "data"))))
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".gym-dpo.lock"]
    finally:
        other.kill()
        other.wait()
