"""`launcher=single_gpu launcher.executor=docker` from the host, on the real engine, with the real
training: `gym-dpo` (a subprocess, as a user types it) prepares on the host, then the Docker SDK
starts the CPU test image (tests/infra/test_image.sh: our Dockerfile on a NeMo RL stand-in) whose
`uv run python examples/run_dpo.py` is the CPU runner. The GPU request is off
(`launcher.docker.gpus=false`: no GPU here); memlock is left to the engine (this one refuses -1).

tests/integration/test_docker_executor.py checks the executor's mechanics with a fake runner on
the bare base image; these tests run the whole train stage in the image the tests build.
"""

from __future__ import annotations

import json

import pytest
from engines import SAMPLE, build_test_images, gym_dpo_cli, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image():
    return build_test_images()["GYM_DPO_TEST_CPU_IMAGE"]


@pytest.fixture
def launch(tmp_path, image):
    """`gym-dpo stage=all ... launcher=single_gpu launcher.executor=docker` after locking the image."""
    lock = tmp_path / "container.lock.json"
    common = [f"container.image={image}", f"container.lock_file={lock}", "container.dockerfile=null"]
    run([*gym_dpo_cli(), "stage=lock_image", *common, f"run_dir={tmp_path / 'lock'}"])

    def gym_dpo(*args, check=True):
        return run([*gym_dpo_cli(), "stage=all", f"data.input={SAMPLE}", f"run_dir={tmp_path / 'run'}",
                    "launcher=single_gpu", "launcher.executor=docker", "launcher.docker.gpus=false",
                    "launcher.docker.memlock=null", f"launcher.docker.hf_cache={tmp_path / 'hf'}",
                    *common, *args], cwd=tmp_path, check=check)

    return gym_dpo


def containers_of(run_dir) -> list[str]:
    listed = run(["docker", "ps", "-a", "-q", "--filter", f"label=gym-dpo.run_dir={run_dir}"])
    return listed.stdout.split()


def test_the_sdk_launcher_trains_in_a_container(launch, tmp_path, image):
    result = launch("dpo.max_num_steps=4", "dpo.val_period=2", "checkpointing.save_period=2")
    run_dir = tmp_path / "run"
    # the container's output streamed to the terminal and into train.log
    assert "[run_dpo.py stand-in]" in result.stdout and "[local_dpo] at step 4 of 4" in result.stdout
    log = (run_dir / "train.log").read_text()
    assert "[local_dpo] at step 4 of 4" in log and "resuming" not in log
    # written by the container into the run folder, mounted at the same path
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_2", "step_4"]
    assert (run_dir / "model" / "config.json").is_file()
    command = json.loads((run_dir / "command.json").read_text())
    assert command["executor"] == "docker" and command["argv"][:4] == ["uv", "run", "python",
                                                                        "examples/run_dpo.py"]
    spec = command["container"]
    assert spec["image"] == image and spec["device_requests"] == [] and spec["working_dir"] == "/opt/nemo-rl"
    assert spec["volumes"][str(run_dir)] == {"bind": str(run_dir), "mode": "rw"}
    image_id = json.loads(run(["docker", "image", "inspect", image]).stdout)[0]["Id"]
    provenance = json.loads((run_dir / "provenance.json").read_text())["image"]
    assert provenance["status"] == "match" and provenance["locked"] == image_id
    assert containers_of(run_dir) == []  # removed after the run


def test_a_failing_container_gives_its_exit_code_and_log_tail(launch, tmp_path):
    # an override only the runner in the container sees: it refuses a model it would have to download
    result = launch('launcher.overrides=["policy.model_name=/no/such/model"]', check=False)
    assert result.returncode == 2  # the container's exit code (local_dpo's error), passed on
    assert "training (single_gpu) exited with code 2" in result.stderr
    tail = result.stderr.split("last lines of", 1)[1]
    assert "[local_dpo] error: policy.model_name='/no/such/model'" in tail
    assert "[local_dpo] error: policy.model_name=" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert containers_of(tmp_path / "run") == []
