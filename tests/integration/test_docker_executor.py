"""The Docker SDK executor against the real engine, with the local stand-in base image.

Small on purpose (the GPU-less parts only): the digest lock of a local image, the container
seeing the run folder and the data at the host's paths, logs streamed to train.log, the exit
code returned, a different digest refused before any container starts. Skipped when no engine
or no image (tests/infra/base_image.sh builds it; GYM_DPO_BASE_IMAGE names another).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from train_helpers import compose_config, make_prepared, train_overrides  # noqa: E402

from recipe.errors import RecipeError  # noqa: E402
from recipe.train import container, stage  # noqa: E402

pytestmark = pytest.mark.integration
IMAGE = os.environ.get("GYM_DPO_BASE_IMAGE", "gym-dpo-base:bookworm")

# stands in for run_dpo.py (in the data folder, which the container mounts at the same path):
# reads the YAML where the host wrote it, and the pairs it names
RUNNER = """\
import re, sys
text = open(sys.argv[sys.argv.index("--config") + 1]).read()
path = re.search(r"data_path: (\\S+)", text).group(1)
steps = re.search(r"max_num_steps: (\\d+)", text).group(1)
print("pairs", sum(1 for _ in open(path)), "steps", steps)
code = re.search(r"exit_code: (\\d+)", text)
sys.exit(int(code.group(1)) if code else 0)
"""


@pytest.fixture(scope="module")
def engine():
    try:
        client = container.docker_client()
        client.images.get(IMAGE)
    except Exception as exc:  # no SDK, no engine, or no image
        pytest.skip(f"no Docker engine with {IMAGE}: {exc}")
    return client


def overrides(tmp_path, *more):
    data = make_prepared(tmp_path / "data")
    (data / "fake_run_dpo.py").write_text(RUNNER)
    return train_overrides(tmp_path, data, "launcher=single_gpu",
                           "launcher.executor=docker", "launcher.docker.gpus=false",
                           "launcher.docker.hf_cache=null", "launcher.workdir=/",
                           # a sandboxed engine may refuse memlock=-1 (no CAP_SYS_RESOURCE)
                           f"launcher.docker.memlock={os.environ.get('GYM_DPO_TEST_MEMLOCK', 'null')}",
                           f"container.image={IMAGE}", "container.dockerfile=null",
                           f"launcher.runner=[python3,{data / 'fake_run_dpo.py'}]", *more)


def test_lock_then_launch_in_a_container(tmp_path, engine, capfd):
    lock = container.run(compose_config(*overrides(tmp_path)))
    assert lock.kind == "image_id" and lock.digest == engine.images.get(IMAGE).id
    assert stage.run(compose_config(*overrides(tmp_path, "dpo.max_num_steps=4"))) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "pairs 16 steps 4" in log and "pairs 16 steps 4" in capfd.readouterr().out
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert provenance["image"]["status"] == "match"
    assert not engine.containers.list(all=True, filters={"label": f"gym-dpo.run_dir={tmp_path / 'run'}"})


def test_the_container_exit_code_comes_back(tmp_path, engine):
    container.run(compose_config(*overrides(tmp_path)))
    with pytest.raises(RecipeError) as info:
        stage.run(compose_config(*overrides(tmp_path, "+nemo_rl_overrides.dpo.exit_code=3")))
    assert info.value.exit_code == 3 and "pairs 16" in str(info.value)


def test_a_different_digest_is_refused_before_any_container(tmp_path, engine):
    (tmp_path / "lock.json").write_text(json.dumps({"image": IMAGE, "digest": "sha256:" + "0" * 64,
                                                    "kind": "image_id"}))
    with pytest.raises(RecipeError, match="container.allow_digest_mismatch=true"):
        stage.run(compose_config(*overrides(tmp_path)))
    assert not (tmp_path / "run" / "train.log").exists()


# a run_dpo.py that trains for ever (until its container is stopped)
SLEEPER = """\
import sys, time
print("training started", flush=True)
time.sleep(600)
"""


def launch_cli(tmp_path, *more):
    """`gym-dpo stage=train ...` as a user types it, in a session of its own (signalled as a whole
    by the test), with the sleeping runner; returns the process and the run folder's train.log."""
    import subprocess

    from engines import gym_dpo_cli

    args = overrides(tmp_path, *more)
    (tmp_path / "data" / "sleeper.py").write_text(SLEEPER)
    args = [a for a in args if not a.startswith("launcher.runner=")] + [
        f"launcher.runner=[python3,{tmp_path / 'data' / 'sleeper.py'}]"]
    with open(tmp_path / "cli.out", "w") as out, open(tmp_path / "cli.err", "w") as err:
        process = subprocess.Popen([*gym_dpo_cli(), "stage=train", *args], stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return process, tmp_path / "run" / "train.log"


def said(tmp_path) -> str:
    return (tmp_path / "cli.err").read_text()


def wait_for(condition, seconds=600, tmp_path=None):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out; the CLI said:\n{said(tmp_path)[-3000:] if tmp_path else ''}"
        time.sleep(0.5)


def started(log):
    return lambda: log.is_file() and "training started" in log.read_text()


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_the_container_and_is_not_reported_as_a_training_failure(tmp_path, engine, signame, code):
    import signal

    container.run(compose_config(*overrides(tmp_path)))
    process, log = launch_cli(tmp_path)
    wait_for(started(log), tmp_path=tmp_path)
    process.send_signal(getattr(signal, signame))
    process.wait(timeout=120)
    err = " ".join(said(tmp_path).split())
    assert process.returncode == code, err
    assert f"interrupted ({signame}): the container gym-dpo-run-" in err and "was stopped" in err
    assert "exited with code" not in err  # not "training exited with code 130"
    assert not engine.containers.list(all=True, filters={"label": f"gym-dpo.run_dir={tmp_path / 'run'}"})


def test_a_container_left_by_a_killed_gym_dpo_does_not_block_the_rerun(tmp_path, engine):
    """kill -9 of gym-dpo leaves its container running under the run folder's fixed name: the
    rerun removes it (its gym-dpo is gone) instead of failing on Docker's 409 name conflict."""
    import signal

    container.run(compose_config(*overrides(tmp_path)))
    process, log = launch_cli(tmp_path)
    wait_for(started(log), tmp_path=tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    label = {"label": f"gym-dpo.run_dir={tmp_path / 'run'}"}
    [left] = engine.containers.list(all=True, filters=label)
    assert left.status == "running"
    assert stage.run(compose_config(*overrides(tmp_path, "dpo.max_num_steps=4"))) == 0
    assert "pairs 16 steps 4" in log.read_text()
    assert not engine.containers.list(all=True, filters=label)


def test_a_container_whose_gym_dpo_still_runs_is_refused_by_name(tmp_path, engine, monkeypatch):
    """A second training of a run folder is refused by the folder's lock (this host), and where the
    lock is not seen (another host whose file system does not share it), by the container's name."""
    import contextlib

    container.run(compose_config(*overrides(tmp_path)))
    process, log = launch_cli(tmp_path)
    try:
        wait_for(started(log), tmp_path=tmp_path)
        with pytest.raises(RecipeError, match=rf"is in use by gym-dpo stage=train \(pid {process.pid} "):
            stage.run(compose_config(*overrides(tmp_path)))
        monkeypatch.setattr(stage.run_lock, "held", lambda *args: contextlib.nullcontext())
        with pytest.raises(RecipeError, match="is already training this run folder .*started by gym-dpo, pid "
                                              f"{process.pid}"):
            stage.run(compose_config(*overrides(tmp_path)))
    finally:
        import signal

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
