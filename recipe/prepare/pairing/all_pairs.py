"""Every pair of the group whose gap reaches `min_gap`; the shared code orders them largest gap
first and keeps the first `max_pairs_per_prompt`."""

from __future__ import annotations

from itertools import combinations

KEEP = "largest_gaps"


def select(group, options: dict) -> list[tuple[int, int]]:
    candidates = []
    for a, b in combinations(range(len(group)), 2):
        chosen, rejected = (a, b) if group.scores[a] > group.scores[b] else (b, a)
        if group.can_pair(chosen, rejected, options["min_gap"]):
            candidates.append((chosen, rejected))
    return candidates
