"""The records a rerun trusts (step records, plan.json, iterate.json, manifest.json, provenance.json, a
checkpoint's training_info.json): on disk whole before they count, and an unreadable one an error
that names it and says what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipe import run_files
from recipe.errors import RecipeError
from recipe.iterate import state


def fake_checkpoint(run: Path, step: int) -> Path:
    folder = run / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    (folder / "training_info.json").write_text(json.dumps({"step": step}))
    return folder


def test_a_record_is_on_disk_before_it_counts(tmp_path, monkeypatch):
    """Written beside, synced, renamed, the folder synced: a crash leaves the old record or the
    new one, never a zero-length one."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    state.mark_done(tmp_path, 1, "train", 1.0, train_dir="x")
    assert events == [("fsync", "file"), ("rename", "train.json"), ("fsync", "folder")]
    assert [p.name for p in (tmp_path / "round_1" / "steps").iterdir()] == ["train.json"]


def test_a_zero_length_step_record_is_an_error_that_says_what_to_do(tmp_path):
    record = tmp_path / "round_1" / "steps" / "prepare.json"
    record.parent.mkdir(parents=True)
    record.write_text("")
    with pytest.raises(RecipeError, match=rf"{record} is empty, a write cut short perhaps: delete it to run "
                                          r"round 1's prepare step again"):
        state.pending(tmp_path, 2)


def test_an_unreadable_checkpoint_record_names_it(tmp_path):
    from recipe.train.local import checkpoints

    fake_checkpoint(tmp_path, 2)
    (fake_checkpoint(tmp_path, 4) / "training_info.json").write_text("{")
    for step in (2, 4):
        (tmp_path / "checkpoints" / f"step_{step}" / "trainer_state.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"step_4/training_info.json is not valid JSON .*remove .*step_4"):
        checkpoints.retain(tmp_path / "checkpoints", 1, 1, None, True)


def test_write_atomic_leaves_the_old_record_when_the_write_fails(tmp_path, monkeypatch):
    path = run_files.write_atomic(tmp_path / "manifest.json", "old\n")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        run_files.write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
