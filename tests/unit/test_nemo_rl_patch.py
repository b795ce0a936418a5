"""Our image's build step docker/nemo_rl_tokenizer_rank0.py on NeMo RL v0.7.0's own files (the
reference source tree): the tokenizer of each checkpoint is saved by rank 0 only, every rank meets
at a barrier, and the step fails the build when the text it replaces is not v0.7.0's."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import reference

REPO = Path(__file__).resolve().parents[2]
STEP = REPO / "docker" / "nemo_rl_tokenizer_rank0.py"
FILES = ("nemo_rl/utils/native_checkpoint.py", "nemo_rl/models/automodel/checkpoint.py")


@pytest.fixture
def tree(tmp_path):
    """The two files of NeMo RL v0.7.0 the step edits, where /opt/nemo-rl has them."""
    src = reference("nemo-rl-v0.7.0/src")
    for relative in FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / relative, tmp_path / relative)
    return tmp_path


def build_step(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STEP), str(root)], capture_output=True, text=True, timeout=60)


def native_checkpoint(path: Path):
    spec = importlib.util.spec_from_file_location(f"native_checkpoint_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_as_rank(module, rank: int | None, tmp_path: Path):
    """save_checkpoint of a checkpoint with its tokenizer, as rank `rank` of a job (None: no
    torch.distributed); the tokenizer and the barrier it saw."""
    import torch

    tokenizer = mock.MagicMock()
    with mock.patch("torch.distributed.is_initialized", return_value=rank is not None), \
            mock.patch("torch.distributed.get_rank", return_value=rank or 0), \
            mock.patch("torch.distributed.barrier") as barrier, \
            mock.patch.object(module.dcp, "save") as dcp_save:
        module.save_checkpoint(torch.nn.Linear(2, 2), str(tmp_path / "weights"), tokenizer=tokenizer,
                               tokenizer_path=str(tmp_path / "tokenizer"))
    assert dcp_save.called  # the weights: a collective save on every rank
    return tokenizer.save_pretrained, barrier


def test_v0_7_0_saves_the_tokenizer_from_every_rank(tree, tmp_path):
    """What the step fixes: rank 3 of a job writes the same tokenizer files as rank 0."""
    pytest.importorskip("torch")
    saved, _ = save_as_rank(native_checkpoint(tree / FILES[0]), 3, tmp_path)
    saved.assert_called_once()


def test_after_the_build_step_rank_0_alone_saves_it_and_every_rank_meets_at_a_barrier(tree, tmp_path):
    pytest.importorskip("torch")
    done = build_step(tree)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("patched ") == 2
    module = native_checkpoint(tree / FILES[0])
    for rank in (1, 3, 7):
        saved, barrier = save_as_rank(module, rank, tmp_path)
        saved.assert_not_called()
        barrier.assert_called_once()
    saved, barrier = save_as_rank(module, 0, tmp_path)
    saved.assert_called_once_with(str(tmp_path / "tokenizer"))
    barrier.assert_called_once()
    saved, barrier = save_as_rank(module, None, tmp_path)  # one process, no torch.distributed: it saves
    saved.assert_called_once() and barrier.assert_not_called()
    # the DTensor v2 path (policy.dtensor_cfg._v2=true) goes through the same guard
    automodel = (tree / FILES[1]).read_text()
    assert "save_tokenizer_on_rank0(tokenizer, tokenizer_path)" in automodel
    assert "tokenizer.save_pretrained(tokenizer_path)" not in automodel


def test_the_build_fails_when_the_text_it_replaces_is_not_v0_7_0_s(tree):
    assert build_step(tree).returncode == 0
    again = build_step(tree)  # e.g. a base image that has the fix already
    assert again.returncode != 0 and "already patched" in again.stderr and FILES[0] in again.stderr
    src = reference("nemo-rl-v0.7.0/src")
    shutil.copyfile(src / FILES[1], tree / FILES[1])
    changed = tree / FILES[0]  # NeMo RL reworded the line this step replaces
    changed.write_text((src / FILES[0]).read_text().replace('print(f"Saving tokenizer', 'print(f"Writing tokenizer'))
    before = (tree / FILES[1]).read_text()
    failed = build_step(tree)
    assert failed.returncode != 0 and "NeMo RL changed it" in failed.stderr
    assert (tree / FILES[1]).read_text() == before  # nothing written unless every edit applies


def test_the_dockerfile_runs_the_step_on_the_image_s_nemo_rl():
    text = (REPO / "Dockerfile").read_text()
    assert "docker/nemo_rl_tokenizer_rank0.py" in text and "/opt/nemo-rl" in text
