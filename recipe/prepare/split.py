"""Train/validation split by prompt: a prompt's pairs all land on one side.

The side is decided by a hash of (seed, context hash), so the same input gives the same split on
every machine and in any chunking, and a prompt shown under two task identities never leaks.
"""

from __future__ import annotations

import hashlib

import numpy as np


def rank(contexts: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random position in [0, 1) for every context hash."""
    salt = seed.to_bytes(8, "little", signed=True)
    values = [hashlib.blake2b(int(c).to_bytes(8, "little"), digest_size=8, key=salt).digest()
              for c in contexts]
    return np.frombuffer(b"".join(values), dtype="<u8") / 2.0**64


def validation_contexts(pair_contexts: np.ndarray, seed: int, val_fraction: float,
                        val_size: int | None) -> set[int]:
    """Context hashes whose pairs go to validation.

    `val_fraction` puts each prompt on the validation side with that probability; `val_size`
    instead takes prompts in hashed order until at least that many pairs are set aside.
    """
    unique, counts = np.unique(pair_contexts, return_counts=True)
    if len(unique) == 0:
        return set()
    positions = rank(unique, seed)
    if val_size is None:
        return {int(c) for c in unique[positions < val_fraction]}
    chosen: set[int] = set()
    taken = 0
    for index in np.argsort(positions, kind="stable"):
        if taken >= val_size:
            break
        chosen.add(int(unique[index]))
        taken += int(counts[index])
    return chosen
