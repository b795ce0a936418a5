"""The server venvs `ng_run` builds for an environment, made before a loop starts and recorded.

NeMo Gym builds them itself (`ng_run +dry_run=true`: its venv set-up for every server, one after
another, then each server returns before serving), from the lock (`UV_CONSTRAINT`/`UV_EXCLUDE_NEWER`
in the environment, recipe.iterate.gym). Each venv is then read and compared with the lock and
stamped; one that is half-built (ng_run reuses any venv with a bin/python, `skip_venv_if_present`)
or differs is removed and built again once. `record()` is what plan.json keeps: every package and
version of every venv the run uses, read from the venvs themselves.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig

from recipe import processes
from recipe.errors import RecipeError
from recipe.iterate import cache, gym_install, lock
from recipe.iterate import gym as gym_mod

CHECKED = ".gym-dpo-checked"     # in a server venv: read and found equal to the lock
MODEL_CONFIG = "responses_api_models/vllm_model/configs/vllm_model.yaml"   # what gym.Gym always adds
BUILD_TIMEOUT = 1800.0           # seconds for ng_run to build every server venv of an environment


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise RecipeError(f"{venv} has no lib/python3*/site-packages: is NeMo Gym installed there?")
    return found[-1]


def needed(tools: gym_install.NemoGym, config_paths: list[str]) -> list[str]:
    """The server folders (`resources_servers/mcqa`, ...) that ng_run starts for these config files
    (NeMo Gym's own, relative to its install, or paths of the user's): each entry with an entrypoint."""
    site, found = site_packages(tools.venv), []
    for text in [*config_paths, MODEL_CONFIG]:
        file = site / text if (site / text).is_file() else Path(text)
        if not file.is_file():
            raise RecipeError(f"NeMo Gym config {text} is neither a file here nor in {site}")
        for servers in (yaml.safe_load(file.read_text()) or {}).values():
            for kind, named in (servers.items() if isinstance(servers, dict) else []):
                for name, cfg in (named.items() if isinstance(named, dict) else []):
                    if isinstance(cfg, dict) and "entrypoint" in cfg and f"{kind}/{name}" not in found:
                        found.append(f"{kind}/{name}")
    return found


def venv_of(tools: gym_install.NemoGym, server: str) -> Path:
    """Where ng_run puts a server's venv (`+uv_venv_dir`/<kind>/<name>/.venv, NeMo Gym 0.4.0
    nemo_gym/cli/setup_command.py)."""
    return tools.server_venvs / server / ".venv"


def _build(tools: gym_install.NemoGym, gym_cfg: DictConfig, serving_cfg: DictConfig, work: Path, log: Path) -> None:
    gym = gym_mod.Gym(gym_cfg, serving_cfg, work, "http://127.0.0.1:9/v1", "venv-setup", tools)
    gym.write_config()
    deadline = time.monotonic() + BUILD_TIMEOUT

    def bounded() -> None:
        if time.monotonic() > deadline:
            raise RecipeError(f"ng_run did not build the server venvs within {BUILD_TIMEOUT:.0f} s (log: {log})")

    try:
        processes.run([*gym.run_argv(), "+dry_run=true"], log, cwd=work, env=gym.environment(),
                      prefix="[ng_run venvs] ", echo=False, what="ng_run +dry_run=true (server venvs)", watch=bounded)
    finally:
        gym.cleanup()


@cache.one_installer  # two loops starting at once: the second waits, then finds the venvs checked
def ensure(tools: gym_install.NemoGym, gym_cfg: DictConfig, serving_cfg: DictConfig, work: Path,
           log: Path) -> list[str]:
    """Every server venv of this environment built from the lock and checked (built now if not);
    the server folders."""
    servers = needed(tools, [str(p) for p in gym_cfg.config_paths])
    for attempt in (1, 2):  # once more when ng_run failed (Ray's start times out on a busy machine)
        todo = [s for s in servers if not (venv_of(tools, s) / CHECKED).is_file()]
        if not todo:
            return servers
        for server in todo:  # half-built, or built before the lock: ng_run would reuse it as it is
            shutil.rmtree(venv_of(tools, server), ignore_errors=True)
        print(f"[setup] building NeMo Gym's server venvs {', '.join(todo)} from {tools.lock.name} (ng_run; "
              f"log {log})", flush=True)
        failed = None
        try:
            _build(tools, gym_cfg, serving_cfg, work, log)
        except RecipeError as exc:
            failed = exc
        for server in todo:
            try:
                gym_install.check_venv(venv_of(tools, server) / "bin" / "python", tools.lock, f"the venv of {server}")
            except RecipeError as wrong:
                if attempt == 2:
                    raise (failed or wrong) from None
                continue
            (venv_of(tools, server) / CHECKED).write_text(lock.read(tools.lock).sha256() + "\n")
    return servers


def record(tools: gym_install.NemoGym, servers: list[str]) -> dict:
    """For plan.json: the lock, and every package and version of NeMo Gym's venv and each server venv."""
    locked = lock.read(tools.lock)
    venvs = {"nemo-gym": lock.installed(tools.venv / "bin" / "python")}
    venvs.update({server: lock.installed(venv_of(tools, server) / "bin" / "python") for server in servers})
    return {"lock": tools.lock.name, "lock_sha256": locked.sha256(), "exclude_newer": locked.exclude_newer,
            "venvs": venvs}


def bundled_server_venvs(tools: gym_install.NemoGym) -> list[str]:
    """The server venvs of the bundled environments (configs/gym/), built by NeMo Gym from the lock
    and checked (`ensure`): a loop then starts without building any."""
    import tempfile
    from importlib import resources

    from omegaconf import OmegaConf

    serving = OmegaConf.create({"name": "setup", "nemo_gym_model": {}})  # ng_run needs a model server config
    names = []
    for file in sorted(resources.files("recipe.configs").joinpath("gym").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".yaml"):
            environment = OmegaConf.create(file.read_text())
            with tempfile.TemporaryDirectory(prefix="gym-dpo-venvs-") as work:
                ensure(tools, environment, serving, Path(work),
                               cache.logs() / f"ng_run-venvs-{environment.name}.log")
            names.append(str(environment.name))
    return names
