"""Records spilled to disk by group key, so memory does not grow with the input.

The scan appends every record to one of N bucket files chosen by its group key; a group never
spans two buckets, so each bucket is paired on its own (in a worker process) while the others
stay on disk. N grows with the input size: one bucket holds the records of about
`BUCKET_INPUT_BYTES` of input (a few MiB of records).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from recipe.prepare import grouping

BUCKET_INPUT_BYTES = 128 << 20


def count_for(input_bytes: int) -> int:
    return max(1, math.ceil(input_bytes / BUCKET_INPUT_BYTES))


def split(records: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(the records ordered by bucket, where each bucket's run starts: count + 1 bounds); done in
    the worker that scanned them, so the parent only writes slices."""
    if count == 1:
        return records, np.array([0, len(records)])
    which = records["key_hi"] % count
    order = np.argsort(which, kind="stable")
    return records[order], np.searchsorted(which[order], np.arange(count + 1))


class Buckets:
    def __init__(self, parent: Path, input_bytes: int):
        self.count = count_for(input_bytes)
        parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".buckets-", dir=parent))
        self._files = [open(self.path(b), "wb") for b in range(self.count)]
        self.records = 0

    def path(self, bucket: int) -> Path:
        return self.folder / f"{bucket:05d}.records"

    def add(self, records: np.ndarray, bounds: np.ndarray) -> None:
        """Append records already ordered by bucket (`split`)."""
        self.records += len(records)
        for bucket in range(self.count):
            if bounds[bucket] < bounds[bucket + 1]:
                records[bounds[bucket]:bounds[bucket + 1]].tofile(self._files[bucket])

    def seal(self) -> None:
        for handle in self._files:
            handle.close()

    def remove(self) -> None:
        self.seal()
        shutil.rmtree(self.folder, ignore_errors=True)


def load(path: Path) -> np.ndarray:
    """One bucket's records in canonical group order."""
    return grouping.sort_records(np.fromfile(path, dtype=grouping.RECORD))
