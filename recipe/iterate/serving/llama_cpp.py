"""llama.cpp's `llama-server` on the CPU (the embedded default).

Each round's policy (a Hugging Face folder) becomes a GGUF file with llama.cpp's own
`convert_hf_to_gguf.py` (seconds for 135M parameters), run with this Python (torch,
transformers, sentencepiece). `serving.gguf_type` picks the tensor type: f32 keeps the weights
exactly as trained (a DPO step changes them by ~1e-5, which f16 rounding can blur), f16 is faster.
Per-request `seed` makes sampling repeatable, so every round's eval uses the same seeds. The
sampler (`iterate.sampler`) is sent with every request and set as the server's defaults too.
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


def served(policy: Path, out: Path, cfg: DictConfig) -> Path:
    """What `export` makes of `policy`: a GGUF file in `out`."""
    return out / f"policy-{cfg.gguf_type}.gguf"


def export(policy: Path, out: Path, cfg: DictConfig) -> Path:
    tools = setup.llama_cpp()
    target = served(policy, out, cfg)
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


def gpus(cfg: DictConfig) -> int:
    return 0


def command(artifact: Path, port: int, name: str, cfg: DictConfig, host: str = "127.0.0.1",
            install: bool = True) -> list[str]:
    return [str(setup.llama_cpp(install=False).server), "-m", str(artifact), "--host", host, "--port", str(port),
            "-a", name, "-np", str(cfg.parallel), "-c", str(cfg.context), "-t", str(cfg.threads),
            "--no-webui", *[str(a) for a in cfg.get("args") or []]]


def sampler_request(sampler: DictConfig) -> dict:
    """What NeMo Gym's vllm_model adds to every chat request (its `extra_body`), in llama-server's
    names; top_p and the temperature go in the Responses request itself."""
    return {"top_k": int(sampler.top_k), "min_p": float(sampler.min_p),
            "repeat_penalty": float(sampler.repetition_penalty)}


def sampler_args(sampler: DictConfig) -> list[str]:
    """The server's defaults set to the same sampler (llama-server's own are top_k 40, top_p 0.95,
    min_p 0.05), for any request field a client leaves out."""
    return ["--top-k", str(int(sampler.top_k)), "--top-p", str(float(sampler.top_p)),
            "--min-p", str(float(sampler.min_p)), "--repeat-penalty", str(float(sampler.repetition_penalty))]
