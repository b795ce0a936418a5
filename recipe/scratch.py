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


def sweep(parent: Path) -> list[Path]:
    """Remove the temporary folders under `parent` that no live run holds; returns them."""
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
        elif not entry.name.startswith(PREFIX) or _held(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


class Scratch:
    """A temporary folder under `parent`, alive while this object (or a fork of it) lives."""

    def __init__(self, parent: Path, what: str):
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        self.swept = sweep(parent)
        staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=parent))
        self._lock = open(staging / LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._lock.write(f"{os.getpid()} {what}\n")
        self._lock.flush()
        self.path = parent / f"{PREFIX}{what}-{os.getpid()}-{staging.name[len(STAGING):]}"
        os.rename(staging, self.path)

    def remove(self) -> None:
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()
            self._lock = None
