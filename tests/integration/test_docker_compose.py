"""`docker compose run` as the README has users type it, on the real Docker engine.

The image is the project's own Dockerfile built FROM a local CPU stand-in for the NeMo RL image
(torch and TRL in /opt/nemo_rl_venv, the CPU runner at /opt/nemo-rl/examples/run_dpo.py, NeMo RL's
own dpo.yaml beside it), pinned by tag@digest through a local registry (tests/infra/test_image.sh).
The training tests use its CPU variant, in which gym-dpo's own venv also sees NeMo RL's packages
(gym-dpo builds model=tiny, tokenizes for the preflight and, with launcher=local_cpu, trains with
its own Python) and which has no ENTRYPOINT (compose names its own). The compose file
is the repository's compose.yaml with tests/infra/compose.test.yaml on top (no GPU reservation,
no memlock=-1, never pull). Host folders are mounted exactly as a user's ./data and ./results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
import uuid

import pytest
from engines import INFRA, REPO, SAMPLE, build_test_images, gym_dpo_cli, run

pytestmark = pytest.mark.integration
QUICK = ["dpo.max_num_steps=4", "dpo.val_period=2", "checkpointing.save_period=2"]


@pytest.fixture(scope="module")
def images():
    return build_test_images()


@pytest.fixture
def compose(tmp_path, images):
    """`docker compose run --rm SERVICE ARGS` with ./data, ./results and the HF cache in tmp_path."""
    folders = {name: tmp_path / name for name in ("data", "results", "hf")}
    for folder in folders.values():
        folder.mkdir()
    shutil.copyfile(SAMPLE, folders["data"] / "rollouts.jsonl")
    project = f"gymdpotest{uuid.uuid4().hex[:8]}"
    base = ["docker", "compose", "-p", project, "-f", REPO / "compose.yaml",
            "-f", INFRA / "compose.test.yaml"]

    def compose_run(service, *args, image=images["GYM_DPO_TEST_CPU_IMAGE"], check=True):
        env = {**os.environ, "GYM_DPO_IMAGE": image, "GYM_DPO_DATA": str(folders["data"]),
               "GYM_DPO_RESULTS": str(folders["results"]), "GYM_DPO_HF_CACHE": str(folders["hf"])}
        return run([*base, "run", "--rm", service, *args], env=env, cwd=REPO, check=check)

    compose_run.folders = folders
    yield compose_run
    run([*base, "down", "--remove-orphans"], check=False, timeout=120)


def package_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def image_config(image: str) -> dict:
    return json.loads(run(["docker", "image", "inspect", image]).stdout)[0]


def test_the_image_comes_from_our_dockerfile(images):
    built, base_ref = image_config(images["GYM_DPO_TEST_IMAGE"]), images["GYM_DPO_TEST_BASE_REF"]
    labels = built["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "gym-dpo"
    assert labels["org.opencontainers.image.version"] == package_version()
    assert labels["org.opencontainers.image.base.name"] == base_ref  # FROM tag@digest, as pinned
    assert f"GYM_DPO_BASE_IMAGE={base_ref}" in built["Config"]["Env"]
    assert built["Config"]["Entrypoint"] == ["gym-dpo"] and built["Config"]["WorkingDir"] == "/workspace"
    # built FROM that very base: its layers are the first layers of ours
    base_layers = image_config(base_ref)["RootFS"]["Layers"]
    assert built["RootFS"]["Layers"][:len(base_layers)] == base_layers
    assert len(built["RootFS"]["Layers"]) > len(base_layers)
    installed = run(["docker", "run", "--rm", "--entrypoint", "/opt/gym-dpo/bin/python",
                     images["GYM_DPO_TEST_IMAGE"], "-c", "import recipe; print(recipe.__version__)"])
    assert installed.stdout.strip() == package_version()


def test_compose_prepare_writes_pairs_and_manifest_to_the_host(compose, images):
    # the image straight from our Dockerfile: preparing pairs needs nothing else
    result = compose("prepare", "data.input=/data/rollouts.jsonl", "run_name=prep",
                     image=images["GYM_DPO_TEST_IMAGE"])
    out = compose.folders["results"] / "prep" / "data"
    assert "train pairs" in result.stdout + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pairs"]["train"] + manifest["pairs"]["val"] == 24
    assert manifest["counts"]["lines"] == 152
    [source] = manifest["inputs"]
    assert source["path"] == "/data/rollouts.jsonl"
    assert source["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()  # the host's file
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl"):
        assert (out / name).stat().st_size > 0
    assert sum(1 for _ in open(out / "train.jsonl")) == manifest["pairs"]["train"]
    assert (compose.folders["results"] / "prep" / ".hydra" / "config.yaml").is_file()


def test_compose_recipe_all_local_cpu_trains_and_checkpoints_on_the_host(compose):
    compose("recipe", "stage=all", "launcher=local_cpu", "data.input=/data/rollouts.jsonl",
            "run_name=cpu", *QUICK)
    run_dir = compose.folders["results"] / "cpu"
    steps = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert steps == ["step_2", "step_4"]
    assert (run_dir / "checkpoints" / "step_4" / "training_info.json").is_file()
    assert (run_dir / "model" / "config.json").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(row.get("step", 0) for row in metrics) == 4
    command = json.loads((run_dir / "command.json").read_text())
    assert command["launcher"] == "local_cpu" and command["argv"][1:3] == ["-m", "recipe.train.local_dpo"]
    assert command["argv"][0].startswith("/opt/gym-dpo/bin/python")  # the container's gym-dpo
    assert "[local_dpo] at step 4 of 4" in (run_dir / "train.log").read_text()


def test_compose_recipe_default_runs_run_dpo_and_records_the_base_digest(compose, images, tmp_path):
    """The GPU path of compose (launcher=single_gpu, executor=subprocess): `uv run python
    examples/run_dpo.py` in /opt/nemo-rl, the digest lock checked against the base the image was
    built FROM, all of it recorded in the run folder."""
    base_ref = images["GYM_DPO_TEST_BASE_REF"]
    base_image, digest = base_ref.split("@")
    lock = compose.folders["results"] / "container.lock.json"
    run([*gym_dpo_cli(), "stage=lock_image", f"container.image={base_image}",
         f"container.lock_file={lock}", "container.dockerfile=null", f"run_dir={tmp_path / 'lock'}"])
    assert json.loads(lock.read_text())["digest"] == digest  # the registry digest, from the host

    # NeMo RL's env (the stand-in's) runs run_dpo.py; gym-dpo's own venv builds model=tiny and runs
    # the token-length preflight, for which it needs torch and transformers: the CPU variant
    compose("recipe", "stage=all", "data.input=/data/rollouts.jsonl", "run_name=gpu-path",
            f"container.image={base_image}", "container.lock_file=results/container.lock.json", *QUICK)
    run_dir = compose.folders["results"] / "gpu-path"
    command = json.loads((run_dir / "command.json").read_text())
    assert command["argv"][:4] == ["uv", "run", "python", "examples/run_dpo.py"]
    assert command["cwd"] == "/opt/nemo-rl" and command["executor"] == "subprocess"
    log = (run_dir / "train.log").read_text()
    assert "[run_dpo.py stand-in]" in log and "[local_dpo] at step 4 of 4" in log
    assert (run_dir / "checkpoints" / "step_4").is_dir()
    # the written config inherits NeMo RL's own dpo.yaml at its absolute path in the image
    assert "/opt/nemo-rl/examples/configs/dpo.yaml" in (run_dir / "nemo_rl_dpo.yaml").read_text()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["image"]["status"] == "match"
    assert provenance["image"]["running"] == [digest] and provenance["image"]["locked"] == digest
    assert provenance["gym_dpo_version"] == package_version()
    labels = image_config(images["GYM_DPO_TEST_IMAGE"])["Config"]["Labels"]
    assert labels["org.opencontainers.image.base.name"].endswith("@" + digest)
    assert labels["org.opencontainers.image.version"] == provenance["gym_dpo_version"]
