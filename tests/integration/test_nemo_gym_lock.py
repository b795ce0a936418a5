"""NeMo Gym's venvs as setup built them (tests/infra/iterate_up.sh: `python -m recipe.iterate.setup`)
hold exactly the lock's versions: `pip freeze` of NeMo Gym's venv and of every server venv of the
bundled environments, compared with recipe/iterate/locks/; and an image's NeMo Gym
(GYM_DPO_NEMO_GYM_PREBUILT) is used as it is, the server venvs going to the writable cache."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from engines import REPO, unavailable
from omegaconf import OmegaConf

from recipe.iterate import lock, servers, setup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tools():
    tools = setup.nemo_gym(install=False)
    if not (tools.venv / setup.STAMP).is_file():
        unavailable(f"NeMo Gym is not installed ({tools.venv}): run bash tests/infra/iterate_up.sh "
                    "(python -m recipe.iterate.setup)")
    return tools


def pip_freeze(python: Path) -> dict[str, str]:
    """`pip freeze --all` of a venv: name -> version, the projects installed from a folder left out."""
    done = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300, check=True)
    pins = [line.split("==") for line in done.stdout.splitlines() if "==" in line and not line.startswith("#")]
    return {name: version for name, version in pins}


def bundled_environments() -> list[str]:
    return sorted(p.stem for p in (REPO / "configs" / "gym").glob("*.yaml"))


@pytest.mark.parametrize("environment", bundled_environments())
def test_every_venv_of_a_bundled_environment_holds_the_locked_versions(tools, environment):
    locked = lock.read(tools.lock)
    used = servers.needed(tools, [str(p) for p in OmegaConf.load(REPO / "configs" / "gym" / f"{environment}.yaml")
                                  .config_paths])
    venvs = {"nemo-gym": tools.venv, **{s: servers.venv_of(tools, s) for s in used}}
    absent = [name for name, venv in venvs.items() if not (venv / "bin" / "python").exists()]
    if absent:
        unavailable(f"gym={environment}'s server venvs {absent} are not built: python -m recipe.iterate.setup")
    for name, venv in venvs.items():
        python = venv / "bin" / "python"
        frozen = pip_freeze(python)
        assert frozen["pip"] and (name != "nemo-gym" or frozen["nemo-gym"] == lock.NEMO_GYM_VERSION)
        wrong = lock.differences({"packages": frozen}, locked, lock.marker_environment(python))
        assert wrong == [], f"{name} ({venv}) differs from {locked.file.name}"
        assert lock.installed(python)["packages"] == frozen  # what plan.json records is pip freeze's list


def test_an_images_nemo_gym_is_used_where_it_was_built(tools, tmp_path, monkeypatch):
    """The image's build installs NeMo Gym under a folder of its own; at run time the cache is
    another (the mounted one): the image's venv is used, nothing is installed, and the server
    venvs and uv's cache go to the writable cache."""
    built_in = setup.cache_root()
    monkeypatch.setenv("GYM_DPO_CACHE", str(tmp_path / "mounted"))
    monkeypatch.setenv(setup.PREBUILT, str(built_in))
    found = setup.nemo_gym()
    assert found.venv == tools.venv and found.lock == tools.lock
    assert found.server_venvs.parent == found.uv_cache.parent == tmp_path / "mounted" / "iterate"
    assert not any(p.name.startswith("nemo-gym-") and not p.name.endswith("-servers")
                   for p in (tmp_path / "mounted" / "iterate").iterdir())
