"""`gym-dpo stage=prepare` as a user runs it: a subprocess on the bundled sample."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, SAMPLE, read_jsonl

pytestmark = pytest.mark.integration


def gym_dpo(*args, cwd=REPO, entry=("gym-dpo",)):
    return subprocess.run([*entry, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_prepare_on_the_bundled_sample(tmp_path):
    out = tmp_path / "data"
    result = gym_dpo("stage=prepare", f"data.input={SAMPLE}", f"data.output_dir={out}",
                     f"output_root={tmp_path / 'runs'}", "run_name=sample")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    # the numbers samples/README.md computes from the file it wrote
    assert counts["lines"] == 152
    assert counts["rejected"] == {"empty_response": 1, "malformed_json": 1, "mask_sample": 1,
                                  "not_an_object": 1, "reward_null": 1, "schema": 1}
    assert counts["paired"] == 48
    assert manifest["groups"]["with_pairs"] == 24
    assert manifest["pairs"]["train"] + manifest["pairs"]["val"] == 24
    rejects = read_jsonl(out / "rejects.jsonl")
    assert sorted(r["line"] for r in rejects) == [5, 60, 87, 107, 128, 151]
    assert "in a pair" in result.stderr and "train pairs" in result.stderr  # the summary table
    # Hydra keeps the composed config in the run folder
    snapshot = (tmp_path / "runs" / "sample" / ".hydra" / "config.yaml").read_text()
    assert "same_prompt" in snapshot and str(SAMPLE) in snapshot


def test_python_dash_m_and_cfg_job_print_the_composed_config(tmp_path):
    result = gym_dpo("--cfg", "job", "data_prep=stratified", "data_prep.high_threshold=0.9",
                     entry=(sys.executable, "-m", "recipe"))
    assert result.returncode == 0, result.stderr
    assert "name: stratified" in result.stdout and "high_threshold: 0.9" in result.stdout


def test_bad_input_is_one_clear_message_without_traceback(tmp_path):
    result = gym_dpo("stage=prepare", f"data.input={tmp_path / 'nope.jsonl'}", f"output_root={tmp_path}")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = gym_dpo("stage=prepare", f"output_root={tmp_path}")
    assert result.returncode == 2 and "data.input is not set" in result.stderr


def test_a_non_editable_install_finds_its_configs_and_schemas(tmp_path):
    """The container installs the package with `pip install .`: configs and schemas must ship."""
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "recipe", "stage=prepare", f"data.input={SAMPLE}",
                             f"data.output_dir={tmp_path / 'out'}", f"output_root={tmp_path / 'runs'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "manifest.json").exists()
    assert str(target) in subprocess.run(
        [sys.executable, "-c", "import recipe; print(recipe.__file__)"], cwd=tmp_path, env=env,
        capture_output=True, text=True).stdout
