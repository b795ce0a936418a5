"""The train stage's only view of `stage=prepare`'s output: manifest.json, train.jsonl, val.jsonl.

The train stage never imports prepare's code: it reads the folder the way a user's hand-made
folder would be read, so that a folder prepared yesterday (or elsewhere) trains the same. It checks
what NeMo RL would not (v0.7.0's `nemo_rl/data/datasets/preference_datasets/` load a record
without checking that it is complete): the files are the ones the manifest hashed, every line is a
pair of the manifest's format, and no pair is a tie (equal ranks make NeMo RL raise
`NotImplementedError` at load time; identical chosen and rejected answers teach nothing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recipe.errors import RecipeError

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


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 16 MiB blocks (pair files, squashfs images of tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


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
        actual = file_sha256(path)
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
