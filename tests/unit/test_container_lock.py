"""The digest lock: record, pin the Dockerfile, compare at launch, and refuse a different image."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import REPO, compose_config

from recipe.errors import RecipeError
from recipe.run_files import sha256_file
from recipe.train import container

TAG = "nvcr.io/nvidia/nemo-rl:v0.7.0"
D1, D2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def cfg_for(tmp_path, *overrides):
    return compose_config("data.input=x", f"container.lock_file={tmp_path / 'lock.json'}",
                          f"container.dockerfile={tmp_path / 'Dockerfile'}", *overrides)


def test_references():
    assert container.repository(TAG) == "nvcr.io/nvidia/nemo-rl"
    assert container.repository("localhost:5000/x@" + D1) == "localhost:5000/x"
    assert container.digest_of_reference(f"{TAG}@{D1}") == D1
    assert container.digest_of_reference(TAG) is None
    assert container.digest_of_reference(f"{TAG}@sha256:REPLACE_ME") is None


def test_lock_a_given_digest_and_pin_the_dockerfile(tmp_path):
    (tmp_path / "Dockerfile").write_text(f"ARG BASE_IMAGE={TAG}@sha256:PLACEHOLDER\nFROM ${{BASE_IMAGE}}\n")
    lock = container.run(cfg_for(tmp_path, f"container.digest={D1}"))
    recorded = json.loads((tmp_path / "lock.json").read_text())
    assert recorded["image"] == TAG and recorded["digest"] == D1 and recorded["kind"] == "given"
    assert lock.reference == f"{TAG}@{D1}"
    assert (tmp_path / "Dockerfile").read_text().startswith(f"ARG BASE_IMAGE={TAG}@{D1}\n")
    with pytest.raises(RecipeError, match="not sha256:<64 hex digits>"):
        container.run(cfg_for(tmp_path, "container.digest=sha256:abc"))
    with pytest.raises(RecipeError, match="already names a digest"):
        container.run(cfg_for(tmp_path, f"container.image={TAG}@{D1}"))


def test_the_check_refuses_a_different_digest_unless_allowed(tmp_path):
    cfg = cfg_for(tmp_path)
    (tmp_path / "lock.json").write_text(json.dumps({"image": TAG, "digest": D1, "kind": "repo"}))
    assert container.check(cfg, [D1, "sha256:" + "0" * 64], "docker")["status"] == "match"
    assert container.check(cfg, None, "unknown")["status"] == "unverified"
    with pytest.raises(RecipeError) as info:
        container.check(cfg, [D2], "local Docker image")
    assert D1 in str(info.value) and D2 in str(info.value)
    assert "container.allow_digest_mismatch=true" in str(info.value)
    allowed = cfg_for(tmp_path, "container.allow_digest_mismatch=true")
    assert container.check(allowed, [D2], "docker")["status"] == "mismatch"


def test_an_unlocked_image_is_refused_where_its_digest_is_known(tmp_path):
    cfg = cfg_for(tmp_path)
    with pytest.raises(RecipeError, match="stage=lock_image"):
        container.check(cfg, [D1], "docker")
    assert container.check(cfg, None, "baked")["status"] == "unlocked"


def test_a_lock_for_another_image_is_not_applied(tmp_path):
    (tmp_path / "lock.json").write_text(json.dumps({"image": "other:1", "digest": D1, "kind": "repo"}))
    assert container.check(cfg_for(tmp_path, "container.allow_digest_mismatch=true"), [D2], "x")["status"] == "unlocked"


def test_digests_from_docker_inspect():
    attrs = {"Id": "sha256:" + "c" * 64,
             "RepoDigests": [f"nvcr.io/nvidia/nemo-rl@{D1}", f"mirror.local/nemo-rl@{D2}"]}
    assert container.local_digests(attrs, TAG) == ([D1], "sha256:" + "c" * 64)
    assert container.local_digests({"Id": "sha256:x", "RepoDigests": []}, "gym-dpo-base:bookworm") == ([], "sha256:x")


def test_baked_digest_inside_our_image():
    assert container.baked_digests({"GYM_DPO_BASE_IMAGE": f"{TAG}@{D1}"}) == [D1]
    assert container.baked_digests({"GYM_DPO_BASE_IMAGE": "gym-dpo-base:bookworm"}) is None
    assert container.baked_digests({}) is None


def test_the_dockerfile_pins_base_image_by_tag_and_digest():
    text = (REPO / "Dockerfile").read_text()
    line = next(candidate for candidate in text.splitlines() if candidate.startswith("ARG BASE_IMAGE="))
    reference = line.split("=", 1)[1]
    assert reference.startswith(TAG + "@sha256:")
    assert "FROM ${BASE_IMAGE}" in text and 'ENTRYPOINT ["gym-dpo"]' in text
    assert ("GYM_DPO_BASE_IMAGE" in text and "pip install" in text
            and "-e" not in text.split("pip install")[1].split("\n")[0])


def test_lock_a_squashfs_file_keeps_the_registry_digest(tmp_path):
    (tmp_path / "Dockerfile").write_text(f"ARG BASE_IMAGE={TAG}@sha256:PLACEHOLDER\n")
    image = tmp_path / "nemo-rl.sqsh"
    image.write_bytes(b"hsqs-0123")
    only = container.run(cfg_for(tmp_path, f"container.squashfs={image}"))  # no Docker asked
    assert (only.digest, only.kind, only.reference) == ("", "squashfs", TAG)
    assert only.squashfs["sha256"] == sha256_file(image) and only.squashfs["bytes"] == 9
    assert "PLACEHOLDER" in (tmp_path / "Dockerfile").read_text()  # no registry digest to pin
    assert container.check(cfg_for(tmp_path), None, "baked")["status"] == "unlocked"
    container.run(cfg_for(tmp_path, f"container.digest={D1}"))
    both = container.run(cfg_for(tmp_path, f"container.squashfs={image}"))
    assert (both.digest, both.kind) == (D1, "given") and both.squashfs["path"] == str(image)
    recorded = json.loads((tmp_path / "lock.json").read_text())
    assert recorded["digest"] == D1 and recorded["squashfs"]["sha256"] == both.squashfs["sha256"]
    with pytest.raises(RecipeError, match="no such file"):
        container.run(cfg_for(tmp_path, f"container.squashfs={tmp_path / 'missing.sqsh'}"))


def test_lock_image_is_a_cli_stage(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recipe", "stage=lock_image", f"container.digest={D2}",
                             f"container.lock_file={tmp_path / 'lock.json'}", "container.dockerfile=null",
                             f"hydra.run.dir={tmp_path / 'h'}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "lock.json").read_text())["digest"] == D2


def test_image_version_label_and_compose_tag_follow_the_package_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG GYM_DPO_VERSION={version}\n" in (REPO / "Dockerfile").read_text()
    compose = (REPO / "compose.yaml").read_text()
    assert f"image: ${{GYM_DPO_IMAGE:-gym-dpo:{version}}}" in compose
    for secret in ("HF_TOKEN", "WANDB_API_KEY"):  # passed by name only
        assert f"    - {secret}\n" in compose and f"{secret}=" not in compose
    assert "ipc: host" in compose and "memlock: -1" in compose and "capabilities: [gpu]" in compose
    # stage=iterate installs NeMo Gym and its server venvs under ~/.cache/gym-dpo: kept across `run --rm`
    import yaml

    volumes = yaml.safe_load(compose)["x-gym-dpo"]["volumes"]
    assert "${GYM_DPO_CACHE:-~/.cache/gym-dpo}:/root/.cache/gym-dpo" in volumes
