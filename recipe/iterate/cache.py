"""The tools cache (`$GYM_DPO_CACHE/iterate`, default `~/.cache/gym-dpo/iterate`) shared by the host
and the container (compose.yaml mounts it at /root/.cache/gym-dpo), by users and by root.

A venv works only where it was made: its scripts name its interpreter by absolute path (a venv made
under /home/u/.cache is a `bad interpreter` under /root/.cache), its base Python must be the one it
was made with, its binary wheels fit one platform, and only its owner can rebuild it. So each venv
lives in a folder keyed by all of that (`identity()`), and its stamp holds the identity it was built
for: a venv made elsewhere is never reused, a new one is built beside it.

Files that every user of the cache writes (the cache folder itself, the install lock, logs) stay
its owner's: root (a container) hands what it creates there to the owner of the cache folder above,
so a later host run is not locked out by root-owned files.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from recipe.errors import RecipeError
from recipe.iterate.lock import ask

STAMP = ".complete"   # written last into a tool's folder: an interrupted install is redone, not trusted
_PROBE = ("import json, os, platform, sys, sysconfig; print(json.dumps({'python': sys.executable, "
          "'python_version': platform.python_version(), 'platform': sysconfig.get_platform(), "
          "'libc': ' '.join(platform.libc_ver())}))")


def base() -> Path:
    return Path(os.environ.get("GYM_DPO_CACHE", "~/.cache/gym-dpo")).expanduser()


def root() -> Path:
    return base() / "iterate"


def identity(interpreter: Path, where: Path | None = None) -> dict:
    """What a venv made with `interpreter` in the cache folder `where` (default: root()) depends on:
    that interpreter (path and version), the platform and C library, the user, and where the folder
    is seen from."""
    probe = ask(interpreter, _PROBE, "what it is", timeout=60)
    return {**probe, "uid": os.geteuid(), "cache": str((where or root()).absolute())}


def key(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]


def venv_runs(venv: Path, ident: dict, stamp: str, imports: str) -> str | None:
    """Why the venv in `venv` cannot be used here (None: it can): no stamp, a stamp made for another
    identity, or its interpreter or `imports` failing to run."""
    path = venv / stamp
    if not path.is_file():
        return "not built (no stamp)"
    try:
        built_for = json.loads(path.read_text()).get("identity")
    except (json.JSONDecodeError, AttributeError):
        built_for = None
    if built_for != ident:
        return "built for another interpreter, user, platform or lock"
    try:
        done = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", f"import {imports}"], capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"its Python does not run: {exc}"
    return None if done.returncode == 0 else f"`import {imports}` fails: {done.stderr.strip()[-300:]}"


def _owner() -> tuple[int, int] | None:
    """Whose the cache is, when we are root and it is another user's (else None): the owner of the
    cache folder, or of its nearest folder above, as it was before this process made any of it."""
    if os.geteuid() != 0:
        return None
    return _first_owner(str(base()))


@functools.lru_cache(maxsize=8)
def _first_owner(path: str) -> tuple[int, int] | None:
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    info = here.stat()
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None


def hand_over(path: Path) -> Path:
    """Give `path` (shared by every user of the cache) to the cache's owner when root made it."""
    owner = _owner()
    if owner is not None and path.exists() and path.stat().st_uid != owner[0]:
        os.chown(path, *owner)
    return path


def shared_dir(path: Path) -> Path:
    """`path` (and its missing parents up to the cache) made, kept the cache owner's, and writable
    by us, else an error that says whose it is and what to do."""
    _owner()  # whose the cache is, seen before this makes any of it
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except PermissionError as exc:
            raise _not_ours(folder.parent) from exc
        hand_over(folder)
    if not os.access(path, os.W_OK | os.X_OK):
        raise _not_ours(path)
    return path


def _not_ours(path: Path) -> RecipeError:
    info = path.stat()
    return RecipeError(f"{path} belongs to uid {info.st_uid} (a container run as root makes such files) and uid "
                       f"{os.geteuid()} cannot write there: `sudo chown -R {os.geteuid()} {path}`, or set "
                       "GYM_DPO_CACHE to a folder of your own")


def open_lock(path: Path) -> int:
    """A descriptor of the shared lock file to flock (read-only is enough: a root-owned lock file
    made by a container still locks for a user)."""
    shared_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError as exc:
        raise _not_ours(path.parent) from exc
    hand_over(path)
    return fd


def logs() -> Path:
    """The install logs' folder (shared, the cache owner's)."""
    return shared_dir(root() / "logs")


# -- installing into the cache -------------------------------------------------------------------
_LOCK_DEPTH = 0


def one_installer(function):
    """Runs `function` holding the cache's install lock (`<cache>/.install.lock`, flock), unless
    it is called with install=False: two setups at once (two loops, a loop and the test set-up)
    would build into the same folders; the second waits, then finds the first one's stamp.
    Re-entrant within a process; released when the outermost call returns."""
    @functools.wraps(function)
    def locked(*args, **kwargs):
        global _LOCK_DEPTH
        if kwargs.get("install", True) is False or _LOCK_DEPTH:
            return function(*args, **kwargs)
        path = root() / ".install.lock"
        handle = open_lock(path)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"waiting for another setup installing into {path.parent} (lock {path})")
                fcntl.flock(handle, fcntl.LOCK_EX)
            _LOCK_DEPTH += 1
            try:
                return function(*args, **kwargs)
            finally:
                _LOCK_DEPTH -= 1
        finally:
            os.close(handle)
    return locked


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def run(argv: list, log: Path, what: str, env: dict | None = None, cwd: Path | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        hand_over(log)  # the cache's logs stay its owner's
        code = subprocess.run([str(a) for a in argv], stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RecipeError(f"{what} failed (exit {code}; log {log}):\n{tail}")


def runs(argv: list) -> bool:
    try:
        return subprocess.run([str(a) for a in argv], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder
