"""The data manifest: what went in, what came out, and why every input line ended where it did.

The manifest is byte-identical for the same input and config; the only values that change from
run to run are kept under the one key `timestamps`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

from recipe.run_files import sha256_file, write_atomic

MANIFEST_VERSION = 1


def sha256_of_each(paths: list[str]) -> list[str]:
    return [sha256_file(path) for path in paths]


def input_entry(path: str, sha256: str) -> dict:
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": sha256}


def stats(values: np.ndarray) -> dict:
    """Count, mean, spread and quantiles of the finite values (a gap between rewards of +-1e308
    is not finite: counted under `not_finite`). Computed on values scaled into [-1, 1], so that
    sums and differences of extreme values do not overflow."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]  # a copy: the quantiles may reorder it
    out = {"count": int(len(values))}
    if len(finite) < len(values):
        out["not_finite"] = int(len(values) - len(finite))
    if len(finite) == 0:
        return out if len(values) else {"count": 0}
    low, high = float(finite.min()), float(finite.max())
    scale = max(abs(low), abs(high))
    if scale > 1e150:  # extreme values: sums and squares would overflow
        finite /= scale
    else:
        scale = 1.0
    mean, std = float(finite.mean()) * scale, float(finite.std()) * scale
    q = np.quantile(finite, [0.25, 0.5, 0.75], overwrite_input=True) * scale
    out.update({"mean": round(mean, 6), "std": round(std, 6), "min": low, "p25": round(float(q[0]), 6),
                "median": round(float(q[1]), 6), "p75": round(float(q[2]), 6), "max": high})
    return out


def write(path: Path, manifest: dict) -> None:
    """On disk whole (`run_files.write_atomic`), its folder synced: the outputs renamed into it
    before it, which it vouches for, are on disk too."""
    write_atomic(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def read(path: Path) -> dict:
    return orjson.loads(Path(path).read_bytes())
