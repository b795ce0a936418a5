"""Pairing strategies: one module each, all behind `pair_group`.

A strategy sees one group of comparable rollouts (their scores, response hashes and order) and
returns (chosen, rejected) positions. The guarantees every strategy shares live here: a pair is
never a tie, never two identical responses, respects `min_gap`, is capped by
`max_pairs_per_prompt`, and is deterministic under `seed` whatever order the groups come in.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

STRATEGIES = ("same_prompt", "stratified", "all_pairs")


@dataclass(frozen=True)
class Group:
    """One group of comparable rollouts, in input order."""

    scores: np.ndarray  # what the strategy ranks by
    responses: np.ndarray  # response hashes: equal hash = identical text
    seed: int  # per-group seed: the same group pairs the same way in any run

    def __len__(self) -> int:
        return len(self.scores)

    def rng(self) -> random.Random:
        return random.Random(self.seed)

    def ranked(self) -> list[int]:
        """Positions best first; equal scores keep input order."""
        return sorted(range(len(self.scores)), key=lambda i: -self.scores[i])

    def can_pair(self, chosen: int, rejected: int, min_gap: float) -> bool:
        gap = self.scores[chosen] - self.scores[rejected]
        return gap > 0 and gap >= min_gap and self.responses[chosen] != self.responses[rejected]


Select = Callable[[Group, dict], list[tuple[int, int]]]


def strategy(name: str) -> Select:
    if name not in STRATEGIES:
        raise ValueError(f"unknown pairing strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return importlib.import_module(f"recipe.prepare.pairing.{name}").select


def best_gaps_first(group: Group, candidates: list[tuple[int, int]], cap: int | None):
    """Largest gap first, then input order; at most `cap` (None = all)."""
    candidates = sorted(candidates, key=lambda p: (-(group.scores[p[0]] - group.scores[p[1]]), p))
    return candidates if cap is None else candidates[:cap]
