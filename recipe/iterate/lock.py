"""The lock of NeMo Gym's venvs: one constraints file per Python the loop supports
(`recipe/iterate/locks/nemo-gym-<version>-py<X.Y>.txt`), resolved jointly for NeMo Gym's own venv
and every server venv `ng_run` builds for the environments below, with the moment it was resolved.

NeMo Gym 0.4.0's requirements are lower bounds only, and so are its servers'; `ng_run` builds each
server's venv with `uv venv --seed` and `uv pip install` in a shell that inherits our environment
(nemo_gym/cli/setup_command.py), so uv's own variables reach every build:
- `UV_CONSTRAINT=<lock>`: each `uv pip install` takes the locked version of every package it installs;
- `UV_EXCLUDE_NEWER=<resolved at>`: what no constraint reaches (the `pip` that `--seed` puts in each
  venv, build requirements) is what the index had when the lock was made.
One joint resolution, so one file serves every venv: each installs a subset of it.

    python -m recipe.iterate.setup --relock     # resolve again (uv pip compile --universal), rewrite the files
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from recipe.errors import RecipeError

NEMO_GYM_VERSION = "0.4.0"
UV_VERSION = "0.13.9"
PYTHONS = ("3.12", "3.13")     # this machine's 3.12; NeMo RL v0.7.0's image has 3.13.13
# the servers of the environments the loop runs (configs/gym/ and CONTRACT's judge-free ones), their
# agents and the model server gym.Gym always adds; folders inside the nemo-gym wheel
SERVERS = ("resources_servers/math_with_judge", "resources_servers/mcqa", "resources_servers/reasoning_gym",
           "resources_servers/grl_sokoban", "resources_servers/blackjack",
           "resources_servers/example_multi_turn_gymnasium", "responses_api_agents/simple_agent",
           "responses_api_agents/gymnasium_agent", "responses_api_models/vllm_model")
EXCLUDE_NEWER = re.compile(r"^# exclude-newer: (\S+)$", re.MULTILINE)


def path(python: str) -> Path:
    """The lock for Python `python` ("3.12", "3.12.1", ...): the file of its minor version."""
    minor = ".".join(python.split(".")[:2])
    if minor not in PYTHONS:
        raise RecipeError(f"no NeMo Gym lock for Python {python}: the loop's NeMo Gym venvs are locked for "
                          f"Python {', '.join(PYTHONS)} (recipe/iterate/locks/)")
    return Path(str(resources.files("recipe.iterate") / "locks" / f"nemo-gym-{NEMO_GYM_VERSION}-py{minor}.txt"))


@dataclass(frozen=True)
class Lock:
    file: Path
    pins: dict                    # canonical name -> [(version, marker text or "")]
    exclude_newer: str

    def uv_env(self) -> dict[str, str]:
        """What every uv command that builds one of these venvs gets (ng_run's included)."""
        return {"UV_CONSTRAINT": str(self.file), "UV_EXCLUDE_NEWER": self.exclude_newer}

    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.file.read_bytes()).hexdigest()

    def version(self, name: str, environment: dict) -> str | None:
        """The locked version of `name` for a Python with these marker values (None: not locked)."""
        for version, marker in self.pins.get(canonicalize_name(name), []):
            if not marker or Marker(marker).evaluate(environment):
                return version
        return None


def read(file: Path) -> Lock:
    text = file.read_text()
    found = EXCLUDE_NEWER.search(text)
    if found is None:
        raise RecipeError(f"{file}: no '# exclude-newer:' line (make the lock again: python -m recipe.iterate.setup "
                          "--relock)")
    pins: dict = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise RecipeError(f"{file}:{number}: {line!r} is not pinned with ==")
        pins.setdefault(canonicalize_name(requirement.name), []).append(
            (specs[0].version, str(requirement.marker) if requirement.marker else ""))
    return Lock(file, pins, found.group(1))


# -- what a venv holds ----------------------------------------------------------------------------
def ask(python: Path, code: str, what: str, timeout: float = 120) -> dict:
    """The JSON that `code` prints, run by `python` (isolated mode: no user site, no PYTHON*)."""
    try:
        done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RecipeError(f"{python} does not run here ({what}): {exc}") from exc
    if done.returncode != 0:
        raise RecipeError(f"{python} does not run here ({what}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


_LIST = """import importlib.metadata as m, json, platform, sys
out = {"python": platform.python_version(), "packages": {}, "local": set()}
for d in m.distributions():
    url = d.read_text("direct_url.json")
    if url and json.loads(url).get("url", "").startswith("file:"):
        out["local"].add(d.metadata["Name"])
    else:
        out["packages"].setdefault(d.metadata["Name"], d.version)
out["packages"] = {k: v for k, v in out["packages"].items() if k not in out["local"]}
out["local"] = sorted(out["local"])
print(json.dumps(out))"""


def installed(python: Path) -> dict:
    """{"python": X.Y.Z, "packages": {name: version}, "local": [names installed from a folder]}, read by
    the venv's own interpreter (what `pip freeze` lists, without the local projects' paths). A local
    project's build may leave an egg-info on the path too: its name counts as local only."""
    listed = ask(python, _LIST, "listing its packages")
    listed["packages"] = dict(sorted(listed["packages"].items(), key=lambda item: canonicalize_name(item[0])))
    return listed


def marker_environment(python: Path) -> dict:
    """The marker values of `python` (sys_platform, platform_machine, python_full_version, ...)."""
    code = ("import json, os, platform, sys; i = sys.implementation; v = platform.python_version(); print(json.dumps("
            "{'implementation_name': i.name, 'implementation_version': v, 'os_name': os.name, 'platform_machine': "
            "platform.machine(), 'platform_release': platform.release(), 'platform_system': platform.system(), "
            "'platform_version': platform.version(), 'python_full_version': v, 'platform_python_implementation': "
            "platform.python_implementation(), 'python_version': '.'.join(v.split('.')[:2]), 'sys_platform': "
            "sys.platform}))")
    return ask(python, code, "its marker values")


def differences(listed: dict, lock: Lock, environment: dict) -> list[str]:
    """Each package of a venv (`installed()`) whose version is not the lock's, or that the lock lacks."""
    out = []
    for name, version in listed["packages"].items():
        locked = lock.version(name, environment)
        if locked is None:
            out.append(f"{name}=={version} is not in {lock.file.name}")
        elif locked != version:
            out.append(f"{name}=={version}, the lock has {locked}")
    return out


# -- making the lock ------------------------------------------------------------------------------
def _server_requirements(wheel: Path) -> list[str]:
    """What each server in SERVERS asks for, as ng_run installs it from a wheel: its requirements.txt
    without the `-e nemo-gym @ ../../` line, or its pyproject's dependencies (nemo-gym[dev] for the
    model server); nemo-gym itself comes from the index at the installed version."""
    wanted = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for server in SERVERS:
            if f"{server}/requirements.txt" in names:
                lines = archive.read(f"{server}/requirements.txt").decode().splitlines()
                wanted += [line.strip() for line in lines if line.strip() and not line.startswith("#")
                           and "../.." not in line]
            elif f"{server}/pyproject.toml" in names:
                project = tomllib.loads(archive.read(f"{server}/pyproject.toml").decode())["project"]
                wanted += [d if not d.startswith("nemo-gym") else f"{d}=={NEMO_GYM_VERSION}"
                           for d in project.get("dependencies", [])]
            else:
                raise RecipeError(f"nemo-gym {NEMO_GYM_VERSION}'s wheel has no {server}")
    return wanted


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    try:
        import uv  # noqa: F401  (PyPI `uv`: the binary inside the wheel)
    except ImportError as exc:
        raise RecipeError(f"--relock needs uv: pip install uv=={UV_VERSION}") from exc
    return [sys.executable, "-m", "uv"]


def relock(log=print) -> list[Path]:
    """Resolve NeMo Gym with every server of SERVERS for each Python of PYTHONS; write the locks."""
    with tempfile.TemporaryDirectory(prefix="gym-dpo-relock-") as scratch:
        scratch = Path(scratch)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", PYTHONS[0], "-d", str(scratch), f"nemo-gym=={NEMO_GYM_VERSION}"],
                       check=True, stdin=subprocess.DEVNULL)
        wheel = next(scratch.glob("nemo_gym-*.whl"))
        wanted = [f"nemo-gym=={NEMO_GYM_VERSION}", f"uv=={UV_VERSION}", "pip", *_server_requirements(wheel)]
        (scratch / "in.txt").write_text("\n".join(wanted) + "\n")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        written = []
        for python in PYTHONS:
            target, out = path(python), scratch / f"py{python}.txt"
            log(f"resolving for Python {python} (uv pip compile --universal, index as of {stamp})")
            subprocess.run([*_uv(), "pip", "compile", "--quiet", "--universal", "--python-version", python,
                            "--exclude-newer", stamp, "--no-header", "-o", str(out), str(scratch / "in.txt")],
                           check=True, stdin=subprocess.DEVNULL, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
            header = [f"# NeMo Gym {NEMO_GYM_VERSION}'s venv and the server venvs ng_run builds for the loop, "
                      f"Python {python} (any platform).",
                      "# Made by `python -m recipe.iterate.setup --relock` (uv pip compile --universal); do not edit.",
                      f"# exclude-newer: {stamp}",
                      "# servers: " + " ".join(SERVERS),
                      "# inputs: " + " ".join(wanted), ""]
            target.write_text("\n".join(header) + out.read_text())
            written.append(target)
    return written
