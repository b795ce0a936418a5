"""Check the written NeMo RL config before any GPU is held: one error listing every problem.

Two kinds of checks, both on the document we are about to hand to NeMo RL:
- shape (JSON Schema `schemas/nemo_rl_dpo.schema.json`): the NeMo RL keys we rely on exist and
  have the types and forms NeMo RL v0.7.0 accepts (absolute paths, `split: train`, metric names,
  no legacy data keys, no `default: null`);
- against the pairs and each other: at least `train_global_batch_size` train pairs (the train
  loader drops the last partial batch: fewer means no step at all), validation pairs when
  `val_period > 0`, `save_period` a multiple of `val_period` (else top-k ranking is skipped),
  the batch divisible over the data-parallel ranks, and no secret in the file.
Ties and malformed pairs are caught while reading the data (recipe.train.prepared).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jsonschema
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recipe.errors import RecipeError
from recipe.train import redact
from recipe.train.prepared import PreparedData


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("recipe.train").joinpath("schemas/nemo_rl_dpo.schema.json")
                      .read_text())


def resolved(doc: dict) -> dict:
    """`doc` with its OmegaConf interpolations resolved, as NeMo RL's loader resolves them."""
    return OmegaConf.to_container(OmegaConf.create(doc), resolve=True)


def schema_problems(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    try:
        doc = resolved(doc)  # e.g. dpo.sft_average_log_probs: ${.preference_average_log_probs}
    except OmegaConfBaseException as exc:
        return [f"(interpolation): {exc}"]
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    return problems


def _parallel_sizes(policy: dict) -> tuple[int, str]:
    """Model-parallel ranks per replica (TP*CP*PP) of the enabled backend, and how it was found."""
    megatron = policy.get("megatron_cfg") or {}
    if megatron.get("enabled"):
        size = (int(megatron.get("tensor_model_parallel_size", 1))
                * int(megatron.get("context_parallel_size", 1))
                * int(megatron.get("pipeline_model_parallel_size", 1)))
        return size, "megatron TP*CP*PP"
    dtensor = policy.get("dtensor_cfg") or {}
    size = int(dtensor.get("tensor_parallel_size", 1)) * int(dtensor.get("context_parallel_size", 1))
    return size, "dtensor TP*CP"


def data_parallel_ranks(policy: dict, cluster: dict) -> tuple[int | None, str]:
    """Data-parallel ranks of the run (GPUs / model-parallel size), or None with the reason."""
    world = int(cluster["gpus_per_node"]) * int(cluster["num_nodes"])
    parallel, how = _parallel_sizes(policy)
    if world % parallel:
        return None, (f"{world} GPUs (launcher.gpus_per_node x launcher.nodes) is not divisible by "
                      f"the {how} size {parallel}")
    return world // parallel, ""


def batch_problems(policy: dict, cluster: dict) -> list[str]:
    """The batch against the GPUs: what NeMo RL refuses at start (no pairs needed to know)."""
    data_parallel, problem = data_parallel_ranks(policy, cluster)
    if data_parallel is None:
        return [problem]
    global_batch, micro = policy["train_global_batch_size"], policy["train_micro_batch_size"]
    if global_batch % (micro * data_parallel):
        return [f"policy.train_global_batch_size={global_batch} is not a multiple of "
                f"train_micro_batch_size x data-parallel ranks = {micro} x {data_parallel}: NeMo RL "
                "refuses partial training batches"]
    return []


def consistency_problems(doc: dict, data: PreparedData) -> list[str]:
    policy, dpo, ckpt = doc["policy"], doc["dpo"], doc["checkpointing"]
    problems = []
    global_batch = policy["train_global_batch_size"]
    if data.train_pairs < global_batch:
        problems.append(
            f"{data.train_path} has {data.train_pairs} train pairs, fewer than "
            f"policy.train_global_batch_size={global_batch}: NeMo RL drops the partial batch and "
            f"would not train a single step. Lower it (e.g. policy.train_global_batch_size="
            f"{max(1, data.train_pairs)}) or prepare more pairs")
    problems += batch_problems(policy, doc["cluster"])
    val_period = dpo["val_period"]
    if val_period > 0 and data.val_pairs == 0:
        problems.append(
            f"dpo.val_period={val_period} but {data.val_path} has no validation pairs: prepare with "
            "data.val_fraction>0 (or data.val_size), or set dpo.val_period=0 "
            "checkpointing.metric_name=null")
    metric = ckpt.get("metric_name") or ""
    if ckpt["enabled"] and metric.startswith("val:"):
        if data.val_pairs == 0:
            problems.append(f"checkpointing.metric_name={metric} needs validation pairs; set "
                            "checkpointing.metric_name=null to keep the latest checkpoints instead")
        elif val_period > 0 and ckpt["save_period"] % val_period:
            problems.append(
                f"checkpointing.save_period={ckpt['save_period']} is not a multiple of "
                f"dpo.val_period={val_period}: checkpoints saved between validations carry no "
                f"{metric} and NeMo RL skips their top-k ranking")
        elif val_period == 0 and not dpo.get("val_at_end", False):
            problems.append(f"checkpointing.metric_name={metric} with dpo.val_period=0 needs "
                            "dpo.val_at_end=true (else no checkpoint has validation metrics)")
    for key in ("dynamic_batching", "sequence_packing"):
        if (policy.get(key) or {}).get("enabled"):
            problems.append(f"policy.{key}.enabled=true: NeMo RL's DPO refuses it; set it false")
    return problems


def secret_problems(doc: dict, text: str) -> list[str]:
    problems = [f"{where} holds a secret: pass it as an environment variable instead "
                "(HF_TOKEN, WANDB_API_KEY), never in the config" for where in redact.secret_keys(doc)]
    problems += [f"the value of ${name} appears in the config: remove it (NeMo RL reads {name} "
                 "from the environment)" for name in redact.leaked(text)]
    return problems


def check_secrets(doc: dict, where: str, text: str) -> None:
    """Refuse, before anything is written, a config that holds a secret."""
    problems = secret_problems(doc, text)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise RecipeError(f"{where} was not written:\n{listing}")


def check(doc: dict, data: PreparedData, where: str, text: str = "") -> None:
    """Raise one RecipeError naming every problem of `doc` (the YAML at `where`, as `text`)."""
    problems = schema_problems(doc)
    if not problems:  # the cross checks assume the shape
        problems = consistency_problems(doc, data)
    problems += secret_problems(doc, text)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise RecipeError(f"{where} would not train ({len(problems)} problem"
                          f"{'s' if len(problems) > 1 else ''}); nothing was launched:\n{listing}")
