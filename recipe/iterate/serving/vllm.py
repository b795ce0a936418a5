"""vLLM, what GPUs use (NeMo RL's container, NeMo Gym's `vllm_model`): it serves the Hugging Face
folder itself, so there is nothing to export. Not run here (no GPU): the loop's dry run prints
the command it would start."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

ready_path = "/v1/models"
serves_hub_names = True                 # `vllm serve ORG/NAME` downloads it


def export(policy: Path, out: Path, cfg: DictConfig) -> Path:
    return policy


def command(artifact: Path, port: int, name: str, cfg: DictConfig) -> list[str]:
    return [*[str(a) for a in cfg.command], str(artifact), "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", name, *[str(a) for a in cfg.get("args") or []]]
