"""What the loop starts with on a GPU launcher (single_gpu, multi_gpu, slurm, dry_run) where the
command line does not say: `iterate.gpu` (configs/iterate/default.yaml).

iterate.*'s own values are sized for the CPU default (SmolLM2-135M served by llama.cpp on 2 cores):
128 output tokens cut a GPU model's reasoning (its replies become ungradable, and pairs then
reward shortness), and with the micro batch derived as the whole global batch, one GPU would take
16 sequences of a 152k vocabulary in one pass. A value given on the command line always wins;
the dry run prints what the preset set.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

# iterate.gpu key -> the key of the composed config it sets
SETS = {
    "collect.tasks": "iterate.collect.tasks",
    "collect.max_output_tokens": "iterate.collect.sampling.max_output_tokens",
    "eval.max_output_tokens": "iterate.eval.sampling.max_output_tokens",
}
MICRO = "policy.train_micro_batch_size"


def on_gpu(cfg: DictConfig) -> bool:
    """Every launcher but the CPU runner's trains with NeMo RL and serves with the GPU's engine."""
    return str(cfg.launcher.name) != "local_cpu"


def _given(key: str, given: set[str]) -> bool:
    """`key` (or a section holding it) was set on the command line."""
    return any(key == g or key.startswith(g + ".") for g in given)


def apply(cfg: DictConfig, given: set[str]) -> list[str]:
    """Set iterate.gpu's values into cfg.iterate where `given` (the command line's keys) does not
    name them; the `key=value`s it set."""
    gpu = cfg.iterate.get("gpu")
    if not on_gpu(cfg) or gpu is None:
        return []
    applied = []
    for source, target in SETS.items():
        value = OmegaConf.select(gpu, source)
        if value is not None and not _given(target, given):
            OmegaConf.update(cfg, target, value)
            applied.append(f"{target}={value}")
    return applied


def micro_batch_cap(cfg: DictConfig, given: set[str]) -> int | None:
    """The most pairs per GPU pass when the loop derives the micro batch (None: no cap, the CPU's
    whole batch in one pass)."""
    gpu = cfg.iterate.get("gpu")
    if not on_gpu(cfg) or gpu is None or gpu.get("max_micro_batch") is None:
        return None
    if _given(f"iterate.train.{MICRO}", given) or _given(MICRO, given):
        return None
    return int(gpu.max_micro_batch)


def capped(per_rank: int, cap: int | None) -> int:
    """The largest micro batch that divides a rank's share of the global batch and is <= cap (NeMo
    RL wants the share a multiple of the micro batch)."""
    if cap is None or per_rank <= cap:
        return per_rank
    return max(m for m in range(1, cap + 1) if per_rank % m == 0)
