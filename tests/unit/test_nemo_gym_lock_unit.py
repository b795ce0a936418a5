"""NeMo Gym's venvs from a lock (recipe.iterate.lock) and a tools cache shared by the host, the
container and their users (recipe.iterate.cache): the lock files, the comparison of a venv with
a lock, what uv gets, the folders keyed by interpreter and user, and files root leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.iterate import cache, gym, lock, setup, state
from tests.conftest import as_user

LINUX = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.12",
         "python_full_version": "3.12.1", "implementation_name": "cpython", "platform_python_implementation": "CPython",
         "os_name": "posix", "platform_system": "Linux", "platform_release": "", "platform_version": "",
         "implementation_version": "3.12.1"}


@pytest.mark.parametrize("python", lock.PYTHONS)
def test_each_supported_python_has_a_lock_of_pinned_versions_with_its_date(python):
    locked = lock.read(lock.path(f"{python}.7"))
    assert locked.file.name == f"nemo-gym-{lock.NEMO_GYM_VERSION}-py{python}.txt"
    assert locked.version("nemo-gym", LINUX) == lock.NEMO_GYM_VERSION
    assert locked.version("uv", LINUX) == lock.UV_VERSION
    assert locked.version("pip", LINUX) and locked.version("ray", LINUX) and locked.version("math-verify", LINUX)
    assert locked.version("colorama", LINUX) is None and locked.version("colorama", {**LINUX, "sys_platform": "win32"})
    assert locked.uv_env() == {"UV_CONSTRAINT": str(locked.file), "UV_EXCLUDE_NEWER": locked.exclude_newer}
    header = locked.file.read_text().split("\n", 6)
    assert all(server in header[3] for server in lock.SERVERS)


def test_a_python_without_a_lock_is_named():
    with pytest.raises(RecipeError, match=r"no NeMo Gym lock for Python 3\.14"):
        lock.path("3.14.0")


def test_a_lock_line_that_is_not_pinned_is_refused(tmp_path):
    file = tmp_path / "l.txt"
    file.write_text("# exclude-newer: 2026-12-04T00:00:00Z\nray==2.60.0\nnumpy>=2\n")
    with pytest.raises(RecipeError, match=r"l.txt:3: 'numpy>=2' is not pinned"):
        lock.read(file)
    file.write_text("ray==2.60.0\n")
    with pytest.raises(RecipeError, match="no '# exclude-newer:' line"):
        lock.read(file)


def test_a_venv_differs_from_the_lock_by_version_or_by_a_package_it_lacks(tmp_path):
    file = tmp_path / "l.txt"
    file.write_text("# exclude-newer: 2026-12-04T00:00:00Z\nray==2.60.0\n    # via nemo-gym\n"
                    "colorama==0.4.6 ; sys_platform == 'win32'\nnumpy==2.3.0 ; python_full_version < '3.13'\n"
                    "numpy==2.4.0 ; python_full_version >= '3.13'\n")
    locked = lock.read(file)
    listed = {"packages": {"Ray": "2.60.0", "numpy": "2.3.0", "colorama": "0.4.6"}, "local": ["vllm-model"]}
    assert lock.differences(listed, locked, LINUX) == ["colorama==0.4.6 is not in l.txt"]
    py313 = {**LINUX, "python_full_version": "3.13.13", "python_version": "3.13", "sys_platform": "win32"}
    assert lock.differences(listed, locked, py313) == ["numpy==2.3.0, the lock has 2.4.0"]


def test_a_venv_is_read_by_its_own_interpreter_with_what_it_installed_from_a_folder():
    listed = lock.installed(Path(sys.executable))
    assert listed["python"] == ".".join(map(str, sys.version_info[:3]))
    assert listed["packages"]["packaging"]
    assert "gym-dpo" in listed["local"] and "gym-dpo" not in listed["packages"]  # the editable install
    env = lock.marker_environment(Path(sys.executable))
    assert env["sys_platform"] == sys.platform and env["python_full_version"] == listed["python"]


def test_ng_run_builds_its_server_venvs_from_the_lock(tmp_path):
    locked = lock.path("3.12")
    tools = setup.NemoGym(tmp_path / "venv", Path("/usr/bin/python3.12"), tmp_path / "sv", tmp_path / "uv", locked)
    from hydra import compose, initialize_config_module

    with initialize_config_module("recipe.configs", version_base="1.3"):
        cfg = compose("recipe", overrides=["stage=iterate"])
    g = gym.Gym(cfg.gym, cfg.serving, tmp_path / "gym", "http://127.0.0.1:1/v1", "p", tools)
    try:
        env = g.environment()
    finally:
        g.cleanup()
    assert env["UV_CONSTRAINT"] == str(locked) and env["UV_EXCLUDE_NEWER"] == lock.read(locked).exclude_newer


def test_a_changed_venv_is_named_by_its_package_in_the_plan_check(tmp_path):
    plan = {"eval_repeats": 4, "nemo_gym": {"venvs": {"nemo-gym": {"packages": {"ray": "2.60.0", "uv": "0.13.9"}}}}}
    assert state.check_plan(tmp_path, plan) == []
    plan["nemo_gym"]["venvs"]["nemo-gym"]["packages"]["ray"] = "2.61.0"
    assert state.check_plan(tmp_path, plan) == ["nemo_gym.venvs.nemo-gym.packages.ray: '2.60.0' then, '2.61.0' now"]


# -- the cache shared by host and container ----------------------------------------------------
def fake_python(path: Path, version: str, platform: str = "linux-x86_64") -> Path:
    """An interpreter that answers cache.identity's probe as another Python would."""
    answer = json.dumps({"python": str(path), "python_version": version, "platform": platform, "libc": "glibc 2.36"})
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    path.chmod(0o755)
    return path


def test_a_venv_is_keyed_by_its_interpreter_user_platform_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GYM_DPO_CACHE", str(tmp_path / "host"))
    host = cache.identity(fake_python(tmp_path / "python3.12", "3.12.1"))
    other = cache.identity(fake_python(tmp_path / "python3.13", "3.13.13"))
    arm = cache.identity(fake_python(tmp_path / "python3.12b", "3.12.1", "linux-aarch64"))
    monkeypatch.setenv("GYM_DPO_CACHE", str(tmp_path / "container"))  # the same folder mounted elsewhere
    mounted = cache.identity(tmp_path / "python3.12")
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    another_user = cache.identity(tmp_path / "python3.12")
    keys = {cache.key(i) for i in (host, other, arm, mounted, another_user)}
    assert len(keys) == 5 and host["uid"] != another_user["uid"] and host["cache"] != mounted["cache"]


def test_a_venv_built_for_another_identity_is_not_reused(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    ident = {"python": "/usr/bin/python3.12", "uid": 0}
    assert cache.venv_runs(venv, ident, ".complete", "json") == "not built (no stamp)"
    (venv / ".complete").write_text("nemo-gym==0.4.0 uv==0.13.9\n")  # a stamp from before: no identity
    assert "another interpreter" in cache.venv_runs(venv, ident, ".complete", "json")
    (venv / ".complete").write_text(json.dumps({"identity": {**ident, "uid": 1000}}))
    assert "another interpreter" in cache.venv_runs(venv, ident, ".complete", "json")
    (venv / ".complete").write_text(json.dumps({"identity": ident}))
    assert cache.venv_runs(venv, ident, ".complete", "json") is None
    assert "fails" in cache.venv_runs(venv, ident, ".complete", "no_such_module_here")
    (venv / "bin" / "python").unlink()
    os.symlink(tmp_path / "gone" / "python3.12", venv / "bin" / "python")  # its base interpreter is gone
    assert "does not run" in cache.venv_runs(venv, ident, ".complete", "json")


@pytest.fixture
def open_tmp():
    """A folder other users can reach (pytest's tmp_path is under root's 0700 folder)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="gym-dpo-users-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files made by root in another user's cache")
def test_what_root_leaves_in_a_users_cache_does_not_lock_that_user_out(open_tmp):
    """The container (root) writes into the host user's cache (compose mounts it): the shared
    folders, the install lock and the logs stay the user's, whose later setup works."""
    uid = 4243
    home = open_tmp / "home"
    home.mkdir()
    os.chown(home, uid, uid)
    env = {"GYM_DPO_CACHE": str(home / "gym-dpo")}
    code = ("from recipe.iterate import cache, setup\n"
            "setup._run(['true'], cache.logs() / 'nemo-gym-install.log', 'true')\n"
            "@setup._one_installer\ndef f(): return 1\nf()\n"
            "cache.shared_dir(cache.root() / 'models'); print('ok')")
    as_root = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
    assert as_root.stdout.strip() == "ok", as_root.stderr
    for made in ("gym-dpo", "gym-dpo/iterate", "gym-dpo/iterate/.install.lock", "gym-dpo/iterate/logs",
                 "gym-dpo/iterate/logs/nemo-gym-install.log", "gym-dpo/iterate/models"):
        assert (home / made).stat().st_uid == uid, made
    assert as_user(uid, code, env) == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a cache that root made and another user cannot write")
def test_a_cache_the_user_cannot_write_is_an_error_that_says_what_to_do(open_tmp):
    tmp_path = open_tmp
    (tmp_path / "gym-dpo" / "iterate").mkdir(parents=True)  # root's, as Docker makes a missing mount source
    said = as_user(4244, "from recipe.iterate import setup\n@setup._one_installer\ndef f(): pass\nf()",
                    {"GYM_DPO_CACHE": str(tmp_path / "gym-dpo")})
    assert said.startswith("RecipeError") and "belongs to uid 0" in said, said
    assert "sudo chown -R 4244" in said and "GYM_DPO_CACHE" in said


def test_the_image_installs_nemo_gym_from_the_lock_where_setup_looks_for_it():
    """The Dockerfile's NeMo Gym step: setup's own install (the lock of the image's Python) into
    the folder GYM_DPO_NEMO_GYM_PREBUILT names, which setup uses at run time."""
    import re

    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    prebuilt = re.search(rf"ENV {setup.PREBUILT}=(\S+)", text).group(1)
    step = re.search(r"GYM_DPO_CACHE=(\S+) .*?-m recipe\.iterate\.setup\s*\\?\s*--only nemo-gym-venv", text, re.S)
    assert step is not None and f"{step.group(1)}/iterate" == prebuilt


def test_the_lock_asks_for_what_ng_run_installs_in_each_server_venv(tmp_path, monkeypatch):
    """From a wheel's server folders: requirements.txt without NeMo Gym's own `../..` line (ng_run
    installs nemo-gym from the index instead), a pyproject's dependencies with nemo-gym pinned."""
    import zipfile

    wheel = tmp_path / "nemo_gym-0.4.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("resources_servers/a/requirements.txt", "-e nemo-gym[dev] @ ../../\nmath-verify==0.8.0\n\n")
        archive.writestr("responses_api_models/m/pyproject.toml",
                         '[project]\nname = "m"\ndependencies = ["nemo-gym[dev]", "tiktoken"]\n')
    monkeypatch.setattr(lock, "SERVERS", ("resources_servers/a", "responses_api_models/m"))
    assert lock._server_requirements(wheel) == ["math-verify==0.8.0", f"nemo-gym[dev]=={lock.NEMO_GYM_VERSION}",
                                                "tiktoken"]
    monkeypatch.setattr(lock, "SERVERS", ("resources_servers/gone",))
    with pytest.raises(RecipeError, match="has no resources_servers/gone"):
        lock._server_requirements(wheel)


def test_server_venvs_are_built_once_more_when_ng_run_fails_then_checked_and_stamped(tmp_path, monkeypatch):
    """ng_run's dry run starts Ray, whose start can time out on a busy machine: the build is tried
    once more; a venv that differs from the lock or a second failure is an error."""
    from omegaconf import OmegaConf

    from recipe.iterate import gym_install, servers

    monkeypatch.setenv("GYM_DPO_CACHE", str(tmp_path / "cache"))
    tools = setup.NemoGym(tmp_path / "venv", Path("/usr/bin/python3.12"), tmp_path / "sv", tmp_path / "uv",
                          lock.path("3.12"))
    monkeypatch.setattr(servers, "needed", lambda tools, paths: ["resources_servers/x"])
    builds = []

    def build(tools, gym_cfg, serving_cfg, work, log, outcomes):
        builds.append(1)
        if outcomes[len(builds) - 1] == "ray timed out":
            raise RecipeError("ng_run +dry_run=true (server venvs) exited with code 1: The current node timed out")
        (servers.venv_of(tools, "resources_servers/x") / "bin").mkdir(parents=True)

    def check(python, locked, what):
        if not python.parent.is_dir():
            raise RecipeError(f"{what}: {python} does not run here")

    monkeypatch.setattr(gym_install, "check_venv", check)
    cfg = OmegaConf.create({"config_paths": ["resources_servers/x/configs/x.yaml"]})
    monkeypatch.setattr(servers, "_build", lambda *a: build(*a, outcomes=["ray timed out", "built"]))
    assert servers.ensure(tools, cfg, None, tmp_path, tmp_path / "log") == ["resources_servers/x"]
    assert len(builds) == 2 and (servers.venv_of(tools, "resources_servers/x") / servers.CHECKED).is_file()
    assert servers.ensure(tools, cfg, None, tmp_path, tmp_path / "log") and len(builds) == 2  # checked: not built again

    builds.clear()
    monkeypatch.setattr(servers, "_build", lambda *a: build(*a, outcomes=["ray timed out"] * 2))
    (servers.venv_of(tools, "resources_servers/x") / servers.CHECKED).unlink()
    with pytest.raises(RecipeError, match="timed out"):
        servers.ensure(tools, cfg, None, tmp_path, tmp_path / "log")
    assert len(builds) == 2 and not servers.venv_of(tools, "resources_servers/x").exists()
