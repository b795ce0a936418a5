"""What prepare does with the paths it is given: never replace its own input, print the path of what it
wrote, take a path with a [ as that file, and refuse settings it cannot run before writing anything."""

from __future__ import annotations

import hashlib
import os

import pytest

from recipe import report
from recipe.errors import RecipeError
from recipe.overrides import override
from recipe.prepare import stage
from tests.conftest import SAMPLE, compose_config


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["train.jsonl", "val.jsonl", "rejects.jsonl", "manifest.json"])
def test_an_input_where_an_output_goes_is_refused_and_left_as_it_was(tmp_path, prepare, name):
    """NeMo Gym names its own output train.jsonl: data.input=d/train.jsonl data.output_dir=d."""
    folder = tmp_path / "out"
    folder.mkdir()
    rollouts = folder / name
    rollouts.write_bytes(SAMPLE.read_bytes())
    before = sha256(rollouts)
    with pytest.raises(RecipeError, match=rf"data.input {rollouts} is also where this run would write {name} .*"
                                          r"Give another data.output_dir \(e.g. data.output_dir=.*/pairs\)"):
        prepare(rollouts)
    assert sha256(rollouts) == before
    assert sorted(p.name for p in folder.iterdir()) == [name]


def test_an_input_reached_through_a_symlink_counts_too(tmp_path, prepare):
    (tmp_path / "out").mkdir()
    real = tmp_path / "out" / "train.jsonl"
    real.write_bytes(SAMPLE.read_bytes())
    link = tmp_path / "rollouts.jsonl"
    link.symlink_to(real)
    with pytest.raises(RecipeError, match="would replace its own input"):
        prepare(link)
    assert sha256(real) == sha256(SAMPLE)


def test_it_prints_where_the_report_is_not_where_it_was_drawn(tmp_path, prepare):
    pytest.importorskip("matplotlib")
    with report.console.capture() as captured:
        prepare(SAMPLE)
    printed = [line for line in captured.get().splitlines() if "report.html" in line]
    assert len(printed) == 1 and ".gym-dpo-tmp" not in printed[0], printed
    path = printed[0].removeprefix("wrote ").strip()
    assert os.path.isfile(path) and path.startswith(str(tmp_path / "runs"))


def test_a_path_with_brackets_is_that_file_not_a_glob(tmp_path):
    path = tmp_path / "rollouts[1].jsonl"
    path.write_bytes(SAMPLE.read_bytes())
    (tmp_path / "rollouts1.jsonl").write_text("")  # what the glob would match
    cfg = compose_config(override("data.input", path), override("data.output_dir", tmp_path / "out"),
                         override("output_root", tmp_path / "runs"), "data.workers=1")
    manifest = stage.run(cfg)
    assert [entry["path"] for entry in manifest["inputs"]] == [str(path)]


@pytest.mark.parametrize("setting, message", [
    ("data.chunk_mb=-1", r"data.chunk_mb=-1: give the MiB of input per work item"),
    ("data.chunk_mb=0", r"data.chunk_mb=0: give the MiB"),
    ("data.workers=-2", r"data.workers=-2: give a number of processes"),
])
def test_settings_out_of_range_are_refused_before_anything_is_written(tmp_path, prepare, setting, message):
    with pytest.raises(RecipeError, match=message):
        prepare(SAMPLE, setting)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_input_is_refused_at_the_start_naming_it(tmp_path, prepare, monkeypatch):
    """(As root a chmod does not make a file unreadable: the open is refused here instead.)"""
    path = tmp_path / "r.jsonl"
    path.write_bytes(SAMPLE.read_bytes())
    real_open = os.open

    def refuse(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(RecipeError, match=rf"data.input: {path} cannot be read \(Permission denied\)"):
        prepare(path)
    assert not (tmp_path / "out").exists()
