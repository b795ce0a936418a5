"""`stage=preflight`, and the checks before every train stage: find what would waste a GPU run.

The train stage's own checks (recipe.train.validate, recipe.train.prepared) already refuse a
config NeMo RL would reject, fewer train pairs than one global batch, and ties. Preflight looks at
what NeMo RL accepts silently:
- token lengths: every pair is tokenized with the configured tokenizer (when it is on this
  machine) through its chat template. NeMo RL keeps a pair longer than
  `data.max_input_seq_length` but masks it: no loss, still a batch slot;
- batches: how many steps the pairs make, and how many pairs each epoch leaves out (NeMo RL drops
  the last partial batch); a `max_num_steps` the epochs never reach;
- duplicate pairs (weighted twice), pairs both in train and val (validation is not held out),
  and contradicting pairs (A over B and B over A for the same context).
It fails with one message when more than `preflight.max_over_length_fraction` of the train pairs
would be masked, and warns about the rest. The numbers (and each pair's length, for the report's
histogram) go to `<run_dir>/preflight.json`.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from omegaconf import DictConfig
from rich.table import Table
from tqdm import tqdm

from recipe import report
from recipe.errors import RecipeError
from recipe.train.plan import build_plan
from recipe.train.prepared import dataset_entry, read_pairs

FILENAME = "preflight.json"
DEFAULTS = {"enabled": True, "max_over_length_fraction": 0.5, "sample": 20000}


@dataclass
class SplitScan:
    """One pair file: 64-bit hashes of its pairs (8 bytes each, so millions fit) and a seeded
    sample of its pairs as chat messages."""

    pairs: int = 0
    hashes: array = field(default_factory=lambda: array("Q"))   # (prompt, chosen, rejected)
    flipped: array = field(default_factory=lambda: array("Q"))  # (prompt, rejected, chosen)
    sample: list[dict] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)   # longest of chosen / rejected, per sampled pair


def _digest(value) -> bytes:
    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _combine(*digests: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b"".join(digests), digest_size=8).digest(), "big")


def scan_split(dataset, sample_size: int | None, seed: int) -> SplitScan:
    """Hash every pair; keep a reservoir sample (all pairs when sample_size is None)."""
    scan, rng = SplitScan(), random.Random(seed)
    for pair in read_pairs(dataset):
        prompt, chosen, rejected = (_digest(pair[k]) for k in ("prompt", "chosen", "rejected"))
        scan.hashes.append(_combine(prompt, chosen, rejected))
        scan.flipped.append(_combine(prompt, rejected, chosen))
        if sample_size is None or len(scan.sample) < sample_size:
            scan.sample.append(pair)
        else:
            slot = rng.randrange(scan.pairs + 1)
            if slot < sample_size:
                scan.sample[slot] = pair
        scan.pairs += 1
    return scan


def _on_this_machine(name: str) -> bool:
    if Path(name).expanduser().is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str)
    except Exception:  # not a repo id either
        return False


def load_tokenizer(name: str):
    """The configured tokenizer if it is on this machine (a folder, or Hugging Face's cache), else
    (None, why)."""
    if not _on_this_machine(name):  # decided before importing transformers (seconds)
        return None, f"{name} is not on this machine (neither a folder nor in the Hugging Face cache)"
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None, "transformers is not installed (pip install -e '.[local]')"
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # not a folder, not in the cache, or unreadable
        return None, f"{name} is not on this machine ({type(exc).__name__})"
    if not tokenizer.chat_template:
        return None, f"{name} has no chat template"
    return tokenizer, ""


def token_lengths(tokenizer, pairs: list[dict], desc: str) -> list[int]:
    """Per pair: tokens of context + the longer answer, rendered by the chat template."""
    lengths = []
    for start in tqdm(range(0, len(pairs), 256), desc=desc, unit="batch", disable=len(pairs) < 512):
        batch = pairs[start:start + 256]
        texts = []
        for pair in batch:
            for answer in ("chosen", "rejected"):
                texts.append(tokenizer.apply_chat_template(pair["prompt"] + pair[answer], tokenize=False))
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths.extend(max(len(ids[i]), len(ids[i + 1])) for i in range(0, len(ids), 2))
    return lengths


def batch_plan(pairs: int, doc: dict) -> tuple[dict, list[str]]:
    """Steps the pairs make under NeMo RL's loop, and warnings about unused pairs and steps."""
    gbs = int(doc["policy"]["train_global_batch_size"])
    dpo = doc["dpo"]
    per_epoch = pairs // gbs
    steps = min(int(dpo["max_num_steps"]), int(dpo["max_num_epochs"]) * per_epoch)
    plan = {"train_pairs": pairs, "global_batch": gbs, "steps_per_epoch": per_epoch,
            "steps": steps, "pairs_left_out_per_epoch": pairs - per_epoch * gbs}
    warnings = []
    left = plan["pairs_left_out_per_epoch"]
    if per_epoch and left > gbs // 4:
        warnings.append(f"{left} of {pairs} train pairs are left out of every epoch (NeMo RL drops the "
                        f"last partial batch of {gbs}); a global batch dividing {pairs} uses them all")
    if per_epoch and steps < int(dpo["max_num_steps"]):
        warnings.append(f"the run ends after {steps} step(s): dpo.max_num_epochs={dpo['max_num_epochs']} x "
                        f"{per_epoch} step(s) an epoch, not dpo.max_num_steps={dpo['max_num_steps']}")
    return plan, warnings


def duplicate_warnings(train: SplitScan, val: SplitScan | None) -> tuple[dict, list[str]]:
    counts = {"train_duplicates": len(train.hashes) - len(set(train.hashes))}
    seen = set(train.hashes)
    counts["contradicting"] = sum(1 for h in set(train.flipped) if h in seen)
    counts["in_train_and_val"] = len(seen & set(val.hashes)) if val else 0
    warnings = []
    if counts["train_duplicates"]:
        warnings.append(f"{counts['train_duplicates']} train pair(s) repeat another one exactly: they "
                        "weigh twice in training (duplicate rollouts in the input?)")
    if counts["contradicting"]:
        warnings.append(f"{counts['contradicting']} train pair(s) prefer B over A where another prefers A "
                        "over B for the same context: identical answers scored differently")
    if counts["in_train_and_val"]:
        warnings.append(f"{counts['in_train_and_val']} pair(s) are in both train and val: validation "
                        "does not measure held-out pairs")
    return counts, warnings


def _stats(lengths: list[int], limit: int, pairs: int) -> dict:
    if not lengths:
        return {"pairs": pairs, "tokenized": 0}
    values = np.asarray(lengths)
    over = int((values > limit).sum())
    return {"pairs": pairs, "tokenized": len(lengths), "over_limit": over,
            "over_limit_fraction": round(over / len(lengths), 6),
            "p50": int(np.percentile(values, 50)), "p95": int(np.percentile(values, 95)),
            "max": int(values.max()), "lengths": [int(v) for v in values]}


def check(doc: dict, run_dir: Path, options: dict, seed: int = 0) -> dict:
    """Run every check on the NeMo RL document `doc`; returns the preflight record.

    Raises one RecipeError when the run would waste its GPUs; prints the summary and warnings.
    """
    data = doc["data"]
    where = run_dir / "nemo_rl_dpo.yaml"
    limit = int(data.get("max_input_seq_length") or doc["policy"]["max_total_sequence_length"])
    sample = options.get("sample")
    sample = None if sample in (None, 0) else int(sample)
    train = scan_split(dataset_entry(data, "train", where), sample, seed)
    val_entry = dataset_entry(data, "validation", where)
    val = scan_split(val_entry, sample, seed) if val_entry else None

    tokenizer_name = str(doc["policy"]["tokenizer"]["name"])
    tokenizer, why_not = load_tokenizer(tokenizer_name)
    record = {"tokenizer": tokenizer_name, "max_input_seq_length": limit, "tokens_checked": tokenizer is not None,
              "splits": {}}
    warnings, failures = [], []
    if tokenizer is None:
        warnings.append(f"token lengths not checked: the tokenizer {why_not}. NeMo RL masks pairs longer "
                        f"than {limit} tokens; check on a machine that has the tokenizer")
    for name, scan in (("train", train), ("val", val)):
        if scan is None:
            continue
        if tokenizer is not None:
            scan.lengths = token_lengths(tokenizer, scan.sample, f"tokenize {name} pairs")
        record["splits"][name] = _stats(scan.lengths, limit, scan.pairs)
    for name, stats in record["splits"].items():
        over = stats.get("over_limit", 0)
        if not over:
            continue
        sampled = f" (of {stats['tokenized']} sampled)" if stats["tokenized"] < stats["pairs"] else ""
        message = (f"{over}{sampled} {name} pair(s) are longer than {limit} tokens (longest {stats['max']}): "
                   "NeMo RL masks them (no loss) but they still fill batch slots")
        fraction = stats["over_limit_fraction"]
        if name == "train" and fraction > float(options["max_over_length_fraction"]):
            failures.append(f"{message}. That is {fraction:.0%} of the train pairs, more than "
                            f"preflight.max_over_length_fraction={options['max_over_length_fraction']}: "
                            f"raise policy.max_total_sequence_length (p95 is {stats['p95']} tokens) or "
                            "prepare shorter pairs")
        else:
            warnings.append(message)
    record["batches"], batch_warnings = batch_plan(train.pairs, doc)
    record["duplicates"], duplicate_notes = duplicate_warnings(train, val)
    warnings += batch_warnings + duplicate_notes
    record["warnings"], record["failures"] = warnings, failures
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FILENAME).write_text(json.dumps(record) + "\n")
    report.console.print(summary(record))
    for warning in warnings:
        report.console.print(f"[yellow]preflight warning:[/] {warning}", highlight=False)
    if failures:
        raise RecipeError("preflight: this run would waste its GPUs; nothing was launched:\n"
                          + "\n".join(f"  - {f}" for f in failures))
    return record


def summary(record: dict) -> Table:
    table = Table(title="gym-dpo preflight", header_style="bold")
    for column in ("split", "pairs", "tokens p50", "p95", "max", f"> {record['max_input_seq_length']}"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, stats in record["splits"].items():
        if stats.get("tokenized"):
            table.add_row(name, f"{stats['pairs']:,}", str(stats["p50"]), str(stats["p95"]),
                          str(stats["max"]), f"{stats['over_limit']:,}")
        else:
            table.add_row(name, f"{stats['pairs']:,}", "-", "-", "-", "-")
    batches = record["batches"]
    table.caption = (f"{batches['steps']} step(s) of {batches['global_batch']} pairs "
                     f"({batches['steps_per_epoch']} an epoch); tokenizer {record['tokenizer']}")
    return table


def _options(cfg: DictConfig) -> dict:
    options = dict(DEFAULTS)
    if cfg.get("preflight") is not None:
        options.update({k: v for k, v in dict(cfg.preflight).items() if v is not None or k == "sample"})
    return options


def run_checks(cfg: DictConfig, plan) -> dict | None:
    """The train stage's hook (after its own checks, before the launch)."""
    options = _options(cfg)
    if not options["enabled"]:
        report.console.print("preflight skipped (preflight.enabled=false)")
        return None
    return check(plan.nemo_rl, plan.run_dir, options, int(cfg.get("seed", 0)))


def run(cfg: DictConfig) -> int:
    """`stage=preflight`: write and check the NeMo RL config and the pairs; launch nothing."""
    plan, _ = build_plan(cfg)
    options = {**_options(cfg), "enabled": True}
    check(plan.nemo_rl, plan.run_dir, options, int(cfg.get("seed", 0)))
    report.console.print(f"preflight passed: {plan.config_path} is ready for launcher={cfg.launcher.name}")
    return 0
