"""One GPU check of the GPU path's numbers, in one JSON: what a DPO step of Qwen2.5-1.5B costs in
GPU memory and time per micro batch (iterate.gpu.max_micro_batch is an estimate made without a
GPU), and NeMo RL's own DPO loss on CUDA against the CPU trainer's formula.

    python bench/gpu_check.py --nemo-rl-src PATH [--out FILE]        # a CUDA GPU, < 6 min on an H200
    python bench/gpu_check.py --nemo-rl-src PATH --tiny              # a tiny model on a CPU (a test run)

On the device machine (docs/iterate-gpu.md, "Measuring on a GPU"): NeMo RL's source and the wheels
of pydantic travel in an ignored folder of the repository (`carry`).

Plain Python on torch and transformers (and pydantic, for NeMo RL's DPOLossConfig); no network, no
NeMo RL container, no download:
(a) `memory`: a model of Qwen2.5-1.5B-Instruct's architecture from the config below (random
    weights, vocabulary 151936; Qwen's config.json written out, nothing fetched), float32 weights
    and AdamW state with bfloat16 autocast (NeMo RL's DTensor worker keeps float32 master weights
    and computes in bfloat16), the log-softmax in float32 as NeMo RL computes it. One DPO train
    step (the policy's forward and backward over the chosen and rejected sequences, the reference
    log-probs computed before, the optimizer step) at 1, 2, 4, 8 and 16 pairs per micro batch (2 to
    32 sequences) of 512 and 1024 tokens: peak GPU memory and time of the step, after a first step
    that allocated the optimizer's state. A size that runs out of memory ends that length's sweep.
(b) `loss`: NeMo RL's DPOLossFn (imported from --nemo-rl-src by bench/nemo_rl_loss.py, its
    logprobs through prepare_loss_input on CUDA) against recipe/train/local/loss.objective on a
    CPU, on the same logits: per token and summed NLL terms, the length-averaged preference.
(c) prints one JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench/nemo_rl_loss.py, recipe/train/local/loss.py

import nemo_rl_loss  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from recipe.train.local.loss import objective  # noqa: E402

# Qwen/Qwen2.5-1.5B-Instruct's config.json (the values that size the model)
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")
TINY = dict(QWEN25_15B, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
PAIRS = (1, 2, 4, 8, 16)
LENGTHS = (512, 1024)
CASES = {
    "dpo_and_nll_per_token": {"sft_loss_weight": 0.5, "sft_average_log_probs": True,
                              "preference_average_log_probs": False, "preference_loss_weight": 1.0},
    "dpo_and_nll_summed_length_averaged_preference": {
        "sft_loss_weight": 0.2, "sft_average_log_probs": False, "preference_average_log_probs": True,
        "preference_loss_weight": 0.7},
    "dpo_alone": {"sft_loss_weight": 0.0, "sft_average_log_probs": False, "preference_average_log_probs": False,
                  "preference_loss_weight": 1.0},
}
BETA = 0.1


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_<=t) [B, S-1], the log-softmax in float32 (as NeMo RL's worker)."""
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]


def batch(pairs: int, length: int, vocab: int, device: str, generator: torch.Generator):
    """2 x pairs sequences (chosen rows, then rejected) and the mask of their trained tokens (the
    last three quarters: a prompt, then a reply)."""
    ids = torch.randint(0, vocab, (2 * pairs, length), generator=generator).to(device)
    mask = torch.zeros(2 * pairs, length - 1, device=device)
    mask[:, length // 4:] = 1.0
    return ids, mask


def dpo_step(model, optimizer, ids, mask, device: str) -> tuple[float, float | None]:
    """One DPO train step on `ids`; (seconds, peak GiB or None off CUDA). The reference log-probs
    are computed first, outside the measured step."""
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
    with torch.no_grad(), autocast:
        reference = token_logps(model(input_ids=ids).logits, ids)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with autocast:
        logits = model(input_ids=ids).logits
    loss = objective(token_logps(logits, ids), reference, mask, beta=BETA, preference_weight=1.0, sft_weight=1.0,
                     preference_average=False, sft_average=True)["loss"]
    del logits
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return seconds, peak


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def memory_sweep(config: dict, lengths, pairs_list, device: str, deadline: float) -> dict:
    cfg = transformers.Qwen2Config(**config)
    torch.manual_seed(0)
    with torch.device(device):  # built where it trains: 1.5B random weights are slow to make on a CPU
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-5,
                                  foreach=False, fused=False)  # NeMo RL v0.7.0 dpo.yaml's
    generator = torch.Generator().manual_seed(0)
    params = sum(p.numel() for p in model.parameters())
    dpo_step(model, optimizer, *batch(1, min(lengths), cfg.vocab_size, device, generator), device)  # optimizer state
    free(device)
    resident = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
    steps = []
    for length in lengths:
        for pairs in pairs_list:
            row = {"tokens": length, "pairs": pairs, "sequences": 2 * pairs}
            if time.monotonic() > deadline:
                steps.append({**row, "skipped": "time budget"})
                continue
            ids, mask = batch(pairs, length, cfg.vocab_size, device, generator)
            try:
                seconds, peak = dpo_step(model, optimizer, ids, mask, device)
                steps.append({**row, "seconds": round(seconds, 4), "peak_gib": None if peak is None else round(peak, 2),
                              "tokens_per_s": round(2 * pairs * length / seconds)})
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                steps.append({**row, "oom": True})
                del ids, mask
                free(device)
                break  # longer micro batches of this length will not fit either
            del ids, mask
            free(device)
    return {"parameters": params, "resident_gib_after_optimizer_step": None if resident is None else round(resident, 2),
            "weights": "float32 + AdamW (float32 state), bfloat16 autocast, float32 log-softmax", "steps": steps}


def loss_check(src: str, vocab: int, device: str) -> dict:
    """NeMo RL's DPOLossFn on `device` against objective() on a CPU, one global batch of 4 pairs in 2
    micro batches of random logits."""
    nemo = nemo_rl_loss.load(src, stub_missing=True)
    generator = torch.Generator().manual_seed(1)
    length, result = 48, {"nemo_rl": nemo.version, "stubbed": nemo.stubbed, "device": device, "cases": {}}
    micro = []
    for _ in range(2):
        ids = torch.randint(0, vocab, (4, length), generator=generator)
        mask = torch.zeros(4, length, dtype=torch.long)
        for row in range(4):  # replies of different lengths
            mask[row, 8 + 5 * row:] = 1
        logits = 3 * torch.randn(4, length, vocab, generator=generator)
        reference = logits + 0.3 * torch.randn(4, length, vocab, generator=generator)
        micro.append({"input_ids": ids, "token_mask": mask, "logits": logits, "reference_logits": reference})
    on_device = [{k: v.to(device) for k, v in mb.items()} for mb in micro]
    for name, settings in CASES.items():
        nemo_says = nemo_rl_loss.dpo_loss(nemo, on_device, {**settings, "reference_policy_kl_penalty": BETA})
        ours = {"loss": 0.0, "preference_loss": 0.0, "sft_loss": 0.0}
        for mb in micro:  # NeMo RL's [c0, r0, c1, r1] -> the trainer's [chosen; rejected]
            order = [0, 2, 1, 3]
            got = objective(token_logps(mb["logits"], mb["input_ids"])[order],
                            token_logps(mb["reference_logits"], mb["input_ids"])[order],
                            mb["token_mask"][:, 1:].float()[order], beta=BETA,
                            preference_weight=settings["preference_loss_weight"],
                            sft_weight=settings["sft_loss_weight"],
                            preference_average=settings["preference_average_log_probs"],
                            sft_average=settings["sft_average_log_probs"])
            for key in ours:
                ours[key] += float(got[key]) / len(micro)
        result["cases"][name] = {
            "nemo_rl": {k: nemo_says[k] for k in ours}, "ours_cpu": ours,
            "max_relative_difference": max(abs(ours[k] - nemo_says[k]) / max(abs(nemo_says[k]), 1e-12) for k in ours)}
    result["equal_to_1e-5"] = all(c["max_relative_difference"] < 1e-5 for c in result["cases"].values())
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nemo-rl-src", required=True, help="NeMo RL v0.7.0's source tree (nemo_rl/ inside)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short sequences (a CPU test run)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting new sizes after this")
    args = parser.parse_args(argv)
    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
              "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "model": "tiny" if args.tiny else "Qwen2.5-1.5B architecture, random weights"}
    if device == "cuda":
        report["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    config = TINY if args.tiny else QWEN25_15B
    lengths, pairs = ((32, 64), (1, 2)) if args.tiny else (LENGTHS, PAIRS)
    for name, run in (("loss", lambda: loss_check(args.nemo_rl_src, config["vocab_size"], device)),
                      ("memory", lambda: memory_sweep(config, lengths, pairs, device, started + args.budget_s))):
        try:
            report[name] = run()
        except Exception as exc:  # one part failing still reports the other
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        free(device)
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=1)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if "error" not in report["loss"] and "error" not in report["memory"] else 1


if __name__ == "__main__":
    sys.exit(main())
