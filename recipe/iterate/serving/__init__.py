"""The policy behind an OpenAI-compatible endpoint (one module per `serving=` option).

Each engine module gives:

    export(policy: Path, out: Path, cfg) -> Path     what the engine serves, made from a Hugging
                                                     Face folder (a GGUF file; the folder itself)
    command(artifact: Path, port: int, name: str, cfg) -> list[str]
    ready_path: str                                  GET it until it answers 200
    serves_hub_names: bool                           can it serve a hub id (a GPU run's base model)

`serve()` starts the engine as a `processes.Service` on a free loopback port and yields its
`/v1` base URL; NeMo Gym's `vllm_model` server talks to it (v0.4.0
`responses_api_models/vllm_model`: `policy_base_url` ending in `/v1`).
"""

from __future__ import annotations

import importlib
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

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


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextmanager
def serve(cfg: DictConfig, artifact: Path, name: str, log_path: Path):
    """Serve `artifact` as model `name` until the block ends; yields the base URL (…/v1)."""
    engine = load(str(cfg.name))
    port = int(cfg.port) if cfg.get("port") else free_port()
    argv = engine.command(artifact, port, name, cfg)
    probe = f"http://127.0.0.1:{port}{engine.ready_path}"
    with Service(f"serve:{cfg.name}", argv, log_path, ready=lambda s: answers(probe),
                 timeout=float(cfg.startup_timeout)):
        yield f"http://127.0.0.1:{port}/v1"
