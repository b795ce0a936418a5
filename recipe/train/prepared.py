"""The train stage's only view of `stage=prepare`'s output: manifest.json, train.jsonl, val.jsonl.

Two readers, one for each side of the launch:
- `load(folder)`, before the NeMo RL config is written: the folder as prepare left it;
- `dataset_entry(data, split)` + `read_pairs(dataset)`, after: the pair files a NeMo RL config's
  `data:` names, as prompt / chosen / rejected messages (preflight and the CPU runner read them so).

The train stage never imports prepare's code: it reads the folder the way a user's hand-made
folder would be read, so that a folder prepared yesterday (or elsewhere) trains the same. It checks
what NeMo RL would not (v0.7.0's `nemo_rl/data/datasets/preference_datasets/` load a record
without checking that it is complete): the files are the ones the manifest hashed, every line is a
pair of the manifest's format, and no pair is a tie (equal ranks make NeMo RL raise
`NotImplementedError` at load time; identical chosen and rejected answers teach nothing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recipe.errors import RecipeError
from recipe.run_files import sha256_file

SUPPORTED_MANIFEST_VERSIONS = (1,)
DATASET_NAMES = {"preference": "PreferenceDataset", "binary": "BinaryPreferenceDataset"}


@dataclass
class PreparedData:
    folder: Path                   # absolute
    manifest_path: Path
    manifest_sha256: str
    format: str                    # preference | binary
    train_path: Path
    val_path: Path
    train_pairs: int
    val_pairs: int
    hashes: dict = field(default_factory=dict)  # {"train": sha256, "val": ..., "inputs": [...]}

    @property
    def dataset_name(self) -> str:
        return DATASET_NAMES[self.format]


def _tie(record: dict, fmt: str) -> str | None:
    """Why this pair is a tie or malformed, or None when it is a usable pair."""
    if fmt == "binary":
        if not all(isinstance(record.get(k), str) for k in ("chosen", "rejected")) or "prompt" not in record:
            return "not a BinaryPreferenceDataset record (prompt, chosen, rejected strings)"
        return "chosen and rejected are the same text" if record["chosen"] == record["rejected"] else None
    completions = record.get("completions")
    if "context" not in record or not isinstance(completions, list) or len(completions) != 2:
        return "not a PreferenceDataset record (context + exactly two completions)"
    try:
        ranks = [c["rank"] for c in completions]
        answers = [c["completion"] for c in completions]
    except (TypeError, KeyError):
        return "a completion lacks `rank` or `completion`"
    if ranks[0] == ranks[1]:
        return f"both completions have rank {ranks[0]} (NeMo RL raises NotImplementedError on ties)"
    if answers[0] == answers[1]:
        return "chosen and rejected completions are identical"
    return None


def check_pairs(path: Path, fmt: str) -> int:
    """Count the pairs of one file, failing on the first line that is not a usable pair."""
    count = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise RecipeError(f"{path}:{number}: not JSON ({exc}); rerun stage=prepare") from None
            problem = _tie(record, fmt) if isinstance(record, dict) else "not a JSON object"
            if problem:
                raise RecipeError(f"{path}:{number}: {problem}. Fix or drop that pair (or rerun "
                                  "stage=prepare) before training")
            count += 1
    return count


def load(folder: str | Path, allow_edited: bool = False) -> PreparedData:
    """Read and check a prepared data folder: hashes (unless `allow_edited`), counts, every pair."""
    folder = Path(folder).expanduser().absolute()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise RecipeError(f"{manifest_path} does not exist: data.output_dir must be a folder written "
                          "by stage=prepare (run `gym-dpo stage=all data.input=...`, or point "
                          "data.output_dir at an earlier run's data folder)")
    raw = manifest_path.read_bytes()
    try:
        manifest = orjson.loads(raw)
        version, fmt = manifest["manifest_version"], manifest["format"]
        counts, outputs = manifest["pairs"], manifest.get("outputs", {})
        train_n, val_n = int(counts["train"]), int(counts["val"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecipeError(f"{manifest_path}: not a prepare manifest ({exc!r}); rerun stage=prepare") from None
    if version not in SUPPORTED_MANIFEST_VERSIONS:
        raise RecipeError(f"{manifest_path}: manifest_version {version} is not one this gym-dpo "
                          f"reads ({SUPPORTED_MANIFEST_VERSIONS}); rerun stage=prepare with this version")
    if fmt not in DATASET_NAMES:
        raise RecipeError(f"{manifest_path}: format {fmt!r} is neither preference nor binary")
    data = PreparedData(folder, manifest_path, hashlib.sha256(raw).hexdigest(), fmt,
                        folder / "train.jsonl", folder / "val.jsonl", train_n, val_n)
    data.hashes = {"manifest": data.manifest_sha256,
                   "inputs": [{"path": i.get("path"), "sha256": i.get("sha256")}
                              for i in manifest.get("inputs", [])]}
    for split, path, expected in (("train", data.train_path, train_n), ("val", data.val_path, val_n)):
        if not path.is_file():
            raise RecipeError(f"{path} is missing although {manifest_path} lists {expected} {split} "
                              "pairs; rerun stage=prepare")
        recorded = outputs.get(split, {}).get("sha256")
        actual = sha256_file(path)
        if recorded and actual != recorded and not allow_edited:
            raise RecipeError(f"{path} changed after stage=prepare wrote it (sha256 {actual[:12]}…, "
                              f"manifest says {recorded[:12]}…); rerun stage=prepare, or "
                              "train.allow_edited_data=true to train on the edited file anyway")
        data.hashes[split] = actual
        found = check_pairs(path, fmt)
        if found != expected and not allow_edited:
            raise RecipeError(f"{path} holds {found} pairs but {manifest_path} says {expected}; "
                              "rerun stage=prepare")
        setattr(data, f"{split}_pairs", found)
    return data


# -- the pairs a NeMo RL config names --------------------------------------------------------
@dataclass
class Dataset:
    """One `data.train` / `data.validation` entry (after `data.default` filled its gaps)."""

    name: str
    path: Path
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"


def dataset_entry(data: dict, split: str, config_path: Path) -> Dataset | None:
    """`data.<split>` of a NeMo RL config (gaps filled from `data.default`), or None if absent."""
    entry = data.get(split)
    if entry is None:
        return None
    merged = {**(data.get("default") or {}), **entry}
    name = merged.get("dataset_name")
    if name not in DATASET_NAMES.values():
        raise RecipeError(f"{config_path}: data.{split}.dataset_name={name!r}: the CPU runner reads "
                          f"local {' or '.join(DATASET_NAMES.values())} files only (no downloads)")
    if not merged.get("data_path"):
        raise RecipeError(f"{config_path}: data.{split}.data_path is not set")
    path = Path(str(merged["data_path"])).expanduser()
    if not path.is_file():
        raise RecipeError(f"data.{split}.data_path={path}: no such file (the CPU runner reads local "
                          "files only)")
    keys = {k: merged[k] for k in ("prompt_key", "chosen_key", "rejected_key") if merged.get(k)}
    return Dataset(name, path, **keys)


def _messages(value, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [_message(m) for m in value]
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def _message(message: dict) -> dict:
    """A chat message with the keys chat templates read (content always a string)."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def as_conversation(record: dict, dataset: Dataset) -> dict:
    """One pair as {"prompt": [...], "chosen": [...], "rejected": [...]} (message lists: TRL's
    conversational format), the completions' shared earlier messages moved to the prompt:
    `chosen`/`rejected` hold one message each, the one NeMo RL trains.

    A PreferenceDataset record: `prompt` = the context messages, `chosen` = the lower-ranked
    completion's messages, `rejected` = the other. A BinaryPreferenceDataset record (`prompt`,
    `chosen`, `rejected` under configurable keys): the prompt's turns and two assistant answers."""
    if dataset.name == "PreferenceDataset":
        completions = sorted(record["completions"], key=lambda c: c["rank"])
        if len(completions) != 2 or completions[0]["rank"] == completions[1]["rank"]:
            raise ValueError("a PreferenceDataset record needs two completions of different rank")
        prompt = _messages(record["context"], "user")
        chosen = _messages(completions[0]["completion"], "assistant")
        rejected = _messages(completions[1]["completion"], "assistant")
    else:
        prompt = _messages(record[dataset.prompt_key], "user")
        chosen = _messages(record[dataset.chosen_key], "assistant")
        rejected = _messages(record[dataset.rejected_key], "assistant")
    if not chosen or not rejected:
        raise ValueError("a completion holds no message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("the two completions differ before their final message: NeMo RL conditions each "
                         "final message on its own earlier ones, which TRL's one prompt per pair cannot "
                         "hold (prepare the pairs again with gym-dpo: it cuts them where they part)")
    return {"prompt": prompt + chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def read_pairs(dataset: Dataset) -> Iterator[dict]:
    """The pairs of one pair file as conversations (`as_conversation`), failing on a bad line."""
    with open(dataset.path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield as_conversation(json.loads(line), dataset)
            except (ValueError, KeyError, TypeError) as exc:
                raise RecipeError(f"{dataset.path}:{number}: not a {dataset.name} record "
                                  f"({type(exc).__name__}: {exc})") from None
