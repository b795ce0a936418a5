"""Temporary folders of a run, each marked alive by a lock its run holds, so that a later run can
remove what a killed one left (`kill -9`, a lost node) and never touches a live run's folder.

    scratch = Scratch(parent, "prepare")   # parent/.gym-dpo-tmp-prepare-<pid>-<random>/
    ...                                     # work files go in scratch.path
    scratch.remove()

A new Scratch first sweeps `parent`: a folder whose lock nobody holds (its run is gone: the
kernel drops a dead process's locks, whatever killed it) is removed; one whose lock is held is
left alone. The lock is an `flock` on a file inside the folder, taken before the folder gets its
name, so every folder under that name has one. Forked workers share their run's lock, so a run
whose workers still live counts as alive too.

With the default config each run has a folder of its own (`results/<timestamp>/`), where the
next run never looks: `sweep_tree(output_root)` sweeps the run folders under it too (prepare
calls it). Another prefix names folders other programs need short or recognisable (iterate's
Ray temp folders, `/tmp/gym-dpo-ray-<pid>-<random>`: `Scratch(tmp, "ray", prefix="gym-dpo-")`),
swept by the same rule.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

PREFIX = ".gym-dpo-tmp-"
STAGING = ".gym-dpo-new-"   # a folder being made (it gets its lock, then its name)
LOCK = ".lock"
STAGING_GRACE = 60.0        # seconds a folder may stay in the making before a sweep takes it


def _held(folder: Path) -> bool:
    """Whether a live run holds the lock in `folder`."""
    try:
        handle = open(folder / LOCK, "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the file releases the lock we just took


def sweep(parent: Path, prefix: str = PREFIX) -> list[Path]:
    """Remove the temporary folders (named `prefix`...) in `parent` that no live run holds;
    returns them. Under another prefix than ours only folders with a lock file count (one made
    without it, by an older gym-dpo, cannot be told from a live one: it is left alone)."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        if entry.name.startswith(STAGING):
            try:
                young = time.time() - entry.stat().st_mtime < STAGING_GRACE
            except OSError:
                continue
            if young or _held(folder):
                continue
        elif not entry.name.startswith(prefix) or _held(folder):
            continue
        elif prefix != PREFIX and not (folder / LOCK).is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def sweep_tree(root: Path, depth: int = 2) -> list[Path]:
    """`sweep` in `root` and in the folders `depth` levels below it (run folders, their data/)."""
    removed = sweep(root)
    if depth > 0:
        try:
            entries = [Path(e.path) for e in os.scandir(root)
                       if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
        except OSError:
            return removed
        for folder in entries:
            removed += sweep_tree(folder, depth - 1)
    return removed


class Scratch:
    """A temporary folder under `parent`, alive while this object (or a fork of it) lives, named
    `prefix + what-pid-random` (default prefix: `.gym-dpo-tmp-`)."""

    def __init__(self, parent: Path, what: str, prefix: str = PREFIX):
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        self.swept = sweep(parent, prefix if prefix == PREFIX else f"{prefix}{what}-")
        staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=parent))
        self._lock = open(staging / LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._lock.write(f"{os.getpid()} {what}\n")
        self._lock.flush()
        self.path = parent / f"{prefix}{what}-{os.getpid()}-{staging.name[len(STAGING):]}"
        os.rename(staging, self.path)

    def remove(self) -> None:
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()
            self._lock = None
