"""What the stages' run folders share: the sha256 of a file, NeMo RL's `step_N` checkpoints, and
the records a rerun trusts.

Prepare hashes its inputs and outputs into the manifest, train checks those hashes (and the
squashfs image it runs), iterate fingerprints its eval tasks; NeMo RL (v0.7.0
`nemo_rl/utils/checkpoint.py`) and the CPU runner save checkpoints as `checkpoint_dir/step_N/`,
which train resumes from and iterate exports.

A record a rerun trusts (manifest.json, provenance.json, a step record, plan.json, iterate.json,
a checkpoint's training_info.json) says its outputs are complete: `write_atomic` puts it on disk
whole (written beside, synced, renamed, the folder synced), so a crash or power loss leaves the
old record or the new one, never a zero-length one; `read_json` turns one that is unreadable all
the same into an error that names it and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from recipe.errors import RecipeError

STEP = re.compile(r"step_(\d+)")


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """A file's sha256, read in 4 MiB blocks into one buffer (pair files of GB, images of tens of GB)."""
    digest = hashlib.sha256()
    buffer = bytearray(block)  # one buffer for every block: no new pages to fault in each time
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def step_number(path: str | Path) -> int | None:
    """N of a folder named `step_N`, else None."""
    match = STEP.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def step_folders(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(N, folder) of every `step_N` folder in `checkpoint_dir`, oldest first (none if it is absent)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(step_number(path), path) for path in checkpoint_dir.iterdir() if path.is_dir()]
    return sorted((n, path) for n, path in found if n is not None)


def sync_folder(folder: str | Path) -> None:
    """fsync a folder: the names renamed or made in it are on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: str | Path) -> None:
    """fsync every file and folder under `folder` (a checkpoint before it gets its final name)."""
    for parent, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_folder(parent)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """`data` at `path`, whole or not at all, on disk when this returns."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    sync_folder(path.parent)
    return path


def read_json(path: str | Path, what_to_do: str) -> Any:
    """A JSON record; one that cannot be read or parsed (cut short by a crash, hand-edited) is a
    RecipeError naming it and saying `what_to_do`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path} cannot be read ({exc.strerror or exc}): {what_to_do}") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        how = "is empty" if not raw.strip() else f"is not valid JSON ({exc})"
        raise RecipeError(f"{path} {how}, a write cut short perhaps: {what_to_do}") from None
