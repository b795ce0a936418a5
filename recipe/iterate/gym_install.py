"""NeMo Gym's venvs: its own (ng_run, ng_collect_rollouts, uv), installed from the lock
(recipe.iterate.lock) into a folder keyed by where it runs (recipe.iterate.cache), or the image's
(`GYM_DPO_NEMO_GYM_PREBUILT`); and the bundled environments' server venvs (recipe.iterate.servers)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from recipe.errors import RecipeError
from recipe.iterate import cache, lock
from recipe.iterate.lock import NEMO_GYM_VERSION, UV_VERSION

NEMO_GYM_PYTHON = (3, 12)              # nemo-gym 0.4.0's Requires-Python: >=3.12


def find_python(configured: str | None = None) -> Path:
    """A Python NeMo Gym 0.4.0 runs on (>= 3.12, its Requires-Python): `configured`, else
    python3.12 on PATH or in pyenv's versions (what this project measured), else python3.13 or
    python3 when it is new enough (e.g. uv's Python 3.13 in NeMo RL's image). NeMo Gym makes its
    server venvs with the same Python version."""
    candidates = [configured] if configured else []
    candidates += [shutil.which("python3.12") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.12*/bin/python3.12"), reverse=True)
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12"), reverse=True)
    candidates += [shutil.which("python3.13") or "", shutil.which("python3") or ""]
    wanted = ".".join(map(str, NEMO_GYM_PYTHON))
    for candidate in candidates:
        if candidate and candidate == configured and not Path(candidate).is_file():
            raise RecipeError(f"iterate.nemo_gym_python={configured}: no such file")
        if not candidate or not Path(candidate).is_file():
            continue
        try:  # a pyenv shim is on PATH but may not run: ask the interpreter itself
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.executable); "
                                    f"print(sys.version_info[:2] >= {NEMO_GYM_PYTHON!r})"], capture_output=True,
                                   text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        lines = probe.stdout.split() if probe is not None else []
        if probe is not None and probe.returncode == 0 and len(lines) == 2 and lines[1] == "True":
            return Path(lines[0])
        if candidate == configured:
            raise RecipeError(f"iterate.nemo_gym_python={configured} is not a Python >= {wanted} (NeMo Gym "
                              f"{NEMO_GYM_VERSION} requires it)")
    raise RecipeError(f"NeMo Gym {NEMO_GYM_VERSION} needs Python >= {wanted} and none was found (python3.12, "
                      f"python3.13 or python3 on PATH, pyenv's 3.12): install one, or set "
                      "iterate.nemo_gym_python=/path/to/python")


@dataclass(frozen=True)
class NemoGym:
    venv: Path                    # ng_run, ng_collect_rollouts, uv
    python: Path                  # the interpreter uv makes the server venvs with (>= 3.12)
    server_venvs: Path            # +uv_venv_dir
    uv_cache: Path                # +uv_cache_dir
    lock: Path | None = None      # the constraints every venv is built from (recipe.iterate.lock)

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def uv_env(self) -> dict[str, str]:
        """uv's variables for every build of these venvs (ng_run's server venvs included)."""
        return lock.read(self.lock).uv_env() if self.lock is not None else {}


NEMO_GYM_IMPORTS = "nemo_gym, uv"


PREBUILT = "GYM_DPO_NEMO_GYM_PREBUILT"   # a read-only folder with NeMo Gym's venv (the image's)


def _nemo_gym_place(interpreter: Path, where: Path | None = None) -> tuple[NemoGym, dict]:
    """Where NeMo Gym's venvs are for `interpreter` here: a folder of `where` (default: the cache)
    keyed by the interpreter, the platform, the user, the folder's path and the lock
    (recipe.iterate.cache), and that identity. The server venvs and uv's cache are in the cache."""
    root = cache.root()
    probe = cache.identity(interpreter, where)
    locked = lock.path(probe["python_version"])
    ident = {**probe, "lock": lock.read(locked).sha256()}
    name = f"nemo-gym-{NEMO_GYM_VERSION}-py{ident['python_version']}-{cache.key(ident)}"
    return NemoGym((where or root) / name, Path(ident["python"]), root / f"{name}-servers",
                   root / f"uv-cache-u{ident['uid']}", locked), ident


@cache.one_installer
def nemo_gym(python: str | None = None, install: bool = True) -> NemoGym:
    """Where NeMo Gym is; installed first from the lock when missing (`install=False`: the paths
    only, e.g. for a dry run's commands). A venv made for another interpreter, user, platform, cache
    path or lock is left alone: this one is built beside it."""
    if not install:
        try:
            return _nemo_gym_place(find_python(python))[0]
        except RecipeError:
            root, name = cache.root(), f"nemo-gym-{NEMO_GYM_VERSION}-<python>-<key>"
            return NemoGym(root / name, Path(python or "python3.12"), root / f"{name}-servers", root / "uv-cache")
    interpreter = find_python(python)
    if os.environ.get(PREBUILT) and Path(os.environ[PREBUILT]).is_dir():  # the image's, made from the same lock
        tools, ident = _nemo_gym_place(interpreter, Path(os.environ[PREBUILT]))
        why = cache.venv_runs(tools.venv, ident, cache.STAMP, NEMO_GYM_IMPORTS)
        if why is None:
            return tools
        cache.say(f"NeMo Gym in {PREBUILT}={os.environ[PREBUILT]} cannot be used here ({why}): installing it")
    tools, ident = _nemo_gym_place(interpreter)
    why = cache.venv_runs(tools.venv, ident, cache.STAMP, NEMO_GYM_IMPORTS)
    if why is None:
        return tools
    if (tools.venv / cache.STAMP).exists():
        cache.say(f"{tools.venv} cannot be used here ({why}): building it again")
    cache.say(f"installing NeMo Gym {NEMO_GYM_VERSION} and uv {UV_VERSION} into {tools.venv} from "
              f"{tools.lock.name} (Python {tools.python}; a few minutes, once)")
    started = time.monotonic()
    cache.shared_dir(cache.root())
    cache.fresh(tools.venv)
    log = cache.logs() / "nemo-gym-install.log"
    venv_python = tools.venv / "bin" / "python"
    cache.run([tools.python, "-m", "venv", tools.venv], log, "python -m venv (NeMo Gym)")
    cache.run([venv_python, "-m", "pip", "install", "--disable-pip-version-check", "-c", tools.lock,
               f"uv=={UV_VERSION}"], log, "pip install uv (NeMo Gym)")
    cache.run([tools.bin / "uv", "pip", "install", "--python", venv_python, f"nemo-gym=={NEMO_GYM_VERSION}",
               f"uv=={UV_VERSION}", "pip"], log, "uv pip install nemo-gym",
              env={**tools.uv_env(), "UV_CACHE_DIR": str(tools.uv_cache), "UV_PYTHON_DOWNLOADS": "never"})
    check_venv(venv_python, tools.lock, "NeMo Gym's venv")
    (tools.venv / cache.STAMP).write_text(json.dumps({"identity": ident}, indent=1) + "\n")
    cache.say(f"NeMo Gym installed in {time.monotonic() - started:.0f}s")
    return tools


def check_venv(python: Path, locked: Path, what: str) -> dict:
    """The packages of the venv of `python` (recipe.iterate.lock.installed), each at its locked
    version, else an error listing those that are not."""
    listed = lock.installed(python)
    wrong = lock.differences(listed, lock.read(locked), lock.marker_environment(python))
    if wrong:
        raise RecipeError(f"{what} ({python.parent.parent}) differs from {locked}:\n  " + "\n  ".join(wrong))
    return listed

