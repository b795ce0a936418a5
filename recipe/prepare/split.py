"""Train/validation split by prompt: a prompt's pairs all land on one side.

The side is decided by a hash of (seed, context hash), so the same input gives the same split on
every machine and in any chunking, and a prompt shown under two task identities never leaks.
"""

from __future__ import annotations

import numpy as np

_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64's finaliser), vectorised; wraps modulo 2**64."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def rank(contexts: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random position in [0, 1) for every context hash, the same on every
    machine (pure 64-bit integer arithmetic)."""
    with np.errstate(over="ignore"):
        salt = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))[0]
        mixed = _splitmix64(np.asarray(contexts, dtype=np.uint64) ^ salt)
    return (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53


def is_validation(pair_contexts: np.ndarray, seed: int, val_fraction: float,
                  val_size: int | None) -> np.ndarray:
    """For each pair (by its context hash), whether it goes to validation.

    `val_fraction` puts each prompt on the validation side with that probability; `val_size`
    instead takes prompts in hashed order until at least that many pairs are set aside.
    """
    if val_size is None:  # a prompt's pairs share its rank: no need to find the distinct prompts
        return rank(pair_contexts, seed) < val_fraction
    unique, counts = np.unique(pair_contexts, return_counts=True)
    order = np.argsort(rank(unique, seed), kind="stable")
    pairs_before = np.cumsum(counts[order]) - counts[order]
    return np.isin(pair_contexts, unique[order][pairs_before < val_size])
