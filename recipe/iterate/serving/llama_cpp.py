"""llama.cpp's `llama-server` on the CPU (the embedded default).

Each round's policy (a Hugging Face folder) becomes a GGUF file with llama.cpp's own
`convert_hf_to_gguf.py` (seconds for 135M parameters), run with this Python (torch,
transformers, sentencepiece). `serving.gguf_type` picks the tensor type: f32 keeps the weights
exactly as trained (a DPO step changes them by ~1e-5, which f16 rounding can blur), f16 is faster.
Per-request `seed` makes sampling repeatable, so every round's eval uses the same seeds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from recipe import processes
from recipe.iterate import setup

ready_path = "/health"
serves_hub_names = False                # a GGUF file made here, never a hub name


def export(policy: Path, out: Path, cfg: DictConfig) -> Path:
    tools = setup.llama_cpp()
    target = out / f"policy-{cfg.gguf_type}.gguf"
    if target.is_file():
        return target
    out.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    processes.run([sys.executable, tools.converter, policy, "--outtype", str(cfg.gguf_type),
                   "--outfile", partial], out / "convert.log", echo=False,
                  env={**os.environ, "HF_HUB_OFFLINE": "1"},
                  what="convert_hf_to_gguf.py")
    partial.rename(target)
    return target


def command(artifact: Path, port: int, name: str, cfg: DictConfig) -> list[str]:
    return [str(setup.llama_cpp(install=False).server), "-m", str(artifact), "--host", "127.0.0.1", "--port", str(port),
            "-a", name, "-np", str(cfg.parallel), "-c", str(cfg.context), "-t", str(cfg.threads),
            "--no-webui", *[str(a) for a in cfg.get("args") or []]]
