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
