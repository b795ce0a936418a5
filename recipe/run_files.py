"""What the stages' run folders share: the sha256 of a file, and NeMo RL's `step_N` checkpoints.

Prepare hashes its inputs and outputs into the manifest, train checks those hashes (and the
squashfs image it runs), iterate fingerprints its eval tasks; NeMo RL (v0.7.0
`nemo_rl/utils/checkpoint.py`) and the CPU runner save checkpoints as `checkpoint_dir/step_N/`,
which train resumes from and iterate exports.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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
