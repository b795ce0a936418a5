"""Every pair of the group whose gap reaches `min_gap`, largest gaps first (the shared cap keeps
the largest)."""

from __future__ import annotations

from itertools import combinations

from recipe.prepare.pairing import best_gaps_first

KEEP = "largest_gaps"


def select(group, options: dict) -> list[tuple[int, int]]:
    candidates = []
    for a, b in combinations(range(len(group)), 2):
        chosen, rejected = (a, b) if group.scores[a] > group.scores[b] else (b, a)
        if group.can_pair(chosen, rejected, options["min_gap"]):
            candidates.append((chosen, rejected))
    return best_gaps_first(group, candidates, None)
