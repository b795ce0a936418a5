"""The policy behind an OpenAI-compatible endpoint (one module per `serving=` option).

Each engine module gives:

    export(policy: Path, out: Path, cfg) -> Path     what the engine serves, made from a Hugging
                                                     Face folder (a GGUF file; the folder itself)
    served(policy: Path, out: Path, cfg) -> Path     the path export() gives, made of nothing
    command(artifact: Path, port: int, name: str, cfg, host="127.0.0.1", install=True) -> list[str]
    sampler_request(sampler) -> dict                 the sampler in the engine's request names (NeMo
                                                     Gym's vllm_model sends it with every request)
    sampler_args(sampler) -> list[str]               the same sampler as the server's own defaults
    ready_path: str                                  GET it until it answers 200
    serves_hub_names: bool                           can it serve a hub id (a GPU run's base model)
    gpus(cfg) -> int                                 GPUs one server uses (a Slurm step's request)

`serve()` starts the engine as a `processes.Service` where the plan's launcher computes
(recipe.iterate.place: here on a free loopback port, or on a Slurm node) and yields its `/v1`
base URL; NeMo Gym's `vllm_model` server talks to it (NeMo Gym 0.4.0
responses_api_models/vllm_model). The command is written at the top of the server's log.
`serving.startup_timeout` counts from the server's start: on Slurm, from the moment its step
runs (after the queue and the container's import), which `serving.queue_timeout` bounds apart.
"""

from __future__ import annotations

import importlib
import math
import os
import shlex
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from recipe import report
from recipe.errors import RecipeError
from recipe.processes import Service

ENGINES = ("llama_cpp", "vllm")


def load(name: str) -> ModuleType:
    if name not in ENGINES:
        raise RecipeError(f"serving.name={name!r} is not a serving engine; choose one of {', '.join(ENGINES)}")
    return importlib.import_module(f"{__name__}.{name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_argv(cfg: DictConfig, artifact, port, name: str, sampler: DictConfig, host: str = "127.0.0.1",
                install: bool = True) -> list[str]:
    """The engine's command with the pinned sampler as its defaults (the dry run prints it too)."""
    engine = load(str(cfg.name))
    return [*engine.command(artifact, port, name, cfg, host=host, install=install), *engine.sampler_args(sampler)]


@contextmanager
def serve(cfg: DictConfig, artifact: Path, name: str, log_path: Path, sampler: DictConfig, where=None):
    """Serve `artifact` as model `name` until the block ends; yields the base URL (…/v1).
    `where` (recipe.iterate.place): here by default."""
    from recipe.iterate import place

    where = where or place.Here()
    engine = load(str(cfg.name))
    port = int(cfg.port) if cfg.get("port") else free_port()
    argv = server_argv(cfg, artifact, port, name, sampler, host=where.bind_host)
    env = {**os.environ, **where.env(), **{str(k): str(v) for k, v in (cfg.get("env") or {}).items()}}
    node_file = log_path.with_name(f".{log_path.stem}.node")
    node_file.unlink(missing_ok=True)
    argv, cwd = where.wrap(argv, None, name=f"serve-{name}", size=place.server_size(cfg), node_file=node_file)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"# {shlex.join(argv)}\n")
    step = where.step(f"serve-{name}")
    what = f"the policy server ({name}, serving={cfg.name}" + (f", Slurm step {step})" if step else ")")
    startup = float(cfg.startup_timeout)
    queue = float(cfg.get("queue_timeout") or math.inf) if step else 0.0
    clock = {"launched": time.monotonic()}
    address: list[str] = []

    def ready(service) -> bool:
        now = time.monotonic()
        if not address:
            found = where.address(node_file)
            if found is None:  # a Slurm step still queued, or importing its container
                if now - clock["launched"] > queue:
                    raise RecipeError(f"{what} did not start within {queue:.0f}s of its submission "
                                      f"(serving.queue_timeout; squeue --name={step}; log: {log_path})\n"
                                      f"{_tail(service)}")
                if not clock.get("said") and now - clock["launched"] > 10:
                    clock["said"] = True
                    report.console.print(f"waiting for Slurm to start {step} (squeue --name={step})",
                                         highlight=False, soft_wrap=True)
                return False
            address.append(found)
            clock["started"] = now
        if now - clock["started"] > startup:
            where_ = f" on {address[0]}" if step else ""
            raise RecipeError(f"{what}{where_} was not ready {startup:.0f}s after it started (serving.startup_timeout; "
                              f"{engine.ready_path} never answered; log: {log_path})\n{_tail(service)}")
        return answers(f"http://{address[0]}:{port}{engine.ready_path}")

    try:
        with Service(f"serve:{cfg.name}", argv, log_path, cwd=cwd, env=env, ready=ready,
                     timeout=queue + startup + 60,
                     explain=lambda lines: f"{what} stopped"):
            yield f"http://{address[0]}:{port}/v1"
    finally:
        node_file.unlink(missing_ok=True)


def _tail(service, count: int = 25) -> str:
    return "\n".join(service.output[-count:])
